package hub_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/bus"
)

// tinyGrace makes every target old enough to reap at once.
func tinyGrace(o *hub.RepoOptions) { o.ReapGrace = time.Nanosecond }

// TestReapTargetWithoutLease: a target whose job does not hold its VM's
// lease (the agent vanished, or another job has the VM now) is reaped: its
// export is stopped and its partial file removed.
func TestReapTargetWithoutLease(t *testing.T) {
	tests := []struct {
		name   string
		holder string // job id of the lease holder; "" leaves the lease untaken
	}{
		{"lease never taken", ""},
		{"lease held by another job", "other"},
		{"lease held by a job whose id contains this one", "job-x-2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newSvcEnv(t, tinyGrace)
			ctx := testCtx(t)
			if tc.holder != "" {
				le, err := e.leases.Acquire(ctx, bus.VMLeaseKey(testVM), bus.Holder{Agent: "agent", JobID: tc.holder, Attempt: 1})
				if err != nil {
					t.Fatalf("acquire lease: %v", err)
				}
				t.Cleanup(func() { _ = le.Release(context.Background()) })
			}
			raw := filepath.Join(t.TempDir(), "disk.raw")
			writeRaw(t, raw, 20)
			out, pid := e.mustOpen(t, openReq("job-x", ""))
			nbdcopy(t, raw, out.URI)

			e.svc.Reap(ctx)

			assertGone(t, pid)
			assertNoFile(t, out.Path)
			e.assertNoExports(t)
			if _, err := e.client.Close(ctx, ref("job-x")); serviceCode(err) != repoapi.CodeNotFound {
				t.Errorf("close of reaped target: error %v, want code %s", err, repoapi.CodeNotFound)
			}
		})
	}
}

// TestReapKeepsTargetOfLeaseHolder: a target whose job holds the VM's
// lease is kept and stays writable; once the lease is released, the next
// reap removes it.
func TestReapKeepsTargetOfLeaseHolder(t *testing.T) {
	e := newSvcEnv(t, tinyGrace)
	ctx := testCtx(t)
	dir := t.TempDir()
	writeRaw(t, filepath.Join(dir, "a.raw"), 21)
	writeRaw(t, filepath.Join(dir, "b.raw"), 22)

	le, err := e.leases.Acquire(ctx, bus.VMLeaseKey(testVM), bus.Holder{Agent: "agent", JobID: "job-x", Attempt: 1})
	if err != nil {
		t.Fatalf("acquire lease: %v", err)
	}
	t.Cleanup(func() { _ = le.Release(context.Background()) })
	out, pid := e.mustOpen(t, openReq("job-x", ""))
	nbdcopy(t, filepath.Join(dir, "a.raw"), out.URI)

	e.svc.Reap(ctx)
	if e.svc.OpenTargets() != 1 || e.exportPID(t, out.Path, false) != pid {
		t.Fatalf("target of the lease holder was reaped")
	}
	// Still served: the copy goes on.
	nbdcopy(t, filepath.Join(dir, "b.raw"), out.URI)

	if err := le.Release(ctx); err != nil {
		t.Fatalf("release lease: %v", err)
	}
	e.svc.Reap(ctx)
	assertGone(t, pid)
	assertNoFile(t, out.Path)
	e.assertNoExports(t)
}

// TestReapGrace: a fresh target is not reaped before ReapGrace has passed,
// even when its job does not hold the lease yet (an agent opens targets
// right after taking the lease; the grace covers lease expiry races).
func TestReapGrace(t *testing.T) {
	e := newSvcEnv(t, func(o *hub.RepoOptions) { o.ReapGrace = time.Hour })
	ctx := testCtx(t)
	out, pid := e.mustOpen(t, openReq("job-young", ""))
	e.svc.Reap(ctx)
	if e.svc.OpenTargets() != 1 || e.exportPID(t, out.Path, false) != pid {
		t.Fatalf("target reaped before its grace period")
	}
	if _, err := os.Stat(out.Path); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Close(ctx, ref("job-young")); err != nil {
		t.Fatalf("close: %v", err)
	}
	e.assertNoExports(t)
}

// TestReapKeepsCompletedBackups: reaping only touches open targets; the
// files of closed (completed) targets stay.
func TestReapKeepsCompletedBackups(t *testing.T) {
	e := newSvcEnv(t, tinyGrace)
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 23)
	e.fullBackup(t, "job-done", raw)
	out, pid := e.mustOpen(t, openReq("job-partial", "job-done"))

	e.svc.Reap(ctx)

	assertGone(t, pid)
	assertNoFile(t, out.Path)
	done := filepath.Join(e.repo.Root(), testVM, "2000", "job-done.qcow2")
	if !compareImages(t, raw, done) {
		t.Errorf("completed backup changed by the reaper")
	}
	e.assertNoExports(t)
}

// TestReapExpiredRestores: a restore export outliving RestoreTTL is closed
// by the reaper; its backup file stays.
func TestReapExpiredRestores(t *testing.T) {
	e := newSvcEnv(t, func(o *hub.RepoOptions) { o.RestoreTTL = time.Millisecond })
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 24)
	e.fullBackup(t, "job-r", raw)
	rs, err := e.client.OpenRestore(ctx, ref("job-r"))
	if err != nil {
		t.Fatalf("open restore: %v", err)
	}
	pid := e.exportPID(t, rs.Path, true)
	if pid == 0 {
		t.Fatalf("no restore export")
	}
	time.Sleep(5 * time.Millisecond)

	e.svc.Reap(ctx)

	assertGone(t, pid)
	e.assertNoExports(t)
	if !compareImages(t, raw, rs.Path) {
		t.Errorf("backup changed or removed by reaping its restore export")
	}
	if err := e.client.CloseRestore(ctx, rs.ExportID); serviceCode(err) != repoapi.CodeNotFound {
		t.Errorf("close of reaped restore export: error %v, want code %s", err, repoapi.CodeNotFound)
	}
}

// hookLeases is the real lease bucket with a hook that runs once, inside
// the reaper's first lease lookup: it lets a test act in the window between
// the reaper picking a target and deciding about it.
type hookLeases struct {
	leases *bus.Leases
	once   sync.Once
	hook   func()
}

func (h *hookLeases) Holder(ctx context.Context, key string) (bus.Holder, bool, error) {
	h.once.Do(h.hook)
	return h.leases.Holder(ctx, key)
}

// TestReapSparesNewerAttempt: while the reaper looks at attempt 1's
// target (its agent vanished), attempt 2 of the same job reopens it and
// takes the lease. The reaper must not reap attempt 2's target.
func TestReapSparesNewerAttempt(t *testing.T) {
	hl := &hookLeases{}
	e := newSvcEnv(t, func(o *hub.RepoOptions) {
		o.ReapGrace = time.Nanosecond
		hl.leases = o.Leases.(*bus.Leases)
		o.Leases = hl
	})
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 25)

	first, pid1 := e.mustOpen(t, openReq("job-y", ""))
	var second repoapi.OpenReply
	var pid2 int
	hl.hook = func() {
		req := openReq("job-y", "")
		req.Attempt = 2
		second, pid2 = e.mustOpen(t, req)
	}
	// Attempt 2's agent takes the lease only after its target is open, so
	// the reaper, which read "nobody" for attempt 1, sees nobody too.
	e.svc.Reap(ctx)
	assertGone(t, pid1)
	if second.Path != first.Path {
		t.Fatalf("attempt 2 path %s, want %s", second.Path, first.Path)
	}
	// Attempt 2 was opened after the reaper chose its victims: it is young
	// in its own right and must still be served and closable.
	if e.svc.OpenTargets() != 1 || e.exportPID(t, second.Path, false) != pid2 {
		t.Fatalf("attempt 2's target was reaped or orphaned: %d open targets, exports %d", e.svc.OpenTargets(), len(e.repo.Exports()))
	}
	nbdcopy(t, raw, second.URI)
	if _, err := e.client.Close(ctx, ref("job-y")); err != nil {
		t.Fatalf("close attempt 2: %v", err)
	}
	if !compareImages(t, raw, second.Path) {
		t.Errorf("attempt 2's backup differs from its source")
	}
	assertGone(t, pid2)
	e.assertNoExports(t)
}
