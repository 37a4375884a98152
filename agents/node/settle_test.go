package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/node/agentapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

// settleMsg is a request message that records how it was settled.
type settleMsg struct {
	jetstream.Msg
	mu    sync.Mutex
	acked bool
	naks  []time.Duration
}

func (m *settleMsg) Ack() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acked = true
	return nil
}

func (m *settleMsg) NakWithDelay(d time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.naks = append(m.naks, d)
	return nil
}

func (m *settleMsg) Data() []byte { return []byte(`{"vm":"pgtest1"}`) }

// failPublisher records events, or fails every publish with err.
type failPublisher struct {
	recPublisher
	err error
}

func (p *failPublisher) PublishEvent(ctx context.Context, ev schemas.Event) (*jetstream.PubAck, error) {
	if p.err != nil {
		return nil, p.err
	}
	return p.recPublisher.PublishEvent(ctx, ev)
}

// failedCatalog shows every job as failed, as the catalog does once it
// stored the agent's backup.failed.
type failedCatalog struct{}

func (failedCatalog) Job(_ context.Context, id string) (backup.Job, error) {
	return backup.Job{ID: id, Status: backup.StatusFailed}, nil
}

func (failedCatalog) ChainHead(context.Context, string, int32, string) (backup.Link, error) {
	return backup.Link{}, backup.ErrNotFound
}

// TestFailAndSettle: a failed attempt is published as backup.failed with
// the reason where the error was born; a retryable one before the last
// attempt is redelivered later (naked with the backoff; 1 s after a
// shutdown, at least RepositoryFullBackoff when the repository is full),
// the last or a permanent one is acked; a failure that could not be
// published is never acked; NATS unable to store pauses the agent.
func TestFailAndSettle(t *testing.T) {
	const backoff, fullBackoff = 3 * time.Second, time.Minute
	unavailable := fmt.Errorf("publish backup.failed: %w", bus.ErrUnavailable)
	tests := []struct {
		name       string
		err        error
		failures   int // attempts that failed before this one
		publishErr error
		reason     string
		retryable  bool          // of the published event
		nak        time.Duration // 0: acked
		storeDown  bool
	}{
		{"retryable, first attempt", fail(schemas.FailCopy, true, errors.New("read: EIO")), 0, nil, schemas.FailCopy, true, backoff, false},
		{"retryable, third attempt backs off", fail(schemas.FailCopy, true, errors.New("read: EIO")), 2, nil, schemas.FailCopy, true, 4 * backoff, false},
		{"retryable, last attempt", fail(schemas.FailCopy, true, errors.New("read: EIO")), 4, nil, schemas.FailCopy, false, 0, false},
		{"permanent", fail(schemas.FailChangeIDMissing, false, errors.New("no change id")), 0, nil, schemas.FailChangeIDMissing, false, 0, false},
		{"shutdown", fmt.Errorf("copy: %w", context.Canceled), 0, nil, schemas.FailShutdown, true, time.Second, false},
		{"repository full", fail(schemas.FailRepositoryFull, true, errors.New("ENOSPC")), 0, nil, schemas.FailRepositoryFull, true, fullBackoff, false},
		{"nats", fail(schemas.FailNATS, true, errors.New("no responders")), 0, nil, schemas.FailNATS, true, backoff, true},
		{"permanent, not published", fail(schemas.FailChangeIDMissing, false, errors.New("no change id")), 0, unavailable, "", false, backoff, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := &failPublisher{err: tt.publishErr}
			a := &Agent{
				cfg: Config{AgentID: "a1", MaxAttempts: 5, RetryBackoff: backoff, RepositoryFullBackoff: fullBackoff,
					CatalogWait: time.Second, ShutdownTimeout: 5 * time.Second, StoreProbeInterval: time.Second},
				deps: Deps{Publisher: pub, Catalog: failedCatalog{}},
				log:  zerolog.New(zerolog.NewTestWriter(t)),
			}
			msg := &settleMsg{}
			r := &request{msg: msg, jobID: "job-1", attempt: tt.failures + 1, failures: tt.failures,
				req: schemas.Request{VM: "pgtest1", Repository: "default"}, log: zerolog.New(zerolog.NewTestWriter(t))}
			stops := 0
			a.failAndSettle(context.Background(), r, nil, func() { stops++ }, tt.err)

			if stops != 1 {
				t.Errorf("stop called %d times, want once", stops)
			}
			if tt.publishErr == nil {
				if len(pub.evs) != 1 {
					t.Fatalf("published %d events, want one backup.failed", len(pub.evs))
				}
				f, ok := pub.evs[0].(*schemas.Failed)
				if !ok || f.Reason != tt.reason || f.Retryable != tt.retryable || f.Attempt != tt.failures+1 || f.VM.Name != "pgtest1" || f.Repository != "default" {
					t.Errorf("published %+v, want reason %s, retryable %t, attempt %d of vm pgtest1", pub.evs[0], tt.reason, tt.retryable, tt.failures+1)
				}
				if b, err := json.Marshal(f); err != nil || schemas.Validate(schemas.NameFailed, b) != nil {
					t.Errorf("backup.failed does not validate: %v %v", err, schemas.Validate(schemas.NameFailed, b))
				}
			}
			switch {
			case tt.nak == 0 && (!msg.acked || len(msg.naks) != 0):
				t.Errorf("acked %t, naks %v; want acked only", msg.acked, msg.naks)
			case tt.nak != 0 && (msg.acked || len(msg.naks) != 1 || msg.naks[0] != tt.nak):
				t.Errorf("acked %t, naks %v; want one nak after %s", msg.acked, msg.naks, tt.nak)
			}
			if down := a.Ready() != nil; down != tt.storeDown {
				t.Errorf("agent paused (store down) = %t, want %t", down, tt.storeDown)
			}
		})
	}
}

// TestCancel: Cancel stops a job this agent runs (its context ends with
// cause ErrCanceled) and the job then fails as canceled, never retried,
// whatever the interrupted step said; a job whose outcome is decided
// answers too late and runs on; a job this agent does not run gets no
// answer.
func TestCancel(t *testing.T) {
	pub := &failPublisher{}
	a := &Agent{
		cfg: Config{AgentID: "a1", MaxAttempts: 5, RetryBackoff: time.Second, CatalogWait: time.Second,
			ShutdownTimeout: 5 * time.Second, StoreProbeInterval: time.Second},
		deps: Deps{Publisher: pub, Catalog: failedCatalog{}},
		log:  zerolog.New(zerolog.NewTestWriter(t)),
		jobs: map[string]*tracked{},
	}
	if _, ok := a.Cancel("job-1"); ok {
		t.Fatal("Cancel of a job the agent does not run answered")
	}
	msg := &settleMsg{}
	r := &request{msg: msg, jobID: "job-1", attempt: 2, failures: 1,
		req: schemas.Request{VM: "pgtest1", Repository: "default"}, log: zerolog.New(zerolog.NewTestWriter(t))}
	jctx, untrack := a.track(context.Background(), r)
	reply, ok := a.Cancel("job-1")
	if !ok || reply != (agentapi.CancelReply{Agent: "a1", JobID: "job-1", Attempt: 2, State: agentapi.CancelStopping}) {
		t.Errorf("Cancel = %+v, %t; want a1 stopping attempt 2", reply, ok)
	}
	if !errors.Is(context.Cause(jctx), ErrCanceled) {
		t.Errorf("job context after Cancel: %v (cause %v), want canceled by ErrCanceled", jctx.Err(), context.Cause(jctx))
	}
	if again, _ := a.Cancel("job-1"); again.State != agentapi.CancelStopping {
		t.Errorf("second Cancel = %+v, want stopping again", again)
	}
	// The copy saw its context end; it would be retried as a shutdown.
	a.failAndSettle(context.Background(), r, nil, func() {}, fmt.Errorf("copy disk 2000: %w", context.Canceled))
	untrack()
	if len(pub.evs) != 1 {
		t.Fatalf("published %d events, want one backup.failed", len(pub.evs))
	}
	if f := pub.evs[0].(*schemas.Failed); f.Reason != schemas.FailCanceled || f.Retryable {
		t.Errorf("published reason %s retryable %t, want canceled, not retryable", f.Reason, f.Retryable)
	}
	if !msg.acked || len(msg.naks) != 0 {
		t.Errorf("request acked %t, naks %v; want acked (never retried)", msg.acked, msg.naks)
	}
	if _, ok := a.Cancel("job-1"); ok {
		t.Error("Cancel answered for a job that ended")
	}

	// Its copy done, the job's outcome is decided: too late.
	r2 := &request{jobID: "job-2", attempt: 1, log: r.log}
	jctx2, untrack2 := a.track(context.Background(), r2)
	defer untrack2()
	if a.settle("job-2") {
		t.Fatal("settle of a job nobody canceled says canceled")
	}
	if reply, ok := a.Cancel("job-2"); !ok || reply.State != agentapi.CancelTooLate {
		t.Errorf("Cancel after the outcome = %+v, %t; want too late", reply, ok)
	}
	if jctx2.Err() != nil {
		t.Errorf("a job canceled too late was stopped: %v", context.Cause(jctx2))
	}
}

// recordedCancels holds durable cancel records by job id (bus.Cancels).
type recordedCancels map[string]bus.CancelRecord

func (c recordedCancels) Canceled(_ context.Context, id string) (bus.CancelRecord, bool, error) {
	rec, ok := c[id]
	return rec, ok, nil
}

// redelivery is the second delivery of job-1's request at stream seq 7.
type redelivery struct{ settleMsg }

func (m *redelivery) Data() []byte { return []byte(`{"vm":"pgtest1","job_id":"job-1"}`) }

func (m *redelivery) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: 2, Sequence: jetstream.SequencePair{Stream: 7}}, nil
}

// runningCatalog shows job-1 running attempt 1 (from request seq 7) until
// the agent published its outcome, then failed.
type runningCatalog struct{ pub *failPublisher }

func (c runningCatalog) Job(_ context.Context, id string) (backup.Job, error) {
	if len(c.pub.evs) > 0 {
		return backup.Job{ID: id, Status: backup.StatusFailed}, nil
	}
	return backup.Job{ID: id, Status: backup.StatusRunning, Attempt: 1, RequestSeq: 7}, nil
}

func (runningCatalog) ChainHead(context.Context, string, int32, string) (backup.Link, error) {
	return backup.Link{}, backup.ErrNotFound
}

// TestRedeliveryOfCanceledJob: the agent that stopped a canceled job died
// before it published the outcome, so the request comes again. The agent
// taking it finds the cancel record and ends the job as canceled, never
// retried, without resolving the VM (VCenter is nil: any use would panic).
func TestRedeliveryOfCanceledJob(t *testing.T) {
	pub := &failPublisher{}
	a := &Agent{
		cfg: Config{AgentID: "a2", MaxAttempts: 5, RetryBackoff: time.Second, CatalogWait: time.Second,
			ShutdownTimeout: 5 * time.Second, StoreProbeInterval: time.Second, InProgressInterval: time.Hour},
		deps: Deps{Publisher: pub, Catalog: runningCatalog{pub}, Cancels: recordedCancels{
			"job-1": {By: "ops@desk", At: time.Date(2026, 12, 2, 18, 0, 0, 0, time.UTC)}}},
		log:  zerolog.New(zerolog.NewTestWriter(t)),
		jobs: map[string]*tracked{},
	}
	msg := &redelivery{}
	a.handle(context.Background(), msg)
	if len(pub.evs) != 1 {
		t.Fatalf("published %d events, want one backup.failed", len(pub.evs))
	}
	f, ok := pub.evs[0].(*schemas.Failed)
	if !ok || f.Reason != schemas.FailCanceled || f.Retryable || f.Attempt != 2 || f.JobID != "job-1" {
		t.Fatalf("published %+v, want job-1 attempt 2 failed, reason canceled, not retryable", pub.evs[0])
	}
	if want := "recorded by ops@desk at 2026-12-02T18:00:00Z; attempt 2 did not run"; !strings.Contains(f.Message, want) {
		t.Errorf("message %q, want it to say %q", f.Message, want)
	}
	if !msg.acked || len(msg.naks) != 0 {
		t.Errorf("request acked %t, naks %v; want acked (never run again)", msg.acked, msg.naks)
	}
}
