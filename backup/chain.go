package backup

import "time"

// Link is one completed backup of one disk: a link in the chain of
// (VM UUID, disk key, repository). Only completed jobs have links; a failed
// or partial backup is never in a chain.
type Link struct {
	JobID           string    `json:"job_id"`
	VMUUID          string    `json:"vm_uuid"`
	Repository      string    `json:"repository"`
	DiskKey         int32     `json:"disk_key"`
	DiskUUID        string    `json:"disk_uuid"`
	CapacityBytes   int64     `json:"capacity_bytes"`
	ChangeID        string    `json:"change_id"`
	BackupType      string    `json:"backup_type"`
	Target          string    `json:"target"`
	Backing         string    `json:"backing,omitempty"` // job id of the base; empty for a full
	ActualSizeBytes int64     `json:"actual_size_bytes"`
	Time            time.Time `json:"time"` // time of the backup.completed event
	// ManifestSHA256 is the SHA-256 of the disk's manifest; empty for a
	// backup made before manifests existed, which is never a base.
	ManifestSHA256 string `json:"manifest_sha256,omitempty"`
	// Verified is the disk's status in the job's latest verification
	// (schemas.Verify*; empty when never verified). A link whose latest
	// verification failed is never a base.
	Verified string `json:"verified,omitempty"`
}

// Chain is the ordered links of one disk in one repository.
type Chain struct {
	VMUUID     string `json:"vm_uuid"`
	Repository string `json:"repository"`
	DiskKey    int32  `json:"disk_key"`
	Links      []Link `json:"links"` // oldest first
}
