package vmware_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/testbed"
	"github.com/sendense/sendense/vmware"
	"github.com/vmware/govmomi/vim25/types"
)

// snap creates a snapshot and returns it with its disks.
func snap(t testing.TB, c *vmware.Client, vm *vmware.VM, name string) (types.ManagedObjectReference, []vmware.Disk) {
	t.Helper()
	ctx := testCtx(t)
	ref, err := c.CreateSnapshot(ctx, vm, name, false)
	if err != nil {
		t.Fatalf("create snapshot %s: %v", name, err)
	}
	disks, err := c.SnapshotDisks(ctx, ref)
	if err != nil {
		t.Fatalf("snapshot disks of %s: %v", name, err)
	}
	return ref, disks
}

func diskByKey(t testing.TB, disks []vmware.Disk, key int32) vmware.Disk {
	t.Helper()
	for _, d := range disks {
		if d.Key == key {
			return d
		}
	}
	t.Fatalf("no disk %d in %+v", key, disks)
	return vmware.Disk{}
}

func findVM(t testing.TB, c *vmware.Client, id string) *vmware.VM {
	t.Helper()
	vm, err := c.FindVM(testCtx(t), id)
	if err != nil {
		t.Fatalf("find vm %s: %v", id, err)
	}
	return vm
}

func TestSnapshotDisks(t *testing.T) {
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}})
	vm := findVM(t, c, "pgtest1")
	info := tb.VMs()[0]

	_, disks1 := snap(t, c, vm, "sendense-job1")
	_, disks2 := snap(t, c, vm, "sendense-job2")
	if len(disks1) != len(info.Disks) {
		t.Fatalf("snapshot has %d disks, want %d", len(disks1), len(info.Disks))
	}
	for i, want := range info.Disks {
		d1, d2 := disks1[i], disks2[i]
		// Each snapshot names its own frozen layer of the disk, as
		// vSphere names delta disks: "[ds] vm/vm-00000n.vmdk".
		layer := strings.TrimSuffix(want.FileName, ".vmdk") + "-0"
		if d1.Key != want.Key || d1.UUID != want.UUID || d1.CapacityBytes != want.CapacityBytes || !strings.HasPrefix(d1.FileName, layer) {
			t.Errorf("disk %d = %+v, want key %d uuid %s capacity %d file %s…", i, d1, want.Key, want.UUID, want.CapacityBytes, layer)
		}
		if d1.FileName == d2.FileName {
			t.Errorf("disk %d: both snapshots name %s", want.Key, d1.FileName)
		}
		stamped, err := tb.ChangeIDAt("pgtest1", "sendense-job1", want.Key)
		if err != nil || d1.ChangeID != stamped {
			t.Errorf("disk %d change id = %q, testbed stamped %q (%v)", want.Key, d1.ChangeID, stamped, err)
		}
		id1, err := vmware.ParseChangeID(d1.ChangeID)
		if err != nil {
			t.Fatalf("parse change id of disk %d: %v", want.Key, err)
		}
		id2, err := vmware.ParseChangeID(d2.ChangeID)
		if err != nil {
			t.Fatalf("parse change id of disk %d: %v", want.Key, err)
		}
		if !vmware.SameEpoch(id1, id2) || id2.Seq != id1.Seq+1 {
			t.Errorf("disk %d: change ids %s then %s, want same uuid and sequence +1", want.Key, id1, id2)
		}
	}
	// Two disks never share a tracking UUID.
	a, _ := vmware.ParseChangeID(disks1[0].ChangeID)
	b, _ := vmware.ParseChangeID(disks1[1].ChangeID)
	if vmware.SameEpoch(a, b) {
		t.Errorf("disks %d and %d share tracking uuid %s", disks1[0].Key, disks1[1].Key, a.UUID)
	}
}

// qemuMapData lists the data ranges of a raw image as qemu-img sees them.
func qemuMapData(t testing.TB, path string) []vmware.Extent {
	t.Helper()
	bin := testutil.RequireTool(t, "qemu-img")
	out, err := exec.Command(bin, "map", "-f", "raw", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img map %s: %v", path, err)
	}
	var m []struct {
		Start, Length int64
		Data          bool
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("parse qemu-img map: %v", err)
	}
	var ext []vmware.Extent
	for _, e := range m {
		if !e.Data {
			continue
		}
		if n := len(ext); n > 0 && ext[n-1].End() == e.Start {
			ext[n-1].Length += e.Length
			continue
		}
		ext = append(ext, vmware.Extent{Offset: e.Start, Length: e.Length})
	}
	return ext
}

func TestChangedAreasFullIsAllocated(t *testing.T) {
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}, MaxChangedAreas: 3})
	vm := findVM(t, c, "pgtest1")
	// Explicit zeros are allocated, holes are not.
	if err := tb.WriteZeros("pgtest1", 2000, 40*mib, 2*mib); err != nil {
		t.Fatal(err)
	}
	ref, disks := snap(t, c, vm, "sendense-full")
	for _, d := range disks {
		got, err := c.ChangedAreas(testCtx(t), vm, ref, d.Key, vmware.FullChangeID, d.CapacityBytes)
		if err != nil {
			t.Fatalf("changed areas * of disk %d: %v", d.Key, err)
		}
		frozen, err := tb.SnapshotImage(ref, d.Key)
		if err != nil {
			t.Fatal(err)
		}
		want := qemuMapData(t, frozen)
		if !equalExtents(got, want) {
			t.Errorf("disk %d: changed areas * = %v, qemu-img map data = %v", d.Key, got, want)
		}
	}
}

func equalExtents(a, b []vmware.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func readAt(t testing.TB, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return b
}

func TestChangedAreasAfterGuestWrites(t *testing.T) {
	// One thin disk over 4 GiB so writes cross the 2 GiB and 4 GiB marks;
	// the capacity is not a multiple of the 64 KiB tracking block.
	const capacity = 5*gib + 3*kib
	spec := testbed.VMSpec{Name: "big", Seed: 3, Disks: []testbed.DiskSpec{{CapacityBytes: capacity, FillBytes: 16 * mib}}}
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{spec}, MaxChangedAreas: 4})
	vm := findVM(t, c, "big")
	const key = 2000
	ctx := testCtx(t)

	base, disks := snap(t, c, vm, "sendense-base")
	baseID := diskByKey(t, disks, key).ChangeID
	allocated, err := c.ChangedAreas(ctx, vm, base, key, vmware.FullChangeID, capacity)
	if err != nil || len(allocated) == 0 {
		t.Fatalf("full areas: %v %v", allocated, err)
	}
	data := allocated[0] // an extent holding seeded data

	var writes []vmware.Extent
	write := func(kind string, off, n int64, f func() error) {
		t.Helper()
		if err := f(); err != nil {
			t.Fatalf("%s at %d: %v", kind, off, err)
		}
		writes = append(writes, vmware.Extent{Offset: off, Length: n})
	}
	pattern := bytes.Repeat([]byte{0xa5}, 4096)
	random, err := tb.WriteRandom("big", key, 0.001, 11)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range random {
		writes = append(writes, vmware.Extent(e))
	}
	write("zeros over data", data.Offset+4096, 64*kib, func() error { return tb.WriteZeros("big", key, data.Offset+4096, 64*kib) })
	write("hole in data", data.Offset+512*kib, 128*kib, func() error { return tb.PunchHole("big", key, data.Offset+512*kib, 128*kib) })
	write("across 2 GiB", 2*gib-1000, 4096, func() error { return tb.Write("big", key, 2*gib-1000, pattern) })
	write("across 4 GiB", 4*gib-2048, 4096, func() error { return tb.Write("big", key, 4*gib-2048, pattern) })
	write("past 4 GiB", 4*gib+10*mib, 4096, func() error { return tb.Write("big", key, 4*gib+10*mib, pattern) })
	write("last byte", capacity-1, 1, func() error { return tb.Write("big", key, capacity-1, []byte{0x5a}) })

	next, disks := snap(t, c, vm, "sendense-next")
	got, err := c.ChangedAreas(ctx, vm, next, key, baseID, capacity)
	if err != nil {
		t.Fatalf("changed areas since %s: %v", baseID, err)
	}
	requireExactish(t, got, writes, testbed.DefaultBlockSize, capacity)
	if last := got[len(got)-1]; last.End() != capacity {
		t.Errorf("last changed area %v does not end at the last byte %d", last, capacity)
	}

	// The base snapshot's frozen image does not have the writes; the next
	// one does.
	baseImg, _ := tb.SnapshotImage(base, key)
	nextImg, _ := tb.SnapshotImage(next, key)
	if b := readAt(t, baseImg, capacity-1, 1); b[0] == 0x5a {
		t.Errorf("base frozen image has a byte written after the snapshot")
	}
	if b := readAt(t, nextImg, capacity-1, 1); b[0] != 0x5a {
		t.Errorf("next frozen image lacks the last-byte write")
	}
	if !bytes.Equal(readAt(t, nextImg, 4*gib-2048, 4096), pattern) {
		t.Errorf("next frozen image lacks the write across 4 GiB")
	}
	if !bytes.Equal(readAt(t, nextImg, data.Offset+512*kib, 128*kib), make([]byte, 128*kib)) {
		t.Errorf("punched hole does not read as zeros")
	}

	// The next snapshot's own change id: nothing changed since.
	nextID := diskByKey(t, disks, key).ChangeID
	none, err := c.ChangedAreas(ctx, vm, next, key, nextID, capacity)
	if err != nil || len(none) != 0 {
		t.Errorf("changed areas since the snapshot's own id = %v, %v; want none", none, err)
	}
}

func TestWritesAfterSnapshotBelongToNext(t *testing.T) {
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}})
	vm := findVM(t, c, "pgtest1")
	ctx := testCtx(t)
	const key = 2001

	s1, d1 := snap(t, c, vm, "sendense-1")
	id1 := diskByKey(t, d1, key).ChangeID
	during := bytes.Repeat([]byte("during-backup-1."), 256) // 4 KiB
	if err := tb.Write("pgtest1", key, 5*mib, during); err != nil {
		t.Fatal(err)
	}
	img1, _ := tb.SnapshotImage(s1, key)
	if bytes.Equal(readAt(t, img1, 5*mib, int64(len(during))), during) {
		t.Fatal("a write after snapshot 1 is in snapshot 1's frozen image")
	}

	s2, d2 := snap(t, c, vm, "sendense-2")
	capacity := diskByKey(t, d2, key).CapacityBytes
	after := bytes.Repeat([]byte("after-snapshot2."), 256)
	if err := tb.Write("pgtest1", key, 9*mib, after); err != nil {
		t.Fatal(err)
	}
	got, err := c.ChangedAreas(ctx, vm, s2, key, id1, capacity)
	if err != nil {
		t.Fatal(err)
	}
	requireExactish(t, got, []vmware.Extent{{Offset: 5 * mib, Length: 4096}}, testbed.DefaultBlockSize, capacity)

	// Snapshot 1 is still queryable after snapshot 2: nothing since its own id.
	still, err := c.ChangedAreas(ctx, vm, s1, key, id1, capacity)
	if err != nil || len(still) != 0 {
		t.Errorf("changed areas at snapshot 1 since its own id = %v, %v", still, err)
	}
}

func TestChangeIDRejected(t *testing.T) {
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}})
	vm := findVM(t, c, "pgtest1")
	ctx := testCtx(t)

	s1, d1 := snap(t, c, vm, "sendense-1")
	disk := d1[0]
	id, _ := vmware.ParseChangeID(disk.ChangeID)
	other, _ := vmware.ParseChangeID(d1[1].ChangeID)

	tests := []struct {
		name     string
		changeID string
		wantErr  error
	}{
		{"garbage", "not-a-change-id", vmware.ErrChangeIDRejected},
		{"empty", "", vmware.ErrChangeIDRejected},
		{"foreign uuid", "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/1", vmware.ErrChangeIDRejected},
		{"other disk's id", other.String(), vmware.ErrChangeIDRejected},
		{"future sequence", vmware.ChangeID{UUID: id.UUID, Seq: id.Seq + 5}.String(), vmware.ErrChangeIDRejected},
		{"sequence zero", vmware.ChangeID{UUID: id.UUID, Seq: 0}.String(), vmware.ErrChangeIDRejected},
		{"valid", disk.ChangeID, nil},
		{"full", vmware.FullChangeID, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.ChangedAreas(ctx, vm, s1, disk.Key, tt.changeID, disk.CapacityBytes)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ChangedAreas(%q) error = %v, want %v", tt.changeID, err, tt.wantErr)
			}
		})
	}

	// A CBT reset: the old id is refused, the new epoch has another UUID.
	if err := tb.ResetCBT("pgtest1", disk.Key); err != nil {
		t.Fatal(err)
	}
	s2, d2 := snap(t, c, vm, "sendense-2")
	newID, err := vmware.ParseChangeID(diskByKey(t, d2, disk.Key).ChangeID)
	if err != nil {
		t.Fatal(err)
	}
	if vmware.SameEpoch(id, newID) {
		t.Errorf("after a CBT reset the change id %s has the old uuid of %s", newID, id)
	}
	if _, err := c.ChangedAreas(ctx, vm, s2, disk.Key, disk.ChangeID, disk.CapacityBytes); !errors.Is(err, vmware.ErrChangeIDRejected) {
		t.Errorf("ChangedAreas(pre-reset id) error = %v, want ErrChangeIDRejected", err)
	}
	if _, err := c.ChangedAreas(ctx, vm, s2, disk.Key, vmware.FullChangeID, disk.CapacityBytes); err != nil {
		t.Errorf("ChangedAreas(*) after reset: %v", err)
	}
	// The other disk was not reset: its id still works.
	if _, err := c.ChangedAreas(ctx, vm, s2, d1[1].Key, d1[1].ChangeID, d1[1].CapacityBytes); err != nil {
		t.Errorf("ChangedAreas on the disk that was not reset: %v", err)
	}
}

func TestResize(t *testing.T) {
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}})
	vm := findVM(t, c, "pgtest1")
	ctx := testCtx(t)
	const key = 2000

	_, d1 := snap(t, c, vm, "sendense-1")
	old := diskByKey(t, d1, key)
	newCap := old.CapacityBytes + 40*mib
	if err := tb.Resize(ctx, "pgtest1", key, newCap); err != nil {
		t.Fatal(err)
	}
	if err := tb.Write("pgtest1", key, newCap-4096, bytes.Repeat([]byte{1}, 4096)); err != nil {
		t.Fatalf("write in the grown area: %v", err)
	}
	s2, d2 := snap(t, c, vm, "sendense-2")
	grown := diskByKey(t, d2, key)
	if grown.CapacityBytes != newCap {
		t.Fatalf("capacity after resize = %d, want %d", grown.CapacityBytes, newCap)
	}
	if grown.UUID != old.UUID {
		t.Errorf("disk uuid changed on resize: %s -> %s", old.UUID, grown.UUID)
	}
	if vm2 := findVM(t, c, "pgtest1"); diskByKey(t, vm2.Disks, key).CapacityBytes != newCap {
		t.Errorf("VM config capacity not updated")
	}
	got, err := c.ChangedAreas(ctx, vm, s2, key, old.ChangeID, newCap)
	if err != nil {
		t.Fatal(err)
	}
	requireExactish(t, got, []vmware.Extent{{Offset: newCap - 4096, Length: 4096}}, testbed.DefaultBlockSize, newCap)
	img, _ := tb.SnapshotImage(s2, key)
	if st, err := os.Stat(img); err != nil || st.Size() != newCap {
		t.Errorf("frozen image size = %v (%v), want %d", st.Size(), err, newCap)
	}
}

func TestConcurrentQueriesAndWrites(t *testing.T) {
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}, MaxChangedAreas: 2})
	vm := findVM(t, c, "pgtest1")
	ctx := testCtx(t)
	s1, d1 := snap(t, c, vm, "sendense-1")

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for _, d := range d1 {
		for range 4 {
			wg.Go(func() {
				for range 5 {
					if _, err := c.ChangedAreas(ctx, vm, s1, d.Key, vmware.FullChangeID, d.CapacityBytes); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Go(func() {
		for i := range 50 {
			if _, err := tb.WriteRandom("pgtest1", 2000, 0.001, int64(i)); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Go(func() {
		if _, err := c.FindVM(ctx, "pgtest1"); err != nil {
			errs <- err
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
