package node

import (
	"context"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/sendense/sendense/vmware"
)

// jobTimes is what one job spent waiting on vCenter's SDK and on the copy
// of its disks, so that what is left of its time is the agent's own (its
// catalog, hub and NATS round trips included). The completed job's log
// line carries them (vcenter_ms, copy_ms, job_ms); make bench-scale reads
// them from there.
type jobTimes struct {
	began   time.Time // the request was fetched
	mu      sync.Mutex
	vcenter time.Duration // sum of the job's SDK calls (they run one at a time)
	copy    time.Duration // wall time of the copy phase: disks copied in parallel
}

type jobTimesKey struct{}

// withJobTimes returns ctx carrying t, which timedVCenter adds to.
func withJobTimes(ctx context.Context, t *jobTimes) context.Context {
	return context.WithValue(ctx, jobTimesKey{}, t)
}

func (t *jobTimes) addVCenter(start time.Time) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.vcenter += time.Since(start)
	t.mu.Unlock()
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
