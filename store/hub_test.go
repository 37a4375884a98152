package store

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// pruneDisks is s's disks as a prune event names them.
func (s spec) pruneDisks(op, child, parent string) []schemas.PruneDisk {
	s = s.withDefaults()
	var out []schemas.PruneDisk
	for _, d := range s.disks {
		out = append(out, schemas.PruneDisk{Disk: d, Operation: op, Target: s.target(d), Child: child, Parent: parent})
	}
	return out
}

func (s spec) pruning(op, child, parent string) *schemas.Pruning {
	s = s.withDefaults()
	return &schemas.Pruning{
		Header:     s.header(schemas.NamePruning, 0, 0, s.completedAt().Add(time.Hour)),
		Repository: s.repo, Disks: s.pruneDisks(op, child, parent),
	}
}

func (s spec) pruned(op, child, parent string) *schemas.Pruned {
	s = s.withDefaults()
	return &schemas.Pruned{
		Header:     s.header(schemas.NamePruned, 0, 0, s.completedAt().Add(time.Hour+time.Minute)),
		Repository: s.repo, Disks: s.pruneDisks(op, child, parent),
	}
}

// chainOf is n backups of vm1's diskA, an hour apart: a full, then
// incrementals each on the previous one.
func chainOf(n int) []spec {
	var specs []spec
	for i := range n {
		s := spec{job: "p" + string(rune('a'+i)), at: t0.Add(time.Duration(i) * time.Hour)}
		if i > 0 {
			s.typ, s.backing = schemas.TypeIncremental, specs[i-1].job
		}
		specs = append(specs, s)
	}
	return specs
}

func chainJobs(t *testing.T, c *testCatalog) []string {
	t.Helper()
	links, err := c.Chain(vm1.UUID, diskA.Key, "default")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		out = append(out, l.JobID+"<"+l.Backing)
	}
	return out
}

// TestPruneEvents: backup.pruning makes a completed job's prune pending
// (still completed, still in its chain); backup.pruned makes it pruned and
// takes it out of every chain, and the chain's links then back onto the
// previous kept link: after a merge of the first full the child is the
// first link, after a rebase the child backs onto the removed point's
// parent. A replay in any order, batching and duplication gives the same
// catalog (invariant 5).
func TestPruneEvents(t *testing.T) {
	specs := chainOf(4) // pa <- pb <- pc <- pd
	var evs []schemas.Event
	for _, s := range specs {
		evs = append(evs, from("node1", s.run()...)...)
	}
	c := newTestCatalog(t)
	c.mustApply(evs...)
	if got := chainJobs(t, c); len(got) != 4 || got[0] != "pa<" || got[2] != "pc<pb" {
		t.Fatalf("chain before = %v", got)
	}

	// Remove pb (a middle point: rebase pc onto pa): the intent first.
	intentB := by(HubAgent, specs[1].pruning(schemas.PruneRebase, "pc", "pa"))
	c.mustApply(intentB)
	j := c.job("pb")
	if j.Status != backup.StatusCompleted || j.Prune == nil || j.Prune.State != backup.PrunePending || j.Prune.RequestedAt.IsZero() {
		t.Fatalf("after the intent: status %s prune %+v, want completed and pending", j.Status, j.Prune)
	}
	if got := chainJobs(t, c); len(got) != 4 {
		t.Errorf("pending prune: chain %v, want the point still in it", got)
	}
	doneB := by(HubAgent, specs[1].pruned(schemas.PruneRebase, "pc", "pa"))
	c.mustApply(doneB)
	j = c.job("pb")
	if j.Status != backup.StatusPruned || j.Prune.State != backup.PruneDone || j.Prune.PrunedAt.IsZero() || !j.Ended() {
		t.Fatalf("after pruned: status %s prune %+v, want pruned and done", j.Status, j.Prune)
	}
	if got, want := chainJobs(t, c), []string{"pa<", "pc<pa", "pd<pc"}; !slices.Equal(got, want) {
		t.Errorf("chain after rebase = %v, want %v", got, want)
	}
	pruned, err := c.Jobs(backup.JobFilter{Status: backup.StatusPruned})
	if err != nil || len(pruned) != 1 || pruned[0].ID != "pb" {
		t.Errorf("jobs --status pruned = %v, %v", pruned, err)
	}

	// Remove pa (the first full: merge pc into it, the file takes pc's name).
	intentA := by(HubAgent, specs[0].pruning(schemas.PruneMerge, "pc", ""))
	doneA := by(HubAgent, specs[0].pruned(schemas.PruneMerge, "pc", ""))
	c.mustApply(intentA, doneA)
	if got, want := chainJobs(t, c), []string{"pc<", "pd<pc"}; !slices.Equal(got, want) {
		t.Errorf("chain after merge = %v, want %v", got, want)
	}
	head, err := c.ChainHead(vm1.UUID, diskA.Key, "default")
	if err != nil || head.JobID != "pd" || head.Backing != "pc" {
		t.Errorf("head = %+v, %v; want pd on pc", head, err)
	}
	// Remove pd, the newest (delete): the head is pc, a full now.
	c.mustApply(by(HubAgent, specs[3].pruning(schemas.PruneDelete, "", "")), by(HubAgent, specs[3].pruned(schemas.PruneDelete, "", "")))
	head, err = c.ChainHead(vm1.UUID, diskA.Key, "default")
	if err != nil || head.JobID != "pc" || head.Backing != "" {
		t.Errorf("head after deleting pd = %+v, %v; want pc with no backing", head, err)
	}
	chains, err := c.Chains(vm1.UUID, "")
	if err != nil || len(chains) != 1 || len(chains[0].Links) != 1 || chains[0].Links[0].Backing != "" {
		t.Errorf("chains = %+v, %v", chains, err)
	}
	if p := c.poison(); len(p) != 0 {
		t.Errorf("poison records: %+v", p)
	}

	// Replay: the same catalog in any order (a pruned event applied before
	// its job's completed is poison until the completed arrives).
	all := append(evs, intentB, doneB, intentA, doneA)
	requireSameDump(t, c.dump(), func() Snapshot {
		c2 := newTestCatalog(t)
		c2.applyBatches(all, 3)
		c2.mustApply(by(HubAgent, specs[3].pruning(schemas.PruneDelete, "", "")), by(HubAgent, specs[3].pruned(schemas.PruneDelete, "", "")))
		return c2.dump()
	}())
	requireOrderFree(t, all, 10, 21)
}

// TestPruneMidChainFull: a full in the middle of a chain (a CBT reset)
// pruned by a merge makes its child a full, not an incremental on the
// link before: a link's base resolves through pruned bases to their own.
func TestPruneMidChainFull(t *testing.T) {
	specs := chainOf(4) // pa <- pb, pc (a full) <- pd
	specs[2].typ, specs[2].backing = schemas.TypeFull, ""
	c := newTestCatalog(t)
	for _, s := range specs {
		c.mustApply(from("node1", s.run()...)...)
	}
	if got, want := chainJobs(t, c), []string{"pa<", "pb<pa", "pc<", "pd<pc"}; !slices.Equal(got, want) {
		t.Fatalf("chain = %v, want %v", got, want)
	}
	c.mustApply(by(HubAgent, specs[2].pruning(schemas.PruneMerge, "pd", "")), by(HubAgent, specs[2].pruned(schemas.PruneMerge, "pd", "")))
	if got, want := chainJobs(t, c), []string{"pa<", "pb<pa", "pd<"}; !slices.Equal(got, want) {
		t.Errorf("chain after merging pc into pd = %v, want %v", got, want)
	}
	if head, err := c.ChainHead(vm1.UUID, diskA.Key, "default"); err != nil || head.Backing != "" {
		t.Errorf("head = %+v, %v; want pd, a full now", head, err)
	}
	// Then pb (the newest of the first line, nothing backs onto it) and pa.
	c.mustApply(by(HubAgent, specs[1].pruning(schemas.PruneDelete, "", "")), by(HubAgent, specs[1].pruned(schemas.PruneDelete, "", "")))
	if got, want := chainJobs(t, c), []string{"pa<", "pd<"}; !slices.Equal(got, want) {
		t.Errorf("chain after deleting pb = %v, want %v", got, want)
	}
}

// TestPruneEventsRefused: rule 7. A hub event from anyone but the hub, of
// another attempt, about a job that did not complete, another VM,
// repository or target, or a disk the job does not have is poison and
// changes nothing.
func TestPruneEventsRefused(t *testing.T) {
	s := spec{job: "pr1"}
	running := spec{job: "pr2"}

	otherAttempt := s
	otherAttempt.attempt = 2
	wrongVM := s.pruned(schemas.PruneDelete, "", "")
	wrongVM.VM = vm2
	wrongRepo := s.pruned(schemas.PruneDelete, "", "")
	wrongRepo.Repository = "other"
	wrongTarget := s.pruned(schemas.PruneDelete, "", "")
	wrongTarget.Disks[0].Target = "x/2000/pr1.qcow2"
	wrongDisk := s.pruned(schemas.PruneDelete, "", "")
	wrongDisk.Disks[0].Disk = diskB
	wrongDisk.Disks[0].Target = s.target(diskB)
	badID := s.pruned(schemas.PruneDelete, "", "")
	badID.ID = "pr1.1.pruned.0.7"

	for name, tc := range map[string]struct {
		ev   schemas.Event
		want string
	}{
		"agent":       {by("node1", s.pruned(schemas.PruneDelete, "", "")), "only the hub publishes it"},
		"legacy":      {s.pruned(schemas.PruneDelete, "", ""), "only the hub publishes it"},
		"attempt":     {by(HubAgent, otherAttempt.pruned(schemas.PruneDelete, "", "")), "not the completed attempt"},
		"not done":    {by(HubAgent, running.pruned(schemas.PruneDelete, "", "")), "not completed"},
		"vm":          {by(HubAgent, wrongVM), "vm uuid"},
		"repository":  {by(HubAgent, wrongRepo), "repository other"},
		"target":      {by(HubAgent, wrongTarget), "is not the job's"},
		"disk":        {by(HubAgent, wrongDisk), "not a disk of the completed job"},
		"id":          {by(HubAgent, badID), "canonical"},
		"no such job": {by(HubAgent, spec{job: "pr9"}.pruned(schemas.PruneDelete, "", "")), "not completed"},
	} {
		t.Run(name, func(t *testing.T) {
			c := newTestCatalog(t)
			c.mustApply(from("node1", s.run()...)...)
			c.mustApply(from("node1", running.started())...)
			errs := c.apply(tc.ev)
			if !errors.Is(errs[0], ErrInconsistent) || !strings.Contains(errs[0].Error(), tc.want) {
				t.Errorf("apply: %v, want ErrInconsistent with %q", errs[0], tc.want)
			}
			if j := c.job("pr1"); j.Status != backup.StatusCompleted || j.Prune != nil {
				t.Errorf("job after a refused event: status %s prune %+v", j.Status, j.Prune)
			}
			if got := chainJobs(t, c); len(got) != 1 {
				t.Errorf("chain after a refused event: %v", got)
			}
		})
	}
}
