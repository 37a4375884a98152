package store

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// TestOtherAgentCannotRewriteCompletedJob: node1 completed j-done at
// attempt 1 and the catalog applied it. node2 (its own credentials,
// its own subject token) then publishes a self-consistent started,
// changeid and completed of attempt 1 of the same job, a second earlier,
// with bumped change ids. When the lowest valid attempt won, then the
// earliest time, node2's completed won: the completed job was rewritten
// and its chain head carried the forged change ids (the silent data loss
// of issue 9 attack 1, with another agent's credentials). Now the stream
// decides: node2's events come after node1's started of attempt 1, which
// makes the attempt node1's (rule 4), whatever their times and whatever
// order the catalog applies them in.
func TestOtherAgentCannotRewriteCompletedJob(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	legit := spec{job: "j-done", disks: both}
	c := newTestCatalog(t)
	done := from("node1", legit.run()...) // stream sequences first
	c.mustApply(done...)
	requireHead(t, c, legit)

	forgedSpec := spec{job: "j-done", disks: both, at: t0.Add(-time.Second)}
	var forged []schemas.Event // stored after node1's events
	forged = append(forged, by("node2", forgedSpec.started()))
	for i := range both {
		ci := forgedSpec.changeIDEvent(i)
		ci.ChangeID = bumped(ci.ChangeID)
		forged = append(forged, by("node2", ci))
	}
	co := forgedSpec.completed()
	for i := range co.Disks {
		co.Disks[i].ChangeID = bumped(co.Disks[i].ChangeID)
	}
	forged = append(forged, by("node2", co))
	const reason = "attempt 1 belongs to agent node1"
	for i, err := range c.apply(forged...) {
		if !errors.Is(err, ErrInconsistent) || !strings.Contains(err.Error(), reason) {
			t.Errorf("node2's event %d: %v, want ErrInconsistent with %q", i, err, reason)
		}
	}

	j := c.job(legit.job)
	if j.Agent != "node1" || j.Status != backup.StatusCompleted {
		t.Errorf("completed job rewritten by another agent: agent %q, disks %+v", j.Agent, j.Disks)
	}
	requireHead(t, c, legit)
	want := map[string]string{}
	for _, ev := range forged {
		want[ev.EventHeader().ID] = reason
	}
	requirePoison(t, c, want)

	// node2's events applied first (a catalog that lagged, or a replay
	// in batches): the same catalog.
	ref := requireOrderFree(t, concat(done, forged), 12, 9)
	requireSameDump(t, c.dump(), ref.dump())
	first := newTestCatalog(t)
	first.apply(forged...)
	first.apply(done...)
	requireSameDump(t, c.dump(), first.dump())
}
