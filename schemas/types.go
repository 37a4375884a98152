package schemas

import (
	"encoding/json"
	"time"
)

// Message names. Each is also the NATS subject the message travels on,
// except backup.progress, which is published on backup.progress.<job_id>.
const (
	NameRequested = "backup.requested"
	// NameVerifyRequested asks the hub to verify completed backups (a
	// request like backup.requested, not an event).
	NameVerifyRequested = "backup.verify.requested"
	// NameForgetRequested asks the hub to apply a retention policy (a
	// request, not an event).
	NameForgetRequested = "backup.forget.requested"
	NameStarted         = "backup.started"
	NameProgress        = "backup.progress"
	NameChangeID        = "backup.changeid"
	NameCompleted       = "backup.completed"
	NameFailed          = "backup.failed"
	NameRejected        = "backup.rejected"

	// Events the hub publishes about a completed job (HubEvents): on
	// <name>.hub, never by an agent.
	NamePruning  = "backup.pruning"
	NamePruned   = "backup.pruned"
	NameVerified = "backup.verified"
)

// HubEvents are the events the hub publishes about a completed job, in
// the order of a job's life after it completed. The bus lets only the hub
// publish them (on <name>.hub) and the catalog applies them only to a
// completed job; see store's doc for how to add one.
func HubEvents() []string { return []string{NamePruning, NamePruned, NameVerified} }

// IsHubEvent reports whether name is one of HubEvents.
func IsHubEvent(name string) bool {
	return name == NamePruning || name == NamePruned || name == NameVerified
}

// Verification outcomes (Verified.Status, VerifiedDisk.Status).
const (
	VerifyOK         = "ok"
	VerifyFailed     = "failed"
	VerifyNoManifest = "no_manifest" // made before manifests: only the file was checked
)

// Prune operations on one disk's image when its point is removed
// (PruneDisk.Operation).
const (
	// PruneMerge: the removed point is its chain's first link (a full)
	// and its child backs onto it; the child is committed into it and
	// the merged file is renamed to the child's name.
	PruneMerge = "merge"
	// PruneRebase: the child is rebased onto the removed point's parent,
	// then the removed point's file is deleted.
	PruneRebase = "rebase"
	// PruneDelete: nothing backs onto the removed point; its file is
	// deleted.
	PruneDelete = "delete"
)

// Version is the schema version every message of this build carries.
const Version = 1

// Backup types. A request may ask for any of the three; events only ever
// carry the type that actually ran (full or incremental).
const (
	TypeAuto        = "auto"
	TypeFull        = "full"
	TypeIncremental = "incremental"
)

// Reasons a disk's backup type was chosen (backup.started, backup.completed).
const (
	ReasonBaseUsable       = "base_usable"        // incremental on the previous backup
	ReasonNoBase           = "no_base"            // no completed backup of this disk in this repository
	ReasonCBTReset         = "cbt_reset"          // change id UUID differs from the base's
	ReasonChangeIDRejected = "change_id_rejected" // VMware refused the base change id
	ReasonDiskResized      = "disk_resized"       // capacity differs from the base's
	ReasonRequestedFull    = "requested_full"     // the request asked for a full
	ReasonBaseMissing      = "base_missing"       // the base's image is missing or unreadable in the repository
	ReasonBaseInvalid      = "base_invalid"       // the base is not a completed backup, or its backing chain does not check
	ReasonBaseUnverified   = "base_unverified"    // the base has no manifest, another manifest than its completed event names, or failed verification
)

// Reasons a request was rejected (backup.rejected). Never retryable.
const (
	RejectInvalidJSON       = "invalid_json"
	RejectSchema            = "schema_violation"
	RejectUnknownVM         = "unknown_vm"
	RejectUnknownRepository = "unknown_repository"
	RejectInvalidVMID       = "invalid_vm_id"
	RejectImpossible        = "impossible"
	RejectJobIDReused       = "job_id_reused" // the job id names a job that already ended; published under a job id of its own
	// RejectCanceled: `sendense cancel` removed the request from the queue
	// before an agent started it (published by admin, on backup.rejected.admin).
	RejectCanceled = "canceled"
)

// Reasons a job failed (backup.failed).
const (
	FailVCenter         = "vcenter_unavailable"
	FailSnapshot        = "snapshot_failed"
	FailSourceNBD       = "source_unreachable"
	FailTargetNBD       = "target_unreachable"
	FailRepository      = "repository_error"
	FailCopy            = "copy_failed"
	FailChangeIDMissing = "change_id_missing"
	// FailCanceled: `sendense cancel` stopped the running job (admin);
	// never retried.
	FailCanceled       = "canceled"
	FailShutdown       = "agent_shutdown"
	FailNATS           = "nats_unavailable" // JetStream could not store (no quorum, disk full) or the lease could not be renewed
	FailLeaseLost      = "lease_lost"       // the VM's lease was deleted or taken by someone else mid-backup
	FailRepositoryFull = "repository_full"  // the repository's file system is full; retried after a longer delay
	FailInternal       = "internal"
)

// SchemaRef names the schema a message was written against.
type SchemaRef struct {
	Name    string `json:"name"`
	Version int    `json:"version"`
}

// Request is the body of backup.requested. Only VM is required.
type Request struct {
	Schema      *SchemaRef        `json:"schema,omitempty"`
	VM          string            `json:"vm"`                     // name, instance UUID or moref
	BackupType  string            `json:"backup_type,omitempty"`  // auto (default), full, incremental
	Repository  string            `json:"repository,omitempty"`   // default "default"
	JobID       string            `json:"job_id,omitempty"`       // filled by the hub; derived by the agent when absent
	RequestedBy string            `json:"requested_by,omitempty"` // free text: user, scheduler
	Labels      map[string]string `json:"labels,omitempty"`
}

// VerifyRequest is the payload of backup.verify.requested: exactly one of
// JobID, VM and All (the hub refuses anything else).
type VerifyRequest struct {
	Schema      *SchemaRef `json:"schema,omitempty"`
	JobID       string     `json:"job_id,omitempty"`
	VM          string     `json:"vm,omitempty"`
	All         bool       `json:"all,omitempty"`
	Repository  string     `json:"repository,omitempty"`
	RequestedBy string     `json:"requested_by,omitempty"`
}

// ForgetRequest is the payload of backup.forget.requested: exactly one of
// VM and All (the hub refuses anything else), and the policy.
type ForgetRequest struct {
	Schema      *SchemaRef `json:"schema,omitempty"`
	VM          string     `json:"vm,omitempty"`
	All         bool       `json:"all,omitempty"`
	Repository  string     `json:"repository,omitempty"`
	Policy      Retention  `json:"policy"`
	RequestedBy string     `json:"requested_by,omitempty"`
}

// Retention is a retention policy as it travels (package retention's
// Policy has the same JSON): counts of 0 are unset, -1 is unlimited.
type Retention struct {
	Last    int      `json:"keep_last,omitempty"`
	Hourly  int      `json:"keep_hourly,omitempty"`
	Daily   int      `json:"keep_daily,omitempty"`
	Weekly  int      `json:"keep_weekly,omitempty"`
	Monthly int      `json:"keep_monthly,omitempty"`
	Yearly  int      `json:"keep_yearly,omitempty"`
	Protect []string `json:"protect,omitempty"`
}

// VMRef identifies a VM. UUID is the instance UUID and is the identity;
// Name and Moref are for people and for vCenter calls.
type VMRef struct {
	Name  string `json:"name,omitempty"`
	UUID  string `json:"uuid,omitempty"`
	Moref string `json:"moref,omitempty"`
}

// DiskRef identifies a virtual disk by its VMware device key and disk UUID,
// never by its position in a list.
type DiskRef struct {
	Key           int32  `json:"key"`
	UUID          string `json:"uuid"`
	CapacityBytes int64  `json:"capacity_bytes"`
}

// Header is carried by every event. ID is the event's deterministic id and
// equals its Nats-Msg-Id (see bus.EventID).
type Header struct {
	Schema  SchemaRef `json:"schema"`
	ID      string    `json:"id"`
	Time    time.Time `json:"time"`
	JobID   string    `json:"job_id"`
	Attempt int       `json:"attempt"`
	VM      VMRef     `json:"vm"`
}

// EventHeader returns the header; it makes every event type an Event.
func (h *Header) EventHeader() *Header { return h }

// Event is any message of the backup.* family except the request.
type Event interface {
	EventHeader() *Header
}

// DiskPlan is one disk's decision in backup.started.
type DiskPlan struct {
	Disk         DiskRef `json:"disk"`
	BackupType   string  `json:"backup_type"`              // full or incremental
	Reason       string  `json:"reason"`                   // Reason* constant
	BaseChangeID string  `json:"base_change_id,omitempty"` // incremental only
	Backing      string  `json:"backing,omitempty"`        // job id of the base backup, incremental only
	Target       string  `json:"target"`                   // repository path of the new QCOW2
}

// Started is backup.started: the job took the lease, made the snapshot and
// opened its targets.
type Started struct {
	Header
	Repository    string `json:"repository"`
	RequestedType string `json:"requested_type"`
	RequestedBy   string `json:"requested_by,omitempty"`
	// RequestSeq is the stream sequence of the backup.requested message
	// this attempt runs: the identity of the request, so a second request
	// that reuses the job id is told apart from a redelivery.
	RequestSeq uint64 `json:"request_seq,omitempty"`
	// RequestedAt is when the request was stored in BACKUP_REQUESTS: the
	// job's created time, however long it waited for an agent or a lease.
	RequestedAt *time.Time `json:"requested_at,omitempty"`
	Snapshot    string     `json:"snapshot"` // sendense-<job_id>
	Disks       []DiskPlan `json:"disks"`
}

// DiskProgress is one disk's share of a Progress event.
type DiskProgress struct {
	Disk       DiskRef `json:"disk"`
	BytesDone  int64   `json:"bytes_done"`
	BytesTotal int64   `json:"bytes_total"`
	Done       bool    `json:"done"`
}

// Progress is backup.progress.<job_id>. Each message carries the whole job's
// state, because the stream keeps only the last message per job.
type Progress struct {
	Header
	Seq             int64          `json:"seq"`
	BytesDone       int64          `json:"bytes_done"`
	BytesTotal      int64          `json:"bytes_total"`
	RateBytesPerSec float64        `json:"rate_bytes_per_sec"`
	Disks           []DiskProgress `json:"disks"`
}

// ChangeID is backup.changeid: one disk was copied and flushed, and this is
// the change id its next incremental must start from.
type ChangeID struct {
	Header
	Repository   string  `json:"repository"`
	Disk         DiskRef `json:"disk"`
	ChangeID     string  `json:"change_id"`
	BackupType   string  `json:"backup_type"`
	BytesRead    int64   `json:"bytes_read"`
	BytesWritten int64   `json:"bytes_written"`
	Target       string  `json:"target"`
}

// DiskResult is one disk's outcome in backup.completed.
type DiskResult struct {
	Disk            DiskRef `json:"disk"`
	ChangeID        string  `json:"change_id"` // required, never empty
	BackupType      string  `json:"backup_type"`
	Reason          string  `json:"reason"`
	BaseChangeID    string  `json:"base_change_id,omitempty"`
	BytesRead       int64   `json:"bytes_read"`
	BytesWritten    int64   `json:"bytes_written"`
	Target          string  `json:"target"`            // repository path of the QCOW2
	Backing         string  `json:"backing"`           // job id of the previous backup; empty for a full
	ActualSizeBytes int64   `json:"actual_size_bytes"` // qemu-img actual size after close
	// ManifestSHA256 is the SHA-256 (hex) of the disk's manifest file. This
	// build's agents always set it; events stored before manifests existed
	// have none, so the schema keeps it optional.
	ManifestSHA256 string `json:"manifest_sha256,omitempty"`
}

// Completed is backup.completed: every disk has a change id and its target
// was flushed and closed.
type Completed struct {
	Header
	Repository string       `json:"repository"`
	Disks      []DiskResult `json:"disks"`
}

// Failed is backup.failed.
type Failed struct {
	Header
	Repository string   `json:"repository,omitempty"`
	Reason     string   `json:"reason"`
	Message    string   `json:"message"`
	Retryable  bool     `json:"retryable"`
	Disk       *DiskRef `json:"disk,omitempty"`
}

// Rejected is backup.rejected: the request was not acceptable. VM carries
// whatever the request named (possibly nothing).
type Rejected struct {
	Header
	Reason    string `json:"reason"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"` // always false
	Request   string `json:"request"`   // the raw request, cut to 4 KiB
}

// PruneDisk is one disk's image operation when a point is removed.
type PruneDisk struct {
	Disk      DiskRef `json:"disk"`
	Operation string  `json:"operation"`        // PruneMerge, PruneRebase or PruneDelete
	Target    string  `json:"target"`           // repository path of the removed point's QCOW2
	Child     string  `json:"child,omitempty"`  // job id of the point backing onto it (merge, rebase)
	Parent    string  `json:"parent,omitempty"` // job id of its own base (rebase)
}

// Pruning is backup.pruning: the hub's intent to remove a point (a
// completed job), published before it touches any file. The header's
// attempt is the job's completed attempt.
type Pruning struct {
	Header
	Repository string      `json:"repository"`
	Disks      []PruneDisk `json:"disks"`
}

// Pruned is backup.pruned: the hub removed the point (every disk's
// operation done, its files gone).
type Pruned struct {
	Header
	Repository string      `json:"repository"`
	Disks      []PruneDisk `json:"disks"`
}

// VerifiedDisk is one disk's verification in backup.verified.
type VerifiedDisk struct {
	Disk        DiskRef `json:"disk"`
	Target      string  `json:"target"`
	Status      string  `json:"status"`            // Verify* constant
	Problem     string  `json:"problem,omitempty"` // why it failed
	Detail      string  `json:"detail,omitempty"`
	ChunkIndex  int64   `json:"chunk_index,omitempty"`  // first chunk that differs (data_mismatch)
	ChunkOffset int64   `json:"chunk_offset,omitempty"` // its disk offset
	BytesRead   int64   `json:"bytes_read"`
}

// Verified is backup.verified: the hub verified a completed job's point.
// Seq numbers the job's verifications (its start in Unix milliseconds) and
// is the last part of the event id, so each run is an event of its own.
type Verified struct {
	Header
	Repository string         `json:"repository"`
	Seq        int64          `json:"seq"`
	Status     string         `json:"status"` // Verify* constant
	Disks      []VerifiedDisk `json:"disks"`
}

// compile-time checks
var (
	_ Event = (*Started)(nil)
	_ Event = (*Progress)(nil)
	_ Event = (*ChangeID)(nil)
	_ Event = (*Completed)(nil)
	_ Event = (*Failed)(nil)
	_ Event = (*Rejected)(nil)
	_ Event = (*Pruning)(nil)
	_ Event = (*Pruned)(nil)
	_ Event = (*Verified)(nil)
)

// Marshal encodes an event or request as JSON.
func Marshal(v any) ([]byte, error) { return json.Marshal(v) }
