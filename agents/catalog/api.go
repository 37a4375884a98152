package catalog

// The catalog service's subjects and wire types. Requests and replies are
// JSON; replies are the catalog records of package backup (backup.Job, backup.Link, ...). Errors
// come back as NATS micro errors: headers Nats-Service-Error-Code (400,
// 404, 413, 500) and Nats-Service-Error (the text), empty body.
//
//	subject                       request        reply
//	sendense.catalog.job.get      JobRequest     backup.Job
//	sendense.catalog.jobs.list    JobsRequest    []backup.Job, newest first
//	sendense.catalog.vms.list     {}             []backup.VM, by name
//	sendense.catalog.chain.get    ChainRequest   []backup.Link, oldest first
//	sendense.catalog.chain.head   ChainRequest   backup.Link (404 when none)
//	sendense.catalog.chains.list  ChainsRequest  []backup.Chain
//	sendense.catalog.poison.list  PoisonRequest  []backup.PoisonRecord, newest last
//	sendense.catalog.stats        {}             backup.Stats

// Service identity.
const (
	// ServiceName is the micro service name (`nats micro ls`).
	ServiceName = "sendense-catalog"
	// ServiceVersion is the version of the service's wire contract.
	ServiceVersion = "1.0.0"
	// SubjectPrefix is the group every endpoint lives in.
	SubjectPrefix = "sendense.catalog"
)

// Endpoint subjects.
const (
	SubjectJobGet     = SubjectPrefix + ".job.get"
	SubjectJobsList   = SubjectPrefix + ".jobs.list"
	SubjectVMsList    = SubjectPrefix + ".vms.list"
	SubjectChainGet   = SubjectPrefix + ".chain.get"
	SubjectChainHead  = SubjectPrefix + ".chain.head"
	SubjectChainsList = SubjectPrefix + ".chains.list"
	SubjectPoisonList = SubjectPrefix + ".poison.list"
	SubjectStats      = SubjectPrefix + ".stats"
)

// JobRequest asks for one job by id (required).
type JobRequest struct {
	ID string `json:"id"`
}

// JobsRequest selects jobs; see backup.JobFilter. Status must be one of
// the backup.Status* values or empty. Limit <= 0 means all jobs; a reply
// larger than the server's max payload is a 413 error.
type JobsRequest struct {
	VM       string `json:"vm,omitempty"`
	Status   string `json:"status,omitempty"`
	IDPrefix string `json:"id_prefix,omitempty"`
	Offset   int    `json:"offset,omitempty"`
	Limit    int    `json:"limit,omitempty"`
}

// ChainRequest names one disk's chain. VMUUID is required; Repository
// defaults to schemas.DefaultRepository.
type ChainRequest struct {
	VMUUID     string `json:"vm_uuid"`
	DiskKey    int32  `json:"disk_key"`
	Repository string `json:"repository,omitempty"`
}

// ChainsRequest asks for every disk's chain of a VM (VMUUID required), in
// one repository or, when Repository is empty, in all.
type ChainsRequest struct {
	VMUUID     string `json:"vm_uuid"`
	Repository string `json:"repository,omitempty"`
}

// PoisonRequest asks for the newest Limit poison records (default
// DefaultPoisonLimit); each record's Raw is cut to MaxPoisonRawReply
// bytes (Truncated set).
type PoisonRequest struct {
	Limit int `json:"limit,omitempty"`
}

// Poison listing bounds.
const (
	DefaultPoisonLimit = 100
	MaxPoisonRawReply  = 4 << 10
)
