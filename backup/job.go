package backup

import (
	"strings"
	"time"

	"github.com/sendense/sendense/schemas"
)

// Job statuses, derived from a job's events (see Job.Status).
const (
	// StatusQueued: a request waiting in BACKUP_REQUESTS that no agent
	// started yet. The catalog never stores it: its service shows the
	// waiting requests it has no record of (agents/catalog, queued.go).
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusCompleted = "completed"
	StatusFailed    = "failed"
	StatusRejected  = "rejected"
	// StatusPruned: a completed job whose point the hub removed from the
	// repository (backup.pruned). It is in no chain.
	StatusPruned = "pruned"
)

// Statuses are every status a job can have, for filters and their errors.
var Statuses = []string{StatusQueued, StatusRunning, StatusCompleted, StatusFailed, StatusRejected, StatusPruned}

// Job is one backup job as the catalog derives it from the job's events.
// It is what `sendense job ID --json` prints. Every field is a function of
// the set of applied events (and the newest progress), never of their order.
type Job struct {
	// ID is the job id, job_id in JSON as in every event of the job.
	ID string `json:"job_id"`
	// Status: completed if a valid backup.completed was applied (it wins
	// over everything, and a completed job is never rewritten: see
	// store's consistency.go); else failed if the latest backup.failed attempt is
	// >= the latest attempt seen in backup.started / backup.changeid; else
	// running if any started or changeid event exists (this covers a retry
	// after a retryable failure); else rejected (only backup.rejected was
	// seen). A completed job becomes pruned once the hub removed its
	// point (backup.pruned; see Prune). Poisoned events count for nothing.
	Status string        `json:"status"`
	VM     schemas.VMRef `json:"vm"`
	// Repository of the completed event for a completed job, otherwise the
	// latest one named by the job's events.
	Repository    string `json:"repository,omitempty"`
	RequestedType string `json:"requested_type,omitempty"`
	RequestedBy   string `json:"requested_by,omitempty"`
	// RequestSeq is the stream sequence of the backup.requested message
	// the job runs (backup.started's request_seq; 0 when no started event
	// carries one): a second request that reuses the job id has another.
	RequestSeq uint64 `json:"request_seq,omitempty"`
	// Agent published the decisive attempt's events: the completed event's
	// agent for a completed job, else that of the first backup.started of
	// the attempt that decided the status (empty when it has none, and for
	// legacy events published before agents had identities).
	Agent string `json:"agent,omitempty"`
	// Attempt is the highest attempt seen in any of the job's applied
	// events (for a completed job, the completed attempt).
	Attempt int `json:"attempt"`
	// FailedAttempts is how many distinct attempts have an applied
	// backup.failed.
	FailedAttempts int `json:"failed_attempts"`
	// CreatedAt is the time of the job's earliest event; Jobs orders by it.
	CreatedAt time.Time `json:"created_at"`
	// StartedAt is the time of the earliest backup.started.
	StartedAt time.Time `json:"started_at,omitzero"`
	// FinishedAt is the time of the event that decided a completed, failed
	// or rejected status; zero while running.
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// Failure is set only for failed (the latest backup.failed) and
	// rejected (the latest backup.rejected) jobs.
	Failure *Failure `json:"failure,omitempty"`
	// Disks of the attempt that decided the status (the completed attempt,
	// the failed attempt, or the latest running attempt), by device key.
	// For a completed job these are exactly the completed event's disks.
	Disks []Disk `json:"disks"`
	// Progress is the newest backup.progress applied for the job, if any.
	Progress *Progress `json:"progress,omitempty"`
	// Prune is set once the hub recorded its intent to remove the job's
	// point (backup.pruning): pending until backup.pruned, then done.
	Prune *Prune `json:"prune,omitempty"`
	// Verification is the latest backup.verified of a completed job (by
	// time, then event id); nil until the hub verified it.
	Verification *Verification `json:"verification,omitempty"`
	// EventIDs are the ids of the job's applied events, sorted. Progress
	// events and poisoned events are not among them.
	EventIDs []string `json:"event_ids"`
	// PoisonedEventIDs are the ids of the job's stored events that are
	// poison (see Poison), sorted. It is the catalog's bookkeeping, so that
	// re-deriving the job removes the poison records that no longer apply
	// without reading the whole poison bucket; do not depend on it.
	PoisonedEventIDs []string `json:"poisoned_event_ids,omitempty"`
}

// Failure is why a job failed or was rejected.
type Failure struct {
	Reason    string `json:"reason"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
	Attempt   int    `json:"attempt"`
}

// Disk is one disk of a job, merged from backup.started (the plan),
// backup.changeid and backup.completed of the same attempt, in that order;
// a later source overwrites a field only with a non-empty value.
type Disk struct {
	Disk            schemas.DiskRef `json:"disk"`
	BackupType      string          `json:"backup_type,omitempty"`
	Reason          string          `json:"reason,omitempty"`
	BaseChangeID    string          `json:"base_change_id,omitempty"`
	ChangeID        string          `json:"change_id,omitempty"`
	BytesRead       int64           `json:"bytes_read"`
	BytesWritten    int64           `json:"bytes_written"`
	Target          string          `json:"target,omitempty"`
	Backing         string          `json:"backing,omitempty"`
	ActualSizeBytes int64           `json:"actual_size_bytes"`
	// ManifestSHA256 is the SHA-256 of the disk's manifest file, from
	// backup.completed; empty for backups made before manifests existed.
	ManifestSHA256 string `json:"manifest_sha256,omitempty"`
	// Verified is this disk's status in the job's latest verification
	// (schemas.Verify*); empty until the hub verified the job.
	Verified string `json:"verified,omitempty"`
}

// Progress is the newest backup.progress of a job: the one with the highest
// (attempt, seq, time, event id).
type Progress struct {
	EventID    string    `json:"event_id"`
	Attempt    int       `json:"attempt"`
	Seq        int64     `json:"seq"`
	BytesDone  int64     `json:"bytes_done"`
	BytesTotal int64     `json:"bytes_total"`
	Time       time.Time `json:"time"`
}

// JobFilter selects jobs for Jobs. Zero fields match everything.
type JobFilter struct {
	// VM matches the VM's name exactly, or its instance UUID or moref
	// (case-insensitive).
	VM string
	// Status is one of the Status* constants; store.Catalog.Jobs refuses
	// anything else with store.ErrInvalid.
	Status string
	// IDPrefix matches the jobs whose id starts with it (a short id).
	IDPrefix string
	// Offset skips the first Offset matching jobs (paging); <= 0 skips none.
	Offset int
	// Limit caps the number of jobs returned; <= 0 means no limit.
	Limit int
}

// Match reports whether j passes the filter's VM and status (IDPrefix,
// Offset and Limit are applied by the lister).
func (f JobFilter) Match(j *Job) bool {
	if f.Status != "" && j.Status != f.Status {
		return false
	}
	if f.VM != "" && j.VM.Name != f.VM && !strings.EqualFold(j.VM.UUID, f.VM) && !strings.EqualFold(j.VM.Moref, f.VM) {
		return false
	}
	return true
}

// Ended reports whether the job has its outcome: completed (or pruned
// since), rejected, or failed with no retry left. A running job, or one whose last attempt
// failed and will be retried, has not ended.
func (j Job) Ended() bool {
	switch j.Status {
	case StatusCompleted, StatusRejected, StatusPruned:
		return true
	case StatusFailed:
		return j.Failure == nil || !j.Failure.Retryable
	}
	return false
}
