package bus_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// TestForgetSchedule: a forget schedule fires backup.forget.requested
// with its policy, which the hub's consumer receives (neither the agents'
// consumer nor the hub's verify consumer sees it); it is listed as a
// forget with its policy; a bad one is refused and nothing is stored.
func TestForgetSchedule(t *testing.T) {
	s := bustest.Embedded(t)
	ctx := testCtx(t)
	ensureStreams(t, s.JS)
	agents := requestConsumer(t, s.JS)
	verify, err := bus.EnsureVerifyConsumer(ctx, s.JS, bus.AwaitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hub, err := bus.EnsureForgetConsumer(ctx, s.JS, bus.AwaitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	policy := schemas.Retention{Daily: 7, Monthly: -1, Protect: []string{"golden-1"}}
	sched := bus.Schedule{Name: "prune-pgtest1", Cron: "@every 1s", Forget: &schemas.ForgetRequest{VM: "pgtest1", Policy: policy}}
	if _, err := bus.AddSchedule(ctx, s.JS, sched, bus.AddOptions{}); err != nil {
		t.Fatal(err)
	}
	batch, err := hub.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		n++
		if m.Subject() != bus.SubjectForgetRequested {
			t.Errorf("firing on %s", m.Subject())
		}
		f, err := schemas.DecodeForgetRequest(m.Data())
		if err != nil || f.VM != "pgtest1" || f.All || f.Policy.Daily != 7 || f.Policy.Monthly != -1 ||
			len(f.Policy.Protect) != 1 || f.RequestedBy != "schedule:prune-pgtest1" {
			t.Errorf("firing %+v, %v", f, err)
		}
		_ = m.DoubleAck(ctx)
	}
	if n != 1 {
		t.Fatalf("hub's consumer got %d firings (%v)", n, batch.Error())
	}
	for name, c := range map[string]jetstream.Consumer{"agents'": agents, "hub's verify": verify} {
		if b, _ := c.Fetch(1, jetstream.FetchMaxWait(1500*time.Millisecond)); b != nil {
			for m := range b.Messages() {
				t.Errorf("%s consumer got %s", name, m.Subject())
			}
		}
	}
	list, bad, err := bus.ListSchedules(ctx, s.JS)
	if err != nil || len(bad) != 0 || len(list) != 1 || list[0].Kind() != "forget" || list[0].Forget == nil ||
		list[0].Forget.VM != "pgtest1" || list[0].Forget.Policy.Daily != 7 {
		t.Fatalf("list: %+v %v %v", list, bad, err)
	}
	if err := bus.RemoveSchedule(ctx, s.JS, "prune-pgtest1"); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]bus.Schedule{
		"no selector":    {Forget: &schemas.ForgetRequest{Policy: schemas.Retention{Last: 1}}},
		"vm and all":     {Forget: &schemas.ForgetRequest{VM: "pgtest1", All: true, Policy: schemas.Retention{Last: 1}}},
		"bad vm":         {Forget: &schemas.ForgetRequest{VM: "../x", Policy: schemas.Retention{Last: 1}}},
		"no count":       {Forget: &schemas.ForgetRequest{All: true, Policy: schemas.Retention{Protect: []string{"a"}}}},
		"count below -1": {Forget: &schemas.ForgetRequest{All: true, Policy: schemas.Retention{Last: -2}}},
		"bad protect id": {Forget: &schemas.ForgetRequest{All: true, Policy: schemas.Retention{Last: 1, Protect: []string{"a.b"}}}},
		"verify too":     {Forget: &schemas.ForgetRequest{All: true, Policy: schemas.Retention{Last: 1}}, Verify: &schemas.VerifyRequest{All: true}},
		"backup too":     {Forget: &schemas.ForgetRequest{All: true, Policy: schemas.Retention{Last: 1}}, Request: schemas.Request{VM: "pgtest1"}},
		"empty (backup)": {},
	} {
		bad.Name, bad.Cron = "bad", "@every 1s"
		if _, err := bus.AddSchedule(ctx, s.JS, bad, bus.AddOptions{}); !errors.Is(err, bus.ErrInvalidSchedule) {
			t.Errorf("%s: %v, want ErrInvalidSchedule", name, err)
		}
	}
	if list, _, _ := bus.ListSchedules(ctx, s.JS); len(list) != 0 {
		t.Errorf("refused schedules stored: %+v", list)
	}
}

// TestHubForgetConsumerPermissions: the hub reads and acks its forget
// consumer, and can neither create a consumer on the requests nor read
// the agents'.
func TestHubForgetConsumerPermissions(t *testing.T) {
	bustest.ForEachSecure(t, func(t *testing.T, start bustest.SecureFunc) {
		s := start(t, "node1")
		adm := admin(t, s)
		if err := bus.EnsureStreams(testCtx(t), adm.JS, bus.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := bus.EnsureRequestConsumer(testCtx(t), adm.JS, bus.RequestConsumerOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := bus.EnsureForgetConsumer(testCtx(t), adm.JS, bus.AwaitOptions{}); err != nil {
			t.Fatal(err)
		}
		sched := bus.Schedule{Name: "prune-all", Cron: "@every 1s", Forget: &schemas.ForgetRequest{All: true, Policy: schemas.Retention{Last: 3}}}
		if _, err := bus.AddSchedule(testCtx(t), adm.JS, sched, bus.AddOptions{}); err != nil {
			t.Fatal(err)
		}
		hub := s.Connect(t, bus.Identity{Role: bus.RoleHub})
		c, err := hub.JS.Consumer(testCtx(t), bus.StreamRequests, bus.ConsumerHubForget)
		if err != nil {
			t.Fatalf("hub binds %s: %v", bus.ConsumerHubForget, err)
		}
		batch, err := c.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if err := m.DoubleAck(testCtx(t)); err != nil {
				t.Errorf("hub acks a forget request: %v", err)
			}
		}
		if n != 1 {
			t.Errorf("hub fetched %d forget requests (%v)", n, batch.Error())
		}
		if _, err := hub.JS.Consumer(shortCtx(t), bus.StreamRequests, bus.ConsumerAgents); err == nil {
			t.Error("hub binds the agents' consumer")
		}
		if _, err := hub.JS.CreateOrUpdateConsumer(shortCtx(t), bus.StreamRequests, bus.ForgetConsumerConfig()); err == nil {
			t.Error("hub creates or updates a consumer on the requests")
		}
		if err := bus.RemoveSchedule(testCtx(t), adm.JS, "prune-all"); err != nil {
			t.Fatal(err)
		}
	})
}
