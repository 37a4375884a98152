package bus

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/sendense/sendense/schemas"
)

// Subjects. A request travels on backup.requested. Every other event
// travels on its schema name followed by the name of the agent that
// published it, backup.<type>.<agent> (AgentSubject): the server lets each
// agent publish on its own token only, so the subject proves the sender
// and the catalog can check that one job's events come from one agent.
// Progress travels per job on backup.progress.<job_id> (ProgressSubject).
const (
	SubjectRequested = schemas.NameRequested // backup.requested

	// SubjectProgressAll matches the progress of every job.
	SubjectProgressAll = schemas.NameProgress + ".*" // backup.progress.*

	// SubjectAll matches everything the pipeline publishes: what
	// `nats sub 'backup.>'` shows.
	SubjectAll = "backup.>"
)

// eventNames are the events an agent publishes on backup.<type>.<agent>,
// in lifecycle order.
var eventNames = []string{
	schemas.NameStarted, schemas.NameChangeID, schemas.NameCompleted, schemas.NameFailed, schemas.NameRejected,
}

// HubAgent is the subject token of the events the hub publishes about a
// completed job (schemas.HubEvents): backup.<type>.hub (HubSubject). Only
// the hub role may publish there (PermissionsOf), so the catalog knows an
// event from "hub" as the hub's (store.HubAgent is the same name).
const HubAgent = "hub"

// hubEventNames are the events the hub publishes on backup.<type>.hub.
var hubEventNames = schemas.HubEvents()

// EventSubjects are the subjects kept in StreamEvents, in lifecycle order:
// backup.started.*, backup.changeid.*, ..., then the hub's events
// backup.pruning.hub, backup.pruned.hub, ...
var EventSubjects = func() []string {
	out := make([]string, 0, len(eventNames)+len(hubEventNames))
	for _, n := range eventNames {
		out = append(out, n+".*")
	}
	for _, n := range hubEventNames {
		out = append(out, HubSubject(n))
	}
	return out
}()

// HubSubject returns backup.<type>.hub, where the hub publishes the event
// named name (one of schemas.HubEvents).
func HubSubject(name string) string { return name + "." + HubAgent }

// AgentSubject returns backup.<type>.<agent>, where agent publishes the
// event named name (a schema name such as schemas.NameCompleted).
func AgentSubject(name, agent string) string { return name + "." + agent }

// ProgressSubject returns backup.progress.<job_id>. jobID must satisfy
// ValidJobID; otherwise the subject does not match StreamProgress and
// Publish fails.
func ProgressSubject(jobID string) string { return schemas.NameProgress + "." + jobID }

// ParseEventSubject returns the schema name of an event's subject and the
// agent that published it: backup.<type>.<agent> gives (backup.<type>,
// agent); backup.progress.<job_id> gives (backup.progress, ""); the bare
// backup.<type> of events stored before agents had identities gives
// (backup.<type>, "") too; a hub event's backup.<type>.hub gives
// (backup.<type>, HubAgent). Any other subject is ErrInvalidSubject.
func ParseEventSubject(subject string) (name, agent string, err error) {
	if job, ok := strings.CutPrefix(subject, schemas.NameProgress+"."); ok && ValidJobID(job) == nil {
		return schemas.NameProgress, "", nil
	}
	for _, n := range hubEventNames {
		if subject == HubSubject(n) {
			return n, HubAgent, nil
		}
	}
	for _, n := range eventNames {
		rest, ok := strings.CutPrefix(subject, n)
		switch {
		case !ok:
			continue
		case rest == "":
			return n, "", nil
		case rest[0] == '.' && ValidAgentID(rest[1:]) == nil:
			return n, rest[1:], nil
		}
	}
	return "", "", fmt.Errorf("subject %q is not an event subject: %w", subject, ErrInvalidSubject)
}

// Service subject groups (NATS micro services, request/reply). Who may call
// which is part of PermissionsOf.
const (
	// CatalogService answers read-only queries of the catalog.
	CatalogService = "sendense.catalog"
	// RepoService is the hub's repository service.
	RepoService = "sendense.repo"
	// RepoInfo and RepoTargets are the endpoints agents use: is a
	// repository there, and open, close or abort a backup target.
	RepoInfo    = RepoService + ".info"
	RepoTargets = RepoService + ".target"
	// TestbedService controls the simulated vCenter (tests, demo).
	TestbedService = "sendense.testbed"
	// AgentCancel is where admin asks the agents to cancel a job
	// (`sendense cancel`): every agent listens, the one running the job
	// answers, the others stay silent. Only admin may publish here, and
	// agents answer on admin's inbox only (PermissionsOf).
	AgentCancel = "sendense.agent.cancel"
)

// Header names set by Publish. The ce-* headers follow the CloudEvents NATS
// protocol binding (binary content mode), so generic tooling can read them.
const (
	HeaderMsgID       = "Nats-Msg-Id"
	HeaderSpecVersion = "ce-specversion"
	HeaderID          = "ce-id"
	HeaderType        = "ce-type"
	HeaderSource      = "ce-source"
	HeaderTime        = "ce-time"
	HeaderDataSchema  = "ce-dataschema"
	HeaderContentType = "content-type"

	// CETypePrefix makes a message name a CloudEvents type in reverse-DNS
	// form, as the spec recommends: io.sendense.backup.completed (CEType).
	CETypePrefix = "io.sendense."

	// CloudEventsSpecVersion is the value of HeaderSpecVersion.
	CloudEventsSpecVersion = "1.0"
	// ContentTypeJSON is the value of HeaderContentType.
	ContentTypeJSON = "application/json"
)

// CEType is the ce-type of the message called name (a schemas.Name*):
// CETypePrefix + name, e.g. io.sendense.backup.completed.
func CEType(name string) string { return CETypePrefix + name }

// EventID returns the deterministic id of an event, used both as the
// event's "id" field and as its Nats-Msg-Id:
//
//	<job_id>.<attempt>.<type>.<disk_key>.<seq>
//
// for example "0190c2f3-….1.changeid.2000.0". typ is the event's short type
// ("started", "progress", "changeid", "completed", "failed", "rejected"); a
// "backup." prefix is removed, so schema names work too. diskKey is the
// VMware device key for disk events and 0 otherwise; seq numbers repeated
// events of one kind (progress) and is 0 otherwise. The same identity always
// gives the same id, so a re-publish after a timeout is dropped by the
// stream's duplicate window and a redelivered event is recognised by the
// catalog. Job ids never contain '.', so the id splits unambiguously.
func EventID(jobID string, attempt int, typ string, diskKey int32, seq int64) string {
	typ = strings.TrimPrefix(typ, "backup.")
	var b strings.Builder
	b.Grow(len(jobID) + len(typ) + 32)
	b.WriteString(jobID)
	b.WriteByte('.')
	b.WriteString(strconv.Itoa(attempt))
	b.WriteByte('.')
	b.WriteString(typ)
	b.WriteByte('.')
	b.WriteString(strconv.FormatInt(int64(diskKey), 10))
	b.WriteByte('.')
	b.WriteString(strconv.FormatInt(seq, 10))
	return b.String()
}

// MaxJobIDLen is the longest job id ValidJobID accepts.
const MaxJobIDLen = schemas.MaxJobIDLen

// ValidJobID reports whether id can be a job id: schemas.ValidJobID, the
// one definition (1 to MaxJobIDLen characters of [A-Za-z0-9_-], not
// starting with '-'). A job id becomes a subject token
// (backup.progress.<job_id>), part of event ids and KV keys, and of the
// snapshot name sendense-<job_id>, so nothing else is allowed. The error
// wraps ErrInvalidJobID.
func ValidJobID(id string) error {
	if err := schemas.ValidJobID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidJobID, err)
	}
	return nil
}

// NewJobID returns a fresh job id: a time-ordered UUID (version 7), so job
// ids sort by creation time.
func NewJobID() string {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString()
	}
	return id.String()
}

// jobIDSpace is the UUID namespace of job ids derived from requests.
var jobIDSpace = uuid.MustParse("5b0e3c9a-3b1e-4f55-9d7e-5e6e5d0b2c11")

// DeriveJobID returns the job id of a request that carries none (a raw
// `nats pub`): a name-based UUID (version 5) of the stream name, the
// message's stream sequence and the time the stream stored it. Every
// redelivery of that message gives the same id, and a stream recreated from
// sequence 1 does not reuse old ids. Take the values from the delivered
// message's jetstream.MsgMetadata (Stream, Sequence.Stream, Timestamp).
func DeriveJobID(stream string, streamSeq uint64, stored time.Time) string {
	name := stream + "/" + strconv.FormatUint(streamSeq, 10) + "/" + strconv.FormatInt(stored.UnixNano(), 10)
	return uuid.NewSHA1(jobIDSpace, []byte(name)).String()
}

// checkSubject accepts a literal subject: non-empty tokens without
// wildcards or whitespace.
func checkSubject(subject string) error {
	if subject == "" {
		return fmt.Errorf("subject is empty: %w", ErrInvalidSubject)
	}
	for _, tok := range strings.Split(subject, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n\f") {
			return fmt.Errorf("subject %q: %w", subject, ErrInvalidSubject)
		}
	}
	return nil
}

// checkMsgID accepts a message id that can travel in a header.
func checkMsgID(id string) error {
	if id == "" || strings.ContainsAny(id, "\r\n") {
		return fmt.Errorf("message id %q: %w", id, ErrInvalidMsgID)
	}
	return nil
}
