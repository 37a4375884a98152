package hub_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

// msgLog records the messages of the hub's log lines.
type msgLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *msgLog) Run(_ *zerolog.Event, _ zerolog.Level, msg string) {
	l.mu.Lock()
	l.msgs = append(l.msgs, msg)
	l.mu.Unlock()
}

func (l *msgLog) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30 s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestForgetRequests: the hub takes backup.forget.requested from its
// consumer sendense-hub-forget. A request while a backup holds the VM's
// lease is asked for again (nak with delay) and runs once the lease is
// free; a forget schedule fires the policy with nobody asking; the
// removed points are pruned in the catalog (backup.pruning and
// backup.pruned filed), every kept point restores identically; a request
// for an unknown VM and one that is no forget request are terminated with
// a log line and remove nothing; nothing stays queued.
func TestForgetRequests(t *testing.T) {
	e := newForgetEnv(t, 4)
	ctx := testCtx(t)
	logs := &msgLog{}
	e.log = e.log.Hook(logs)
	e.forgetRetry = 300 * time.Millisecond
	e.startHub(nil)
	cons, err := bus.EnsureForgetConsumer(ctx, e.ns.JS, bus.AwaitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.svc.Load().ServeForgetRequests(sctx, cons) }()
	t.Cleanup(func() { cancel(); <-done })
	all := ids(e.jobs, 0, 1, 2, 3)

	// Refused for good: terminated, nothing removed.
	for _, bad := range []string{`{"vm":"no-such-vm","policy":{"keep_last":1}}`, `{"vm":"x"}`, `not json`} {
		if _, err := e.ns.JS.Publish(ctx, bus.SubjectForgetRequested, []byte(bad)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "three refusals", func() bool { return logs.count("forget request refused") == 3 })
	e.requireKept(all...)

	// A backup holds the lease: the request waits and runs after it.
	le, err := e.leases.Acquire(ctx, bus.VMLeaseKey(forgetVM.UUID), bus.Holder{Agent: "node1", JobID: "job-running", Attempt: 1})
	if err != nil {
		t.Fatal(err)
	}
	req := []byte(`{"vm":"` + forgetVM.Name + `","policy":{"keep_last":3},"requested_by":"test"}`)
	if _, err := e.ns.JS.Publish(ctx, bus.SubjectForgetRequested, req); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a busy retry", func() bool {
		return logs.count("forget request: vm busy or catalog unavailable; it is delivered again") >= 2
	})
	e.requireKept(all...)
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	e.requireRemoved(all[0])
	e.requireKept(all[1:]...)
	waitFor(t, "the request done", func() bool { return logs.count("forget request done") == 1 })

	// A forget schedule: keep-last 2 at every firing.
	sched := bus.Schedule{Name: "prune-vm", Cron: "@every 1s",
		Forget: &schemas.ForgetRequest{VM: forgetVM.UUID, Repository: testRepo, Policy: schemas.Retention{Last: 2}}}
	if _, err := bus.AddSchedule(ctx, e.ns.JS, sched, bus.AddOptions{}); err != nil {
		t.Fatal(err)
	}
	e.requireRemoved(all[1])
	e.addPoint(false) // job-04: the next firing removes job-02
	e.requireRemoved(all[2])
	if err := bus.RemoveSchedule(ctx, e.ns.JS, "prune-vm"); err != nil {
		t.Fatal(err)
	}
	e.requireKept(all[3], e.jobs[4].ID)
	e.requireClean()
	waitFor(t, "an empty queue", func() bool {
		ci, err := cons.Info(ctx)
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	})
	if n := logs.count("forget request refused"); n != 3 {
		t.Errorf("%d refusals, want the 3 bad requests", n)
	}
	// The catalog filed the intent and the removal of each point.
	for _, id := range ids(e.jobs, 0, 1, 2) {
		j, err := e.cat.Job(id)
		if err != nil || j.Prune == nil || j.Prune.State != backup.PruneDone || j.Prune.RequestedAt.IsZero() || j.Prune.PrunedAt.IsZero() {
			t.Errorf("job %s: %+v, %v", id, j.Prune, err)
		}
	}
}
