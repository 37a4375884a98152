package system

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/node"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

// waitStarted returns the job's backup.started event.
func (h *harness) waitStarted(jobID string) *schemas.Started {
	h.t.Helper()
	ev := h.next(time.Minute, func(ev schemas.Event) bool {
		_, ok := ev.(*schemas.Started)
		return ok && ev.EventHeader().JobID == jobID
	})
	return ev.(*schemas.Started)
}

// checkClean: no snapshot on the VM, no export open, no file of the job in
// the repository, and the VM's lease is free.
func (h *harness) checkClean(vm, vmUUID, jobID string) {
	h.t.Helper()
	if snaps := h.snapshots(vm); len(snaps) != 0 {
		h.t.Errorf("snapshots left on %s: %v", vm, snaps)
	}
	if ex := h.sys.Repos["default"].Exports(); len(ex) != 0 {
		h.t.Errorf("%d exports left open", len(ex))
	}
	matches, _ := filepath.Glob(filepath.Join(h.sys.Repos["default"].Root(), vmUUID, "*", jobID+".qcow2"))
	if len(matches) != 0 {
		h.t.Errorf("partial files left: %v", matches)
	}
	holder, held, err := h.sys.Leases.Holder(context.Background(), bus.VMLeaseKey(vmUUID))
	if err != nil || held {
		h.t.Errorf("lease of %s still held by %s (%v)", vm, holder, err)
	}
}

// TestTargetKilledMidCopy: killing the target's qemu-nbd during the copy
// gives backup.failed with the reason; no snapshot, export or partial file
// is left; the next backup's base is the last good one.
func TestTargetKilledMidCopy(t *testing.T) {
	t.Parallel()
	h := startHarness(t, func(c *Config) { c.AgentConfig.MaxAttempts = 1 })
	good := h.completed(h.request("bigvm", schemas.TypeAuto, ""))
	if _, err := h.sys.Testbed.WriteRandom("bigvm", 2000, 0.5, 3); err != nil {
		t.Fatal(err)
	}
	id := h.request("bigvm", schemas.TypeAuto, "")
	h.waitStarted(id)
	exports := h.sys.Repos["default"].Exports()
	if len(exports) != 1 {
		t.Fatalf("%d exports open during the copy, want 1", len(exports))
	}
	if err := syscall.Kill(exports[0].PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := h.terminal(id)
	f, ok := ev.(*schemas.Failed)
	if !ok {
		b, _ := json.Marshal(ev)
		t.Fatalf("job %s: %s, want backup.failed", id, b)
	}
	if f.Reason != schemas.FailCopy && f.Reason != schemas.FailRepository {
		t.Errorf("failed reason %q (%s), want %s or %s", f.Reason, f.Message, schemas.FailCopy, schemas.FailRepository)
	}
	h.job(id, backup.StatusFailed)
	h.checkClean("bigvm", good.VM.UUID, id)

	next := h.completed(h.request("bigvm", schemas.TypeAuto, ""))
	if d := next.Disks[0]; d.BackupType != schemas.TypeIncremental || d.Backing != good.JobID || d.BaseChangeID != good.Disks[0].ChangeID {
		t.Errorf("next backup %s backing %q since %q, want incremental on %s", d.BackupType, d.Backing, d.BaseChangeID, good.JobID)
	}
	h.sameData(h.frozen("bigvm", next.JobID, 2000), h.targetPath(next.Disks[0]))
}

// TestAgentStopMidCopy: an agent stopped during a copy fails its job as
// retryable and releases its snapshot, targets and lease; another agent
// then completes the job.
func TestAgentStopMidCopy(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	id := h.request("bigvm", schemas.TypeFull, "")
	st := h.waitStarted(id)
	stopped := time.Now()
	h.sys.StopRole("agent")
	if d := time.Since(stopped); d > 40*time.Second {
		t.Errorf("agent took %s to stop", d)
	}
	ev := h.next(time.Minute, func(ev schemas.Event) bool {
		_, ok := ev.(*schemas.Failed)
		return ok && ev.EventHeader().JobID == id
	})
	if f := ev.(*schemas.Failed); f.Reason != schemas.FailShutdown || !f.Retryable {
		t.Errorf("failed %s retryable=%t, want %s retryable", f.Reason, f.Retryable, schemas.FailShutdown)
	}
	h.checkClean("bigvm", st.VM.UUID, id)

	// A new agent takes the redelivered request and completes the job.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.sys.startAgent(ctx); err != nil {
		t.Fatal(err)
	}
	c := h.completed(id)
	if c.Attempt < 2 {
		t.Errorf("completed at attempt %d, want a later attempt", c.Attempt)
	}
	h.sameData(h.frozen("bigvm", id, 2000), h.targetPath(c.Disks[0]))
	_ = os.Getpid
}

// TestTransientFailureGivesUp: a transient failure (the repository service
// is gone) is retried with backoff up to the attempt limit, each attempt
// reported as a retryable backup.failed, then a final backup.failed; the
// request leaves the work queue.
func TestTransientFailureGivesUp(t *testing.T) {
	t.Parallel()
	h := startHarness(t, func(c *Config) { c.AgentConfig.MaxAttempts = 3 })
	h.sys.StopRole("repository")
	id := h.request("pgtest1", schemas.TypeAuto, "")
	for attempt := 1; attempt <= 3; attempt++ {
		ev := h.next(time.Minute, func(ev schemas.Event) bool {
			_, ok := ev.(*schemas.Failed)
			return ok && ev.EventHeader().JobID == id
		})
		f := ev.(*schemas.Failed)
		if f.Attempt != attempt || f.Reason != schemas.FailRepository || f.Retryable != (attempt < 3) {
			t.Errorf("failure %d: attempt %d reason %s retryable %t", attempt, f.Attempt, f.Reason, f.Retryable)
		}
	}
	h.job(id, backup.StatusFailed)
	h.queueDrains()
	h.waitMetric("sendense_agent_jobs_total", node.OutcomeFailed, 3)
	h.waitMetric("sendense_agent_jobs_running", "", 0)
}

// TestStaleSnapshots: before a backup the agent removes sendense-*
// snapshots of jobs the catalog knows are finished, and leaves those of
// jobs it does not know.
func TestStaleSnapshots(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	done := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	ctx := context.Background()
	vm, err := h.sys.vc.FindVM(ctx, "pgtest1")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sendense-" + done.JobID, "sendense-unknown-job"} {
		if _, err := h.sys.vc.CreateSnapshot(ctx, vm, name, false); err != nil {
			t.Fatal(err)
		}
	}
	h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	left := h.snapshots("pgtest1")
	if len(left) != 1 || left[0] != "sendense-unknown-job" {
		t.Errorf("snapshots after the backup: %v, want only sendense-unknown-job", left)
	}
}
