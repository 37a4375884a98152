package vmware

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/vim25/types"
)

func TestDisksFromDevices(t *testing.T) {
	devices := []types.BaseVirtualDevice{
		&types.VirtualLsiLogicController{},
		&types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{Key: 2001, Backing: &types.VirtualDiskRawDiskMappingVer1BackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: "[ds] vm/rdm.vmdk"},
				CompatibilityMode:            "virtualMode", Uuid: "u-rdm", ChangeId: "rdm/3",
			}},
			CapacityInKB: 1024, // no CapacityInBytes: older hosts
		},
		&types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{Key: 2000, Backing: &types.VirtualDiskSparseVer2BackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: "[ds] vm/sparse.vmdk"},
				DiskMode:                     "persistent", Uuid: "u-sparse", ChangeId: "sparse/1",
			}},
			CapacityInBytes: 4 << 30,
		},
		&types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{Key: 2002, Backing: &types.VirtualDiskFlatVer2BackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: "[ds] vm/flat.vmdk"},
				DiskMode:                     "independent_persistent", Uuid: "u-flat",
			}},
			CapacityInBytes: 1 << 30,
		},
		&types.VirtualCdrom{},
	}
	got, err := disksFromDevices(devices)
	if err != nil {
		t.Fatal(err)
	}
	want := []Disk{
		{Key: 2000, UUID: "u-sparse", CapacityBytes: 4 << 30, FileName: "[ds] vm/sparse.vmdk", ChangeID: "sparse/1", Backing: BackingSparse, Mode: "persistent"},
		{Key: 2001, UUID: "u-rdm", CapacityBytes: 1 << 20, FileName: "[ds] vm/rdm.vmdk", ChangeID: "rdm/3", Backing: BackingRDM, Mode: "virtualMode"},
		{Key: 2002, UUID: "u-flat", CapacityBytes: 1 << 30, FileName: "[ds] vm/flat.vmdk", Backing: BackingFlat, Mode: "independent_persistent"},
	}
	if len(got) != len(want) {
		t.Fatalf("disks = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("disk %d = %+v, want %+v", i, got[i], want[i])
		}
	}

	_, err = disksFromDevices([]types.BaseVirtualDevice{&types.VirtualDisk{
		VirtualDevice: types.VirtualDevice{Key: 2003, Backing: &types.VirtualDiskPartitionedRawDiskVer2BackingInfo{}},
	}})
	if !errors.Is(err, ErrUnsupportedDisk) {
		t.Errorf("partitioned raw disk: error = %v, want ErrUnsupportedDisk", err)
	}
}

// TestSourceCloseKillsStubbornProcess: a source that ignores SIGTERM is
// killed when Close's context ends, and Close still cleans up.
func TestSourceCloseKillsStubbornProcess(t *testing.T) {
	dir := t.TempDir()
	// sh says "trapped" once SIGTERM is ignored: the test waits for that
	// line instead of sleeping.
	cmd := exec.Command("sh", "-c", `trap "" TERM; echo trapped; while :; do sleep 0.05; done`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("no sh: %v", err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "trapped\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("sh did not install its trap: %q, %v", line, err)
	}
	s := &Source{cmd: cmd, dir: dir, sock: filepath.Join(dir, "x.sock"), done: make(chan struct{}), log: zerolog.Nop()}
	go func() { s.waitErr = cmd.Wait(); close(s.done) }()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > 3*time.Second {
		t.Errorf("Close took %s", d)
	}
	if err := syscall.Kill(cmd.Process.Pid, 0); err == nil {
		t.Errorf("process %d still alive", cmd.Process.Pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir not removed: %v", err)
	}
}
