package hub

import "github.com/sendense/sendense/bus"

// Subjects of the repository service (NATS micro, request/reply). The
// groups are bus's (bus.RepoService, bus.RepoTargets, bus.RepoInfo), which
// also says who may call them.
const (
	ServiceName         = "sendense-repo"
	ServiceGroup        = bus.RepoService
	SubjectInfo         = bus.RepoInfo
	SubjectTargetOpen   = bus.RepoTargets + ".open"
	SubjectTargetClose  = bus.RepoTargets + ".close"
	SubjectTargetAbort  = bus.RepoTargets + ".abort"
	SubjectRestoreOpen  = ServiceGroup + ".restore.open"
	SubjectRestoreClose = ServiceGroup + ".restore.close"
)

// Error codes carried in the Nats-Service-Error-Code header. Callers match
// on these, never on message text.
const (
	CodeBadRequest        = "400"
	CodeUnknownRepository = "404"
	CodeNotFound          = "410"
	CodeConflict          = "409"
	CodeInternal          = "500"
	// CodeBaseMissing: an incremental's backing file (its base) is missing
	// or unreadable. CodeBaseInvalid: the base's backing chain does not
	// check. The agent takes a full instead (reasons base_missing and
	// base_invalid).
	CodeBaseMissing = "424"
	CodeBaseInvalid = "422"
	// CodeRepositoryFull: the repository's file system has no space left.
	CodeRepositoryFull = "507"
	// CodeUnavailable: the hub cannot decide safely now (for example the
	// catalog is behind the event stream); try again later.
	CodeUnavailable = "503"
)

// InfoRequest asks whether a repository exists.
type InfoRequest struct {
	Repository string `json:"repository"`
}

// InfoReply describes a repository.
type InfoReply struct {
	Repository string `json:"repository"`
	Root       string `json:"root"`
}

// TargetRef names one disk's target of one job.
type TargetRef struct {
	Repository string `json:"repository"`
	JobID      string `json:"job_id"`
	VMUUID     string `json:"vm_uuid"`
	DiskKey    int32  `json:"disk_key"`
}

// OpenRequest asks for a new target. BackingJobID is empty for a full.
//
// Besides CodeBadRequest and CodeUnknownRepository, an open answers
// CodeBaseMissing when the base's file is missing or unreadable,
// CodeBaseInvalid when the base's backing chain does not open as qcow2 or
// qemu-img check finds it corrupt, CodeRepositoryFull when the file system
// is full, CodeConflict when the catalog shows the job completed (its file
// stays as it is), and CodeUnavailable when a file of the job exists that
// this service did not open and the catalog cannot vouch that it is no
// completed backup (behind the event stream, or not answering), or another
// open of the same target is running.
type OpenRequest struct {
	TargetRef
	Attempt       int    `json:"attempt"`
	CapacityBytes int64  `json:"capacity_bytes"`
	BackingJobID  string `json:"backing_job_id,omitempty"`
	Agent         string `json:"agent"`
}

// OpenReply says where to write.
type OpenReply struct {
	URI    string `json:"uri"`    // NBD URI of the writable export
	Target string `json:"target"` // repository-relative path, <vm>/<disk>/<job>.qcow2
	Path   string `json:"path"`   // absolute path on the hub
}

// CloseReply reports the closed target.
type CloseReply struct {
	Target          string `json:"target"`
	ActualSizeBytes int64  `json:"actual_size_bytes"`
	VirtualSize     int64  `json:"virtual_size"`
	BackingFile     string `json:"backing_file,omitempty"`
}

// RestoreOpenReply is a read-only export of one chain point.
type RestoreOpenReply struct {
	ExportID    string `json:"export_id"`
	URI         string `json:"uri"`
	Path        string `json:"path"`
	VirtualSize int64  `json:"virtual_size"`
}

// RestoreCloseRequest releases a restore export.
type RestoreCloseRequest struct {
	ExportID string `json:"export_id"`
}
