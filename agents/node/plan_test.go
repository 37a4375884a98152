package node

import (
	"context"
	"fmt"
	"testing"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/vmware"
)

// TestPlan: the one place that decides full vs incremental (invariant 3).
func TestPlan(t *testing.T) {
	const (
		epochA = "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4"
		epochB = "52 aa 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4"
	)
	disk := vmware.Disk{Key: 2000, UUID: "6000c291-1c2d-4e5f-8a9b-0c1d2e3f4a5b", CapacityBytes: 1 << 30, ChangeID: epochA + "/7"}
	head := &backup.Link{JobID: "j1", DiskKey: 2000, DiskUUID: disk.UUID, CapacityBytes: 1 << 30, ChangeID: epochA + "/3",
		ManifestSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
	with := func(f func(l *backup.Link)) *backup.Link { l := *head; f(&l); return &l }
	cases := []struct {
		name      string
		requested string
		head      *backup.Link
		disk      vmware.Disk
		typ       string
		reason    string
	}{
		{"auto with a base", schemas.TypeAuto, head, disk, schemas.TypeIncremental, schemas.ReasonBaseUsable},
		{"incremental with a base", schemas.TypeIncremental, head, disk, schemas.TypeIncremental, schemas.ReasonBaseUsable},
		{"full requested", schemas.TypeFull, head, disk, schemas.TypeFull, schemas.ReasonRequestedFull},
		{"no chain", schemas.TypeAuto, nil, disk, schemas.TypeFull, schemas.ReasonNoBase},
		{"incremental without chain becomes full", schemas.TypeIncremental, nil, disk, schemas.TypeFull, schemas.ReasonNoBase},
		{"disk replaced", schemas.TypeAuto, with(func(l *backup.Link) { l.DiskUUID = "other" }), disk, schemas.TypeFull, schemas.ReasonNoBase},
		{"resized", schemas.TypeAuto, with(func(l *backup.Link) { l.CapacityBytes = 1 << 29 }), disk, schemas.TypeFull, schemas.ReasonDiskResized},
		{"cbt reset", schemas.TypeIncremental, with(func(l *backup.Link) { l.ChangeID = epochB + "/9" }), disk, schemas.TypeFull, schemas.ReasonCBTReset},
		{"garbage base change id", schemas.TypeAuto, with(func(l *backup.Link) { l.ChangeID = "garbage" }), disk, schemas.TypeFull, schemas.ReasonCBTReset},
		{"base without a manifest", schemas.TypeAuto, with(func(l *backup.Link) { l.ManifestSHA256 = "" }), disk, schemas.TypeFull, schemas.ReasonBaseUnverified},
		{"base failed verification", schemas.TypeIncremental, with(func(l *backup.Link) { l.Verified = schemas.VerifyFailed }), disk, schemas.TypeFull, schemas.ReasonBaseUnverified},
		{"base verified", schemas.TypeAuto, with(func(l *backup.Link) { l.Verified = schemas.VerifyOK }), disk, schemas.TypeIncremental, schemas.ReasonBaseUsable},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			typ, reason := Plan(c.requested, c.disk, c.head)
			if typ != c.typ || reason != c.reason {
				t.Errorf("Plan = %s (%s), want %s (%s)", typ, reason, c.typ, c.reason)
			}
		})
	}
}

// fakeVC answers ChangedAreas: "*" gives everything, a base change id is
// refused as VMware does after it lost track (ErrChangeIDRejected).
type fakeVC struct {
	VCenter
	asked []string
}

func (f *fakeVC) ChangedAreas(_ context.Context, _ *vmware.VM, _ types.ManagedObjectReference, _ int32, changeID string, capacity int64) ([]vmware.Extent, error) {
	f.asked = append(f.asked, changeID)
	if changeID != vmware.FullChangeID {
		return nil, fmt.Errorf("query changed areas: %w", vmware.ErrChangeIDRejected)
	}
	return []vmware.Extent{{Offset: 0, Length: capacity}}, nil
}

type fakeCatalog struct {
	Catalog
	head backup.Link
}

func (f *fakeCatalog) ChainHead(context.Context, string, int32, string) (backup.Link, error) {
	return f.head, nil
}

// TestPlanChangeIDRejected: an incremental whose base change id VMware
// rejects becomes a full with reason change_id_rejected, over all areas.
func TestPlanChangeIDRejected(t *testing.T) {
	const epoch = "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4"
	disk := vmware.Disk{Key: 2000, UUID: "6000c291-1c2d-4e5f-8a9b-0c1d2e3f4a5b", CapacityBytes: 1 << 20, ChangeID: epoch + "/7"}
	vc := &fakeVC{}
	a := &Agent{deps: Deps{VCenter: vc, Catalog: &fakeCatalog{head: backup.Link{
		JobID: "j1", DiskUUID: disk.UUID, CapacityBytes: disk.CapacityBytes, ChangeID: epoch + "/3",
		ManifestSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}}}
	r := &request{req: schemas.Request{VM: "pgtest1", BackupType: schemas.TypeAuto, Repository: "default"},
		vm: &vmware.VM{InstanceUUID: "4217a1b3-6f0e-4c55-9b1e-2f3c4d5e6f70"}, log: zerolog.Nop()}
	plans, err := a.plan(context.Background(), r, types.ManagedObjectReference{Value: "snapshot-1"}, []vmware.Disk{disk}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := plans[0]
	if p.backupType != schemas.TypeFull || p.reason != schemas.ReasonChangeIDRejected || p.backing != "" || p.baseChangeID != "" {
		t.Errorf("plan %+v, want a full for change_id_rejected", p)
	}
	if len(vc.asked) != 2 || vc.asked[0] != epoch+"/3" || vc.asked[1] != vmware.FullChangeID {
		t.Errorf("asked VMware for %q, want the base id then *", vc.asked)
	}
	if len(p.extents) != 1 || p.extents[0].Length != disk.CapacityBytes {
		t.Errorf("extents %+v, want the whole disk", p.extents)
	}
}

// TestPlanNoChangeID: a disk without a change id (CBT off) fails the job
// loudly instead of completing without one (invariant 2).
func TestPlanNoChangeID(t *testing.T) {
	a := &Agent{deps: Deps{VCenter: &fakeVC{}, Catalog: &fakeCatalog{}}}
	r := &request{req: schemas.Request{VM: "pgtest1", BackupType: schemas.TypeAuto, Repository: "default"},
		vm: &vmware.VM{InstanceUUID: "4217a1b3-6f0e-4c55-9b1e-2f3c4d5e6f70"}, log: zerolog.Nop()}
	_, err := a.plan(context.Background(), r, types.ManagedObjectReference{Value: "snapshot-1"},
		[]vmware.Disk{{Key: 2000, UUID: "u", CapacityBytes: 1 << 20}}, nil)
	reason, retryable := classify(err)
	if err == nil || reason != schemas.FailChangeIDMissing || retryable {
		t.Errorf("err %v reason %s retryable %t, want %s, not retryable", err, reason, retryable, schemas.FailChangeIDMissing)
	}
}
