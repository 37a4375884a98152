package system

import (
	"strings"
	"testing"

	"github.com/sendense/sendense/testbed"
)

func TestInventoryScale(t *testing.T) {
	t.Parallel()
	vms, err := Inventory("scale:vms=100,disks=2,size=1GiB,fill=16MiB")
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 100 || vms[0].Name != "scale001" || vms[99].Name != "scale100" {
		t.Fatalf("%d vms, first %q, last %q", len(vms), vms[0].Name, vms[len(vms)-1].Name)
	}
	seeds := map[int64]bool{}
	for _, vm := range vms {
		if len(vm.Disks) != 2 || vm.Disks[0] != (testbed.DiskSpec{CapacityBytes: 1 << 30, FillBytes: 16 << 20}) {
			t.Fatalf("vm %s disks %+v", vm.Name, vm.Disks)
		}
		if seeds[vm.Seed] {
			t.Fatalf("vm %s reuses seed %d", vm.Name, vm.Seed)
		}
		seeds[vm.Seed] = true
	}
	vms, err = Inventory("scale:vms=1000,disks=1,size=4096,prefix=db-,seed=9")
	if err != nil {
		t.Fatal(err)
	}
	if vms[0].Name != "db-0001" || vms[0].Disks[0].CapacityBytes != 4096 || vms[0].Disks[0].FillBytes != 0 {
		t.Fatalf("first vm %+v", vms[0])
	}
	for _, tc := range []struct{ spec, want string }{
		{"scale:", "is not key=value"},
		{"scale:vms=2,disks=1", "size= is required"},
		{"scale:disks=1,size=1M", "vms= is required"},
		{"scale:vms=2,size=1M", "disks= is required"},
		{"scale:vms=0,disks=1,size=1M", "vms=0 is not a number"},
		{"scale:vms=10001,disks=1,size=1M", "vms=10001"},
		{"scale:vms=1,disks=16,size=1M", "disks=16"},
		{"scale:vms=1,disks=1,size=1000", "multiple of 1 KiB"},
		{"scale:vms=1,disks=1,size=1XB", "unknown unit"},
		{"scale:vms=1,disks=1,size=-1M", "is not a size"},
		{"scale:vms=1,disks=1,size=99999999999T", "too large"},
		{"scale:vms=1,disks=1,size=1M,fill=2M", "larger than size"},
		{"scale:vms=1,disks=1,size=1M,colour=red", `unknown key "colour"`},
		{"scale:vms=1,vms=2,disks=1,size=1M", "vms given twice"},
		{"scale:vms=1,disks=1,size=1M,prefix=a b", `prefix "a b"`},
		{"scale:vms=1,disks=1,size=1M,seed=x", "seed=x"},
		{"huge", "unknown simulated inventory"},
	} {
		_, err := Inventory(tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Inventory(%q): %v, want an error containing %q", tc.spec, err, tc.want)
		}
	}
}
