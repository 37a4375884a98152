package system

import (
	"context"
	"encoding/json"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/node/agentapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

// TestCancelMidCopy: admin's cancel of a running job reaches the agent
// running it, which stops the copy, removes the snapshot, aborts the
// target (no file left), releases the lease and publishes backup.failed
// reason canceled, not retryable; the catalog shows the job failed
// (canceled), the request leaves the queue, and the next backup is an
// incremental on the last completed one. Once progress shows the copy
// under way, the target's qemu-nbd is stopped (SIGSTOP) until the cancel
// was answered, so the copy cannot finish before the cancel reaches it.
func TestCancelMidCopy(t *testing.T) {
	t.Parallel()
	h := startHarness(t, func(c *Config) {
		// Progress soon enough to see the copy under way.
		c.AgentConfig.ProgressInterval = 50 * time.Millisecond
	})
	good := h.completed(h.request("bigvm", schemas.TypeAuto, ""))
	if _, err := h.sys.Testbed.WriteRandom("bigvm", 2000, 0.5, 5); err != nil {
		t.Fatal(err)
	}
	id := h.request("bigvm", schemas.TypeAuto, "")
	st := h.waitStarted(id)
	if st.Disks[0].BackupType != schemas.TypeIncremental {
		t.Fatalf("job %s is a %s, want an incremental", id, st.Disks[0].BackupType)
	}
	h.copying(id)
	exports := h.sys.Repos["default"].Exports()
	if len(exports) != 1 {
		t.Fatalf("%d exports open during the copy, want 1", len(exports))
	}
	pid := exports[0].PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reply, err := agentapi.RequestCancel(ctx, h.sys.NC, id, 5*time.Second)
	resume()
	if err != nil {
		t.Fatalf("cancel job %s: %v", id, err)
	}
	if reply.State != agentapi.CancelStopping || reply.Agent != "test-agent" || reply.Attempt != st.Attempt || reply.JobID != id {
		t.Errorf("cancel answer %+v, want agent test-agent stopping attempt %d of %s", reply, st.Attempt, id)
	}

	ev := h.terminal(id)
	f, ok := ev.(*schemas.Failed)
	if !ok {
		b, _ := json.Marshal(ev)
		t.Fatalf("job %s ended with %s, want backup.failed", id, b)
	}
	if f.Reason != schemas.FailCanceled || f.Retryable {
		t.Errorf("failed reason %q retryable=%t (%s), want %s, not retryable", f.Reason, f.Retryable, f.Message, schemas.FailCanceled)
	}
	j := h.job(id, backup.StatusFailed)
	if j.Failure == nil || j.Failure.Reason != schemas.FailCanceled || !j.Ended() {
		t.Errorf("catalog shows job %s failed with %+v, want reason canceled, ended", id, j.Failure)
	}
	h.leaseFree(st.VM.UUID) // released once the catalog showed the failure
	h.checkClean("bigvm", st.VM.UUID, id)
	h.queueDrains()

	// A second cancel finds nobody running it.
	if _, err := agentapi.RequestCancel(ctx, h.sys.NC, id, time.Second); !errors.Is(err, agentapi.ErrNoAgent) {
		t.Errorf("cancel of the canceled job: %v, want ErrNoAgent", err)
	}

	next := h.completed(h.request("bigvm", schemas.TypeAuto, ""))
	if d := next.Disks[0]; d.BackupType != schemas.TypeIncremental || d.Backing != good.JobID || d.BaseChangeID != good.Disks[0].ChangeID {
		t.Errorf("next backup %s backing %q since %q, want incremental on %s", d.BackupType, d.Backing, d.BaseChangeID, good.JobID)
	}
	h.sameData(h.frozen("bigvm", next.JobID, 2000), h.targetPath(next.Disks[0]))
	for _, c := range h.completedEvents() {
		if c.JobID == id {
			t.Errorf("canceled job %s has a completed event", id)
		}
	}
}

// copying waits until a progress event shows job id's copy under way:
// some bytes done, not all.
func (h *harness) copying(id string) {
	h.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for seen := 0; ; {
		h.mu.Lock()
		msgs := h.all[seen:]
		seen = len(h.all)
		h.mu.Unlock()
		for _, m := range msgs {
			if m.Subject != bus.ProgressSubject(id) {
				continue
			}
			ev, err := schemas.Decode(m.Subject, m.Data)
			if p, ok := ev.(*schemas.Progress); err == nil && ok && p.BytesDone > 0 && p.BytesDone < p.BytesTotal {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no progress of job %s within a minute", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leaseFree waits until nobody holds the VM's lease.
func (h *harness) leaseFree(vmUUID string) {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		holder, held, err := h.sys.Leases.Holder(context.Background(), bus.VMLeaseKey(vmUUID))
		if err == nil && !held {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("lease of vm %s still held by %s (%v)", vmUUID, holder, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
