// Package store is the catalog: one bbolt file (DATA/catalog.db) holding
// every backup job, its disks and change ids, the chain of completed backups
// per (VM UUID, disk key, repository), the ids of applied events, and the
// events it refused (poison records).
//
// It owns the rules that make the catalog trustworthy: a job is completed
// only when every disk has a change id (design invariant 2), every event is
// applied at most once and in any order (invariant 5), a failed or partial
// backup is never in a chain (invariant 4), and only consistent history is
// kept (invariant 10): a backup.completed counts only when it matches the
// backup.started and backup.changeid events of its attempt from the same
// agent, ids and targets are the job's own, and a completed job is never
// rewritten (the rules are listed in consistency.go). It must never know
// about NATS, subjects or acks: the catalog consumer in agents/ decodes
// and validates messages, takes the publishing agent's name from the
// subject, calls Apply, and acks after Apply returns.
//
// # Basics
//
// Open the file with Open (sync on; Options.Timeout, default 5 s, bounds the
// wait for another process's file lock), file events with Apply, and query
// with Job, Jobs, Chain, ChainHead and Chains. Apply takes a batch and
// commits it in one transaction, synced to disk before it returns; its
// per-event errors say which events were refused (ErrIncomplete,
// ErrInconsistent, ErrInvalid) while the rest of the batch is applied.
// Refused events are poison records; RecordPoison keeps an event that
// failed schema validation upstream; Poison lists them all. The catalog
// consumer wraps each event with the payload it was decoded from and the
// agent that published it (WithSource), so Apply files those bytes instead
// of encoding the event again and judges the event by its agent; an event
// without WithSource is a legacy event of agent "". Open upgrades a file of
// an older layout in the same transaction that opens it (layout version 1,
// nested buckets, and 2, without agents, to 3: see catalog.go); a file from
// a newer build is refused (ErrSchemaVersion), and builds of layout 2
// refuse a file of layout 3 the same way.
//
// Job records and chains are derived: each Apply stores the raw events of
// a job and recomputes the job (and its chain links, and which of its
// events are poison) from the whole set, in a canonical order (attempt,
// event type, time, id, agent). So the same set of events gives the same
// catalog whatever the delivery order, duplicates or batching, and Dump
// gives a canonical Snapshot to compare two catalogs, which is how
// `catalog rebuild` and the tests check a replay.
//
// # Caveats
//
// Whether an event is poison can depend on events that have not arrived
// yet. A backup.completed applied before the backup.started of its attempt
// is poison (ErrInconsistent) until the started and changeid events
// arrive; then it is applied, its poison record removed, and that logged.
// Conversely, if a later backup.started shows that an applied completed
// lacks one of its disks, the completed becomes poison then and the job
// falls back to running (no chain link); Apply gives that started event a
// nil error and logs a warning. The final state is the same as in any other
// order, but the per-event errors differ.
//
// Progress events only keep the newest progress per job (Job.Progress);
// their ids are not recorded and they never create a job on their own.
//
// Poison records written by Apply hold the event's JSON as stored: the
// payload given to WithSource, else the event re-encoded. Their recording
// time is the only field a replay does not reproduce; Dump clears it. They
// are keyed by event id: when two events share an id (the same id from two
// agents, or non-canonical ids of different jobs), one record is kept.
//
// Event ids, job ids, VM UUIDs and repository names longer than 512 bytes
// are refused (they become bbolt keys).
package store
