package backup

import (
	"time"

	"github.com/sendense/sendense/schemas"
)

// Prune states (Prune.State).
const (
	// PrunePending: the hub recorded its intent to remove the point
	// (backup.pruning) and may be changing its files. The job is still
	// completed and still in its chains.
	PrunePending = "pending"
	// PruneDone: the point is removed (backup.pruned); the job's status is
	// pruned and it is in no chain.
	PruneDone = "done"
)

// Prune is the removal of a completed job's point by the hub, from its
// backup.pruning (the intent) and backup.pruned (done) events.
type Prune struct {
	State string `json:"state"` // PrunePending or PruneDone
	// RequestedAt is the time of backup.pruning; zero when only
	// backup.pruned was applied.
	RequestedAt time.Time `json:"requested_at,omitzero"`
	// PrunedAt is the time of backup.pruned; zero while pending.
	PrunedAt time.Time `json:"pruned_at,omitzero"`
	// Disks are the per-disk operations the intent named (or, without
	// one, the done event).
	Disks []schemas.PruneDisk `json:"disks"`
}

// Verification is the latest backup.verified of a completed job.
type Verification struct {
	Status     string                 `json:"status"` // schemas.Verify*
	Seq        int64                  `json:"seq"`
	VerifiedAt time.Time              `json:"verified_at"`
	Disks      []schemas.VerifiedDisk `json:"disks"`
}
