package testbed

import (
	"fmt"

	"github.com/vmware/govmomi/vim25/types"
)

// SnapshotImage returns the frozen image of disk diskKey at snapshot snap:
// the bytes the disk held when the snapshot was taken, which is what a
// backup of that snapshot must contain. The image stays after the snapshot
// is removed (until Close), so tests and the demo can compare a restore with
// it. The signature fits vmware.LocalSources.Image.
func (tb *Testbed) SnapshotImage(snap types.ManagedObjectReference, diskKey int32) (string, error) {
	tb.mu.Lock()
	rec := tb.snapshotByRef(snap)
	tb.mu.Unlock()
	if rec == nil {
		// Taken but not yet seen by moref: recognise it by its change ids.
		rec = tb.resolveSnapshot(tb.model.Map(), snap)
	}
	if rec == nil {
		return "", fmt.Errorf("frozen image of disk %d at snapshot %s: %w", diskKey, snap.Value, ErrUnknownSnapshot)
	}
	return imageOf(rec, diskKey)
}

// SnapshotImageByName is SnapshotImage for the latest snapshot of vm (name,
// instance UUID or moref) with that name ("sendense-<job_id>").
func (tb *Testbed) SnapshotImageByName(vm, name string, diskKey int32) (string, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	st, err := tb.lookupVM(vm)
	if err != nil {
		return "", err
	}
	for i := len(tb.snaps) - 1; i >= 0; i-- {
		if rec := tb.snaps[i]; rec.vm == st && rec.name == name {
			return imageOf(rec, diskKey)
		}
	}
	return "", fmt.Errorf("frozen image of disk %d at snapshot %q of vm %s: %w", diskKey, name, st.name, ErrUnknownSnapshot)
}

// ChangeIDAt returns the change id snapshot name of vm stamped on disk
// diskKey (what SnapshotDisks must report).
func (tb *Testbed) ChangeIDAt(vm, name string, diskKey int32) (string, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	st, err := tb.lookupVM(vm)
	if err != nil {
		return "", err
	}
	for i := len(tb.snaps) - 1; i >= 0; i-- {
		if rec := tb.snaps[i]; rec.vm == st && rec.name == name {
			p := rec.points[diskKey]
			if p == nil {
				return "", fmt.Errorf("change id of disk %d at snapshot %q: %w", diskKey, name, ErrUnknownDisk)
			}
			return p.changeID, nil
		}
	}
	return "", fmt.Errorf("change id of disk %d at snapshot %q of vm %s: %w", diskKey, name, st.name, ErrUnknownSnapshot)
}

// snapshotByRef finds a record by moref. Caller holds tb.mu.
func (tb *Testbed) snapshotByRef(ref types.ManagedObjectReference) *snapRecord {
	for _, rec := range tb.snaps {
		if rec.ref == ref {
			return rec
		}
	}
	return nil
}

func imageOf(rec *snapRecord, key int32) (string, error) {
	p := rec.points[key]
	if p == nil {
		return "", fmt.Errorf("frozen image of disk %d at snapshot %q of vm %s: %w", key, rec.name, rec.vm.name, ErrUnknownDisk)
	}
	return p.path, nil
}
