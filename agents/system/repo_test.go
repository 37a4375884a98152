package system

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
)

// TestOrphansReconciled is attack 6: a job killed mid-copy whose later
// attempts failed before they reopened their targets left its partial
// files (628 MiB) that nothing removed. Now the hub's reconciliation
// removes a file that is no completed job's disk and belongs to no running
// backup once it is older than the grace, and keeps every completed one.
func TestOrphansReconciled(t *testing.T) {
	t.Parallel()
	h := startHarness(t, func(c *Config) {
		c.ReconcileInterval = 300 * time.Millisecond
		c.ReconcileGrace = time.Second
	})
	good := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	vm := good.VM

	// The leftover of a crashed attempt: its started event, a final
	// failure, and its partial file, written to.
	job := "crashed-1"
	d := good.Disks[0]
	started := &schemas.Started{Header: header(job, 1, schemas.NameStarted, vm, 0), Repository: "default",
		RequestedType: schemas.TypeFull, Snapshot: "sendense-" + job,
		Disks: []schemas.DiskPlan{{Disk: d.Disk, BackupType: schemas.TypeFull, Reason: schemas.ReasonRequestedFull,
			Target: targetOf(vm.UUID, d.Disk.Key, job)}}}
	failed := &schemas.Failed{Header: header(job, 2, schemas.NameFailed, vm, 0), Repository: "default",
		Reason: schemas.FailVCenter, Message: "vcenter unreachable", Retryable: false}
	h.forge("test-agent", started)
	h.forge("test-agent", failed)
	h.job(job, backup.StatusFailed)
	partial := filepath.Join(h.sys.Repos["default"].Root(), targetOf(vm.UUID, d.Disk.Key, job))
	raw := filepath.Join(t.TempDir(), "data.raw")
	if err := os.WriteFile(raw, make([]byte, 16<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "convert", "-O", "qcow2", "-S", "0", raw, partial).CombinedOutput(); err != nil {
		t.Fatalf("make the partial file: %v\n%s", err, out)
	}
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(partial, old, old); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(30 * time.Second)
	for fileExists(partial) {
		if time.Now().After(deadline) {
			t.Fatalf("partial file %s of a failed job still there after 30 s", partial)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, gd := range good.Disks {
		if !fileExists(h.targetPath(gd)) {
			t.Errorf("completed backup %s removed", h.targetPath(gd))
		}
	}
	h.waitMetric("sendense_repo_reconciled_files_total", "", 1)
	// Nothing else changed: the next incremental still backs onto the good one.
	h.guestWrite("pgtest1", 71)
	next := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	for _, nd := range next.Disks {
		if nd.Backing != good.JobID {
			t.Errorf("disk %d backs onto %q, want %s", nd.Disk.Key, nd.Backing, good.JobID)
		}
	}
}

// TestRepositoryFull is attack 10: a full repository failed the copy and
// was retried at once, re-copying a 1.3 GB full five times. Now the
// attempt fails with repository_full, the next one waits at least
// RepositoryFullBackoff, and once there is space the job completes.
func TestRepositoryFull(t *testing.T) {
	t.Parallel()
	root := testutil.Tmpfs(t, 40<<20)
	const backoff = 3 * time.Second
	h := startHarness(t, func(c *Config) {
		c.Repositories = map[string]string{"default": root}
		c.AgentConfig.RepositoryFullBackoff = backoff
	})
	id := h.request("pgtest1", schemas.TypeFull, "")
	var fails []time.Time
	for len(fails) < 2 {
		ev := h.next(2*time.Minute, func(ev schemas.Event) bool {
			_, ok := ev.(*schemas.Failed)
			return ok && ev.EventHeader().JobID == id
		})
		f := ev.(*schemas.Failed)
		if f.Reason != schemas.FailRepositoryFull || !f.Retryable {
			t.Fatalf("attempt %d failed with %s (%s), want a retryable %s", f.Attempt, f.Reason, f.Message, schemas.FailRepositoryFull)
		}
		fails = append(fails, time.Now())
	}
	if gap := fails[1].Sub(fails[0]); gap < backoff {
		t.Errorf("second attempt failed %v after the first, want the repository-full backoff of %v between them", gap, backoff)
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d", 1<<30)); err != nil {
		t.Fatalf("grow the repository's tmpfs: %v", err)
	}
	c := h.completed(id)
	for _, d := range c.Disks {
		h.sameData(h.frozen("pgtest1", id, d.Disk.Key), h.targetPath(d))
	}
	h.job(id, backup.StatusCompleted)
}
