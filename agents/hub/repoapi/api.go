package repoapi

import (
	"cmp"
	"strings"
	"time"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/retention"
	"github.com/sendense/sendense/schemas"
)

// Subjects of the repository service (NATS micro, request/reply). The
// groups are bus's (bus.RepoService, bus.RepoTargets, bus.RepoInfo), which
// also says who may call them.
const (
	ServiceName        = "sendense-repo"
	ServiceGroup       = bus.RepoService
	SubjectInfo        = bus.RepoInfo
	SubjectTargetOpen  = bus.RepoTargets + ".open"
	SubjectTargetClose = bus.RepoTargets + ".close"
	SubjectTargetAbort = bus.RepoTargets + ".abort"
	// SubjectTargetDigests takes the manifest digests of chunks an agent
	// read for its open target (DigestsRequest), at most MaxDigests per
	// request; the close writes the manifest.
	SubjectTargetDigests = bus.RepoTargets + ".digests"
	SubjectRestoreOpen   = ServiceGroup + ".restore.open"
	SubjectRestoreClose  = ServiceGroup + ".restore.close"
	// SubjectCheck checks repositories against the catalog (CheckRequest,
	// CheckReply): every completed job's disk must have its file, backed
	// by the file of the job the catalog names as its base; files that are
	// no completed backup are listed as orphans and removed unless
	// DryRun. Only admin may call it (bus.PermissionsOf grants
	// sendense.repo.check to no other role). It answers CodeUnknownRepository
	// for a repository the hub does not serve and CodeUnavailable when the
	// catalog does not answer; a catalog behind the event stream does not
	// fail the check, it only skips the orphan search (OrphansSkipped).
	SubjectCheck = ServiceGroup + ".check"
	// SubjectForget applies a retention policy (ForgetRequest,
	// ForgetReply): it lists each completed point of a VM (or of every
	// VM) as kept or removed and why, and unless DryRun removes the
	// others without changing what any kept point restores (see
	// RepoService.Forget). Only admin may call it, like check.
	SubjectForget = ServiceGroup + ".forget"
	// SubjectVerify verifies completed backups (VerifyRequest,
	// VerifyReply): qemu-img check of each disk's file, its manifest
	// against the catalog's manifest_sha256, and the point read through
	// its chain against the manifest, chunk by chunk. Admin only (no other
	// role may publish on sendense.repo.verify).
	SubjectVerify = ServiceGroup + ".verify"
	// SubjectManifest reads a page of a completed backup's manifest
	// (ManifestRequest, ManifestReply), for restore --verify. Admin only.
	SubjectManifest = ServiceGroup + ".manifest"
)

// VerifyTimeout bounds one verify request: every selected point is read
// whole through its chain.
const VerifyTimeout = 30 * time.Minute

// MaxDigests is the most digests one DigestsRequest or ManifestReply
// carries: 4096 digests are about 350 KB of JSON, under NATS's 1 MB
// default max payload.
const MaxDigests = 4096

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
	// CodeBaseUnverified: the base has no manifest, or its manifest is
	// not the one the agent expects (base_manifest_sha256). The agent
	// takes a full instead (reason base_unverified).
	CodeBaseUnverified = "428"
	// CodeRepositoryFull: the repository's file system has no space left.
	CodeRepositoryFull = "507"
	// CodeUnavailable: the hub cannot decide safely now (for example the
	// catalog is behind the event stream); try again later.
	CodeUnavailable = "503"
	// CodeBusy: the VM's chains cannot change now: a backup holds its
	// lease, a restore of it is open, or a prune of it runs; try again
	// later.
	CodeBusy = "423"
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

// Compare orders refs by repository, VM, disk and job: the order of the
// repository's files.
func (r TargetRef) Compare(o TargetRef) int {
	return cmp.Or(strings.Compare(r.Repository, o.Repository), strings.Compare(r.VMUUID, o.VMUUID),
		cmp.Compare(r.DiskKey, o.DiskKey), strings.Compare(r.JobID, o.JobID))
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
	// BaseManifestSHA256 is the catalog's manifest_sha256 of the base
	// (incremental only): the base's manifest file must have this SHA-256,
	// else CodeBaseUnverified.
	BaseManifestSHA256 string `json:"base_manifest_sha256,omitempty"`
	Agent              string `json:"agent"`
}

// DigestsRequest hands the digests of chunks an agent read (and wrote) to
// its open target. Entries' indexes must lie within the disk; a digest
// sent twice for a chunk replaces the first. At most MaxDigests entries.
type DigestsRequest struct {
	TargetRef
	Entries []manifest.Entry `json:"entries"`
}

// OpenReply says where to write.
type OpenReply struct {
	URI    string `json:"uri"`    // NBD URI of the writable export
	Target string `json:"target"` // repository-relative path, <vm>/<disk>/<job>.qcow2
	Path   string `json:"path"`   // absolute path on the hub
	// TLS is the pre-shared key of an export over TCP (URI nbds://): fresh
	// for this export, valid while it lives, sent only in this reply to
	// the requester's private inbox. Nil for a unix socket (nbd+unix://).
	// Never log or publish it (it formats redacted).
	TLS *repository.PSK `json:"tls_psk,omitempty"`
}

// CloseReply reports the closed target.
//
// ManifestSHA256 is the SHA-256 of the manifest the close wrote: the base's
// manifest (for an incremental) or zero chunks (for a full) with the
// chunks the agent sent replaced.
type CloseReply struct {
	Target          string `json:"target"`
	ActualSizeBytes int64  `json:"actual_size_bytes"`
	VirtualSize     int64  `json:"virtual_size"`
	BackingFile     string `json:"backing_file,omitempty"`
	ManifestSHA256  string `json:"manifest_sha256"`
}

// RestoreOpenReply is a read-only export of one chain point.
type RestoreOpenReply struct {
	ExportID    string `json:"export_id"`
	URI         string `json:"uri"`
	Path        string `json:"path"`
	VirtualSize int64  `json:"virtual_size"`
	// TLS is the export's pre-shared key over TCP, as OpenReply.TLS.
	TLS *repository.PSK `json:"tls_psk,omitempty"`
}

// RestoreCloseRequest releases a restore export.
type RestoreCloseRequest struct {
	ExportID string `json:"export_id"`
}

// CheckRequest asks for a check of one repository, or of every repository
// the hub serves when Repository is empty. DryRun lists orphans without
// removing them.
type CheckRequest struct {
	Repository string `json:"repository,omitempty"`
	DryRun     bool   `json:"dry_run,omitempty"`
}

// ForgetRequest applies a retention policy to the completed points of one
// VM (VM: its name or instance UUID) or of every VM (All) in Repository
// (default "default"). DryRun only plans.
type ForgetRequest struct {
	VM         string           `json:"vm,omitempty"`
	All        bool             `json:"all,omitempty"`
	Repository string           `json:"repository,omitempty"`
	Policy     retention.Policy `json:"policy"`
	DryRun     bool             `json:"dry_run,omitempty"`
}

// ForgetReply is the plan, and what was removed.
type ForgetReply struct {
	Repository string     `json:"repository"`
	DryRun     bool       `json:"dry_run"`
	VMs        []ForgetVM `json:"vms"`
}

// ForgetVM is one VM's points, newest first.
type ForgetVM struct {
	VM      schemas.VMRef `json:"vm"`
	Points  []ForgetPoint `json:"points"`
	Removed int           `json:"removed"`
	// Error says why this VM's points were not (all) removed, with All;
	// Code is that error's code (CodeBusy: try again later).
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
}

// ForgetPoint is one completed point (a job, all its disks): kept or not,
// why, and whether it is removed now (the catalog shows it pruned).
type ForgetPoint struct {
	JobID   string    `json:"job_id"`
	Time    time.Time `json:"time"`
	Keep    bool      `json:"keep"`
	Reasons []string  `json:"reasons"`
	Removed bool      `json:"removed,omitempty"`
}

// Problems a check reports for a completed job's disk.
const (
	// ProblemMissing: the backup file does not exist.
	ProblemMissing = "missing"
	// ProblemBacking: the file's backing file name (in its qcow2 header)
	// is not the file of the job the catalog names as its base, or the
	// file has a backing file where the catalog says it is a full, or
	// none where the catalog says it is an incremental.
	ProblemBacking = "backing_mismatch"
	// ProblemUnreadable: the file, or a file next to it, cannot be read as
	// qcow2 (its header is damaged or unreadable).
	ProblemUnreadable = "unreadable"
	// ProblemPrunePending: a prune of the point is recorded and not done
	// (the hub stopped mid-way); the hub finishes it at start, or the next
	// forget does. Its chain is not checked until then.
	ProblemPrunePending = "prune_pending"
)

// CheckReply is the report of a check.
type CheckReply struct {
	// Repositories are the names checked, sorted.
	Repositories []string `json:"repositories"`
	DryRun       bool     `json:"dry_run"`
	// Disks is how many disks of completed jobs were checked.
	Disks int `json:"disks"`
	// Problems are the completed disks whose file is missing or wrong.
	Problems []CheckProblem `json:"problems"`
	// Orphans are the files reconciliation removes: neither a completed
	// backup, nor an open target, nor the target of a job holding its VM's
	// lease, and older than the grace. Removed tells which went.
	Orphans []Orphan `json:"orphans"`
	// OrphansSkipped says why orphans were not looked for (the catalog is
	// behind the event stream, or the hub has no catalog, leases or
	// progress configured); empty when they were.
	OrphansSkipped string `json:"orphans_skipped,omitempty"`
}

// CheckProblem is one completed disk whose backup file is not as the
// catalog says.
type CheckProblem struct {
	TargetRef
	Path    string `json:"path"`
	Problem string `json:"problem"` // Problem* constant
	Detail  string `json:"detail"`
}

// Orphan is a file that is no backup: a partial file of a failed attempt,
// or a temporary file of a create that crashed (Temp).
type Orphan struct {
	Repository string    `json:"repository"`
	JobID      string    `json:"job_id"`
	VMUUID     string    `json:"vm_uuid"`
	DiskKey    int32     `json:"disk_key"`
	Path       string    `json:"path"`
	Bytes      int64     `json:"bytes"` // allocated on disk
	ModTime    time.Time `json:"mod_time"`
	Temp       bool      `json:"temp,omitempty"`
	Removed    bool      `json:"removed"`
	// Kept says why an orphan was not removed although asked to: another
	// file uses it as its backing file, it is in use, it changed since it
	// was found, or the removal failed.
	Kept string `json:"kept,omitempty"`
}

// VerifyRequest selects the completed backups to verify: one job, every
// job of a VM (name, instance UUID or moref), or All; in Repository when
// set, else in every repository the hub serves.
type VerifyRequest struct {
	JobID      string `json:"job_id,omitempty"`
	VM         string `json:"vm,omitempty"`
	All        bool   `json:"all,omitempty"`
	Repository string `json:"repository,omitempty"`
}

// Verification outcomes.
const (
	VerifyOK     = schemas.VerifyOK
	VerifyFailed = schemas.VerifyFailed
	// VerifyNoManifest: a backup made before manifests existed; its file
	// checks but there is nothing to compare its data with. Not a failure,
	// but never a base (reason base_unverified).
	VerifyNoManifest = schemas.VerifyNoManifest
)

// Problems of a failed verification.
const (
	// VerifyProblemMissing: the backup file is missing.
	VerifyProblemMissing = "missing"
	// VerifyProblemCheck: qemu-img check found corruption or could not
	// read the file.
	VerifyProblemCheck = "check_failed"
	// VerifyProblemManifest: the manifest is missing, unreadable, or not
	// the one backup.completed named (manifest_sha256).
	VerifyProblemManifest = "manifest_mismatch"
	// VerifyProblemData: a chunk read through the chain differs from the
	// manifest; ChunkIndex and ChunkOffset name the first one.
	VerifyProblemData = "data_mismatch"
	// VerifyProblemRead: the point could not be read through its chain.
	VerifyProblemRead = "read_failed"
)

// VerifyResult is one disk of one completed backup.
type VerifyResult struct {
	TargetRef
	Target string `json:"target"`
	Status string `json:"status"` // Verify* constant
	// Problem and Detail say why a verification failed.
	Problem string `json:"problem,omitempty"`
	Detail  string `json:"detail,omitempty"`
	// ChunkIndex and ChunkOffset name the first chunk that differs
	// (VerifyProblemData); ChunkSize is the manifest's chunk size.
	ChunkIndex  int64 `json:"chunk_index,omitempty"`
	ChunkOffset int64 `json:"chunk_offset,omitempty"`
	ChunkSize   int64 `json:"chunk_size,omitempty"`
	// BytesRead through the chain, and how long the disk took.
	BytesRead  int64         `json:"bytes_read"`
	Duration   time.Duration `json:"duration_ns"`
	VerifiedAt time.Time     `json:"verified_at"`
}

// VerifyReply lists every disk verified, by job then disk. Events are the
// ids of the backup.verified events the hub published (one per job);
// PublishErrors say which could not be published (the catalog then does
// not know that verification).
type VerifyReply struct {
	Results       []VerifyResult `json:"results"`
	Events        []string       `json:"events,omitempty"`
	PublishErrors []string       `json:"publish_errors,omitempty"`
}

// Failed reports whether any result failed.
func (r VerifyReply) Failed() bool {
	for _, x := range r.Results {
		if x.Status == VerifyFailed {
			return true
		}
	}
	return false
}

// ManifestRequest asks for a page of a completed backup's manifest: up to
// Limit (at most MaxDigests; 0 means MaxDigests) digests from chunk Offset.
type ManifestRequest struct {
	TargetRef
	Offset int64 `json:"offset"`
	Limit  int   `json:"limit,omitempty"`
}

// ManifestReply is a page of a manifest; SHA256 is the whole file's.
type ManifestReply struct {
	ChunkSize int64             `json:"chunk_size"`
	Capacity  int64             `json:"capacity"`
	Chunks    int64             `json:"chunks"`
	SHA256    string            `json:"sha256"`
	Offset    int64             `json:"offset"`
	Digests   []manifest.Digest `json:"digests"`
}
