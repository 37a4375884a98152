package system

import (
	"os"
	"testing"

	"github.com/sendense/sendense/schemas"
)

// TestBaseMissing is part C: a chain head whose image is gone from the
// repository makes the next backup a full with reason base_missing,
// instead of failing every backup of the VM for good.
func TestBaseMissing(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	head := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	for _, d := range head.Disks {
		if err := os.Remove(h.targetPath(d)); err != nil {
			t.Fatal(err)
		}
	}
	h.guestWrite("pgtest1", 41)
	next := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	for _, d := range next.Disks {
		if d.BackupType != schemas.TypeFull || d.Reason != schemas.ReasonBaseMissing || d.Backing != "" {
			t.Errorf("disk %d: %s (%s) backing %q, want a full for %s", d.Disk.Key, d.BackupType, d.Reason, d.Backing, schemas.ReasonBaseMissing)
		}
		h.sameData(h.frozen("pgtest1", next.JobID, d.Disk.Key), h.targetPath(d))
	}
}
