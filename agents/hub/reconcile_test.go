package hub_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
)

// graceHour makes files younger than an hour safe from reconciliation;
// old is well past it.
func graceHour(o *hub.RepoOptions) { o.ReconcileGrace = time.Hour }

var old = time.Now().Add(-3 * time.Hour).Truncate(time.Second)

// TestReconcile: one round removes exactly the orphans, the 628 MiB leak
// in small: a partial file of a job that the catalog shows failed, whose
// later attempts failed before reopening their target, with no lease held.
// It keeps a completed job's file, an open target, the file of a job that
// holds its VM's lease, a young file, and a file another kept file backs
// onto; an orphan backed by an orphan goes, then its base. Old temporary
// files of crashed creates go too. Each removal is counted.
func TestReconcile(t *testing.T) {
	e := newSvcEnv(t, graceHour)
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 50)

	// Orphans.
	killed := e.makeFile(t, "job-killed", "", raw, old) // written, then the job failed
	e.catalog.set(job("job-killed", backup.StatusFailed, "", testDisk))
	unknown := e.makeFile(t, "job-unknown", "", "", old) // the catalog never heard of it
	orphanBase := e.makeFile(t, "job-o1", "", "", old)
	orphanInc := e.makeFile(t, "job-o2", "job-o1", "", old)
	setMtime(t, orphanBase, old)
	tmpOld := filepath.Join(filepath.Dir(killed), ".job-crash.qcow2.123.tmp")
	writeFile(t, tmpOld, 8192, old)

	// Kept.
	done := e.makeFile(t, "job-done", "", raw, old)
	e.catalog.set(job("job-done", backup.StatusCompleted, "", testDisk))
	young := e.makeFile(t, "job-young", "", "", time.Time{})
	e.catalog.set(job("job-young", backup.StatusFailed, "", testDisk))
	tmpYoung := filepath.Join(filepath.Dir(killed), ".job-crash2.qcow2.456.tmp")
	writeFile(t, tmpYoung, 8192, time.Time{})
	leasedKey := int32(2001)
	leasedReq := openReq("job-leased", "")
	leasedReq.DiskKey = leasedKey
	leased, err := e.repo.Create(ctx, testVM, leasedKey, "job-leased", testCapacity, "")
	if err != nil {
		t.Fatal(err)
	}
	setMtime(t, leased, old)
	le, err := e.leases.Acquire(ctx, bus.VMLeaseKey(testVM), bus.Holder{Agent: "agent-test", JobID: "job-leased", Attempt: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = le.Release(context.Background()) })
	openReply, openPID := e.mustOpen(t, openReq("job-open", ""))
	setMtime(t, openReply.Path, old)
	base := e.makeFile(t, "job-base", "", "", old) // not completed, but a completed job backs onto it
	backed := e.makeFile(t, "job-backed", "job-base", "", old)
	setMtime(t, base, old)
	e.catalog.set(job("job-backed", backup.StatusCompleted, "job-base", testDisk))

	st, _ := os.Stat(killed)
	killedBytes := allocated(t, killed)
	orphans, err := e.svc.Reconcile(ctx)
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}

	for _, p := range []string{killed, unknown, orphanBase, orphanInc, tmpOld} {
		assertNoFile(t, p)
	}
	for _, p := range []string{done, young, tmpYoung, leased, openReply.Path, base, backed} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("kept file: %v", err)
		}
	}
	if !compareImages(t, raw, done) {
		t.Errorf("completed backup changed")
	}
	if e.exportPID(t, openReply.Path, false) != openPID || e.svc.OpenTargets() != 1 {
		t.Errorf("open target no longer served")
	}

	got := map[string]repoapi.Orphan{}
	var bytes int64
	for _, o := range orphans {
		got[filepath.Base(o.Path)] = o
		if o.Removed {
			bytes += o.Bytes
		}
	}
	wantRemoved := []string{"job-killed.qcow2", "job-unknown.qcow2", "job-o1.qcow2", "job-o2.qcow2", filepath.Base(tmpOld)}
	for _, name := range wantRemoved {
		if o, ok := got[name]; !ok || !o.Removed {
			t.Errorf("orphan %s: %+v, want removed", name, o)
		}
	}
	if o := got["job-base.qcow2"]; o.Removed || o.Kept == "" {
		t.Errorf("base of a completed backup: %+v, want kept with a reason", o)
	}
	if len(got) != len(wantRemoved)+1 {
		t.Errorf("orphans reported: %v, want %d", keys(got), len(wantRemoved)+1)
	}
	if o := got["job-killed.qcow2"]; o.JobID != "job-killed" || o.VMUUID != testVM || o.DiskKey != testDisk ||
		o.Repository != testRepo || o.Bytes != killedBytes || !o.ModTime.Equal(st.ModTime()) {
		t.Errorf("orphan report %+v, want job-killed of %s disk %d, %d bytes", o, testVM, testDisk, killedBytes)
	}
	if killedBytes < 1<<20 {
		t.Errorf("the killed job's file held %d bytes; the test wants a written partial file", killedBytes)
	}
	if n := e.counter(t, "sendense_repo_reconciled_files_total", map[string]string{"repository": testRepo}); n != float64(len(wantRemoved)) {
		t.Errorf("sendense_repo_reconciled_files_total = %v, want %d", n, len(wantRemoved))
	}
	if n := e.counter(t, "sendense_repo_reconciled_bytes_total", map[string]string{"repository": testRepo}); n != float64(bytes) || bytes < killedBytes {
		t.Errorf("sendense_repo_reconciled_bytes_total = %v, want %d", n, bytes)
	}
	if n := e.counter(t, "sendense_repo_reconcile_rounds_total", map[string]string{"result": hub.RoundDone}); n != 1 {
		t.Errorf("rounds done = %v, want 1", n)
	}

	// A second round finds only what it keeps.
	orphans, err = e.svc.Reconcile(ctx)
	if err != nil || len(orphans) != 1 || orphans[0].Removed {
		t.Errorf("second round: %+v, %v, want only job-base kept", orphans, err)
	}
}

// TestReconcileLeaseHolderOnly: the lease keeps the files of the job that
// holds it, not those of other jobs of the VM.
func TestReconcileLeaseHolderOnly(t *testing.T) {
	e := newSvcEnv(t, graceHour)
	ctx := testCtx(t)
	mine := e.makeFile(t, "job-holder", "", "", old)
	other := e.makeFile(t, "job-other", "", "", old)
	le, err := e.leases.Acquire(ctx, bus.VMLeaseKey(testVM), bus.Holder{Agent: "agent-test", JobID: "job-holder", Attempt: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = le.Release(context.Background()) })
	if _, err := e.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("file of the lease holder: %v", err)
	}
	assertNoFile(t, other)
}

// TestReconcileSkipsWhenCatalogBehind: while the catalog has not applied
// everything in BACKUP_EVENTS (or does not answer), a round removes
// nothing, says why and is counted skipped; the next round with the
// catalog caught up removes the orphan.
func TestReconcileSkipsWhenCatalogBehind(t *testing.T) {
	e := newSvcEnv(t, graceHour)
	ctx := testCtx(t)
	orphan := e.makeFile(t, "job-failed", "", "", old)
	e.catalog.set(job("job-failed", backup.StatusFailed, "", testDisk))

	e.progress.set(errBehind)
	if _, err := e.svc.Reconcile(ctx); !errors.Is(err, hub.ErrCatalogBehind) {
		t.Errorf("Reconcile with the catalog behind: %v, want ErrCatalogBehind", err)
	}
	e.progress.set(nil)
	e.catalog.fail(errors.New("no responders"))
	if _, err := e.svc.Reconcile(ctx); err == nil {
		t.Errorf("Reconcile with the catalog not answering succeeded")
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Fatalf("orphan removed by a skipped round: %v", err)
	}
	if n := e.counter(t, "sendense_repo_reconcile_rounds_total", map[string]string{"result": hub.RoundSkipped}); n != 2 {
		t.Errorf("rounds skipped = %v, want 2", n)
	}
	if n := e.counter(t, "sendense_repo_reconciled_files_total", nil); n != 0 {
		t.Errorf("files counted removed: %v", n)
	}

	e.catalog.fail(nil)
	if _, err := e.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	assertNoFile(t, orphan)
}

// TestReconcileAtStart: Serve runs a round when it starts, without
// waiting for ReconcileInterval.
func TestReconcileAtStart(t *testing.T) {
	var orphan string
	e := newSvcEnv(t, func(o *hub.RepoOptions) {
		o.ReconcileGrace = time.Hour
		o.ReconcileInterval = time.Hour
		r := o.Repositories[testRepo]
		p, err := r.Create(context.Background(), testVM, testDisk, "job-left", testCapacity, "")
		if err != nil {
			t.Fatal(err)
		}
		setMtime(t, p, old)
		orphan = p
	})
	deadline := time.Now().Add(20 * time.Second)
	for e.counter(t, "sendense_repo_reconciled_files_total", map[string]string{"repository": testRepo}) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no file counted removed 20 s after Serve started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	assertNoFile(t, orphan)
}

// TestReconcileSparesReopenedTarget: a file found orphaned is not removed
// when its job reopened it meanwhile, whether the new target is still
// open or already closed (a new file).
func TestReconcileSparesReopenedTarget(t *testing.T) {
	for _, closeIt := range []bool{false, true} {
		t.Run(fmt.Sprintf("closed=%t", closeIt), func(t *testing.T) {
			e := newSvcEnv(t, graceHour)
			ctx := testCtx(t)
			path := e.makeFile(t, "job-again", "", "", old)
			// The progress read runs between finding the orphans and
			// removing them: the reopen lands in that window.
			e.progress.onNext(func() {
				e.mustOpen(t, openReq("job-again", ""))
				if closeIt {
					if _, err := e.client.Close(ctx, ref("job-again")); err != nil {
						t.Error(err)
					}
				}
			})
			orphans, err := e.svc.Reconcile(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(orphans) != 1 || orphans[0].Removed || orphans[0].Kept == "" {
				t.Errorf("orphans %+v, want job-again kept", orphans)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("reopened target removed: %v", err)
			}
			if closeIt {
				return
			}
			if _, err := e.client.Close(ctx, ref("job-again")); err != nil {
				t.Errorf("close of the reopened target: %v", err)
			}
		})
	}
}

func writeFile(t *testing.T, path string, size int, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	if !mtime.IsZero() {
		setMtime(t, path, mtime)
	}
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
