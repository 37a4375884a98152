package testbed_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/sendense/sendense/testbed"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// start runs a testbed and a raw govmomi client (no package vmware: these
// tests check what the simulated vCenter answers on the wire).
func start(t testing.TB, opts testbed.Options) (*testbed.Testbed, *govmomi.Client) {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	opts.Log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	tb, err := testbed.New(testCtx(t), opts)
	if err != nil {
		t.Fatalf("start testbed: %v", err)
	}
	t.Cleanup(func() { _ = tb.Close() })
	c, err := govmomi.NewClient(testCtx(t), tb.URL(), true)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Logout(context.Background()) })
	return tb, c
}

func oneVM(name string, disks ...testbed.DiskSpec) testbed.VMSpec {
	return testbed.VMSpec{Name: name, Seed: 1, Disks: disks}
}

func vmRef(t testing.TB, tb *testbed.Testbed, name string) types.ManagedObjectReference {
	for _, vm := range tb.VMs() {
		if vm.Name == name {
			return types.ManagedObjectReference{Type: "VirtualMachine", Value: vm.Moref}
		}
	}
	t.Fatalf("no vm %s", name)
	return types.ManagedObjectReference{}
}

func snapshot(t testing.TB, c *govmomi.Client, vm types.ManagedObjectReference, name string) types.ManagedObjectReference {
	t.Helper()
	task, err := object.NewVirtualMachine(c.Client, vm).CreateSnapshot(testCtx(t), name, "", false, false)
	if err != nil {
		t.Fatalf("create snapshot %s: %v", name, err)
	}
	info, err := task.WaitForResult(testCtx(t))
	if err != nil {
		t.Fatalf("create snapshot %s: %v", name, err)
	}
	return info.Result.(types.ManagedObjectReference)
}
