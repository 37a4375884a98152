package testbed

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Simulated guest I/O. Every call goes to the disk's live image and is
// recorded for CBT under the sequence of the disk's last snapshot, so it
// shows up in the next snapshot's changed areas and never in an earlier
// snapshot's frozen image. vm is a name, instance UUID or moref.

// Write writes data at off.
func (tb *Testbed) Write(vm string, key int32, off int64, data []byte) error {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	_, d, err := tb.lookupDisk(vm, key)
	if err != nil {
		return err
	}
	if err := checkRange(d, off, int64(len(data))); err != nil {
		return err
	}
	if err := tb.split(d); err != nil {
		return err
	}
	if _, err := d.f.WriteAt(data, off); err != nil {
		return fmt.Errorf("write %d bytes at %d of disk %d of vm %s: %w", len(data), off, key, vm, err)
	}
	d.recordWrite(off, int64(len(data)))
	tb.persistLocked()
	return nil
}

// WriteZeros overwrites [off, off+n) with zero bytes that stay allocated
// (explicit zeros, not a hole).
func (tb *Testbed) WriteZeros(vm string, key int32, off, n int64) error {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	_, d, err := tb.lookupDisk(vm, key)
	if err != nil {
		return err
	}
	if err := checkRange(d, off, n); err != nil {
		return err
	}
	if err := tb.split(d); err != nil {
		return err
	}
	zero := make([]byte, min(n, 1<<20))
	for done := int64(0); done < n; {
		l := min(n-done, int64(len(zero)))
		if _, err := d.f.WriteAt(zero[:l], off+done); err != nil {
			return fmt.Errorf("write zeros at %d of disk %d of vm %s: %w", off+done, key, vm, err)
		}
		done += l
	}
	d.recordWrite(off, n)
	tb.persistLocked()
	return nil
}

// PunchHole deallocates [off, off+n) (the guest's TRIM/UNMAP): it reads as
// zeros afterwards and is recorded as changed.
func (tb *Testbed) PunchHole(vm string, key int32, off, n int64) error {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	_, d, err := tb.lookupDisk(vm, key)
	if err != nil {
		return err
	}
	if err := checkRange(d, off, n); err != nil {
		return err
	}
	if err := tb.split(d); err != nil {
		return err
	}
	if err := punchHole(d.f, off, n); err != nil {
		return fmt.Errorf("punch hole [%d, +%d) in disk %d of vm %s: %w", off, n, key, vm, err)
	}
	d.recordWrite(off, n)
	tb.persistLocked()
	return nil
}

// WriteRandom writes seeded random data over about fraction (0 < fraction
// ≤ 1) of the disk's capacity, in extents of 4 KiB to 1 MiB at 4 KiB-aligned
// seeded offsets (they may overlap). It returns the extents written.
func (tb *Testbed) WriteRandom(vm string, key int32, fraction float64, seed int64) ([]Extent, error) {
	if !(fraction > 0 && fraction <= 1) {
		return nil, fmt.Errorf("random write to disk %d of vm %s: %w: fraction %v not in (0, 1]", key, vm, ErrOutOfRange, fraction)
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	_, d, err := tb.lookupDisk(vm, key)
	if err != nil {
		return nil, err
	}
	if err := tb.split(d); err != nil {
		return nil, err
	}
	const page = 4096
	target := int64(fraction * float64(d.capacity))
	rnd := newRandom(seed)
	buf := make([]byte, 1<<20)
	var written []Extent
	for done := int64(0); done < target; {
		n := int64(1+rnd.r.IntN(256)) * page
		if rem := target - done; n > rem {
			n = (rem + page - 1) / page * page
		}
		if n > d.capacity {
			n = d.capacity / page * page
			if n == 0 {
				n = d.capacity
			}
		}
		slots := (d.capacity-n)/page + 1
		off := rnd.r.Int64N(slots) * page
		rnd.fill(buf[:n])
		if _, err := d.f.WriteAt(buf[:n], off); err != nil {
			return written, fmt.Errorf("random write at %d of disk %d of vm %s: %w", off, key, vm, err)
		}
		d.recordWrite(off, n)
		written = append(written, Extent{Offset: off, Length: n})
		done += n
	}
	tb.persistLocked()
	tb.log.Info().Str("vm", vm).Int32("disk_key", key).Float64("fraction", fraction).Int("extents", len(written)).Msg("guest random writes")
	return written, nil
}

// ResetCBT resets change tracking of a disk, as disabling and re-enabling
// CBT does: a new tracking UUID, the sequence restarts, and every change id
// issued before is refused from now on.
func (tb *Testbed) ResetCBT(vm string, key int32) error {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	_, d, err := tb.lookupDisk(vm, key)
	if err != nil {
		return err
	}
	old := d.tracking
	d.tracking = newTrackingUUID()
	d.seq = 0
	d.writes = map[int64]*rangeSet{}
	tb.persistLocked()
	tb.log.Info().Str("vm", vm).Int32("disk_key", key).Str("old_tracking_uuid", old).Str("tracking_uuid", d.tracking).Msg("cbt reset")
	return nil
}

// Resize grows a disk to newCapacity bytes (a multiple of 1 KiB, larger than
// now): the live image grows, and the VM's device capacity changes through
// ReconfigVM like a vSphere disk extend.
func (tb *Testbed) Resize(ctx context.Context, vm string, key int32, newCapacity int64) error {
	tb.mu.Lock()
	st, d, err := tb.lookupDisk(vm, key)
	if err == nil && (newCapacity <= d.capacity || newCapacity%1024 != 0) {
		err = fmt.Errorf("resize disk %d of vm %s to %d: %w: must grow, in whole KiB", key, vm, newCapacity, ErrOutOfRange)
	}
	if err == nil {
		err = tb.split(d)
	}
	if err == nil {
		if terr := d.f.Truncate(newCapacity); terr != nil {
			err = fmt.Errorf("grow image of disk %d of vm %s: %w", key, vm, terr)
		}
	}
	var old int64
	if d != nil {
		old = d.capacity
	}
	tb.mu.Unlock()
	if err != nil {
		return err
	}

	undo := func() {
		tb.mu.Lock()
		_ = d.f.Truncate(old)
		tb.mu.Unlock()
	}
	vmObj := object.NewVirtualMachine(tb.client.Client, st.ref)
	var mvm mo.VirtualMachine
	if err := vmObj.Properties(ctx, st.ref, []string{"config.hardware.device"}, &mvm); err != nil {
		undo()
		return fmt.Errorf("resize disk %d of vm %s: %w", key, vm, err)
	}
	vd, ok := object.VirtualDeviceList(mvm.Config.Hardware.Device).FindByKey(key).(*types.VirtualDisk)
	if !ok {
		undo()
		return fmt.Errorf("resize disk %d of vm %s: %w", key, vm, ErrUnknownDisk)
	}
	vd.CapacityInBytes, vd.CapacityInKB = newCapacity, 0
	spec := types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: vd},
	}}
	task, err := vmObj.Reconfigure(ctx, spec)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		undo()
		return fmt.Errorf("resize disk %d of vm %s: %w", key, vm, err)
	}
	tb.mu.Lock()
	d.capacity = newCapacity
	tb.persistLocked()
	tb.mu.Unlock()
	tb.log.Info().Str("vm", vm).Int32("disk_key", key).Int64("old_capacity_bytes", old).Int64("capacity_bytes", newCapacity).Msg("disk resized")
	return nil
}

// checkRange rejects I/O outside the disk. Caller holds tb.mu.
func checkRange(d *disk, off, n int64) error {
	if off < 0 || n < 0 || off+n > d.capacity || off+n < off {
		return fmt.Errorf("i/o [%d, +%d) on disk %d of %d bytes: %w", off, n, d.key, d.capacity, ErrOutOfRange)
	}
	return nil
}
