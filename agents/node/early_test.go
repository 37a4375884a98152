package node

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/vmware"
)

// openAbortTargets records the targets opened and aborted, in order.
type openAbortTargets struct {
	Targets
	mu  sync.Mutex
	log []string // "open 2000 backing" / "abort 2000"
}

func (f *openAbortTargets) Open(_ context.Context, req repoapi.OpenRequest) (repoapi.OpenReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "open "+strconv.Itoa(int(req.DiskKey))+" "+req.BackingJobID)
	return repoapi.OpenReply{Target: req.JobID + "/" + strconv.Itoa(int(req.DiskKey))}, nil
}

func (f *openAbortTargets) Abort(_ context.Context, ref repoapi.TargetRef) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "abort "+strconv.Itoa(int(ref.DiskKey)))
	return nil
}

func (f *openAbortTargets) events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.log)
}

// snapFailVC fails every snapshot.
type snapFailVC struct{ VCenter }

func (snapFailVC) StaleSnapshots(context.Context, *vmware.VM, string) ([]vmware.Snapshot, error) {
	return nil, nil
}

func (snapFailVC) CreateSnapshot(context.Context, *vmware.VM, string, bool) (types.ManagedObjectReference, error) {
	return types.ManagedObjectReference{}, errors.New("create snapshot: simulated fault")
}

type emptyCatalog struct{ Catalog }

func (emptyCatalog) ChainHead(context.Context, string, int32, string) (backup.Link, error) {
	return backup.Link{}, backup.ErrNotFound
}

// TestEarlyTargetsSnapshotFails: the targets opened while vCenter
// snapshots are aborted when the snapshot fails: nothing is left behind.
func TestEarlyTargetsSnapshotFails(t *testing.T) {
	tg := &openAbortTargets{}
	a := &Agent{cfg: Config{ShutdownTimeout: time.Second}, deps: Deps{VCenter: snapFailVC{}, Catalog: emptyCatalog{}, Targets: tg}}
	r := &request{jobID: "job-1", req: schemas.Request{VM: "pgtest1", BackupType: schemas.TypeAuto, Repository: "default"},
		vm: &vmware.VM{InstanceUUID: "4217a1b3-6f0e-4c55-9b1e-2f3c4d5e6f70", CBTEnabled: true, Disks: []vmware.Disk{
			{Key: 2000, UUID: "u1", CapacityBytes: 1 << 20}, {Key: 3000, UUID: "u2", CapacityBytes: 1 << 20}}},
		log: zerolog.New(zerolog.NewTestWriter(t))}
	_, _, err := a.run(context.Background(), r)
	if reason, _ := classify(err); reason != schemas.FailSnapshot {
		t.Fatalf("run = %v (%s), want a snapshot failure", err, reason)
	}
	ev := tg.events()
	slices.Sort(ev)
	if want := []string{"abort 2000", "abort 3000", "open 2000 ", "open 3000 "}; !slices.Equal(ev, want) {
		t.Errorf("targets: %q, want %q", ev, want)
	}
}

// TestEarlyTargetsTake: the plan takes an early target only when it is
// the planned one; another is aborted before the disk's own open, and
// the ones no plan took are aborted at the end.
func TestEarlyTargetsTake(t *testing.T) {
	const epoch = "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4"
	tg := &openAbortTargets{}
	a := &Agent{cfg: Config{ShutdownTimeout: time.Second}, deps: Deps{Targets: tg}}
	d1 := vmware.Disk{Key: 2000, UUID: "u1", CapacityBytes: 1 << 20}
	d2 := vmware.Disk{Key: 3000, UUID: "u2", CapacityBytes: 1 << 20}
	d3 := vmware.Disk{Key: 4000, UUID: "u3", CapacityBytes: 1 << 20}
	r := &request{jobID: "job-2", req: schemas.Request{VM: "pgtest1", BackupType: schemas.TypeAuto, Repository: "default"},
		vm:  &vmware.VM{InstanceUUID: "4217a1b3-6f0e-4c55-9b1e-2f3c4d5e6f70", CBTEnabled: true, Disks: []vmware.Disk{d1, d2, d3}},
		log: zerolog.New(zerolog.NewTestWriter(t))}
	head := &backup.Link{JobID: "job-1", DiskUUID: "u1", CapacityBytes: 1 << 20, ChangeID: epoch + "/3", ManifestSHA256: "m1"}
	e := a.openEarly(context.Background(), r, map[int32]*backup.Link{2000: head})

	// Disk 2000: the snapshot's change id is of another epoch, so the
	// plan is a full and the early incremental is not it.
	full := &diskPlan{disk: d1, backupType: schemas.TypeFull}
	if d := e.take(context.Background(), full); d != nil {
		t.Errorf("took early target %+v for a full of disk 2000, want none", d.plan)
	}
	if ev := tg.events(); ev[len(ev)-1] != "abort 2000" {
		t.Errorf("targets: %q, want the early incremental of disk 2000 aborted last", ev)
	}
	// Disk 3000: a full, as guessed.
	if d := e.take(context.Background(), &diskPlan{disk: d2, backupType: schemas.TypeFull}); d == nil || d.ref.DiskKey != 3000 {
		t.Errorf("took %+v for disk 3000, want its early full", d)
	}
	// Disk 4000 is in no plan.
	e.abortRest(context.Background())
	ev := tg.events()
	slices.Sort(ev)
	if want := []string{"abort 2000", "abort 4000", "open 2000 job-1", "open 3000 ", "open 4000 "}; !slices.Equal(ev, want) {
		t.Errorf("targets: %q, want %q", ev, want)
	}
}
