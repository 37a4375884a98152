package vmware

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// SnapshotPrefix starts the name of every snapshot this project creates:
// "sendense-<job_id>".
const SnapshotPrefix = "sendense-"

// SnapshotName returns the snapshot name for a job.
func SnapshotName(jobID string) string { return SnapshotPrefix + jobID }

// Snapshot is one snapshot of a VM.
type Snapshot struct {
	Ref     types.ManagedObjectReference
	Name    string
	JobID   string // Name without the prefix it was listed with; empty when listed without one
	Created time.Time
	Quiesce bool
}

// CreateSnapshot creates a snapshot without memory and waits for it. name is
// SnapshotName(jobID). quiesce asks VMware Tools to quiesce the guest file
// systems first.
func (c *Client) CreateSnapshot(ctx context.Context, vm *VM, name string, quiesce bool) (types.ManagedObjectReference, error) {
	ctx, cancel := withDefaultTimeout(ctx, DefaultTaskTimeout)
	defer cancel()
	obj := object.NewVirtualMachine(c.gc.Client, vm.Ref)
	task, err := obj.CreateSnapshot(ctx, name, "created by sendense", false, quiesce)
	if err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("create snapshot %s of vm %s: %w", name, vm.Ref.Value, classify(err))
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("create snapshot %s of vm %s: %w", name, vm.Ref.Value, classify(err))
	}
	ref, ok := info.Result.(types.ManagedObjectReference)
	if !ok {
		return types.ManagedObjectReference{}, fmt.Errorf("create snapshot %s of vm %s: task result is %T, not a snapshot", name, vm.Ref.Value, info.Result)
	}
	c.log.Info().Str("vm", vm.Name).Str("moref", vm.Ref.Value).Str("snapshot", name).Str("snapshot_moref", ref.Value).
		Bool("quiesce", quiesce).Msg("snapshot created")
	return ref, nil
}

// RemoveSnapshot removes one snapshot (not its children) and waits. With
// consolidate, vCenter consolidates the disks afterwards when needed (what a
// backup tool must ask for). A snapshot that no longer exists returns
// ErrSnapshotNotFound.
func (c *Client) RemoveSnapshot(ctx context.Context, snap types.ManagedObjectReference, consolidate bool) error {
	ctx, cancel := withDefaultTimeout(ctx, DefaultTaskTimeout)
	defer cancel()
	req := types.RemoveSnapshot_Task{This: snap, RemoveChildren: false, Consolidate: &consolidate}
	res, err := methods.RemoveSnapshot_Task(ctx, c.gc.Client, &req)
	if err == nil {
		err = object.NewTask(c.gc.Client, res.Returnval).Wait(ctx)
	}
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("remove snapshot %s: %w", snap.Value, ErrSnapshotNotFound)
		}
		return fmt.Errorf("remove snapshot %s: %w", snap.Value, classify(err))
	}
	c.log.Info().Str("snapshot_moref", snap.Value).Bool("consolidate", consolidate).Msg("snapshot removed")
	return nil
}

// Snapshots lists every snapshot of the VM, oldest first.
func (c *Client) Snapshots(ctx context.Context, vm *VM) ([]Snapshot, error) {
	return c.snapshots(ctx, vm, "")
}

// StaleSnapshots lists the VM's snapshots whose name starts with prefix
// (normally SnapshotPrefix), with JobID set to the rest of the name. Which of
// them are really stale (their job finished) is for the caller to decide.
func (c *Client) StaleSnapshots(ctx context.Context, vm *VM, prefix string) ([]Snapshot, error) {
	if prefix == "" {
		return nil, fmt.Errorf("list stale snapshots of vm %s: %w: empty prefix", vm.Ref.Value, ErrInvalidOptions)
	}
	return c.snapshots(ctx, vm, prefix)
}

func (c *Client) snapshots(ctx context.Context, vm *VM, prefix string) ([]Snapshot, error) {
	ctx, cancel := withDefaultTimeout(ctx, DefaultCallTimeout)
	defer cancel()
	var m mo.VirtualMachine
	if err := c.gc.RetrieveOne(ctx, vm.Ref, []string{"snapshot"}, &m); err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("list snapshots of vm %s: %w", vm.Ref.Value, ErrVMNotFound)
		}
		return nil, fmt.Errorf("list snapshots of vm %s: %w", vm.Ref.Value, classify(err))
	}
	var out []Snapshot
	if m.Snapshot == nil {
		return out, nil
	}
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(tree []types.VirtualMachineSnapshotTree) {
		for _, t := range tree {
			if prefix == "" || strings.HasPrefix(t.Name, prefix) {
				s := Snapshot{Ref: t.Snapshot, Name: t.Name, Created: t.CreateTime, Quiesce: t.Quiesced}
				if prefix != "" {
					s.JobID = strings.TrimPrefix(t.Name, prefix)
				}
				out = append(out, s)
			}
			walk(t.ChildSnapshotList)
		}
	}
	walk(m.Snapshot.RootSnapshotList)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}
