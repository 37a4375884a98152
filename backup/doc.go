// Package backup holds the catalog's records of backup jobs as every part
// of Sendense sees them: a Job and its Disks, Failure and Progress, the
// Link and Chain of completed backups, a VM's summary, Stats and
// PoisonRecords, and the job statuses. The store derives and keeps them in
// bbolt, the catalog service answers with them on NATS, and clients (the
// CLI, the agents, the hub) read them; so this package imports neither
// bbolt nor NATS, only the event schemas.
//
// # Basics
//
// A Job's fields are a function of the set of its applied events, never of
// their order (see the store package for the rules). Status is one of the
// Status* constants; Ended says whether the job has its outcome.
package backup
