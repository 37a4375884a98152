package backup

import "time"

// VM is what the catalog knows of one VM, derived from its jobs: what
// `sendense vms` lists.
type VM struct {
	Name  string `json:"name"`
	UUID  string `json:"uuid,omitempty"`
	Moref string `json:"moref,omitempty"`
	// LastJobID, LastStatus and LastAt are the VM's newest job (by
	// CreatedAt), whatever its status.
	LastJobID  string    `json:"last_job_id"`
	LastStatus string    `json:"last_status"`
	LastAt     time.Time `json:"last_at"`
	// LastCompletedAt is when the VM's newest completed backup finished;
	// zero when none completed.
	LastCompletedAt time.Time `json:"last_completed_at,omitzero"`
	// Points is the number of completed backups: the points a disk of the
	// VM can be restored to. Jobs counts every job.
	Points int `json:"points"`
	Jobs   int `json:"jobs"`
}

// Stats are counts over the catalog.
type Stats struct {
	SchemaVersion int            `json:"schema_version"`
	Jobs          int            `json:"jobs"`
	ByStatus      map[string]int `json:"by_status"`
	Links         int            `json:"links"`
	Applied       int            `json:"applied"`
	Poison        int            `json:"poison"`
	FileBytes     int64          `json:"file_bytes"`
}

// MaxPoisonRaw is the most bytes of a payload a poison record keeps; the
// rest is cut and Truncated is set.
const MaxPoisonRaw = 1 << 20

// PoisonRecord is an event the catalog did not apply and keeps for
// inspection: one that failed schema validation upstream (RecordPoison), or
// one store.Catalog.Apply refused (store.ErrIncomplete, ErrInconsistent, ErrInvalid). The
// records of a job's events follow the job's event set: one that a later
// event makes consistent (a completed that arrived before its started) is
// applied and its record removed.
type PoisonRecord struct {
	// Subject is the NATS subject, or the event name for records made by
	// Apply.
	Subject string `json:"subject"`
	// Seq is the stream sequence, when RecordPoison's caller knows it.
	// Records made by Apply leave it 0: they are kept by the event's
	// identity, and its sequence is in job_events.
	Seq     uint64 `json:"seq,omitempty"`
	EventID string `json:"event_id,omitempty"`
	JobID   string `json:"job_id,omitempty"`
	// Agent published the event (WithSource); empty for a legacy event.
	Agent  string `json:"agent,omitempty"`
	Reason string `json:"reason"`
	// Raw is the payload as received (RecordPoison), or the event's JSON
	// as Apply stored it: the payload given to WithSource, else the event
	// re-encoded. It is base64 in JSON output.
	Raw       []byte `json:"raw"`
	Truncated bool   `json:"truncated,omitempty"`
	// Time is when the record was first written (Options.Now). Dump
	// leaves it out: a replay writes the same records at another time.
	Time time.Time `json:"time,omitzero"`
}
