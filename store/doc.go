// Package store is the catalog: one bbolt file (DATA/catalog.db) holding
// every backup job, its disks and change ids, the chain of completed backups
// per (VM UUID, disk key, repository), the ids of applied events, and the
// events it refused (poison records).
//
// It owns the rules that make the catalog trustworthy: a job is completed
// only when every disk has a change id (design invariant 2), every event is
// applied at most once and in any order (invariant 5), and a failed or
// partial backup is never in a chain (invariant 4). It must never know about
// NATS, subjects or acks: the catalog consumer in agents/ decodes and
// validates messages, calls Apply, and acks after Apply returns.
//
// # Basics
//
// Open the file with Open (sync on; Options.Timeout, default 5 s, bounds the
// wait for another process's file lock), file events with Apply, and query
// with Job, Jobs, Chain, ChainHead and Chains. Apply takes a batch and
// commits it in one transaction, synced to disk before it returns; its
// per-event errors say which events were refused (ErrIncomplete,
// ErrInvalid) while the rest of the batch is applied. RecordPoison keeps an
// event that failed schema validation upstream; Poison lists them. The
// catalog consumer wraps each event with the payload it was decoded from
// (WithPayload), so Apply files those bytes instead of encoding the event
// again. Open upgrades a file of an older layout in the same transaction
// that opens it (layout version 1, nested buckets, to 2: see catalog.go);
// a file from a newer build is refused (ErrSchemaVersion).
//
// Job records and chains are derived: each Apply stores the raw events of
// a job and recomputes the job (and its chain links) from the whole set, in
// a canonical order (attempt, event type, time, id). So the same set of
// events gives the same catalog whatever the delivery order, duplicates or
// batching, and Dump gives a canonical Snapshot to compare two catalogs,
// which is how `catalog rebuild` and the tests check a replay.
//
// # Caveats
//
// A backup.completed applied before the backup.started of its attempt cannot
// be checked against the started disk list yet. If the started event later
// shows a missing disk, the completed event is moved to the poison records
// then and the job falls back to running (no chain link); Apply gives that
// started event a nil error and logs a warning. The final state is the same
// as in the other order, but the per-event errors differ.
//
// Progress events only keep the newest progress per job (Job.Progress);
// their ids are not recorded and they never create a job on their own.
//
// Poison records written by Apply hold the event re-encoded to JSON, not the
// original payload bytes. Their recording time is the only field a replay
// does not reproduce; Dump clears it.
//
// Event ids, job ids, VM UUIDs and repository names longer than 512 bytes
// are refused (they become bbolt keys).
package store
