package bus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// shortCtx bounds an operation the server is expected to refuse: a refused
// JetStream request gets no answer, only a permission violation.
func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

// wantViolation asserts that c's last error is a permission violation
// naming subject (the server answers a refused publish or subscribe with
// one; the client records it after the next round trip).
func wantViolation(t *testing.T, who string, c *bustest.Conn, subject string) {
	t.Helper()
	_ = c.Flush()
	err := c.LastError()
	if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), subject) {
		t.Errorf("%s on %s: last error %v, want a permission violation", who, subject, err)
	}
}

// TestRolePermissions: only the role allowed to send a message can send
// it, against the embedded server and against a nats-server process run
// with the configuration ServerConfig prints.
func TestRolePermissions(t *testing.T) {
	bustest.ForEachSecure(t, func(t *testing.T, start bustest.SecureFunc) {
		s := start(t, "node1", "node2")
		conn := func(id bus.Identity) *bustest.Conn { return s.Connect(t, id) }
		adm := admin(t, s)
		if err := bus.EnsureStreams(testCtx(t), adm.JS, bus.StreamOptions{}); err != nil {
			t.Fatalf("admin creates the streams: %v", err)
		}
		if _, err := bus.NewLeases(testCtx(t), adm.JS, "", time.Minute); err != nil {
			t.Fatalf("admin creates the lease bucket: %v", err)
		}
		if _, err := bus.EnsureRequestConsumer(testCtx(t), adm.JS, bus.RequestConsumerOptions{}); err != nil {
			t.Fatalf("admin creates the agents' consumer: %v", err)
		}
		hub := conn(bus.Identity{Role: bus.RoleHub})
		hubLeases, err := bus.OpenLeases(testCtx(t), hub.JS, "")
		if err != nil {
			t.Fatalf("hub opens the lease bucket: %v", err)
		}
		// Nobody but admin creates or changes a stream: a change of limits,
		// subjects or transforms could drop the log, the leases, or store
		// one role's message on an agent's subject.
		for _, who := range []bus.Identity{{Role: bus.RoleHub}, {Role: bus.RoleCatalog}, {Role: bus.RoleRequester}, bus.AgentIdentity("node1")} {
			c := conn(who)
			cut := bus.StreamConfigs(bus.StreamOptions{})[1]
			cut.MaxMsgs = 1
			if _, err := c.JS.UpdateStream(shortCtx(t), cut); err == nil {
				t.Errorf("%s updated stream %s", who, bus.StreamEvents)
			}
			if _, err := c.JS.CreateStream(shortCtx(t), jetstream.StreamConfig{Name: "ROGUE", Subjects: []string{"rogue.>"}}); err == nil {
				t.Errorf("%s created a stream", who)
			}
		}

		if err := s.ConnectAnonymous(t); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("anonymous connection: %v, want an authorization violation", err)
		}

		// node1 reports a job on its own subject; node2 on its own.
		node1 := conn(bus.AgentIdentity("node1"))
		pub1, err := bus.NewAgentPublisher(node1.JS, "node1", bustest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		job := bus.NewJobID()
		ev := completedEvent(job)
		ack, err := pub1.PublishEvent(testCtx(t), ev)
		if err != nil || ack.Stream != bus.StreamEvents {
			t.Fatalf("agent node1 publishes its completed event: %+v, %v", ack, err)
		}
		node2 := conn(bus.AgentIdentity("node2"))
		pub2, _ := bus.NewAgentPublisher(node2.JS, "node2", bustest.Logger(t))
		if _, err := pub2.PublishEvent(testCtx(t), startedEvent(bus.NewJobID())); err != nil {
			t.Fatalf("agent node2 publishes on its own subject: %v", err)
		}
		// The hub publishes its events about completed jobs; an agent's
		// publisher refuses them, and the hub's refuses an agent's.
		hubPub := bus.NewHubPublisher(hub.JS, bustest.Logger(t))
		if ack, err := hubPub.PublishEvent(testCtx(t), prunedEvent(job)); err != nil || ack.Stream != bus.StreamEvents {
			t.Fatalf("hub publishes backup.pruned: %+v, %v", ack, err)
		}
		if _, err := pub1.PublishEvent(testCtx(t), prunedEvent(job)); !errors.Is(err, bus.ErrInvalidEvent) {
			t.Errorf("agent's publisher sends backup.pruned: %v, want ErrInvalidEvent", err)
		}
		if _, err := hubPub.PublishEvent(testCtx(t), completedEvent(bus.NewJobID())); !errors.Is(err, bus.ErrInvalidEvent) {
			t.Errorf("hub's publisher sends backup.completed: %v, want ErrInvalidEvent", err)
		}
		stored := streamMsgs(t, hub.JS, bus.StreamEvents)

		// Nobody else can publish an event as node1, nor as any agent.
		data := []byte(`{"forged":true}`)
		for _, who := range []bus.Identity{
			{Role: bus.RoleRequester}, {Role: bus.RoleMonitor}, {Role: bus.RoleHub}, {Role: bus.RoleCatalog}, bus.AgentIdentity("node2"),
		} {
			c := conn(who)
			subjects := []string{
				bus.AgentSubject(schemas.NameCompleted, "node1"), bus.AgentSubject(schemas.NameStarted, "node1"),
				bus.AgentSubject(schemas.NameFailed, "node1"), bus.ProgressSubject(job),
			}
			if who.Role != bus.RoleHub {
				// Nobody but the hub publishes the hub's events.
				for _, name := range schemas.HubEvents() {
					subjects = append(subjects, bus.HubSubject(name))
				}
			}
			for _, subject := range subjects {
				if who.Role == bus.RoleAgent && subject == bus.ProgressSubject(job) {
					continue // agents publish progress of any job
				}
				// What `nats pub` does; the stream count below shows nothing landed.
				if err := c.Publish(subject, data); err != nil {
					t.Fatal(err)
				}
				wantViolation(t, who.String(), c, subject)
			}
		}
		// Through JetStream's publish too.
		req0 := conn(bus.Identity{Role: bus.RoleRequester})
		if _, err := req0.JS.Publish(shortCtx(t), bus.AgentSubject(schemas.NameCompleted, "node1"), data); err == nil {
			t.Error("requester's JetStream publish of node1's completed succeeded")
		}
		wantViolation(t, "requester", req0, bus.AgentSubject(schemas.NameCompleted, "node1"))
		if n := streamMsgs(t, hub.JS, bus.StreamEvents); n != stored {
			t.Errorf("events stream has %d messages after the forgeries, want %d", n, stored)
		}

		// Leases: agents and the hub (while it prunes a VM's chains)
		// write them, others nothing.
		leases1, err := bus.OpenLeases(testCtx(t), node1.JS, "")
		if err != nil {
			t.Fatalf("agent opens the lease bucket: %v", err)
		}
		le, err := leases1.Acquire(testCtx(t), bus.VMLeaseKey("vm-1"), bus.Holder{Agent: "node1", JobID: job, Attempt: 1})
		if err != nil {
			t.Fatalf("agent takes a lease: %v", err)
		}
		defer le.Release(testCtx(t))
		if h, ok, err := hubLeases.Holder(testCtx(t), bus.VMLeaseKey("vm-1")); err != nil || !ok || h.JobID != job {
			t.Errorf("hub reads the lease: %+v %t %v", h, ok, err)
		}
		if _, err := hubLeases.Acquire(testCtx(t), bus.VMLeaseKey("vm-1"), bus.Holder{Agent: bus.HubAgent, JobID: "prune-1", Attempt: 1}); !errors.Is(err, bus.ErrLeaseHeld) {
			t.Errorf("hub takes a held lease: %v, want ErrLeaseHeld", err)
		}
		hle, err := hubLeases.Acquire(testCtx(t), bus.VMLeaseKey("vm-2"), bus.Holder{Agent: bus.HubAgent, JobID: "prune-1", Attempt: 1})
		if err != nil {
			t.Errorf("hub takes a free lease: %v", err)
		} else if err := hle.Release(testCtx(t)); err != nil {
			t.Errorf("hub releases its lease: %v", err)
		}
		for _, who := range []bus.Identity{{Role: bus.RoleRequester}, {Role: bus.RoleMonitor}, {Role: bus.RoleCatalog}} {
			c := conn(who)
			key := "$KV." + bus.LeaseBucket + "." + bus.VMLeaseKey("vm-1")
			msg := nats.NewMsg(key)
			msg.Header.Set("KV-Operation", "DEL")
			if err := c.PublishMsg(msg); err != nil {
				t.Fatal(err)
			}
			wantViolation(t, who.String(), c, key)
		}
		if h, ok, err := hubLeases.Holder(testCtx(t), bus.VMLeaseKey("vm-1")); err != nil || !ok || h.JobID != job {
			t.Errorf("lease after the attempts to delete it: %+v %t %v, want still held", h, ok, err)
		}

		// Only admin deletes or purges streams.
		for _, who := range []bus.Identity{{Role: bus.RoleRequester}, {Role: bus.RoleHub}, {Role: bus.RoleCatalog}, bus.AgentIdentity("node1")} {
			c := conn(who)
			if err := c.JS.DeleteStream(shortCtx(t), bus.StreamEvents); err == nil {
				t.Errorf("%s deleted stream %s", who, bus.StreamEvents)
			}
			if st, err := c.JS.Stream(shortCtx(t), bus.StreamEvents); err == nil {
				if err := st.Purge(shortCtx(t)); err == nil {
					t.Errorf("%s purged stream %s", who, bus.StreamEvents)
				}
			}
		}
		if n := streamMsgs(t, hub.JS, bus.StreamEvents); n != stored {
			t.Errorf("events stream has %d messages, want %d", n, stored)
		}

		// Nobody reads another's replies.
		req := conn(bus.Identity{Role: bus.RoleRequester})
		other := bus.AgentIdentity("node1").InboxPrefix() + ".>"
		if _, err := req.SubscribeSync(other); err == nil {
			wantViolation(t, "requester subscribing", req, other)
		}

		// The monitor sees everything and sends nothing; the requester asks.
		mon := conn(bus.Identity{Role: bus.RoleMonitor})
		sub, err := mon.SubscribeSync(bus.SubjectAll)
		if err != nil {
			t.Fatal(err)
		}
		_ = mon.Flush()
		reqPub := bus.NewPublisher(req.JS, "sendense/test", bustest.Logger(t))
		if _, err := reqPub.PublishRequest(testCtx(t), schemas.Request{VM: "pgtest1", JobID: bus.NewJobID()}); err != nil {
			t.Errorf("requester requests a backup: %v", err)
		}
		if m, err := sub.NextMsg(5 * time.Second); err != nil || m.Subject != bus.SubjectRequested {
			t.Errorf("monitor on backup.>: %v %v", m, err)
		}
		if err := mon.Publish(bus.SubjectRequested, []byte(`{"vm":"pgtest1"}`)); err == nil {
			wantViolation(t, "monitor", mon, bus.SubjectRequested)
		}

		// The catalog consumes events, not requests.
		cat := conn(bus.Identity{Role: bus.RoleCatalog})
		if _, err := bus.EnsureCatalogConsumer(testCtx(t), cat.JS, ""); err != nil {
			t.Errorf("catalog creates its consumer: %v", err)
		}
		// It reads the waiting requests (queued jobs) without consuming
		// or deleting them.
		reqs, err := cat.JS.Stream(testCtx(t), bus.StreamRequests)
		if err != nil {
			t.Fatalf("catalog reads the requests stream's info: %v", err)
		}
		m, err := reqs.GetMsg(testCtx(t), 1, jetstream.WithGetMsgSubject(bus.SubjectRequested))
		if err != nil {
			t.Errorf("catalog reads a waiting request: %v", err)
		} else if err := reqs.DeleteMsg(shortCtx(t), m.Sequence); err == nil {
			t.Error("catalog deleted a waiting request")
		}
		// Agents take requests from the consumer admin made; none may
		// change it (a filter or a limit would starve the others).
		if _, err := bus.RequestConsumer(testCtx(t), node1.JS); err != nil {
			t.Errorf("agent binds the request consumer: %v", err)
		}
		// `backup --wait` reads its info to say whether any agent asks for requests.
		if _, err := bus.RequestConsumer(testCtx(t), conn(bus.Identity{Role: bus.RoleRequester}).JS); err != nil {
			t.Errorf("requester reads the request consumer's info: %v", err)
		}
		for _, who := range []bus.Identity{bus.AgentIdentity("node1"), {Role: bus.RoleCatalog}, {Role: bus.RoleHub}, {Role: bus.RoleRequester}} {
			cfg := bus.RequestConsumerConfig(bus.RequestConsumerOptions{})
			cfg.FilterSubject = "backup.requested.none"
			if _, err := conn(who).JS.CreateOrUpdateConsumer(shortCtx(t), bus.StreamRequests, cfg); err == nil {
				t.Errorf("%s changed the agents' request consumer", who)
			}
		}
		if err := bus.StoreReady(testCtx(t), node1.JS); err != nil {
			t.Errorf("StoreReady as an agent: %v", err)
		}
		var _ jetstream.JetStream = admin(t, s).JS
	})
}

func admin(t *testing.T, s *bustest.Secure) *bustest.Conn {
	return s.Connect(t, bus.Identity{Role: bus.RoleAdmin})
}

// TestServerConfig: the printed configuration names every user with its
// permissions, quoted.
func TestServerConfig(t *testing.T) {
	users := []bus.User{
		{Identity: bus.Identity{Role: bus.RoleMonitor}, PublicKey: "UMONITOR"},
		{Identity: bus.AgentIdentity("node1"), PublicKey: "UNODE1"},
	}
	conf := bus.ServerConfig(users)
	for _, want := range []string{
		`nkey: "UMONITOR"`, `publish: { deny: [">"] }`, `subscribe: { allow: ["backup.>"] }`,
		`nkey: "UNODE1"`, `"backup.completed.node1"`, `"_INBOX.agent-node1.>"`,
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("server config lacks %s:\n%s", want, conf)
		}
	}
	if strings.Contains(conf, `"backup.completed.*"`) {
		t.Errorf("an agent may publish any agent's events:\n%s", conf)
	}
}

func someUsers(t *testing.T) []bus.User {
	c := bus.Creds{Dir: t.TempDir()}
	if err := c.Ensure(bus.Identity{Role: bus.RoleAdmin}); err != nil {
		t.Fatal(err)
	}
	users, err := c.Users()
	if err != nil {
		t.Fatal(err)
	}
	return users
}

// TestSchedulePermissions: only admin adds or removes schedules; the
// requester lists them; nobody else touches them.
func TestSchedulePermissions(t *testing.T) {
	bustest.ForEachSecure(t, func(t *testing.T, start bustest.SecureFunc) {
		s := start(t, "node1")
		adm := admin(t, s)
		if err := bus.EnsureStreams(testCtx(t), adm.JS, bus.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
		sch := bus.Schedule{Name: "nightly", Cron: "@daily", Request: schemas.Request{VM: "pgtest1"}}
		if _, err := bus.AddSchedule(testCtx(t), adm.JS, sch, bus.AddOptions{}); err != nil {
			t.Fatalf("admin adds a schedule: %v", err)
		}
		req := s.Connect(t, bus.Identity{Role: bus.RoleRequester})
		if list, bad, err := bus.ListSchedules(testCtx(t), req.JS); err != nil || len(bad) != 0 || len(list) != 1 || list[0].Name != "nightly" {
			t.Errorf("requester lists schedules: %+v %v %v", list, bad, err)
		}
		for _, who := range []bus.Identity{{Role: bus.RoleRequester}, {Role: bus.RoleHub}, {Role: bus.RoleCatalog}, {Role: bus.RoleMonitor}, bus.AgentIdentity("node1")} {
			c := s.Connect(t, who)
			rogue := sch
			rogue.Name = "rogue"
			if _, err := bus.AddSchedule(shortCtx(t), c.JS, rogue, bus.AddOptions{}); err == nil {
				t.Errorf("%s added a schedule", who)
			}
			wantViolation(t, who.String(), c, bus.ScheduleSubject("rogue"))
			if err := bus.RemoveSchedule(shortCtx(t), c.JS, "nightly"); err == nil {
				t.Errorf("%s removed a schedule", who)
			}
		}
		list, _, err := bus.ListSchedules(testCtx(t), adm.JS)
		if err != nil || len(list) != 1 || list[0].Name != "nightly" {
			t.Errorf("schedules after the others tried: %+v %v, want only nightly", list, err)
		}
		if err := bus.RemoveSchedule(testCtx(t), adm.JS, "nightly"); err != nil {
			t.Errorf("admin removes a schedule: %v", err)
		}
	})
}

// TestRequesterRollupCaveat records the cost of schedules the package's
// Caveats name: BACKUP_REQUESTS allows roll-ups (schedules need them), so
// a requester, who may publish on backup.requested, can send Nats-Rollup
// and drop the requests queued before it. Should nats-server stop
// allowing it, this fails: update the Caveats and docs/design.md.
func TestRequesterRollupCaveat(t *testing.T) {
	s := bustest.SecureEmbedded(t)
	adm := admin(t, s)
	if err := bus.EnsureStreams(testCtx(t), adm.JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	req := s.Connect(t, bus.Identity{Role: bus.RoleRequester})
	for range 3 {
		if _, err := req.JS.Publish(testCtx(t), bus.SubjectRequested, []byte(`{"vm":"pgtest1"}`)); err != nil {
			t.Fatal(err)
		}
	}
	msg := nats.NewMsg(bus.SubjectRequested)
	msg.Data = []byte(`{"vm":"pgtest1"}`)
	msg.Header.Set("Nats-Rollup", "sub")
	if _, err := req.JS.PublishMsg(testCtx(t), msg); err != nil {
		t.Fatalf("requester's roll-up refused (then the caveat is gone): %v", err)
	}
	if n := streamMsgs(t, adm.JS, bus.StreamRequests); n != 1 {
		t.Errorf("%d requests queued after the roll-up, want 1 (the roll-up dropped the 3 before it)", n)
	}
}

// TestCancelPermissions: only admin asks the agents to cancel a job
// (bus.AgentCancel); every agent hears it and answers on admin's inbox,
// and on no other user's.
func TestCancelPermissions(t *testing.T) {
	bustest.ForEachSecure(t, func(t *testing.T, start bustest.SecureFunc) {
		s := start(t, "node1", "node10")
		node1 := s.Connect(t, bus.AgentIdentity("node1"))
		heard := make(chan *nats.Msg, 16)
		if _, err := node1.Subscribe(bus.AgentCancel, func(m *nats.Msg) {
			heard <- m
			_ = m.Respond([]byte(`{"agent":"node1"}`))
		}); err != nil {
			t.Fatal(err)
		}
		if err := node1.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := node1.LastError(); err != nil {
			t.Fatalf("agent subscribes to %s: %v", bus.AgentCancel, err)
		}

		// Admin asks and gets the agent's answer.
		adm := admin(t, s)
		m, err := adm.Request(bus.AgentCancel, []byte(`{"job_id":"j-1"}`), 5*time.Second)
		if err != nil || string(m.Data) != `{"agent":"node1"}` {
			t.Fatalf("admin's cancel request: %v %v, want node1's answer", m, err)
		}
		<-heard

		// Nobody else may ask: not another agent, not the hub, the
		// catalog, a requester or a monitor.
		for _, who := range []bus.Identity{
			bus.AgentIdentity("node10"), bus.AgentIdentity("node1"), {Role: bus.RoleHub}, {Role: bus.RoleCatalog},
			{Role: bus.RoleRequester}, {Role: bus.RoleMonitor},
		} {
			c := s.Connect(t, who)
			if err := c.Publish(bus.AgentCancel, []byte(`{"job_id":"j-1"}`)); err != nil {
				t.Fatal(err)
			}
			wantViolation(t, who.String(), c, bus.AgentCancel)
		}
		select {
		case m := <-heard:
			t.Errorf("agent heard a cancel from someone else than admin: %s", m.Data)
		default:
		}

		// An agent answers on admin's inbox only: it cannot "answer" into
		// a requester's replies.
		reqInbox := bus.Identity{Role: bus.RoleRequester}.InboxPrefix() + ".x"
		if err := node1.Publish(reqInbox, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		wantViolation(t, "agent node1", node1, reqInbox)
	})
}
