package testbed_test

import (
	"testing"

	"github.com/sendense/sendense/testbed"
)

// TestSampleVMs starts the demo inventory and checks what the demo relies
// on: pgtest1 with two disks of different sizes, one over 4 GiB, thin and
// partly filled, and a snapshot of it.
func TestSampleVMs(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 1.25 GiB of sample data")
	}
	tb, c := start(t, testbed.Options{VMs: testbed.SampleVMs()})
	vms := tb.VMs()
	if len(vms) != 1 || vms[0].Name != "pgtest1" || len(vms[0].Disks) != 2 {
		t.Fatalf("sample inventory = %+v", vms)
	}
	d0, d1 := vms[0].Disks[0], vms[0].Disks[1]
	if d0.CapacityBytes <= 4*gib || d0.CapacityBytes == d1.CapacityBytes {
		t.Errorf("disk sizes %d and %d: want different, one over 4 GiB", d0.CapacityBytes, d1.CapacityBytes)
	}
	s := snapshot(t, c, vmRef(t, tb, "pgtest1"), "sendense-sample")
	for _, d := range vms[0].Disks {
		info, err := query(t, c, vmRef(t, tb, "pgtest1"), s, d.Key, 0, "*")
		if err != nil || len(info.ChangedArea) == 0 {
			t.Errorf("disk %d: no allocated areas (%v)", d.Key, err)
		}
	}
}
