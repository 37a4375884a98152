package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// State across restarts
//
// Everything a restart must keep is written to Dir/StateFile (JSON,
// atomically: a temporary file renamed over it, fsynced) whenever it
// changes: after each guest write call, snapshot, snapshot removal, CBT
// reset, resize, and VM creation or deletion. New finds the file in Dir
// and restores from it instead of creating Options.VMs afresh: each VM is
// created again in the simulator with its instance UUID and disk UUIDs,
// its live images are opened as they are (no fill), its CBT state
// (tracking UUID, sequence, recorded writes, change points) comes back,
// its frozen layers are published again over /folder, and the snapshots
// that still existed are created again in the simulator (new morefs, same
// names and change ids), so an agent finds the stale sendense-* snapshots
// of a crashed run and cleans them up. VMs of Options.VMs whose names are
// not in the file are created. Morefs of VMs and snapshots may change
// across a restart; names, UUIDs and change ids do not.
//
// The state is written after the image, so a crash between a guest write
// and the write of the state can lose that write from CBT; the testbed's
// guest writes are test actions, not taken while a crash is provoked.

// StateFile is the name of the state file under Options.Dir.
const StateFile = "testbed-state.json"

const stateVersion = 1

type savedState struct {
	Version int         `json:"version"`
	Frozen  int         `json:"frozen"` // the frozen-layer counter
	VMs     []savedVM   `json:"vms"`
	Snaps   []savedSnap `json:"snapshots"`
}

type savedVM struct {
	Name  string      `json:"name"`
	UUID  string      `json:"uuid"`
	Disks []savedDisk `json:"disks"`
}

type savedDisk struct {
	Key      int32                 `json:"key"`
	UUID     string                `json:"uuid"`
	FileName string                `json:"file_name"`
	Capacity int64                 `json:"capacity"`
	Path     string                `json:"path"`
	Tracking string                `json:"tracking"`
	Seq      int64                 `json:"seq"`
	Backing  string                `json:"backing,omitempty"` // the layer the VM's backing names now
	Writes   map[int64][]Extent    `json:"writes,omitempty"`
	Points   map[string]savedPoint `json:"points,omitempty"`
}

type savedPoint struct {
	Tracking  string   `json:"tracking"`
	Seq       int64    `json:"seq"`
	Path      string   `json:"path"`
	Layer     string   `json:"layer"`
	Capacity  int64    `json:"capacity"`
	Allocated []Extent `json:"allocated,omitempty"`
}

type savedSnap struct {
	VM      string           `json:"vm"`
	Name    string           `json:"name"`
	Points  map[int32]string `json:"points"` // disk key → change id
	Created time.Time        `json:"created"`
	// Exists: the snapshot was still in the inventory (or not yet known
	// by moref) when the state was written.
	Exists bool `json:"exists"`
}

// persist writes the state file. Callers must not hold tb.mu.
func (tb *Testbed) persist() {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.persistLocked()
}

// persistLocked writes the state file; failures are logged (the testbed
// goes on: the state is for restarts). Caller holds tb.mu.
func (tb *Testbed) persistLocked() {
	if !tb.ready || tb.restoring || tb.closed || !tb.opts.KeepImages {
		return
	}
	st := savedState{Version: stateVersion, Frozen: tb.frozen}
	for _, rec := range tb.snaps {
		ss := savedSnap{VM: rec.vm.name, Name: rec.name, Points: map[int32]string{}, Created: rec.created}
		ss.Exists = !rec.gone && (rec.ref.Value == "" || tb.model.Map().Get(rec.ref) != nil)
		for key, p := range rec.points {
			ss.Points[key] = p.changeID
		}
		st.Snaps = append(st.Snaps, ss)
	}
	// A point's allocated ranges answer QueryChangedDiskAreas "*" on its
	// snapshot only: they are kept while the snapshot exists, so the file
	// does not grow with every snapshot ever taken.
	live := map[*point]bool{}
	for i, rec := range tb.snaps {
		if st.Snaps[i].Exists {
			for _, p := range rec.points {
				live[p] = true
			}
		}
	}
	for _, vm := range tb.vms {
		sv := savedVM{Name: vm.name, UUID: vm.uuid}
		for _, d := range vm.disks {
			sd := savedDisk{Key: d.key, UUID: d.uuid, FileName: d.fileName, Capacity: d.capacity, Path: d.path,
				Tracking: d.tracking, Seq: d.seq, Backing: d.backing, Writes: map[int64][]Extent{}, Points: map[string]savedPoint{}}
			for seq, set := range d.writes {
				sd.Writes[seq] = slices.Clone(set.ext)
			}
			for id, p := range d.points {
				sp := savedPoint{Tracking: p.tracking, Seq: p.seq, Path: p.path, Layer: p.layer, Capacity: p.capacity}
				if live[p] {
					sp.Allocated = p.allocated
				}
				sd.Points[id] = sp
			}
			sv.Disks = append(sv.Disks, sd)
		}
		st.VMs = append(st.VMs, sv)
	}
	if err := writeStateFile(filepath.Join(tb.opts.Dir, StateFile), st); err != nil {
		tb.log.Error().Err(err).Msg("write testbed state")
	}
}

func writeStateFile(path string, st savedState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode testbed state: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write testbed state %s: %w", tmp, err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write testbed state %s: %w", path, err)
	}
	return nil
}

// loadState reads Dir's state file; ok is false when there is none.
func loadState(dir string) (st savedState, ok bool, err error) {
	path := filepath.Join(dir, StateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("read testbed state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("%w: testbed state %s: %v", ErrInvalidSpec, path, err)
	}
	if st.Version != stateVersion {
		return st, false, fmt.Errorf("%w: testbed state %s has version %d, want %d", ErrInvalidSpec, path, st.Version, stateVersion)
	}
	return st, true, nil
}

// restoreVM creates a saved VM again: in the simulator with its UUIDs,
// its images opened as they are, its CBT state, its frozen layers
// published, and its snapshots that still existed created again.
func (tb *Testbed) restoreVM(ctx context.Context, sv savedVM, snaps []savedSnap) error {
	spec := VMSpec{Name: sv.Name}
	for _, d := range sv.Disks {
		spec.Disks = append(spec.Disks, DiskSpec{CapacityBytes: d.Capacity})
	}
	st, err := tb.createSimVM(ctx, spec, &sv)
	if err != nil {
		return err
	}
	tb.mu.Lock()
	st.restoring = true
	tb.vms = append(tb.vms, st)
	tb.mu.Unlock()
	for _, sd := range sv.Disks {
		d := &disk{key: sd.Key, uuid: sd.UUID, fileName: sd.FileName, capacity: sd.Capacity, path: sd.Path,
			tracking: sd.Tracking, seq: sd.Seq, backing: sd.Backing, writes: map[int64]*rangeSet{}, points: map[string]*point{}}
		for seq, ext := range sd.Writes {
			d.writes[seq] = &rangeSet{ext: ext}
		}
		if d.f, err = os.OpenFile(d.path, os.O_RDWR, 0); err != nil {
			return fmt.Errorf("open image of disk %d: %w", d.key, err)
		}
		tb.mu.Lock()
		st.disks = append(st.disks, d)
		tb.mu.Unlock()
		for id, sp := range sd.Points {
			p := &point{changeID: id, tracking: sp.Tracking, seq: sp.Seq, path: sp.Path, layer: sp.Layer, capacity: sp.Capacity, allocated: sp.Allocated}
			d.points[id] = p
			var layer object.DatastorePath
			if _, err := os.Stat(p.path); err != nil || !layer.FromString(p.layer) {
				continue // a layer removed before the restart: its point stays for CBT
			}
			tb.mu.Lock()
			err := tb.publishLayer(layer, p.path, p.capacity, d.uuid)
			tb.mu.Unlock()
			if err != nil {
				return err
			}
		}
	}
	sim, ok := tb.model.Map().Get(st.ref).(*simulator.VirtualMachine)
	if !ok {
		return fmt.Errorf("vm %s missing from the simulator", sv.Name)
	}
	// stamp sets each disk's backing as a snapshot (or, last, the current
	// state) saw it.
	stamp := func(ids map[int32]string, now bool) {
		tb.model.Map().WithLock(simulator.NewContext(), sim, func() {
			for _, dev := range sim.Config.Hardware.Device {
				vd, ok := dev.(*types.VirtualDisk)
				if !ok {
					continue
				}
				b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
				if !ok {
					continue
				}
				for _, d := range st.disks {
					if d.key != vd.Key {
						continue
					}
					id := ids[d.key]
					if now && d.seq > 0 {
						id = formatChangeID(d.tracking, d.seq)
					}
					if p := d.points[id]; p != nil {
						b.ChangeId, b.FileName = id, p.layer
					}
					if now && d.backing != "" {
						b.FileName = d.backing
					}
				}
			}
		})
	}
	vmObj := object.NewVirtualMachine(tb.client.Client, st.ref)
	for _, ss := range snaps {
		rec := &snapRecord{vm: st, name: ss.Name, points: map[int32]*point{}, created: ss.Created, gone: !ss.Exists}
		for key, id := range ss.Points {
			for _, d := range st.disks {
				if d.key == key && d.points[id] != nil {
					rec.points[key] = d.points[id]
				}
			}
		}
		if ss.Exists {
			stamp(ss.Points, false)
			task, err := vmObj.CreateSnapshot(ctx, ss.Name, "", false, false)
			if err != nil {
				return fmt.Errorf("create snapshot %s again: %w", ss.Name, err)
			}
			info, err := task.WaitForResult(ctx)
			if err != nil {
				return fmt.Errorf("create snapshot %s again: %w", ss.Name, err)
			}
			rec.ref = info.Result.(types.ManagedObjectReference)
		}
		tb.mu.Lock()
		tb.snaps = append(tb.snaps, rec)
		tb.mu.Unlock()
	}
	stamp(nil, true)
	tb.mu.Lock()
	st.restoring = false
	tb.mu.Unlock()
	tb.log.Info().Str("vm", sv.Name).Str("moref", st.ref.Value).Int("disks", len(st.disks)).Msg("testbed vm restored")
	return nil
}
