package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// env is one test's NATS server (embedded or external), streams, catalog
// file, publisher, metrics registry, captured log and the terminated
// advisories of the catalog consumer.
type env struct {
	t    *testing.T
	srv  *bustest.Server
	js   jetstream.JetStream
	path string
	cat  *store.Catalog
	pub  *bus.Publisher
	reg  *prometheus.Registry
	log  zerolog.Logger
	logs *logSink

	mu    sync.Mutex
	terms []termAdvisory
}

type termAdvisory struct {
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
	Reason     string `json:"reason"`
}

func newEnv(t *testing.T, start bustest.StartFunc) *env {
	t.Helper()
	logs := newLogSink(t)
	e := &env{t: t, srv: start(t), reg: prometheus.NewRegistry(), logs: logs}
	e.log = zerolog.New(logs).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	e.js = e.srv.JS
	if err := bus.EnsureStreams(testCtx(t), e.js, bus.StreamOptions{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	e.pub = catalogtest.Publisher(e.js, e.log)
	e.path = filepath.Join(t.TempDir(), "catalog.db")
	e.cat = openCatalog(t, e.path, e.log)
	sub, err := e.srv.Conn.Subscribe(jetstreamAdvisoryTerminated, func(m *nats.Msg) {
		var a termAdvisory
		if json.Unmarshal(m.Data, &a) == nil {
			e.mu.Lock()
			e.terms = append(e.terms, a)
			e.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatalf("subscribe to advisories: %v", err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return e
}

const jetstreamAdvisoryTerminated = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED." + bus.StreamEvents + "." + bus.ConsumerCatalog

// openCatalog opens a catalog file and, like bbolt's btesting, checks its
// consistency and closes it in cleanup.
func openCatalog(t *testing.T, path string, log zerolog.Logger) *store.Catalog {
	t.Helper()
	cat, err := store.Open(path, &store.Options{Logger: log})
	if err != nil {
		t.Fatalf("open catalog %s: %v", path, err)
	}
	t.Cleanup(func() {
		if err := cat.Check(); err != nil && !strings.Contains(err.Error(), "database not open") {
			t.Errorf("consistency check of %s: %v", path, err)
		}
		_ = cat.Close()
	})
	return cat
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// runner is a Run in the background.
type runner struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// start runs the consumer until stop (or cleanup). opts.Log and
// opts.Registry default to the env's.
func (e *env) start(opts Options) *runner {
	e.t.Helper()
	if opts.Registry == nil {
		opts.Registry = e.reg
	}
	opts.Log = e.log
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- Run(ctx, e.js, e.cat, opts) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

// stop cancels the consumer and fails the test if it does not return nil
// within 10 s. Safe to call twice.
func (r *runner) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return within 10s of cancel")
		}
	})
}

// publishMany publishes evs from several goroutines.
func (e *env) publishMany(evs ...schemas.Event) {
	e.t.Helper()
	if err := catalogtest.PublishParallel(testCtx(e.t), e.pub, 8, evs...); err != nil {
		e.t.Fatalf("publish: %v", err)
	}
}

func (e *env) publish(evs ...schemas.Event) {
	e.t.Helper()
	if err := catalogtest.Publish(testCtx(e.t), e.pub, evs...); err != nil {
		e.t.Fatalf("publish: %v", err)
	}
}

// publishRaw stores payload as the test agent's event name (on
// backup.<type>.<agent>) with message id id, bypassing every check a
// producer would make. It returns the stream sequence.
func (e *env) publishRaw(name, id string, payload []byte) uint64 {
	e.t.Helper()
	subject := bus.AgentSubject(name, catalogtest.Agent)
	ack, err := e.js.PublishMsg(testCtx(e.t), &nats.Msg{Subject: subject, Data: payload}, jetstream.WithMsgID(id))
	if err != nil {
		e.t.Fatalf("publish raw %s on %s: %v", id, subject, err)
	}
	return ack.Sequence
}

// waitFor polls cond every 10 ms for up to 30 s.
func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitIdle waits until the catalog consumer has nothing pending and
// nothing unacknowledged.
func (e *env) waitIdle() {
	e.t.Helper()
	e.waitFor("catalog consumer idle", func() bool {
		ctx := testCtx(e.t)
		st, err := e.js.Stream(ctx, bus.StreamEvents)
		if err != nil {
			return false
		}
		c, err := e.js.Consumer(ctx, bus.StreamEvents, bus.ConsumerCatalog)
		if err != nil {
			return false
		}
		// Every message published so far acked or terminated: the ack
		// floor. NumPending alone can read 0 on a consumer created a
		// moment ago, before the server has counted the stream for it.
		info, err := c.Info(ctx)
		return err == nil && info.AckFloor.Stream >= st.CachedInfo().State.LastSeq &&
			info.NumPending == 0 && info.NumAckPending == 0
	})
}

// waitJob waits until the catalog has job id with status.
func (e *env) waitJob(id, status string) backup.Job {
	e.t.Helper()
	var j backup.Job
	e.waitFor(fmt.Sprintf("job %s %s", id, status), func() bool {
		var err error
		j, err = e.cat.Job(id)
		return err == nil && j.Status == status
	})
	return j
}

func (e *env) termFor(seq uint64) (termAdvisory, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, a := range e.terms {
		if a.StreamSeq == seq {
			return a, true
		}
	}
	return termAdvisory{}, false
}

func (e *env) dump() store.Snapshot {
	e.t.Helper()
	s, err := e.cat.Dump()
	if err != nil {
		e.t.Fatalf("dump: %v", err)
	}
	return s
}

// metric returns the value of a counter (or a histogram's count) in the
// env's registry; labels as name=value pairs.
func (e *env) metric(name string, labels ...string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
		}
	}
	return 0
}

// reference applies evs, in the given order and in one batch, to a fresh
// catalog and returns its snapshot: what the live catalog, filled by the
// consumer in other batches and another order, must equal.
func reference(t *testing.T, evs ...schemas.Event) store.Snapshot {
	t.Helper()
	cat := openCatalog(t, filepath.Join(t.TempDir(), "reference.db"), zerolog.Nop())
	if _, err := cat.Apply(catalogtest.FromAgent(evs...)...); err != nil {
		t.Fatalf("reference apply: %v", err)
	}
	s, err := cat.Dump()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func requireEqual(t *testing.T, want, got store.Snapshot) {
	t.Helper()
	if want.Equal(got) {
		return
	}
	a, _ := json.MarshalIndent(want, "", " ")
	b, _ := json.MarshalIndent(got, "", " ")
	t.Fatalf("catalogs differ (%d vs %d jobs), %s", len(want.Jobs), len(got.Jobs),
		testutil.FirstDiff(strings.Split(string(a), "\n"), strings.Split(string(b), "\n")))
}

// logSink writes log lines to the test log and keeps them for assertions.
// It goes quiet once the test's cleanups have run.
type logSink struct {
	mu      sync.Mutex
	w       io.Writer
	buf     bytes.Buffer
	stopped bool
}

func newLogSink(t *testing.T) *logSink {
	s := &logSink{w: zerolog.NewTestWriter(t)}
	t.Cleanup(func() {
		s.mu.Lock()
		s.stopped = true
		s.mu.Unlock()
	})
	return s
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return len(p), nil
	}
	s.buf.Write(p)
	return s.w.Write(p)
}

// lines returns the logged JSON objects whose message is msg.
func (s *logSink) lines(msg string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range bytes.Split(s.buf.Bytes(), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(l, &m) == nil && m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}
