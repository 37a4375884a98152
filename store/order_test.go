package store

import (
	"errors"
	"strings"
	"testing"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// TestSameIDOtherBytesOrder: two events with the same (job, id,
// agent) but different bytes (the stream drops the second only within its
// duplicate window, so a re-publish after it is stored again under a new
// sequence). When the first filed won, the catalog depended on the order
// they were applied in. Now the one stored first in the stream is kept,
// whichever is applied first: here the original changeid, so the completed
// that matches the re-published one is poison in both orders.
func TestSameIDOtherBytesOrder(t *testing.T) {
	s := spec{job: "j-order"}
	run := from("node1", s.run()...) // started, changeid, completed
	alt := s.changeIDEvent(0)
	alt.ChangeID = bumped(alt.ChangeID)
	altEv := by("node1", alt) // the same id, stored later
	comp := s.completed()
	comp.Disks[0].ChangeID = alt.ChangeID
	compEv := by("node1", comp) // matches altEv; the same id as run[2]'s, which is not applied

	a := newTestCatalog(t)
	a.apply(run[0], run[1], altEv, compEv) // original changeid first
	b := newTestCatalog(t)
	errs := b.apply(run[0], altEv, run[1], compEv) // the other changeid first
	if errs[1] != nil || errs[2] != nil {
		t.Errorf("changeid events: %v, %v; want nil (one is a duplicate)", errs[1], errs[2])
	}
	if !errors.Is(errs[3], ErrInconsistent) || !strings.Contains(errs[3].Error(), "change id") {
		t.Errorf("completed: %v, want ErrInconsistent (its change id is not the changeid's)", errs[3])
	}
	ja, jb := a.job(s.job), b.job(s.job)
	if ja.Status != jb.Status || ja.Status != backup.StatusRunning {
		t.Errorf("same events, other order: status %s vs %s, want running", ja.Status, jb.Status)
	}
	if jb.Disks[0].ChangeID != s.changeID(diskA) {
		t.Errorf("disk's change id %s, want the first stored %s", jb.Disks[0].ChangeID, s.changeID(diskA))
	}
	requireSameDump(t, a.dump(), b.dump())
	requireOrderFree(t, []schemas.Event{run[0], run[1], altEv, compEv}, 12, 10)

	// The original completed, stored before the re-published one: the job
	// completes with the first stored changeid, in every order.
	full := []schemas.Event{run[0], altEv, compEv, run[1], run[2]}
	c := requireOrderFree(t, full, 12, 11)
	if j := c.job(s.job); j.Status != backup.StatusCompleted || j.Disks[0].ChangeID != s.changeID(diskA) {
		t.Errorf("job = %+v, want completed with change id %s", j, s.changeID(diskA))
	}
	requireHead(t, c, s)
}
