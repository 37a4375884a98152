package vmware_test

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/sendense/sendense/testbed"
	"github.com/sendense/sendense/vmware"
)

func TestStaleSnapshotsAndRemoval(t *testing.T) {
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}})
	vm := findVM(t, c, "pgtest1")
	ctx := testCtx(t)

	a, _ := snap(t, c, vm, vmware.SnapshotName("job-a"))
	manual, _ := snap(t, c, vm, "before-upgrade")
	b, _ := snap(t, c, vm, vmware.SnapshotName("job-b"))

	all, err := c.Snapshots(ctx, vm)
	if err != nil || len(all) != 3 {
		t.Fatalf("Snapshots = %+v, %v; want 3", all, err)
	}
	stale, err := c.StaleSnapshots(ctx, vm, vmware.SnapshotPrefix)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range stale {
		got[s.JobID] = s.Ref.Value
	}
	if len(stale) != 2 || got["job-a"] != a.Value || got["job-b"] != b.Value {
		t.Fatalf("StaleSnapshots = %+v, want job-a=%s job-b=%s", stale, a.Value, b.Value)
	}

	// The frozen image of a removed snapshot stays for comparisons.
	imgA, err := tb.SnapshotImage(a, 2000)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(imgA)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stale {
		if err := c.RemoveSnapshot(ctx, s.Ref, true); err != nil {
			t.Fatalf("remove %s: %v", s.Name, err)
		}
	}
	if err := c.RemoveSnapshot(ctx, a, true); !errors.Is(err, vmware.ErrSnapshotNotFound) {
		t.Errorf("removing a removed snapshot: error = %v, want ErrSnapshotNotFound", err)
	}
	left, err := c.Snapshots(ctx, vm)
	if err != nil || len(left) != 1 || left[0].Ref != manual {
		t.Errorf("after removal Snapshots = %+v, %v; want only %s", left, err, manual.Value)
	}
	if stale, _ := c.StaleSnapshots(ctx, vm, vmware.SnapshotPrefix); len(stale) != 0 {
		t.Errorf("stale snapshots left: %+v", stale)
	}
	img, err := tb.SnapshotImage(a, 2000)
	if err != nil || img != imgA {
		t.Fatalf("SnapshotImage after removal = %q, %v; want %q", img, err, imgA)
	}
	after, _ := os.ReadFile(imgA)
	if !bytes.Equal(before, after) {
		t.Errorf("frozen image changed after its snapshot was removed")
	}
	if byName, err := tb.SnapshotImageByName("pgtest1", vmware.SnapshotName("job-b"), 2001); err != nil {
		t.Errorf("SnapshotImageByName: %v", err)
	} else if byRef, _ := tb.SnapshotImage(b, 2001); byRef != byName {
		t.Errorf("by name %q != by ref %q", byName, byRef)
	}
	if _, err := c.SnapshotDisks(ctx, a); !errors.Is(err, vmware.ErrSnapshotNotFound) {
		t.Errorf("SnapshotDisks of a removed snapshot: error = %v, want ErrSnapshotNotFound", err)
	}
}
