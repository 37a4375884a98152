package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// TestClassify: what stopped a job from outside wins over the error of
// the step it interrupted; other errors keep their own reason.
func TestClassify(t *testing.T) {
	copyCanceled := fmt.Errorf("copy disk 2000: %w", context.Canceled)
	tests := []struct {
		name      string
		err       error
		reason    string
		retryable bool
	}{
		{"lost lease over a canceled copy", fail(schemas.FailLeaseLost, true, copyCanceled), schemas.FailLeaseLost, true},
		{"nats over a canceled copy", fail(schemas.FailNATS, true, copyCanceled), schemas.FailNATS, true},
		{"shutdown", fail(schemas.FailShutdown, true, copyCanceled), schemas.FailShutdown, true},
		{"canceled by admin over a canceled copy", canceledError(copyCanceled), schemas.FailCanceled, false},
		{"a step interrupted by shutdown", fail(schemas.FailSnapshot, true, copyCanceled), schemas.FailShutdown, true},
		{"a bare cancel", copyCanceled, schemas.FailShutdown, true},
		{"a step's own failure", fail(schemas.FailCopy, true, errors.New("read: EIO")), schemas.FailCopy, true},
		{"permanent", fail(schemas.FailChangeIDMissing, false, errors.New("no change id")), schemas.FailChangeIDMissing, false},
		{"a deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), schemas.FailInternal, true},
		{"unknown", errors.New("boom"), schemas.FailInternal, false},
	}
	for _, tt := range tests {
		reason, retryable := classify(tt.err)
		if reason != tt.reason || retryable != tt.retryable {
			t.Errorf("%s: classify = %s, %t; want %s, %t", tt.name, reason, retryable, tt.reason, tt.retryable)
		}
	}
}

// recPublisher records the events the agent publishes.
type recPublisher struct {
	mu  sync.Mutex
	evs []schemas.Event
}

func (p *recPublisher) PublishEvent(_ context.Context, ev schemas.Event) (*jetstream.PubAck, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.evs = append(p.evs, ev)
	return &jetstream.PubAck{}, nil
}

// recTargets records aborted targets.
type recTargets struct {
	Targets
	mu      sync.Mutex
	aborted []repoapi.TargetRef
}

func (r *recTargets) Abort(_ context.Context, ref repoapi.TargetRef) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.aborted = append(r.aborted, ref)
	return nil
}

// TestNoCompletedAfterLeaseLoss: an agent whose lease was deleted after
// the copy (between its last renewal and backup.completed) publishes no
// completed event, removes its closed targets and reports lease_lost.
// A lease that holds lets the completed event through.
func TestNoCompletedAfterLeaseLoss(t *testing.T) {
	s := bustest.Embedded(t)
	ctx := context.Background()
	leases, err := bus.NewLeases(ctx, s.JS, "", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pub, targets := &recPublisher{}, &recTargets{}
	a := &Agent{cfg: Config{AgentID: "a1", ShutdownTimeout: 5 * time.Second}, deps: Deps{Publisher: pub, Targets: targets}, log: zerolog.Nop()}
	r := &request{jobID: "job-1", attempt: 1, log: zerolog.Nop()}
	runs := []*diskRun{{ref: repoapi.TargetRef{Repository: "default", JobID: "job-1", VMUUID: "vm-1", DiskKey: 2000}}}
	completed := &schemas.Completed{Header: schemas.Header{ID: "job-1.1.completed.0.0", JobID: "job-1", Attempt: 1}}

	held, err := leases.Acquire(ctx, bus.VMLeaseKey("vm-1"), bus.Holder{Agent: "a1", JobID: "job-1", Attempt: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.publishCompleted(ctx, r, held, completed, runs); err != nil || len(pub.evs) != 1 || len(targets.aborted) != 0 {
		t.Fatalf("with the lease held: err %v, %d events, %d aborted; want the completed event", err, len(pub.evs), len(targets.aborted))
	}
	_ = held.Release(ctx)

	lost, err := leases.Acquire(ctx, bus.VMLeaseKey("vm-2"), bus.Holder{Agent: "a1", JobID: "job-1", Attempt: 1})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := s.JS.KeyValue(ctx, bus.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, bus.VMLeaseKey("vm-2")); err != nil {
		t.Fatal(err)
	}
	pub.evs = nil
	err = a.publishCompleted(ctx, r, lost, completed, runs)
	if reason, _ := classify(err); reason != schemas.FailLeaseLost {
		t.Errorf("lease deleted before completed: %v (reason %s), want %s", err, reason, schemas.FailLeaseLost)
	}
	if len(pub.evs) != 0 {
		t.Errorf("published %d events after losing the lease, want none", len(pub.evs))
	}
	if len(targets.aborted) != 1 || targets.aborted[0] != runs[0].ref {
		t.Errorf("aborted %+v, want the job's target", targets.aborted)
	}
}

// TestAttemptOf: a run's attempt is above every attempt the catalog saw,
// even when the delivery count starts over.
func TestAttemptOf(t *testing.T) {
	for _, tt := range []struct {
		delivered, seen, want int
	}{{1, 0, 1}, {3, 0, 3}, {1, 4, 5}, {6, 4, 6}} {
		if got := attemptOf(tt.delivered, backup.Job{Attempt: tt.seen}); got != tt.want {
			t.Errorf("attemptOf(%d, seen %d) = %d, want %d", tt.delivered, tt.seen, got, tt.want)
		}
	}
}

// TestLeaseLossMidCopy: a copy running under the lease's context stops
// when the lease is deleted mid-copy; the run's error is classified
// lease_lost (not a shutdown), published retryable, and the request comes
// back after the backoff.
func TestLeaseLossMidCopy(t *testing.T) {
	s := bustest.Embedded(t)
	ctx := context.Background()
	leases, err := bus.NewLeases(ctx, s.JS, "", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := leases.Acquire(ctx, bus.VMLeaseKey("vm-1"), bus.Holder{Agent: "a1", JobID: "job-1", Attempt: 1})
	if err != nil {
		t.Fatal(err)
	}
	// The copy: it runs until its context (the lease's) ends.
	copied := make(chan error, 1)
	go func() {
		<-lease.Context().Done()
		copied <- fmt.Errorf("copy disk 2000 of vm vm-1: %w", context.Cause(lease.Context()))
	}()
	kv, err := s.JS.KeyValue(ctx, bus.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, bus.VMLeaseKey("vm-1")); err != nil {
		t.Fatal(err)
	}
	var copyErr error
	select {
	case copyErr = <-copied:
	case <-time.After(30 * time.Second):
		t.Fatal("the copy did not stop within 30 s of its lease being deleted")
	}

	pub := &failPublisher{}
	a := &Agent{
		cfg: Config{AgentID: "a1", MaxAttempts: 5, RetryBackoff: 2 * time.Second, CatalogWait: time.Second,
			ShutdownTimeout: 5 * time.Second, StoreProbeInterval: time.Second},
		deps: Deps{Publisher: pub, Catalog: failedCatalog{}},
		log:  zerolog.New(zerolog.NewTestWriter(t)),
	}
	err = a.whyStopped(ctx, lease, copyErr)
	if reason, retryable := classify(err); reason != schemas.FailLeaseLost || !retryable {
		t.Errorf("copy stopped by a lost lease: %v classified %s, retryable %t; want %s, retryable", err, reason, retryable, schemas.FailLeaseLost)
	}
	msg := &settleMsg{}
	r := &request{msg: msg, jobID: "job-1", attempt: 1, req: schemas.Request{VM: "pgtest1", Repository: "default"}, log: zerolog.New(zerolog.NewTestWriter(t))}
	a.failAndSettle(ctx, r, lease, func() {}, err)
	if len(pub.evs) != 1 {
		t.Fatalf("published %d events, want one backup.failed", len(pub.evs))
	}
	if f := pub.evs[0].(*schemas.Failed); f.Reason != schemas.FailLeaseLost || !f.Retryable {
		t.Errorf("published reason %s retryable %t, want %s, retryable", f.Reason, f.Retryable, schemas.FailLeaseLost)
	}
	if msg.acked || len(msg.naks) != 1 || msg.naks[0] != 2*time.Second {
		t.Errorf("acked %t, naks %v; want one nak after the backoff", msg.acked, msg.naks)
	}
}
