package testbed_test

import (
	"errors"
	"os"
	"testing"

	"github.com/sendense/sendense/testbed"
	"github.com/vmware/govmomi/find"
)

// TestCreateDeleteVM adds a VM to a running testbed, snapshots it, and
// deletes it: gone from the simulator's inventory and from VMs, its images
// removed; bad specs and unknown names are refused.
func TestCreateDeleteVM(t *testing.T) {
	tb, c := start(t, testbed.Options{VMs: []testbed.VMSpec{oneVM("vm1", testbed.DiskSpec{CapacityBytes: mib})}})
	ctx := testCtx(t)
	info, err := tb.CreateVM(ctx, oneVM("vm2", testbed.DiskSpec{CapacityBytes: 4 * mib, FillBytes: mib}, testbed.DiskSpec{CapacityBytes: mib}))
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "vm2" || len(info.Disks) != 2 || info.UUID == "" {
		t.Fatalf("created %+v", info)
	}
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	finder.SetDatacenter(dc)
	if _, err := finder.VirtualMachine(ctx, "vm2"); err != nil {
		t.Fatalf("vm2 in the inventory: %v", err)
	}
	snap := snapshot(t, c, vmRef(t, tb, "vm2"), "s1")
	img, err := tb.SnapshotImage(snap, 2000)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(img); err != nil || st.Size() != 4*mib {
		t.Fatalf("frozen image of vm2: %v, %v", st, err)
	}

	if _, err := tb.CreateVM(ctx, oneVM("vm2", testbed.DiskSpec{CapacityBytes: mib})); !errors.Is(err, testbed.ErrVMExists) {
		t.Errorf("create vm2 again: %v, want ErrVMExists", err)
	}
	if _, err := tb.CreateVM(ctx, oneVM("bad name", testbed.DiskSpec{CapacityBytes: mib})); !errors.Is(err, testbed.ErrInvalidSpec) {
		t.Errorf("create with a bad name: %v, want ErrInvalidSpec", err)
	}
	if _, err := tb.CreateVM(ctx, oneVM("nodisk")); !errors.Is(err, testbed.ErrInvalidSpec) {
		t.Errorf("create without disks: %v, want ErrInvalidSpec", err)
	}

	if err := tb.DeleteVM(ctx, "vm2"); err != nil {
		t.Fatal(err)
	}
	if _, err := finder.VirtualMachine(ctx, "vm2"); err == nil {
		t.Error("vm2 still in the inventory after DeleteVM")
	}
	if vms := tb.VMs(); len(vms) != 1 || vms[0].Name != "vm1" {
		t.Errorf("VMs after delete: %+v", vms)
	}
	for _, p := range []string{img, info.Disks[0].ImagePath} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after DeleteVM: %v", p, err)
		}
	}
	if err := tb.Write("vm2", 2000, 0, []byte{1}); !errors.Is(err, testbed.ErrUnknownVM) {
		t.Errorf("write to a deleted vm: %v, want ErrUnknownVM", err)
	}
	if err := tb.DeleteVM(ctx, "vm2"); !errors.Is(err, testbed.ErrUnknownVM) {
		t.Errorf("delete vm2 again: %v, want ErrUnknownVM", err)
	}
	// The name can be used again.
	if _, err := tb.CreateVM(ctx, oneVM("vm2", testbed.DiskSpec{CapacityBytes: mib})); err != nil {
		t.Errorf("create vm2 after its delete: %v", err)
	}
}
