package store

import "errors"

// Sentinel errors. Match them with errors.Is; the returned errors wrap them
// with the operation and the ids involved.
var (
	// ErrIncomplete is the per-event error of a backup.completed that breaks
	// invariant 2 ("completed means complete"): a disk without a change id,
	// a disk without a uuid or target, no disks at all, no vm uuid or
	// repository, or a disk that the job's backup.started listed for the
	// same attempt (from the same agent) is missing or has another uuid.
	// Such an event is not applied; it is kept as a poison record.
	ErrIncomplete = errors.New("backup incomplete")

	// ErrInconsistent is the per-event error of an event that does not fit
	// its job's history (design invariant 10; the rules are listed in
	// consistency.go): an id that is not the canonical
	// <job_id>.<attempt>.<type>.<disk_key>.<seq>, a target outside the
	// job's path in the repository, a backup.completed without the
	// backup.started and backup.changeid events of its attempt from the same
	// agent or that differs from them, an event of an attempt that another
	// agent started first in the stream, or an event that would rewrite a
	// completed job. Such an event is not applied; it is kept as a poison
	// record, and one that depends on other events (a completed whose
	// started has not arrived yet) is applied when they make it consistent.
	ErrInconsistent = errors.New("event inconsistent with its job")

	// ErrInvalid is the per-event error of an event the catalog cannot
	// file at all: a nil or unknown event type, or an empty or oversized
	// event id or job id. It is also returned by Jobs for an unknown
	// status filter. Events with this error are kept as poison records
	// when there is anything to keep.
	ErrInvalid = errors.New("invalid event")

	// ErrLocked is returned by Open when another process holds the
	// catalog file's lock for longer than Options.Timeout.
	ErrLocked = errors.New("catalog file is locked by another process")

	// ErrSchemaVersion is returned by Open when the file was written by a
	// newer build whose layout this build does not know.
	ErrSchemaVersion = errors.New("unsupported catalog schema version")
)
