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

// TestVerifySchedule: a verify schedule fires backup.verify.requested,
// which the hub's consumer receives (the agents' consumer never sees it);
// it is listed with its verification; a bad one is refused.
func TestVerifySchedule(t *testing.T) {
	s := bustest.Embedded(t)
	ctx := testCtx(t)
	ensureStreams(t, s.JS)
	agents := requestConsumer(t, s.JS)
	hub, err := bus.EnsureVerifyConsumer(ctx, s.JS, bus.AwaitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sched := bus.Schedule{Name: "verify-all", Cron: "@every 1s", Verify: &schemas.VerifyRequest{All: true}}
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
		if m.Subject() != bus.SubjectVerifyRequested {
			t.Errorf("firing on %s", m.Subject())
		}
		v, err := schemas.DecodeVerifyRequest(m.Data())
		if err != nil || !v.All || v.RequestedBy != "schedule:verify-all" {
			t.Errorf("firing %+v, %v", v, err)
		}
		_ = m.DoubleAck(ctx)
	}
	if n != 1 {
		t.Fatalf("hub's consumer got %d firings (%v)", n, batch.Error())
	}
	if b, _ := agents.Fetch(1, jetstream.FetchMaxWait(1500*time.Millisecond)); b != nil {
		for m := range b.Messages() {
			t.Errorf("agents' consumer got %s", m.Subject())
		}
	}
	list, bad, err := bus.ListSchedules(ctx, s.JS)
	if err != nil || len(bad) != 0 || len(list) != 1 || list[0].Verify == nil || !list[0].Verify.All {
		t.Fatalf("list: %+v %v %v", list, bad, err)
	}
	if err := bus.RemoveSchedule(ctx, s.JS, "verify-all"); err != nil {
		t.Fatal(err)
	}
	for _, v := range []schemas.VerifyRequest{{}, {All: true, VM: "pgtest1"}, {VM: "../x"}} {
		bad := bus.Schedule{Name: "bad", Cron: "@every 1s", Verify: &v}
		if _, err := bus.AddSchedule(ctx, s.JS, bad, bus.AddOptions{}); !errors.Is(err, bus.ErrInvalidSchedule) {
			t.Errorf("verify schedule %+v: %v, want ErrInvalidSchedule", v, err)
		}
	}
}
