package testbed_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sendense/sendense/testbed"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// snapshotByName finds a VM's snapshot in the inventory (zero ref: none).
func snapshotByName(t testing.TB, c *govmomi.Client, vm types.ManagedObjectReference, name string) types.ManagedObjectReference {
	t.Helper()
	var m mo.VirtualMachine
	if err := c.RetrieveOne(testCtx(t), vm, []string{"snapshot"}, &m); err != nil {
		t.Fatal(err)
	}
	if m.Snapshot == nil {
		return types.ManagedObjectReference{}
	}
	var found types.ManagedObjectReference
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(tree []types.VirtualMachineSnapshotTree) {
		for _, s := range tree {
			if s.Name == name {
				found = s.Snapshot
			}
			walk(s.ChildSnapshotList)
		}
	}
	walk(m.Snapshot.RootSnapshotList)
	return found
}

func removeSnapshot(t testing.TB, c *govmomi.Client, snap types.ManagedObjectReference) {
	t.Helper()
	res, err := methods.RemoveSnapshot_Task(testCtx(t), c.Client, &types.RemoveSnapshot_Task{This: snap, RemoveChildren: false})
	if err != nil {
		t.Fatal(err)
	}
	if err := object.NewTask(c.Client, res.Returnval).Wait(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// TestRestartKeepsState closes a testbed with KeepImages and starts
// another on the same directory: VMs, UUIDs, CBT epochs and sequences,
// snapshots (the one still present comes back, the removed one does not)
// and frozen images are as they were, change ids from before the restart
// still answer QueryChangedDiskAreas, and new snapshots get new layers.
func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	spec := oneVM("vm1", testbed.DiskSpec{CapacityBytes: 8 * mib, FillBytes: 2 * mib})
	opts := testbed.Options{Dir: dir, KeepImages: true, BlockSize: 4096, VMs: []testbed.VMSpec{spec}}
	tb, c := start(t, opts)
	vm := vmRef(t, tb, "vm1")
	kept := snapshot(t, c, vm, "sendense-kept")
	if err := tb.Write("vm1", 2000, 5*mib, bytes.Repeat([]byte{7}, 4096)); err != nil {
		t.Fatal(err)
	}
	gone := snapshot(t, c, vm, "gone")
	goneID := changeIDOf(t, c, gone, 2000)
	removeSnapshot(t, c, gone)
	if err := tb.Write("vm1", 2000, 6*mib, bytes.Repeat([]byte{8}, 4096)); err != nil {
		t.Fatal(err)
	}
	before := tb.VMs()
	keptImg, err := tb.SnapshotImage(kept, 2000)
	if err != nil {
		t.Fatal(err)
	}
	keptData, err := os.ReadFile(keptImg)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Logout(testCtx(t))
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}

	opts.VMs = append(opts.VMs, oneVM("vm2", testbed.DiskSpec{CapacityBytes: mib}))
	tb, c = start(t, opts)
	after := tb.VMs()
	if len(after) != 2 || after[1].Name != "vm2" {
		t.Fatalf("after restart: vms %+v, want vm1 restored and vm2 created", after)
	}
	b, a := before[0], after[0]
	if a.Name != b.Name || a.UUID != b.UUID || a.Disks[0].UUID != b.Disks[0].UUID || a.Disks[0].TrackingUUID != b.Disks[0].TrackingUUID ||
		a.Disks[0].Sequence != b.Disks[0].Sequence || a.Disks[0].ImagePath != b.Disks[0].ImagePath {
		t.Fatalf("vm1 changed across the restart:\nbefore %+v\nafter  %+v", b, a)
	}
	vm = vmRef(t, tb, "vm1")
	if ref := snapshotByName(t, c, vm, "gone"); ref.Value != "" {
		t.Errorf("removed snapshot came back as %s", ref)
	}
	keptRef := snapshotByName(t, c, vm, "sendense-kept")
	if keptRef.Value == "" {
		t.Fatal("snapshot sendense-kept did not come back")
	}
	if info, err := query(t, c, vm, keptRef, 2000, 0, "*"); err != nil || len(info.ChangedArea) == 0 {
		t.Errorf("allocated areas of sendense-kept after restart: %+v, %v", info, err)
	}
	if img, err := tb.SnapshotImage(keptRef, 2000); err != nil || img != keptImg {
		t.Fatalf("frozen image of sendense-kept after restart: %q, %v; want %q", img, err, keptImg)
	}
	if got, _ := os.ReadFile(keptImg); !bytes.Equal(got, keptData) {
		t.Fatal("frozen image changed across the restart")
	}
	if img, err := tb.SnapshotImageByName("vm1", "gone", 2000); err != nil {
		t.Errorf("frozen image of the removed snapshot: %q, %v", img, err)
	}

	// The first snapshot after the restart is incremental from "gone": the
	// write made after it, and nothing else.
	if err := tb.Write("vm1", 2000, 7*mib, bytes.Repeat([]byte{9}, 4096)); err != nil {
		t.Fatal(err)
	}
	next := snapshot(t, c, vm, "next")
	info, err := query(t, c, vm, next, 2000, 0, goneID)
	if err != nil {
		t.Fatalf("query since %s after restart: %v", goneID, err)
	}
	want := []types.DiskChangeExtent{{Start: 6 * mib, Length: 4096}, {Start: 7 * mib, Length: 4096}}
	if len(info.ChangedArea) != len(want) || info.ChangedArea[0] != want[0] || info.ChangedArea[1] != want[1] {
		t.Errorf("changed areas since %s: %+v, want %+v", goneID, info.ChangedArea, want)
	}
	if id := changeIDOf(t, c, next, 2000); id != b.Disks[0].TrackingUUID+"/3" {
		t.Errorf("change id after restart %q, want sequence 3 of %s", id, b.Disks[0].TrackingUUID)
	}
	if _, err := os.Stat(filepath.Join(dir, testbed.StateFile)); err != nil {
		t.Errorf("state file: %v", err)
	}
}

// TestRestartBadState refuses a corrupt state file, and leaves it and the
// images alone.
func TestRestartBadState(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, testbed.StateFile)
	for _, content := range []string{"{not json", `{"version":99}`} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := testbed.New(testCtx(t), testbed.Options{Dir: dir, KeepImages: true})
		if !errors.Is(err, testbed.ErrInvalidSpec) {
			t.Errorf("state %q: %v, want ErrInvalidSpec", content, err)
		}
		if got, _ := os.ReadFile(path); string(got) != content {
			t.Errorf("state file changed to %q", got)
		}
	}
}

// TestStaleSimHomeRemoved: govmomi's model keeps a directory in the temp
// dir (/tmp/govcsim-*) that only its Remove deletes. A testbed killed
// before Close leaves it; the next testbed on the same Dir removes it, and
// a clean Close leaves none of its own.
func TestStaleSimHomeRemoved(t *testing.T) {
	dir := t.TempDir()
	stale, err := os.MkdirTemp("", "govcsim-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stale) })
	if err := os.WriteFile(filepath.Join(dir, ".vcsim-home"), []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := testbed.Options{Dir: dir, KeepImages: true, BlockSize: 4096,
		VMs: []testbed.VMSpec{oneVM("vm1", testbed.DiskSpec{CapacityBytes: 4 * mib, FillBytes: mib})}}
	tb, _ := start(t, opts)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the killed testbed's %s survived the next start: %v", stale, err)
	}
	home, err := os.ReadFile(filepath.Join(dir, ".vcsim-home"))
	if err != nil || string(home) == stale {
		t.Fatalf("recorded simulator home %q, %v; want this testbed's", home, err)
	}
	if _, err := os.Stat(string(home)); err != nil {
		t.Fatalf("this testbed's simulator home %s: %v", home, err)
	}
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(string(home)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after Close: %v", home, err)
	}
}
