package node

import (
	"context"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/vmware"
)

// jobTimes is what one job spent waiting on vCenter's SDK, on the copy of
// its disks, on the hub and on the catalog, so that what is left of its
// time is the agent's own. The completed job's log line carries them
// (job_ms, vcenter_ms, copy_ms, hub_ms, catalog_ms, catalog_wait_ms);
// make bench-scale reads them from there.
type jobTimes struct {
	began   time.Time // the request was fetched
	mu      sync.Mutex
	vcenter time.Duration // the job's SDK calls (one at a time)
	copy    time.Duration // wall time of the copy phase: disks copied in parallel
	// hub is the job's repository calls outside the copy phase: info,
	// abort, and the wall time of opening and of closing the disks'
	// targets (each done for all disks at once); the digests sent in the
	// copy phase count as copy. Targets opened while vCenter snapshots
	// (earlyTargets) count only with the wait for them after the plan,
	// and the closes only with what they take beyond the snapshot's
	// removal, which runs meanwhile.
	hub time.Duration
	// catalog is the job's catalog lookups (job, chain heads), not the
	// wait for the catalog to show the outcome (awaitCatalog).
	catalog time.Duration
}

type jobTimesKey struct{}

// withJobTimes returns ctx carrying t, which timedVCenter adds to.
func withJobTimes(ctx context.Context, t *jobTimes) context.Context {
	return context.WithValue(ctx, jobTimesKey{}, t)
}

func (t *jobTimes) add(d *time.Duration, start time.Time) {
	if t == nil {
		return
	}
	t.mu.Lock()
	*d += time.Since(start)
	t.mu.Unlock()
}

func (t *jobTimes) addVCenter(start time.Time) {
	if t != nil {
		t.add(&t.vcenter, start)
	}
}

func (t *jobTimes) addHub(start time.Time) {
	if t != nil {
		t.add(&t.hub, start)
	}
}

// addHubDur adds d to the hub's time.
func (t *jobTimes) addHubDur(d time.Duration) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.hub += d
	t.mu.Unlock()
}

func (t *jobTimes) addCatalog(start time.Time) {
	if t != nil {
		t.add(&t.catalog, start)
	}
}

func (t *jobTimes) setCopy(start time.Time) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.copy = time.Since(start)
	t.mu.Unlock()
}

func timesOf(ctx context.Context) *jobTimes {
	t, _ := ctx.Value(jobTimesKey{}).(*jobTimes)
	return t
}

// timedVCenter adds the duration of every call to the job's jobTimes in
// the call's context (none: not counted).
type timedVCenter struct{ vc VCenter }

func (v timedVCenter) FindVM(ctx context.Context, id string) (*vmware.VM, error) {
	defer timesOf(ctx).addVCenter(time.Now())
	return v.vc.FindVM(ctx, id)
}

func (v timedVCenter) CreateSnapshot(ctx context.Context, vm *vmware.VM, name string, quiesce bool) (types.ManagedObjectReference, error) {
	defer timesOf(ctx).addVCenter(time.Now())
	return v.vc.CreateSnapshot(ctx, vm, name, quiesce)
}

func (v timedVCenter) SnapshotDisks(ctx context.Context, snap types.ManagedObjectReference) ([]vmware.Disk, error) {
	defer timesOf(ctx).addVCenter(time.Now())
	return v.vc.SnapshotDisks(ctx, snap)
}

func (v timedVCenter) ChangedAreas(ctx context.Context, vm *vmware.VM, snap types.ManagedObjectReference, diskKey int32, changeID string, capacity int64) ([]vmware.Extent, error) {
	defer timesOf(ctx).addVCenter(time.Now())
	return v.vc.ChangedAreas(ctx, vm, snap, diskKey, changeID, capacity)
}

func (v timedVCenter) RemoveSnapshot(ctx context.Context, snap types.ManagedObjectReference, consolidate bool) error {
	defer timesOf(ctx).addVCenter(time.Now())
	return v.vc.RemoveSnapshot(ctx, snap, consolidate)
}

func (v timedVCenter) StaleSnapshots(ctx context.Context, vm *vmware.VM, prefix string) ([]vmware.Snapshot, error) {
	defer timesOf(ctx).addVCenter(time.Now())
	return v.vc.StaleSnapshots(ctx, vm, prefix)
}

// timedTargets adds the duration of the job's repository info and abort
// calls to its jobTimes. Open, Close and Digests pass through (embedded):
// run times the opens and the closes of the disks' targets (each set at
// once), and the digests count as copy.
type timedTargets struct{ Targets }

func (v timedTargets) Info(ctx context.Context, repo string) (repoapi.InfoReply, error) {
	defer timesOf(ctx).addHub(time.Now())
	return v.Targets.Info(ctx, repo)
}

func (v timedTargets) Abort(ctx context.Context, ref repoapi.TargetRef) error {
	defer timesOf(ctx).addHub(time.Now())
	return v.Targets.Abort(ctx, ref)
}

// timedCatalog adds the duration of the job's catalog lookups to its
// jobTimes.
type timedCatalog struct{ c Catalog }

func (v timedCatalog) Job(ctx context.Context, id string) (backup.Job, error) {
	defer timesOf(ctx).addCatalog(time.Now())
	return v.c.Job(ctx, id)
}

func (v timedCatalog) ChainHead(ctx context.Context, vmUUID string, diskKey int32, repo string) (backup.Link, error) {
	defer timesOf(ctx).addCatalog(time.Now())
	return v.c.ChainHead(ctx, vmUUID, diskKey, repo)
}
