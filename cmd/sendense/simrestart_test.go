package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// TestSimulatedVCenterSurvivesKill: serve --simulate-vcenter is killed
// (SIGKILL: the simulated vCenter dies with it) while a backup copies,
// and restarted on the same --data. The simulated vCenter comes back with
// the same VMs and CBT epochs and with the crashed job's snapshot, which
// the agent removes as stale; the next backup is incremental from the last
// completed point (no cbt_reset), and new snapshots still work.
func TestSimulatedVCenterSurvivesKill(t *testing.T) {
	t.Parallel()
	s := startServe(t, "pair", fastFailover...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sim := simctl.NewClient(s.nc)
	before, err := sim.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}

	s.must(t, "backup", "--vm", "pgtest1", "--job-id", "k-1")
	if j := s.awaitJob(t, "k-1", 3*time.Minute, backup.Job.Ended); j.Status != backup.StatusCompleted {
		t.Fatalf("job k-1: %s %+v", j.Status, j.Failure)
	}
	s.must(t, "backup", "--vm", "pgtest1", "--job-id", "k-2", "--type", "full")
	s.awaitJob(t, "k-2", time.Minute, func(j backup.Job) bool { return j.Status == backup.StatusRunning && len(j.Disks) > 0 })
	// The export's and the source's socket directories are in DATA/run
	// while k-2 copies; a restart must not leave them behind.
	run := filepath.Join(s.data, "run")
	left, err := os.ReadDir(run)
	if err != nil || len(left) == 0 {
		t.Fatalf("DATA/run while job k-2 copies: %v, %v; want its sockets' directories", left, err)
	}
	s.p.kill()
	t.Log("serve killed while job k-2 copied")

	s.start(t)
	after, err := simctl.NewClient(s.nc).VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range before {
		b, a := before[i], after[i]
		if a.Name != b.Name || a.UUID != b.UUID || a.Disks[0].TrackingUUID != b.Disks[0].TrackingUUID || a.Disks[0].UUID != b.Disks[0].UUID {
			t.Errorf("vm %s changed across the restart:\nbefore %+v\nafter  %+v", b.Name, b, a)
		}
	}
	// The crashed attempt's snapshot came back with the simulated vCenter:
	// the agent removes it when it takes the job up again, or with the
	// next backup of the VM.
	last := "k-1"
	if j := s.awaitJob(t, "k-2", 3*time.Minute, backup.Job.Ended); j.Status == backup.StatusCompleted {
		last = "k-2"
	}
	s.must(t, "backup", "--vm", "pgtest1", "--job-id", "k-3")
	j3 := s.awaitJob(t, "k-3", 3*time.Minute, backup.Job.Ended)
	if j3.Status != backup.StatusCompleted {
		t.Fatalf("job k-3: %s %+v", j3.Status, j3.Failure)
	}
	prev := s.awaitJob(t, last, time.Minute, backup.Job.Ended)
	for i, d := range j3.Disks {
		if d.BackupType != schemas.TypeIncremental || d.BaseChangeID != prev.Disks[i].ChangeID {
			t.Errorf("k-3 disk %d: %s (%s) from %q, want an incremental from %s's %q", d.Disk.Key, d.BackupType, d.Reason, d.BaseChangeID, last, prev.Disks[i].ChangeID)
		}
	}
	out := s.p.out.String()
	if !strings.Contains(out, `"snapshot":"sendense-k-2"`) || !strings.Contains(out, "removing stale snapshot") {
		t.Errorf("the restarted serve did not remove the crashed job's snapshot sendense-k-2 as stale")
	}
	for _, e := range left {
		if _, err := os.Stat(filepath.Join(run, e.Name())); err == nil {
			t.Errorf("%s of the killed serve is still in %s after the restart", e.Name(), run)
		}
	}
	if code := s.p.stop(t); code != 0 {
		t.Errorf("serve exited with %d", code)
	}
	if now, err := os.ReadDir(run); err != nil || len(now) != 0 {
		t.Errorf("DATA/run after serve stopped: %v, %v; want it empty", now, err)
	}
}
