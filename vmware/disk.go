package vmware

import (
	"context"
	"fmt"
	"sort"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// BackingKind names the kind of file behind a virtual disk.
type BackingKind string

// Backing kinds this package understands.
const (
	BackingFlat     BackingKind = "flat"     // VirtualDiskFlatVer2BackingInfo (thin or thick VMFS/NFS disk)
	BackingSparse   BackingKind = "sparse"   // VirtualDiskSparseVer2BackingInfo (hosted sparse)
	BackingSeSparse BackingKind = "sesparse" // VirtualDiskSeSparseBackingInfo (space-efficient sparse)
	BackingRDM      BackingKind = "rdm"      // VirtualDiskRawDiskMappingVer1BackingInfo
)

// Disk is one virtual disk as a VM's or snapshot's hardware describes it.
// Disks are identified by Key (the device key, stable for the VM's life) and
// UUID, never by their position in a list.
type Disk struct {
	Key           int32
	UUID          string // disk UUID from the backing (may be empty for RDMs)
	CapacityBytes int64
	FileName      string // datastore path, "[ds] vm/vm.vmdk"; for a snapshot, the file that holds that point
	ChangeID      string // CBT change id of this disk at this point; empty when CBT is not active
	Backing       BackingKind
	// Mode is the disk mode ("persistent", "independent_persistent", …);
	// for an RDM it is the compatibility mode ("virtualMode" or
	// "physicalMode"). Independent and physical-mode disks are not part of
	// snapshots and have no CBT: the caller decides what to do with them.
	Mode string
	// Label is the device label shown in vSphere ("Hard disk 1").
	Label string
}

// disksFromDevices extracts the virtual disks of a device list, sorted by key.
func disksFromDevices(devices []types.BaseVirtualDevice) ([]Disk, error) {
	var out []Disk
	for _, dev := range devices {
		vd, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		d := Disk{Key: vd.Key, CapacityBytes: vd.CapacityInBytes}
		if d.CapacityBytes == 0 {
			d.CapacityBytes = vd.CapacityInKB * 1024
		}
		if info := vd.DeviceInfo; info != nil {
			d.Label = info.GetDescription().Label
		}
		switch b := vd.Backing.(type) {
		case *types.VirtualDiskFlatVer2BackingInfo:
			d.Backing, d.UUID, d.ChangeID, d.FileName, d.Mode = BackingFlat, b.Uuid, b.ChangeId, b.FileName, b.DiskMode
		case *types.VirtualDiskSparseVer2BackingInfo:
			d.Backing, d.UUID, d.ChangeID, d.FileName, d.Mode = BackingSparse, b.Uuid, b.ChangeId, b.FileName, b.DiskMode
		case *types.VirtualDiskSeSparseBackingInfo:
			d.Backing, d.UUID, d.ChangeID, d.FileName, d.Mode = BackingSeSparse, b.Uuid, b.ChangeId, b.FileName, b.DiskMode
		case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
			d.Backing, d.UUID, d.ChangeID, d.FileName, d.Mode = BackingRDM, b.Uuid, b.ChangeId, b.FileName, b.CompatibilityMode
		default:
			return nil, fmt.Errorf("describe disk %d: %w: %T", vd.Key, ErrUnsupportedDisk, vd.Backing)
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// SnapshotDisks reads the disks of a snapshot from its
// config.hardware.device: capacity, backing file and the change id that
// snapshot stamped. A disk whose ChangeID is empty has no active CBT; a
// backup of it cannot record a change id and must fail rather than succeed
// without one.
func (c *Client) SnapshotDisks(ctx context.Context, snap types.ManagedObjectReference) ([]Disk, error) {
	ctx, cancel := withDefaultTimeout(ctx, DefaultCallTimeout)
	defer cancel()
	var s mo.VirtualMachineSnapshot
	if err := c.gc.RetrieveOne(ctx, snap, []string{"config.hardware.device"}, &s); err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("read disks of snapshot %s: %w", snap.Value, ErrSnapshotNotFound)
		}
		return nil, fmt.Errorf("read disks of snapshot %s: %w", snap.Value, classify(err))
	}
	disks, err := disksFromDevices(s.Config.Hardware.Device)
	if err != nil {
		return nil, fmt.Errorf("read disks of snapshot %s: %w", snap.Value, err)
	}
	return disks, nil
}
