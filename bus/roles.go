package bus

import (
	"fmt"
	"slices"
	"strings"
)

// Role is what a NATS user of Sendense is allowed to do. Each role is one
// NATS user (an nkey) with the permissions of PermissionsOf; agents are
// one user per agent, so the server itself knows which agent sent an event.
type Role string

// The roles. Every process connects as exactly one of them.
const (
	// RoleAdmin may do everything: restores, repository checks, catalog
	// rebuilds, the simulated vCenter's control service, and any NATS
	// operation (stream deletes included). Keep its credentials with root.
	RoleAdmin Role = "admin"
	// RoleHub runs the repository service and the request API: it creates
	// the streams and the lease bucket, publishes backup.requested and the
	// events about completed jobs (backup.<type>.hub, HubSubject), and
	// takes a VM's lease while it changes that VM's chains (prune).
	RoleHub Role = "hub"
	// RoleCatalog consumes BACKUP_EVENTS into the catalog and answers the
	// catalog service; it publishes nothing on backup.*. It reads the
	// requests waiting in BACKUP_REQUESTS one message at a time (queued
	// jobs) but neither consumes nor removes them.
	RoleCatalog Role = "catalog"
	// RoleAgent is a node agent: it takes backup.requested from its
	// consumer, holds VM leases, calls the repository's target endpoints
	// and publishes events on backup.<type>.<its own name> only. It listens
	// on AgentCancel and answers there on admin's inbox only: only admin
	// cancels a running job.
	RoleAgent Role = "agent"
	// RoleRequester asks for backups (backup.requested), reads the catalog
	// and follows events on backup.>: what `sendense backup`, `jobs`,
	// `watch` and `nats pub backup.requested` need. It lists schedules
	// (`sendense schedule list`) but only admin adds or removes them: a
	// schedule asks for backups forever, with nobody at the keyboard, and
	// removing one is a purge of BACKUP_REQUESTS, which NATS permissions
	// cannot narrow to the schedule subjects (a requester allowed it could
	// purge every queued request).
	RoleRequester Role = "requester"
	// RoleMonitor may only subscribe to backup.>: `nats sub 'backup.>'`.
	RoleMonitor Role = "monitor"
	// RoleTestbed runs the simulated vCenter's control service
	// (`sendense vcenter-sim`): it answers on TestbedService.> and
	// nothing else; it never sees backup.* nor JetStream.
	RoleTestbed Role = "testbed"
)

// Roles lists every role except RoleAgent, which has one user per agent.
func Roles() []Role {
	return []Role{RoleAdmin, RoleHub, RoleCatalog, RoleRequester, RoleMonitor, RoleTestbed}
}

// Identity is one NATS user: a role and, for RoleAgent, the agent's name.
type Identity struct {
	Role  Role
	Agent string // RoleAgent only: see ValidAgentID
}

// AgentIdentity returns the identity of the agent named name.
func AgentIdentity(name string) Identity { return Identity{Role: RoleAgent, Agent: name} }

// Name is the user's name: the role, or "agent-<name>" for an agent. It
// names its credentials file and its inbox.
func (id Identity) Name() string {
	if id.Role == RoleAgent {
		return string(RoleAgent) + "-" + id.Agent
	}
	return string(id.Role)
}

func (id Identity) String() string { return id.Name() }

// InboxPrefix is where the identity's replies arrive: "_INBOX.<name>". Its
// permissions let it subscribe there and nowhere else among inboxes, so no
// user can read another's replies.
func (id Identity) InboxPrefix() string { return "_INBOX." + id.Name() }

// Validate reports whether id is a known role, with a valid agent name for
// an agent and none otherwise.
func (id Identity) Validate() error {
	switch {
	case id.Role == RoleAgent:
		return ValidAgentID(id.Agent)
	case slices.Contains(Roles(), id.Role):
		if id.Agent != "" {
			return fmt.Errorf("identity %s: an agent name only goes with role agent: %w", id.Role, ErrInvalidIdentity)
		}
		return nil
	}
	return fmt.Errorf("identity: unknown role %q: %w", id.Role, ErrInvalidIdentity)
}

// MaxAgentIDLen is the longest agent name ValidAgentID accepts.
const MaxAgentIDLen = 64

// ValidAgentID reports whether name can name an agent: 1 to MaxAgentIDLen
// characters of [A-Za-z0-9_-], not starting with '-'. The name is a
// subject token (backup.completed.<agent>), part of a user name, a file
// name and an inbox. The error wraps ErrInvalidIdentity.
func ValidAgentID(name string) error {
	return checkToken("agent name", name, MaxAgentIDLen, ErrInvalidIdentity)
}

// checkToken accepts name as one subject token of 1 to maxLen characters
// of [A-Za-z0-9_-], not starting with '-'; what names it in the error,
// which wraps sentinel.
func checkToken(what, name string, maxLen int, sentinel error) error {
	if name == "" || len(name) > maxLen {
		return fmt.Errorf("%s %q: length %d not in 1..%d: %w", what, name, len(name), maxLen, sentinel)
	}
	if name[0] == '-' {
		return fmt.Errorf("%s %q starts with '-': %w", what, name, sentinel)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("%s %q: character %q at %d not allowed (letters, digits, '-', '_'): %w", what, name, c, i, sentinel)
		}
	}
	return nil
}

// Permissions is what one identity may publish and subscribe to, as NATS
// subject patterns (allow lists: everything else is denied).
//
// No role gets NATS's allow_responses: it lets a service publish once to
// whatever reply subject a caller chose, so a caller could have the
// catalog "answer" on $JS.API.STREAM.DELETE.BACKUP_EVENTS or on another
// agent's event subject. Services answer on inboxes only (InboxSubjects),
// and their handlers refuse any other reply subject (ReplyAllowed).
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// InboxSubjects is where services may publish their answers: every
// identity's inbox, and nothing else.
const InboxSubjects = "_INBOX.>"

// ReplyAllowed reports whether a service may answer on reply: an inbox.
// Handlers check it before answering, so a request whose reply subject
// names anything else gets no answer instead of a publish there.
func ReplyAllowed(reply string) bool {
	return strings.HasPrefix(reply, "_INBOX.") && len(reply) > len("_INBOX.")
}

// JetStream and KV subject prefixes used in permissions.
const (
	jsAPI       = "$JS.API."
	jsAck       = "$JS.ACK."
	leaseStream = "KV_" + LeaseBucket
	leaseKeys   = "$KV." + LeaseBucket + ".>"
	// cancelStream is CancelBucket's stream, which agents only read.
	cancelStream = "KV_" + CancelBucket
)

// PermissionsOf returns the permissions of id. They are the least each
// role needs (see the Role constants); in particular only agents publish
// backup events, each on its own subject token, and only the hub the
// events about completed jobs, on backup.<type>.hub; only agents and the
// hub write leases; only admin asks agents to cancel a job (AgentCancel)
// and records canceled jobs (CancelBucket, which agents read);
// only admin creates, changes, deletes or purges streams and consumers
// other than the catalog's own; and nobody but admin reads another user's
// inbox.
func PermissionsOf(id Identity) Permissions {
	inbox := id.InboxPrefix() + ".>"
	switch id.Role {
	case RoleAdmin:
		return Permissions{Publish: []string{">"}, Subscribe: []string{">"}}
	case RoleHub:
		pub := []string{SubjectRequested, jsAPI + "INFO", CatalogService + ".>", InboxSubjects}
		for _, s := range []string{StreamRequests, StreamEvents, StreamProgress, leaseStream} {
			pub = append(pub, jsAPI+"STREAM.INFO."+s)
		}
		pub = append(pub,
			jsAPI+"DIRECT.GET."+leaseStream+".>", jsAPI+"STREAM.MSG.GET."+leaseStream, leaseKeys,
			jsAPI+"CONSUMER.INFO."+StreamEvents+".*",
			// Its verification requests (verify schedules).
			jsAPI+"CONSUMER.INFO."+StreamRequests+"."+ConsumerHubVerify,
			jsAPI+"CONSUMER.MSG.NEXT."+StreamRequests+"."+ConsumerHubVerify,
			jsAck+StreamRequests+"."+ConsumerHubVerify+".>",
			// Its retention requests (forget schedules).
			jsAPI+"CONSUMER.INFO."+StreamRequests+"."+ConsumerHubForget,
			jsAPI+"CONSUMER.MSG.NEXT."+StreamRequests+"."+ConsumerHubForget,
			jsAck+StreamRequests+"."+ConsumerHubForget+".>")
		for _, name := range hubEventNames {
			pub = append(pub, HubSubject(name))
		}
		return Permissions{Publish: pub, Subscribe: []string{RepoService + ".>", "$SRV.>", inbox}}
	case RoleCatalog:
		return Permissions{
			Publish: []string{
				jsAPI + "INFO", jsAPI + "STREAM.INFO." + StreamEvents,
				jsAPI + "CONSUMER.CREATE." + StreamEvents + ".>", jsAPI + "CONSUMER.INFO." + StreamEvents + ".>",
				jsAPI + "CONSUMER.DELETE." + StreamEvents + ".>", jsAPI + "CONSUMER.MSG.NEXT." + StreamEvents + ".>",
				jsAck + StreamEvents + ".>", InboxSubjects,
				// It reads the waiting requests by sequence, without a
				// consumer, to show them as queued jobs.
				jsAPI + "STREAM.INFO." + StreamRequests, jsAPI + "STREAM.MSG.GET." + StreamRequests,
			},
			Subscribe: []string{CatalogService + ".>", "$SRV.>", inbox},
		}
	case RoleAgent:
		pub := make([]string, 0, 32)
		for _, name := range eventNames {
			pub = append(pub, AgentSubject(name, id.Agent))
		}
		cons := StreamRequests + "." + ConsumerAgents
		pub = append(pub, SubjectProgressAll,
			jsAPI+"INFO",
			jsAPI+"CONSUMER.INFO."+cons,
			jsAPI+"CONSUMER.MSG.NEXT."+cons, jsAck+cons+".>",
			jsAPI+"STREAM.INFO."+StreamRequests, jsAPI+"STREAM.INFO."+StreamEvents, jsAPI+"STREAM.INFO."+StreamProgress,
			jsAPI+"STREAM.MSG.GET."+StreamEvents,
			jsAPI+"STREAM.INFO."+leaseStream, jsAPI+"DIRECT.GET."+leaseStream+".>", jsAPI+"STREAM.MSG.GET."+leaseStream,
			leaseKeys,
			// Reads of the cancel records (bus.Cancels), never writes.
			jsAPI+"STREAM.INFO."+cancelStream, jsAPI+"DIRECT.GET."+cancelStream+".>", jsAPI+"STREAM.MSG.GET."+cancelStream,
			CatalogService+".>", RepoInfo, RepoTargets+".>",
			// Answers to AgentCancel, which only admin sends.
			Identity{Role: RoleAdmin}.InboxPrefix()+".>",
		)
		return Permissions{Publish: pub, Subscribe: []string{inbox, AgentCancel}}
	case RoleRequester:
		// The requester lists schedules (stream info and the last message
		// of each backup.schedules.* subject) but neither adds nor removes
		// them: see RoleRequester.
		return Permissions{
			Publish: []string{
				SubjectRequested, jsAPI + "INFO", jsAPI + "STREAM.INFO." + StreamRequests,
				jsAPI + "STREAM.MSG.GET." + StreamRequests, CatalogService + ".>",
				// `backup --wait` tells a queued job's user whether any agent
				// asks for requests (the agents' consumer's info).
				jsAPI + "CONSUMER.INFO." + StreamRequests + "." + ConsumerAgents,
			},
			Subscribe: []string{SubjectAll, inbox},
		}
	case RoleMonitor:
		return Permissions{Subscribe: []string{SubjectAll}}
	case RoleTestbed:
		return Permissions{Publish: []string{InboxSubjects}, Subscribe: []string{TestbedService + ".>", "$SRV.>", inbox}}
	}
	return Permissions{}
}
