package simctl_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/testbed"
)

// TestServeAsTestbedIdentity: the control service works when it connects
// as the testbed identity (what `sendense vcenter-sim` does), a caller
// gets the frozen image's checksum without reading the file, and the
// testbed identity can do nothing with backups.
func TestServeAsTestbedIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	s := bustest.SecureEmbedded(t)
	tbc := s.Connect(t, bus.Identity{Role: bus.RoleTestbed})
	adm := s.Connect(t, bus.Identity{Role: bus.RoleAdmin})

	tb, err := testbed.New(ctx, testbed.Options{Dir: t.TempDir(), Log: log, VMs: []testbed.VMSpec{
		{Name: "vm1", Seed: 3, Disks: []testbed.DiskSpec{{CapacityBytes: 4 << 20, FillBytes: 1 << 20}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	inventory := func(spec string) ([]testbed.VMSpec, error) {
		if spec != "two" {
			return nil, errors.New("unknown inventory " + spec)
		}
		return []testbed.VMSpec{
			{Name: "inv1", Disks: []testbed.DiskSpec{{CapacityBytes: 1 << 20}}},
			{Name: "inv2", Disks: []testbed.DiskSpec{{CapacityBytes: 1 << 20}}},
		}, nil
	}
	svc, err := simctl.Serve(tbc.Conn, tb, log, inventory)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()

	cl := simctl.NewClient(adm.Conn)
	vms, err := cl.VMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].Name != "vm1" {
		t.Fatalf("VMs as admin through the testbed identity's service: %v %+v", err, vms)
	}
	if _, err := cl.Write(ctx, simctl.WriteRequest{VM: "vm1", Percent: 1, Seed: 1}); err != nil {
		t.Fatalf("Write: %v", err)
	}
	gc, err := govmomi.NewClient(ctx, tb.URL(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Logout(context.Background())
	task, err := object.NewVirtualMachine(gc.Client, vmRef(vms[0].Moref)).CreateSnapshot(ctx, "sendense-j1", "", false, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	fr, err := cl.FrozenChecksum(ctx, "vm1", "sendense-j1", 2000)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(fr.Path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if fr.SHA256 != hex.EncodeToString(sum[:]) || fr.Size != int64(len(data)) || fr.ChangeID == "" {
		t.Errorf("FrozenChecksum = %+v, want sha256 %x of %d bytes and a change id", fr, sum, len(data))
	}
	if fr, err := cl.Frozen(ctx, "vm1", "sendense-j1", 2000); err != nil || fr.SHA256 != "" {
		t.Errorf("Frozen without checksum: %+v %v", fr, err)
	}
	if _, err := cl.Frozen(ctx, "vm1", "sendense-none", 2000); err == nil || !strings.Contains(err.Error(), "unknown testbed snapshot") {
		t.Errorf("Frozen of an unknown snapshot: %v", err)
	}

	// VMs come and go.
	created, err := cl.CreateVM(ctx, testbed.VMSpec{Name: "vm2", Disks: []testbed.DiskSpec{{CapacityBytes: 2 << 20, FillBytes: 1 << 20}}})
	if err != nil || created.Name != "vm2" || len(created.Disks) != 1 {
		t.Fatalf("CreateVM: %+v %v", created, err)
	}
	if _, err := cl.CreateVM(ctx, testbed.VMSpec{Name: "vm2", Disks: []testbed.DiskSpec{{CapacityBytes: 1 << 20}}}); err == nil || !strings.Contains(err.Error(), "testbed vm exists") {
		t.Errorf("CreateVM of an existing name: %v", err)
	}
	if _, err := cl.CreateVM(ctx, testbed.VMSpec{Name: "vm3"}); err == nil || !strings.Contains(err.Error(), "invalid testbed spec") {
		t.Errorf("CreateVM without disks: %v", err)
	}
	if _, err := cl.CreateInventory(ctx, "nine"); err == nil || !strings.Contains(err.Error(), "unknown inventory nine") {
		t.Errorf("CreateInventory of a bad spec: %v", err)
	}
	inv, err := cl.CreateInventory(ctx, "two")
	if err != nil || len(inv) != 2 || inv[1].Name != "inv2" {
		t.Fatalf("CreateInventory: %+v %v", inv, err)
	}
	if err := cl.DeleteVM(ctx, "vm2"); err != nil {
		t.Fatalf("DeleteVM: %v", err)
	}
	if err := cl.DeleteVM(ctx, "vm2"); err == nil || !strings.Contains(err.Error(), "unknown testbed vm") {
		t.Errorf("DeleteVM twice: %v", err)
	}
	if vms, err := cl.VMs(ctx); err != nil || len(vms) != 3 {
		t.Errorf("VMs after create and delete: %+v %v, want vm1, inv1, inv2", vms, err)
	}
	if _, err := os.Stat(created.Disks[0].ImagePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("image of the deleted vm: %v", err)
	}

	// The testbed identity cannot request backups nor watch them.
	if err := tbc.Publish(bus.SubjectRequested, []byte(`{"vm":"vm1"}`)); err == nil {
		_ = tbc.Flush()
		if err := tbc.LastError(); !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("testbed publishing %s: last error %v, want a permission violation", bus.SubjectRequested, err)
		}
	}
}

func vmRef(moref string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VirtualMachine", Value: moref}
}
