package testbed

import (
	"fmt"
	"os"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// How the simulator is extended
//
// The simulator dispatches a SOAP call to the object its registries hold for
// the call's moref, preferring the caller's session registry over the global
// one, after asking Registry.Handler. For QueryChangedDiskAreas and the
// snapshot-creating calls on a testbed VM, handle puts a vmWrapper (which
// embeds the simulator's *VirtualMachine, so every other method still works)
// into the caller's session registry and the call lands on the wrapper; the
// wrapper method removes it again when it returns. A reference count per
// (session, VM) keeps concurrent calls of one session from removing each
// other's wrapper. The wrapper must not go into the global registry: the
// simulator's snapshot task looks the VM up there and asserts its type.

type sessionRef struct {
	session string
	ref     types.ManagedObjectReference
}

func (tb *Testbed) handle(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	switch m.Name {
	case "QueryChangedDiskAreas", "CreateSnapshot_Task", "CreateSnapshotEx_Task":
	case "RemoveSnapshot_Task":
		// Learn the snapshot's moref while it still exists, so SnapshotImage
		// keeps working after the removal.
		tb.resolveSnapshot(ctx.Map, m.This)
		tb.persistAfterRemoval(ctx.Map, []types.ManagedObjectReference{m.This})
		return nil, nil
	case "RemoveAllSnapshots_Task":
		tb.persistAfterRemoval(ctx.Map, tb.resolveAllSnapshots(ctx, m.This))
		return nil, nil
	default:
		return nil, nil
	}
	if m.This.Type != "VirtualMachine" || ctx.Session == nil {
		return nil, nil
	}
	st := tb.vmByRef(m.This)
	if st == nil {
		return nil, nil
	}
	tb.mu.Lock()
	restoring := st.restoring
	tb.mu.Unlock()
	if restoring {
		return nil, nil
	}
	sim, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		return nil, nil
	}
	w := &vmWrapper{VirtualMachine: sim, tb: tb, vm: st}
	tb.enter(ctx, w)
	return w, nil
}

// enter puts w into the caller's session registry (first entry) and counts
// the call. Lock order: the VM's simulator lock, then tb.wmu — leave runs
// inside the call, which holds the VM's lock.
func (tb *Testbed) enter(ctx *simulator.Context, w *vmWrapper) {
	// Registry.Put also touches the entity's status fields: holding the VM's
	// lock keeps property collectors from reading them meanwhile.
	ctx.WithLock(w.VirtualMachine, func() {
		tb.wmu.Lock()
		defer tb.wmu.Unlock()
		k := sessionRef{ctx.Session.Key, w.Self}
		if tb.wrapped[k] == 0 {
			ctx.Session.Registry.Put(w)
		}
		tb.wrapped[k]++
	})
}

func (tb *Testbed) leave(ctx *simulator.Context, ref types.ManagedObjectReference) {
	tb.wmu.Lock()
	defer tb.wmu.Unlock()
	k := sessionRef{ctx.Session.Key, ref}
	tb.wrapped[k]--
	if tb.wrapped[k] <= 0 {
		delete(tb.wrapped, k)
		ctx.Session.Registry.Remove(ctx, ref)
	}
}

// vmWrapper is a testbed VM as the simulator dispatches to it. The embedded
// *simulator.VirtualMachine must stay the first field (the property collector
// finds the managed object through it).
type vmWrapper struct {
	*simulator.VirtualMachine
	tb *Testbed
	vm *vmState
}

// CreateSnapshotTask freezes the disks, stamps the new change ids on the
// VM's disk backings (the snapshot copies that configuration), then lets
// the simulator create the snapshot.
func (w *vmWrapper) CreateSnapshotTask(ctx *simulator.Context, req *types.CreateSnapshot_Task) soap.HasFault {
	defer w.tb.leave(ctx, w.Self)
	if f := w.tb.freeze(w.VirtualMachine, w.vm, req.Name); f != nil {
		return &methods.CreateSnapshot_TaskBody{Fault_: simulator.Fault(faultMessage(f), f)}
	}
	return w.VirtualMachine.CreateSnapshotTask(ctx, req)
}

// CreateSnapshotExTask is CreateSnapshotTask for the Ex variant.
func (w *vmWrapper) CreateSnapshotExTask(ctx *simulator.Context, req *types.CreateSnapshotEx_Task) soap.HasFault {
	defer w.tb.leave(ctx, w.Self)
	if f := w.tb.freeze(w.VirtualMachine, w.vm, req.Name); f != nil {
		return &methods.CreateSnapshotEx_TaskBody{Fault_: simulator.Fault(faultMessage(f), f)}
	}
	return w.VirtualMachine.CreateSnapshotExTask(ctx, req)
}

// QueryChangedDiskAreas answers from the testbed's CBT state.
func (w *vmWrapper) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	defer w.tb.leave(ctx, w.Self)
	body := &methods.QueryChangedDiskAreasBody{}
	info, f := w.tb.changedAreas(ctx, w.VirtualMachine, w.vm, req)
	if f != nil {
		body.Fault_ = simulator.Fault(faultMessage(f), f)
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: *info}
	return body
}

func faultMessage(f types.BaseMethodFault) string {
	switch x := f.(type) {
	case *types.InvalidArgument:
		return "A specified parameter was not correct: " + x.InvalidProperty
	case types.BaseFileFault:
		return "Error caused by file " + x.GetFileFault().File
	case *types.ManagedObjectNotFound:
		return "The object '" + x.Obj.String() + "' has already been deleted or has not been completely created"
	}
	return fmt.Sprintf("%T", f)
}

// freeze is the instant of the snapshot: each disk's sequence grows, its live
// image gets a frozen name (a hard link: see cow.go), and the new change id is
// stamped on the VM's disk backing. It runs under the VM's simulator lock,
// so the snapshot the task then creates copies exactly this configuration.
func (tb *Testbed) freeze(sim *simulator.VirtualMachine, st *vmState, name string) types.BaseMethodFault {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if tb.closed {
		return &types.InvalidState{}
	}
	devices := object.VirtualDeviceList(sim.Config.Hardware.Device)
	rec := &snapRecord{vm: st, name: name, points: map[int32]*point{}, created: time.Now()}
	for _, d := range st.disks {
		vd, ok := devices.FindByKey(d.key).(*types.VirtualDisk)
		if !ok {
			return &types.InvalidArgument{InvalidProperty: fmt.Sprintf("device %d", d.key)}
		}
		capacity := vd.CapacityInBytes
		if capacity == 0 {
			capacity = vd.CapacityInKB * 1024
		}
		b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			return &types.InvalidArgument{InvalidProperty: fmt.Sprintf("device %d backing", d.key)}
		}
		tb.frozen++
		path := fmt.Sprintf("%s.frozen-%d.img", d.path[:len(d.path)-len(".img")], tb.frozen)
		alloc, err := freezeLink(d, path, capacity)
		if err != nil {
			tb.log.Error().Err(err).Str("vm", st.name).Int32("disk_key", d.key).Msg("disk freeze failed")
			return &types.FileFault{File: d.fileName}
		}
		layer, ok := frozenLayer(d.fileName, tb.frozen)
		if !ok {
			_ = os.Remove(path)
			return &types.InvalidArgument{InvalidProperty: fmt.Sprintf("device %d backing", d.key)}
		}
		if err := tb.publishLayer(layer, path, capacity, d.uuid); err != nil {
			_ = os.Remove(path)
			tb.log.Error().Err(err).Str("vm", st.name).Int32("disk_key", d.key).Msg("disk freeze failed")
			return &types.FileFault{File: d.fileName}
		}
		b.FileName = layer.String()
		d.seq++
		id := formatChangeID(d.tracking, d.seq)
		p := &point{changeID: id, tracking: d.tracking, seq: d.seq, path: path, layer: layer.String(), capacity: capacity, allocated: alloc}
		d.backing = layer.String()
		d.points[id] = p
		rec.points[d.key] = p
		b.ChangeId = id
		var allocated int64
		for _, e := range alloc {
			allocated += e.Length
		}
		tb.log.Info().Str("vm", st.name).Str("snapshot", name).Int32("disk_key", d.key).Str("change_id", id).Str("file", b.FileName).
			Int64("capacity_bytes", capacity).Int64("allocated_bytes", allocated).Str("image", path).Msg("disk frozen")
	}
	tb.snaps = append(tb.snaps, rec)
	tb.persistLocked()
	return nil
}

// changedAreas computes a QueryChangedDiskAreas reply.
func (tb *Testbed) changedAreas(ctx *simulator.Context, sim *simulator.VirtualMachine, st *vmState, req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, types.BaseMethodFault) {
	if req.Snapshot == nil {
		return nil, &types.InvalidArgument{InvalidProperty: "snapshot"}
	}
	snap, ok := ctx.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: *req.Snapshot}
	}
	if snap.Vm != sim.Self {
		return nil, &types.InvalidArgument{InvalidProperty: "snapshot"}
	}
	vd, ok := object.VirtualDeviceList(snap.Config.Hardware.Device).FindByKey(req.DeviceKey).(*types.VirtualDisk)
	if !ok {
		return nil, &types.InvalidArgument{InvalidProperty: "deviceKey"}
	}
	b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		return nil, &types.InvalidArgument{InvalidProperty: "deviceKey"}
	}
	if b.ChangeId == "" { // snapshot taken without CBT
		return nil, &types.FileFault{File: b.FileName}
	}

	tb.mu.Lock()
	defer tb.mu.Unlock()
	var d *disk
	for _, x := range st.disks {
		if x.key == req.DeviceKey {
			d = x
		}
	}
	if d == nil {
		return nil, &types.InvalidArgument{InvalidProperty: "deviceKey"}
	}
	p := d.points[b.ChangeId]
	if p == nil {
		return nil, &types.FileFault{File: d.fileName}
	}
	if req.StartOffset < 0 || req.StartOffset >= p.capacity {
		return nil, &types.InvalidArgument{InvalidProperty: "startOffset"}
	}
	var ext []Extent
	if req.ChangeId == "*" {
		ext = p.allocated
	} else {
		tracking, seq, ok := parseChangeID(req.ChangeId)
		if !ok {
			return nil, &types.InvalidArgument{InvalidProperty: "changeId"}
		}
		// Foreign (another disk, or before a CBT reset), unknown, or from the
		// future: vSphere answers these with a FileFault on the disk.
		if tracking != d.tracking || tracking != p.tracking || seq < 1 || seq > p.seq {
			return nil, &types.FileFault{File: d.fileName}
		}
		ext = d.changedSince(seq, p, tb.opts.BlockSize)
	}
	areas, length := page(ext, req.StartOffset, p.capacity, tb.opts.MaxChangedAreas)
	info := &types.DiskChangeInfo{StartOffset: req.StartOffset, Length: length}
	for _, a := range areas {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a.Offset, Length: a.Length})
	}
	return info, nil
}

// resolveSnapshot records the moref of the snapshot record that ref is,
// recognised by the change ids on its disks. It reads the snapshot from reg.
func (tb *Testbed) resolveSnapshot(reg *simulator.Registry, ref types.ManagedObjectReference) *snapRecord {
	snap, ok := reg.Get(ref).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return nil
	}
	ids := map[int32]string{}
	for _, dev := range snap.Config.Hardware.Device {
		if vd, ok := dev.(*types.VirtualDisk); ok {
			if b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && b.ChangeId != "" {
				ids[vd.Key] = b.ChangeId
			}
		}
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, rec := range tb.snaps {
		if rec.vm.ref != snap.Vm {
			continue
		}
		match := len(rec.points) > 0
		for key, p := range rec.points {
			if ids[key] != p.changeID {
				match = false
			}
		}
		if match {
			rec.ref = ref
			return rec
		}
	}
	return nil
}

func (tb *Testbed) resolveAllSnapshots(ctx *simulator.Context, vmRef types.ManagedObjectReference) []types.ManagedObjectReference {
	sim, ok := ctx.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return nil
	}
	var refs []types.ManagedObjectReference
	ctx.WithLock(sim, func() {
		if sim.Snapshot == nil {
			return
		}
		var walk func([]types.VirtualMachineSnapshotTree)
		walk = func(tree []types.VirtualMachineSnapshotTree) {
			for _, t := range tree {
				refs = append(refs, t.Snapshot)
				walk(t.ChildSnapshotList)
			}
		}
		walk(sim.Snapshot.RootSnapshotList)
	})
	for _, r := range refs {
		tb.resolveSnapshot(ctx.Map, r)
	}
	return refs
}

// persistAfterRemoval writes the state once the simulator's removal task
// has taken the snapshots refs out of the inventory (the handler runs
// before the task), or after a minute at the latest.
func (tb *Testbed) persistAfterRemoval(reg *simulator.Registry, refs []types.ManagedObjectReference) {
	if len(refs) == 0 {
		return
	}
	tb.bg.Add(1)
	go func() {
		defer tb.bg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(time.Minute)
		for {
			select {
			case <-tb.done:
				return
			case <-deadline:
				tb.persist()
				return
			case <-tick.C:
			}
			gone := true
			for _, r := range refs {
				if reg.Get(r) != nil {
					gone = false
				}
			}
			if gone {
				tb.persist()
				return
			}
		}
	}()
}
