package system

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/testbed"
)

// smallVMs keep the end-to-end tests fast: pgtest1 has two thin disks of
// different sizes, a quarter filled, so 1% guest writes stay well under 10%
// of a full backup.
func smallVMs() []testbed.VMSpec {
	return []testbed.VMSpec{{
		Name: "pgtest1", Seed: 7,
		Disks: []testbed.DiskSpec{
			{CapacityBytes: 256 << 20, FillBytes: 64 << 20},
			{CapacityBytes: 128 << 20, FillBytes: 32 << 20},
		},
	}, {
		Name: "bigvm", Seed: 9,
		Disks: []testbed.DiskSpec{{CapacityBytes: 1 << 30, FillBytes: 768 << 20}},
	}, {
		// edgevm: one sparse disk just over 4 GiB whose capacity is a
		// multiple of 1 KiB but not of 64 KiB or 1 MiB (chain_test.go).
		Name: "edgevm", Seed: 21,
		Disks: []testbed.DiskSpec{{CapacityBytes: edgeCapacity, FillBytes: 8 << 20}},
	}}
}

// syncBuffer collects output for assertions.
type syncBuffer = testutil.Buffer

// harness is a whole pipeline in one process: embedded NATS, catalog, hub,
// agent and the simulated vCenter, plus a recorder of every backup.> message.
type harness struct {
	t    *testing.T
	sys  *System
	logs *syncBuffer
	cat  *catalog.Client

	mu     sync.Mutex
	all    []*nats.Msg
	events chan schemas.Event
}

func startHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-nbd", "nbdkit"} {
		testutil.RequireTool(t, tool)
	}
	logs := &syncBuffer{}
	log := zerolog.New(zerolog.MultiLevelWriter(zerolog.NewTestWriter(t), logs)).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	cfg := Config{
		DataDir:         t.TempDir(),
		NATSListen:      "none",
		Catalog:         true,
		Hub:             true,
		Agent:           true,
		SimulateVCenter: true,
		SimVMs:          smallVMs(),
		AgentID:         "test-agent",
		LeaseTTL:        5 * time.Second,
		Log:             log,
	}
	cfg.AgentConfig.RetryBackoff = 500 * time.Millisecond
	cfg.AgentConfig.LeaseWait = 300 * time.Millisecond
	cfg.AgentConfig.InProgressInterval = 2 * time.Second
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sys, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start system: %v", err)
	}
	h := &harness{t: t, sys: sys, logs: logs, cat: catalog.NewClient(sys.NC), events: make(chan schemas.Event, 4096)}
	sub, err := sys.NC.Subscribe(bus.SubjectAll, func(m *nats.Msg) {
		h.mu.Lock()
		h.all = append(h.all, m)
		h.mu.Unlock()
		if m.Subject == schemas.NameRequested {
			return
		}
		if ev, err := schemas.Decode(m.Subject, m.Data); err == nil {
			if _, ok := ev.(*schemas.Progress); !ok {
				h.events <- ev
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sub.Unsubscribe()
		sys.Stop()
		h.checkAllValid()
		h.checkNothingLeft(cfg.DataDir)
	})
	return h
}

// checkAllValid: every message seen on backup.> validates against its schema.
func (h *harness) checkAllValid() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range h.all {
		if m.Subject == schemas.NameRequested {
			continue // requests may be bad input on purpose
		}
		subject := m.Subject
		if strings.HasPrefix(subject, bus.SubjectSchedulePrefix) {
			subject = m.Header.Get(bus.HeaderScheduleTarget) // a schedule carries what it fires
		}
		if err := schemas.Validate(subject, m.Data); err != nil {
			h.t.Errorf("message on %s does not validate: %v\n%s", m.Subject, err, m.Data)
		}
	}
	if len(h.all) == 0 {
		h.t.Error("no message seen on backup.>")
	}
}

// checkNothingLeft: no qemu-nbd or nbdkit child survives Stop.
func (h *harness) checkNothingLeft(dir string) {
	out, _ := exec.Command("pgrep", "-f", dir).Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		h.t.Errorf("processes still running on %s: %s", dir, s)
	}
}

// publish sends a raw request, as `nats pub backup.requested` does.
func (h *harness) publish(body string) {
	h.t.Helper()
	if _, err := h.sys.JS.Publish(context.Background(), schemas.NameRequested, []byte(body)); err != nil {
		h.t.Fatalf("publish request %s: %v", body, err)
	}
}

// request publishes a request with a known job id.
func (h *harness) request(vm, typ, jobID string) string {
	h.t.Helper()
	if jobID == "" {
		jobID = bus.NewJobID()
	}
	b, _ := json.Marshal(schemas.Request{VM: vm, BackupType: typ, JobID: jobID})
	h.publish(string(b))
	return jobID
}

// next returns the next event matching pred, or fails after timeout.
func (h *harness) next(timeout time.Duration, pred func(schemas.Event) bool) schemas.Event {
	h.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case ev := <-h.events:
			if pred(ev) {
				return ev
			}
		case <-deadline:
			h.t.Fatalf("no matching event within %s", timeout)
			return nil
		}
	}
}

// terminal waits for the job's completed, final failed or rejected event.
func (h *harness) terminal(jobID string) schemas.Event {
	h.t.Helper()
	return h.next(2*time.Minute, func(ev schemas.Event) bool {
		if jobID != "" && ev.EventHeader().JobID != jobID {
			return false
		}
		switch e := ev.(type) {
		case *schemas.Completed, *schemas.Rejected:
			return true
		case *schemas.Failed:
			return !e.Retryable
		}
		return false
	})
}

func (h *harness) completed(jobID string) *schemas.Completed {
	h.t.Helper()
	ev := h.terminal(jobID)
	c, ok := ev.(*schemas.Completed)
	if !ok {
		b, _ := json.Marshal(ev)
		h.t.Fatalf("job %s did not complete: %s", jobID, b)
	}
	return c
}

// job reads the catalog until it shows the job with status.
func (h *harness) job(id, status string) backup.Job {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, err := h.cat.Job(context.Background(), id)
		if err == nil && j.Status == status {
			return j
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("catalog: job %s not %s: %+v %v", id, status, j, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// targetPath is the absolute path of a completed disk's QCOW2.
func (h *harness) targetPath(d schemas.DiskResult) string {
	return filepath.Join(h.sys.Repos["default"].Root(), d.Target)
}

// frozen is the image the testbed froze for a job's snapshot.
func (h *harness) frozen(vm, jobID string, key int32) string {
	h.t.Helper()
	p, err := h.sys.Testbed.SnapshotImageByName(vm, "sendense-"+jobID, key)
	if err != nil {
		h.t.Fatalf("frozen image of job %s disk %d: %v", jobID, key, err)
	}
	return p
}

// sameData: the backup read through its chain equals the raw image.
func (h *harness) sameData(raw, qcow string) {
	h.t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, qcow).CombinedOutput()
	if err != nil {
		h.t.Errorf("qemu-img compare %s %s: %v\n%s", raw, qcow, err, out)
	}
}

type imgInfo struct {
	Filename            string `json:"filename"`
	ActualSize          int64  `json:"actual-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
}

func (h *harness) chain(path string) []imgInfo {
	h.t.Helper()
	out, err := exec.Command("qemu-img", "info", "--output=json", "--backing-chain", "-U", path).Output()
	if err != nil {
		h.t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var infos []imgInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		h.t.Fatal(err)
	}
	return infos
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// metric returns the value of the counter or gauge name (with label
// outcome=outcome when outcome is not empty) in the system's registry, 0
// when it has no sample yet.
func (h *harness) metric(name, outcome string) float64 {
	h.t.Helper()
	families, err := h.sys.Registry.Gather()
	if err != nil {
		h.t.Fatalf("gather metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := outcome == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					match = true
				}
			}
			if !match {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// waitMetric waits (10 s at most) until metric(name, outcome) is want: the
// agent counts a job just after publishing its last event.
func (h *harness) waitMetric(name, outcome string, want float64) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := h.metric(name, outcome)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			h.t.Errorf("metric %s{outcome=%q} = %v, want %v", name, outcome, got, want)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
