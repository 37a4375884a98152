package testbed_test

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"sync"
	"testing"

	"github.com/sendense/sendense/testbed"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func query(t testing.TB, c *govmomi.Client, vm, snap types.ManagedObjectReference, key int32, start int64, changeID string) (*types.DiskChangeInfo, error) {
	t.Helper()
	s := snap
	res, err := methods.QueryChangedDiskAreas(testCtx(t), c.Client, &types.QueryChangedDiskAreas{
		This: vm, Snapshot: &s, DeviceKey: key, StartOffset: start, ChangeId: changeID,
	})
	if err != nil {
		return nil, err
	}
	return &res.Returnval, nil
}

func changeIDOf(t testing.TB, c *govmomi.Client, snap types.ManagedObjectReference, key int32) string {
	t.Helper()
	var s mo.VirtualMachineSnapshot
	if err := c.RetrieveOne(testCtx(t), snap, []string{"config.hardware.device"}, &s); err != nil {
		t.Fatal(err)
	}
	vd := object.VirtualDeviceList(s.Config.Hardware.Device).FindByKey(key).(*types.VirtualDisk)
	return vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo).ChangeId
}

// faultOf returns the fault type name of a SOAP error.
func faultOf(err error) string {
	if err == nil || !soap.IsSoapFault(err) {
		return ""
	}
	return reflect.TypeOf(soap.ToSoapFault(err).VimFault()).Name()
}

// TestReplyShape pages a disk over 4 GiB with a cap of 3 areas per reply
// and checks each reply as vSphere shapes it.
func TestReplyShape(t *testing.T) {
	const capacity = 4*gib + 1*mib
	tb, c := start(t, testbed.Options{
		VMs:             []testbed.VMSpec{oneVM("big", testbed.DiskSpec{CapacityBytes: capacity})},
		MaxChangedAreas: 3,
		BlockSize:       4096,
	})
	vm := vmRef(t, tb, "big")
	writes := []int64{1 * mib, 2*gib - 4096, 2 * gib, 3 * gib, 4*gib - 4096, 4 * gib, capacity - 4096}
	for _, off := range writes {
		if err := tb.Write("big", 2000, off, bytes.Repeat([]byte{1}, 4096)); err != nil {
			t.Fatal(err)
		}
	}
	snap := snapshot(t, c, vm, "s1")

	var got []types.DiskChangeExtent
	var replies int
	for start := int64(0); start < capacity; replies++ {
		info, err := query(t, c, vm, snap, 2000, start, "*")
		if err != nil {
			t.Fatal(err)
		}
		if info.StartOffset != start {
			t.Fatalf("reply StartOffset = %d, asked %d", info.StartOffset, start)
		}
		if len(info.ChangedArea) > 3 {
			t.Fatalf("reply has %d areas, cap is 3", len(info.ChangedArea))
		}
		end := info.StartOffset + info.Length
		for _, a := range info.ChangedArea {
			if a.Start < start || a.Start+a.Length > end {
				t.Errorf("area %+v outside the reply's range [%d, %d)", a, start, end)
			}
		}
		got = append(got, info.ChangedArea...)
		start = end
	}
	// 2 GiB-4096 and 2 GiB touch, as do 4 GiB-4096 and 4 GiB: 5 areas, 2 replies.
	want := []types.DiskChangeExtent{
		{Start: 1 * mib, Length: 4096},
		{Start: 2*gib - 4096, Length: 8192},
		{Start: 3 * gib, Length: 4096},
		{Start: 4*gib - 4096, Length: 8192},
		{Start: capacity - 4096, Length: 4096},
	}
	if !reflect.DeepEqual(got, want) || replies != 2 {
		t.Fatalf("areas over %d replies = %+v, want %+v over 2", replies, got, want)
	}

	// A start offset inside an area: the area is clipped to it.
	info, err := query(t, c, vm, snap, 2000, 2*gib, "*")
	if err != nil {
		t.Fatal(err)
	}
	if a := info.ChangedArea[0]; a.Start != 2*gib || a.Length != 4096 {
		t.Errorf("first area from 2 GiB = %+v, want [2 GiB, +4096)", a)
	}
}

func TestFaults(t *testing.T) {
	tb, c := start(t, testbed.Options{VMs: []testbed.VMSpec{oneVM("vm1",
		testbed.DiskSpec{CapacityBytes: 8 * mib, FillBytes: 1 * mib},
		testbed.DiskSpec{CapacityBytes: 8 * mib})}})
	vm := vmRef(t, tb, "vm1")
	snap := snapshot(t, c, vm, "s1")
	id := changeIDOf(t, c, snap, 2000)
	other := changeIDOf(t, c, snap, 2001)
	bogusSnap := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: "snapshot-424242"}

	tests := []struct {
		name      string
		snap      types.ManagedObjectReference
		key       int32
		start     int64
		changeID  string
		wantFault string
	}{
		{"valid", snap, 2000, 0, id, ""},
		{"full", snap, 2000, 0, "*", ""},
		{"garbage", snap, 2000, 0, "garbage", "InvalidArgument"},
		{"uuid only", snap, 2000, 0, id[:len(id)-2], "InvalidArgument"},
		{"other disk's id", snap, 2000, 0, other, "FileFault"},
		{"future", snap, 2000, 0, id[:len(id)-1] + "9", "FileFault"},
		{"foreign", snap, 2000, 0, "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/1", "FileFault"},
		{"unknown disk", snap, 2099, 0, "*", "InvalidArgument"},
		{"offset past the end", snap, 2000, 8 * mib, "*", "InvalidArgument"},
		{"negative offset", snap, 2000, -512, "*", "InvalidArgument"},
		{"unknown snapshot", bogusSnap, 2000, 0, "*", "ManagedObjectNotFound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := query(t, c, vm, tt.snap, tt.key, tt.start, tt.changeID)
			if got := faultOf(err); got != tt.wantFault {
				t.Fatalf("fault = %q (%v), want %q", got, err, tt.wantFault)
			}
		})
	}

	t.Run("no snapshot", func(t *testing.T) {
		_, err := methods.QueryChangedDiskAreas(testCtx(t), c.Client, &types.QueryChangedDiskAreas{This: vm, DeviceKey: 2000, ChangeId: "*"})
		if got := faultOf(err); got != "InvalidArgument" {
			t.Fatalf("fault = %q (%v), want InvalidArgument", got, err)
		}
	})

	t.Run("after cbt reset", func(t *testing.T) {
		if err := tb.ResetCBT("vm1", 2000); err != nil {
			t.Fatal(err)
		}
		s2 := snapshot(t, c, vm, "s2")
		if _, err := query(t, c, vm, s2, 2000, 0, id); faultOf(err) != "FileFault" {
			t.Fatalf("pre-reset id: %v, want FileFault", err)
		}
		newID := changeIDOf(t, c, s2, 2000)
		if newID[:47] == id[:47] || newID[48:] != "1" {
			t.Errorf("after reset change id = %q (was %q): want a new uuid and sequence 1", newID, id)
		}
	})
}

// TestSnapshotFreezesAtomically writes numbered blocks in order while
// snapshots are taken: each frozen image must hold a prefix of the writes
// (all writes before the instant, none after), and the next snapshot's
// changed areas hold exactly the rest.
func TestSnapshotFreezesAtomically(t *testing.T) {
	const n = 400
	tb, c := start(t, testbed.Options{
		VMs:       []testbed.VMSpec{oneVM("vm1", testbed.DiskSpec{CapacityBytes: n * 4096})},
		BlockSize: 4096,
	})
	vm := vmRef(t, tb, "vm1")

	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range n {
			block := bytes.Repeat([]byte{byte(i%255 + 1)}, 4096)
			if err := tb.Write("vm1", 2000, int64(i)*4096, block); err != nil {
				t.Error(err)
				return
			}
		}
	})
	var snaps []types.ManagedObjectReference
	for i := range 3 {
		snaps = append(snaps, snapshot(t, c, vm, "during-"+string(rune('a'+i))))
	}
	wg.Wait()
	snaps = append(snaps, snapshot(t, c, vm, "after"))

	prev := 0
	for i, s := range snaps {
		img, err := tb.SnapshotImage(s, 2000)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		// Count the leading written blocks; everything after must be zero.
		k := 0
		for k < n && data[k*4096] != 0 {
			k++
		}
		if !bytes.Equal(data[k*4096:], make([]byte, (n-k)*4096)) {
			t.Fatalf("snapshot %d: frozen image is not a prefix of the writes (first %d blocks, then data)", i, k)
		}
		if k < prev {
			t.Fatalf("snapshot %d holds %d blocks, the one before held %d", i, k, prev)
		}
		if i == len(snaps)-1 && k != n {
			t.Fatalf("last snapshot holds %d of %d blocks", k, n)
		}
		if i > 0 {
			info, err := query(t, c, vm, s, 2000, 0, changeIDOf(t, c, snaps[i-1], 2000))
			if err != nil {
				t.Fatal(err)
			}
			var want []types.DiskChangeExtent
			if k > prev {
				want = []types.DiskChangeExtent{{Start: int64(prev) * 4096, Length: int64(k-prev) * 4096}}
			}
			if !reflect.DeepEqual(info.ChangedArea, want) {
				t.Fatalf("snapshot %d: changed areas %+v, want %+v", i, info.ChangedArea, want)
			}
		}
		prev = k
	}
}

// TestWrappedVMStillWorks: the wrapper that serves CBT calls leaves the VM
// fully usable, over several sessions at once.
func TestWrappedVMStillWorks(t *testing.T) {
	tb, c := start(t, testbed.Options{VMs: []testbed.VMSpec{oneVM("vm1", testbed.DiskSpec{CapacityBytes: 8 * mib, FillBytes: mib})}})
	vm := vmRef(t, tb, "vm1")
	c2, err := govmomi.NewClient(testCtx(t), tb.URL(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c2.Logout(testCtx(t)) }()

	var wg sync.WaitGroup
	for _, cl := range []*govmomi.Client{c, c2} {
		wg.Go(func() {
			for i := range 5 {
				s := snapshot(t, cl, vm, "x")
				if _, err := query(t, cl, vm, s, 2000, 0, "*"); err != nil {
					t.Error(err)
				}
				var m mo.VirtualMachine
				if err := cl.RetrieveOne(testCtx(t), vm, []string{"name", "snapshot"}, &m); err != nil || m.Name != "vm1" {
					t.Errorf("retrieve vm after query %d: %v %q", i, err, m.Name)
				}
			}
		})
	}
	wg.Wait()

	obj := object.NewVirtualMachine(c.Client, vm)
	task, err := obj.PowerOff(testCtx(t))
	if err == nil {
		err = task.Wait(testCtx(t))
	}
	if err != nil {
		t.Fatalf("power off after CBT calls: %v", err)
	}
	task, err = obj.RemoveAllSnapshot(testCtx(t), nil)
	if err == nil {
		err = task.Wait(testCtx(t))
	}
	if err != nil {
		t.Fatalf("remove all snapshots: %v", err)
	}
	if _, err := tb.SnapshotImageByName("vm1", "x", 2000); err != nil {
		t.Errorf("frozen image gone after RemoveAllSnapshots: %v", err)
	}
}

func TestGuestIOErrors(t *testing.T) {
	tb, _ := start(t, testbed.Options{VMs: []testbed.VMSpec{oneVM("vm1", testbed.DiskSpec{CapacityBytes: 8 * mib})}})
	tests := []struct {
		name string
		do   func() error
		want error
	}{
		{"write past the end", func() error { return tb.Write("vm1", 2000, 8*mib-1, []byte{1, 2}) }, testbed.ErrOutOfRange},
		{"negative offset", func() error { return tb.WriteZeros("vm1", 2000, -1, 1) }, testbed.ErrOutOfRange},
		{"hole past the end", func() error { return tb.PunchHole("vm1", 2000, 4*mib, 5*mib) }, testbed.ErrOutOfRange},
		{"unknown vm", func() error { return tb.Write("nope", 2000, 0, []byte{1}) }, testbed.ErrUnknownVM},
		{"unknown disk", func() error { return tb.Write("vm1", 2001, 0, []byte{1}) }, testbed.ErrUnknownDisk},
		{"fraction zero", func() error { _, err := tb.WriteRandom("vm1", 2000, 0, 1); return err }, testbed.ErrOutOfRange},
		{"fraction over one", func() error { _, err := tb.WriteRandom("vm1", 2000, 1.5, 1); return err }, testbed.ErrOutOfRange},
		{"shrink", func() error { return tb.Resize(testCtx(t), "vm1", 2000, 4*mib) }, testbed.ErrOutOfRange},
		{"unknown snapshot", func() error { _, err := tb.SnapshotImageByName("vm1", "nope", 2000); return err }, testbed.ErrUnknownSnapshot},
		{"last byte", func() error { return tb.Write("vm1", 2000, 8*mib-1, []byte{1}) }, nil},
		{"by moref", func() error { return tb.Write(tb.VMs()[0].Moref, 2000, 0, []byte{1}) }, nil},
		{"by uuid", func() error { return tb.Write(tb.VMs()[0].UUID, 2000, 0, []byte{1}) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); !errors.Is(err, tt.want) {
				t.Fatalf("error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestWriteRandomFraction(t *testing.T) {
	tb, _ := start(t, testbed.Options{VMs: []testbed.VMSpec{oneVM("vm1", testbed.DiskSpec{CapacityBytes: 64 * mib})}})
	ext, err := tb.WriteRandom("vm1", 2000, 0.05, 42)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, e := range ext {
		if e.Offset%4096 != 0 || e.Length%4096 != 0 || e.Length > mib || e.End() > 64*mib {
			t.Errorf("bad extent %+v", e)
		}
		total += e.Length
	}
	if want := 64 * mib / 20; total < want || total > want+4096 {
		t.Errorf("wrote %d bytes, want about %d", total, want)
	}
	again, _ := tb.WriteRandom("vm1", 2000, 0.05, 42)
	if !reflect.DeepEqual(ext, again) {
		t.Errorf("same seed, different extents")
	}
}

func TestOptionsValidation(t *testing.T) {
	disk := testbed.DiskSpec{CapacityBytes: mib}
	tests := []struct {
		name string
		opts testbed.Options
	}{
		{"no dir", testbed.Options{}},
		{"bad name", testbed.Options{Dir: "x", VMs: []testbed.VMSpec{oneVM("../etc", disk)}}},
		{"duplicate name", testbed.Options{Dir: "x", VMs: []testbed.VMSpec{oneVM("a", disk), oneVM("a", disk)}}},
		{"no disks", testbed.Options{Dir: "x", VMs: []testbed.VMSpec{oneVM("a")}}},
		{"odd capacity", testbed.Options{Dir: "x", VMs: []testbed.VMSpec{oneVM("a", testbed.DiskSpec{CapacityBytes: mib + 1})}}},
		{"overfull", testbed.Options{Dir: "x", VMs: []testbed.VMSpec{oneVM("a", testbed.DiskSpec{CapacityBytes: mib, FillBytes: 2 * mib})}}},
		{"block size", testbed.Options{Dir: "x", BlockSize: 3000}},
		{"negative cap", testbed.Options{Dir: "x", MaxChangedAreas: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := testbed.New(testCtx(t), tt.opts); !errors.Is(err, testbed.ErrInvalidSpec) {
				t.Fatalf("New error = %v, want ErrInvalidSpec", err)
			}
		})
	}
}

func TestCloseRemovesImages(t *testing.T) {
	for _, keep := range []bool{false, true} {
		dir := t.TempDir()
		tb, c := start(t, testbed.Options{Dir: dir, KeepImages: keep, VMs: []testbed.VMSpec{oneVM("vm1", testbed.DiskSpec{CapacityBytes: mib})}})
		snap := snapshot(t, c, vmRef(t, tb, "vm1"), "s")
		img, _ := tb.SnapshotImage(snap, 2000)
		live := tb.VMs()[0].Disks[0].ImagePath
		_ = c.Logout(testCtx(t))
		if err := tb.Close(); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{img, live} {
			_, err := os.Stat(p)
			if keep != (err == nil) {
				t.Errorf("KeepImages=%v: stat %s after Close: %v", keep, p, err)
			}
		}
		if err := tb.Write("vm1", 2000, 0, []byte{1}); !errors.Is(err, testbed.ErrClosed) {
			t.Errorf("Write after Close: %v, want ErrClosed", err)
		}
	}
}
