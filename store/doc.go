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
// agent, an attempt belongs to the agent that started it first, ids and
// targets are the job's own, and a completed job is never rewritten (the
// rules are listed in consistency.go). Precedence follows the stream:
// which agent started an attempt first and which completed came first is
// decided by the stream sequence each event was stored at, never by the
// times publishers write. It must never know about NATS, subjects or
// acks: the catalog consumer in agents/ decodes and validates messages,
// takes the publishing agent's name from the subject and the stream
// sequence from the message's metadata, calls Apply, and acks after Apply
// returns.
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
// consumer wraps each event with its Source (WithSource): the payload it
// was decoded from, the agent that published it and the stream sequence
// it was stored at, so Apply files those bytes instead of encoding the
// event again, judges the event by its agent and places it in its job's
// history by its sequence. An event without a Source is a legacy event of
// agent "" with no sequence, which comes before every sequenced one. Open
// upgrades a file of an older layout in the same transaction that opens
// it (layout version 1, nested buckets, and 2, without agents and
// sequences, to 3: see catalog.go); a file from a newer build is refused
// (ErrSchemaVersion), and builds of layout 2 refuse a file of layout 3 the
// same way.
//
// Job records and chains are derived: each Apply stores the raw events of
// a job with their agents and sequences and recomputes the job (and its
// chain links, and which of its events are poison) from the whole set, in
// stream order. So the same set of events with the same sequences gives
// the same catalog whatever the delivery order, duplicates or batching,
// and Dump gives a canonical Snapshot to compare two catalogs, which is
// how `catalog rebuild` and the tests check a replay.
//
// # Hub events
//
// Besides the agents' events the catalog files the events the hub
// publishes about a completed job (schemas.HubEvents, on
// backup.<type>.hub, agent HubAgent): backup.pruning, the intent to
// remove the job's point (Job.Prune pending; the job stays completed and
// in its chains), and backup.pruned, the point is gone (status pruned, in
// no chain). They add to a completed job and never make, undo or rewrite
// one (rule 7 in consistency.go): from anyone but the hub, of another
// attempt, about a job that is not completed, or naming other disks or
// targets they are poison. Like every event they are part of the job's
// event set, so a replay gives the same catalog.
//
// Chains read each link's Backing as the job it backs onto now: the
// recorded base while that job is kept; once it is pruned, the pruned
// job's own base, resolved the same way (none for a pruned full), because
// that is what every prune operation does to the removed point's child
// (see resolveBackings). In a chain with no full in the middle that is
// the previous kept link.
//
// backup.verified (a verification of the job's point) is the third: the
// job keeps its latest by time (Job.Verification), each disk and chain
// link its status (Disk.Verified, Link.Verified), and the agent never
// bases an incremental on a link whose latest verification failed.
//
// To add a hub event: its schema and Go type in
// schemas, listed in schemas.HubEvents (the bus then binds
// backup.<type>.hub to BACKUP_EVENTS, lets only the hub publish it and
// bus.NewHubPublisher sends it); the next free type code in eventNames
// (apply.go; codes are stored in keys, never reuse one) and its cases in
// eventName and newEvent; its rank in derive.go; an entry in hubEvents
// (hub.go) with its check against the completed job and its fold into it;
// the Job field it folds into, written by appendJob (jobjson.go). Then a
// test like TestPruneEvents: applied, refused, and order-free.
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
// nil error and logs a warning. The same happens when the catalog applies
// events out of stream order: another agent's applied events of an
// attempt, its completed included, become poison when the started that
// the stream stored first arrives. The final state is the same as in any
// other order, but the per-event errors differ.
//
// Progress events only keep the newest progress per job (Job.Progress);
// their ids are not recorded and they never create a job on their own.
//
// Poison records written by Apply hold the event's JSON as stored: the
// payload given to WithSource, else the event re-encoded. Their recording
// time is the only field a replay does not reproduce; Dump clears it. They
// are keyed by job id, event id and agent, the event's identity: events
// that share an id (the same id from two agents, or non-canonical ids of
// different jobs) each have their own. Two events of one identity are one
// event: the one stored first in the stream is kept (see Apply), and only
// among events without a sequence does the first applied win.
//
// Event ids, job ids, VM UUIDs and repository names longer than 512 bytes
// are refused (they become bbolt keys).
//
// Hub events are stored under type codes (6, 7 and 8) that builds from before
// them do not know: such a build fails to re-derive a job that has them.
// Going back to one, rebuild its catalog from the stream (`catalog
// rebuild`), which it files as poison it does not understand.
package store
