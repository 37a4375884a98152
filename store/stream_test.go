package store

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// The tests of this file give each event its stream sequence explicitly
// (at), so that the stream order they mean does not depend on the order
// the test builds the events in.

// at wraps ev as published by agent and stored at stream sequence seq.
func at(agent string, seq uint64, ev schemas.Event) schemas.Event {
	return WithSource(ev, Source{Agent: agent, Seq: seq})
}

// attemptOf is the started, changeid and completed events of s from
// agent, stored from sequence seq on, one apart.
func attemptOf(agent string, seq uint64, s spec) []schemas.Event {
	evs := s.run()
	for i, ev := range evs {
		evs[i] = at(agent, seq+uint64(i), ev)
	}
	return evs
}

// TestAttemptBelongsToFirstStarted: node1's backup.started of attempt 1
// is the first in the stream, so the attempt is node1's (rule 4): node2's
// self-consistent started, changeid and completed of the same attempt,
// stored later, are poison whatever their times and whatever order the
// catalog applies them in. It is the stream, not the clock: node1's
// events win even when they claim a later time.
func TestAttemptBelongsToFirstStarted(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	for _, tt := range []struct {
		name  string
		node2 time.Duration // node2's times against node1's
	}{
		{"node2 claims an earlier time", -time.Hour},
		{"node2 claims the same time", 0},
		{"node2 claims a later time", time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mine := spec{job: "j-own", disks: both}
			theirs := spec{job: "j-own", disks: both, at: t0.Add(tt.node2)}
			// node1 started; node2's whole attempt comes in between
			// node1's started and the rest of node1's attempt.
			n1 := attemptOf("node1", 10, mine)
			n2 := attemptOf("node2", 20, theirs)
			for _, ev := range n1[1:] {
				ev.(*sourced).src.Seq += 100
			}
			const reason = "attempt 1 belongs to agent node1"
			want := map[string]string{}
			for _, ev := range n2 {
				want[ev.EventHeader().ID+"/node2"] = reason
			}

			// node2's events applied first: poison as soon as node1's
			// started arrives, though it comes later.
			c := newTestCatalog(t)
			for i, err := range c.apply(n2...) {
				if err != nil {
					t.Errorf("node2's event %d alone: %v", i, err)
				}
			}
			if j := c.job(mine.job); j.Status != backup.StatusCompleted || j.Agent != "node2" {
				t.Fatalf("node2's attempt alone: %+v", j)
			}
			c.mustApply(n1[0])
			if j := c.job(mine.job); j.Status != backup.StatusRunning || j.Agent != "node1" {
				t.Errorf("after node1's started: %+v", j)
			}
			requirePoison(t, c, want)
			if _, err := c.ChainHead(vm1.UUID, diskA.Key, "default"); !errors.Is(err, backup.ErrNotFound) {
				t.Errorf("chain head after node1's started: %v, want ErrNotFound", err)
			}
			c.mustApply(n1[1:]...)
			j := c.job(mine.job)
			if j.Status != backup.StatusCompleted || j.Agent != "node1" || len(j.PoisonedEventIDs) != len(n2) {
				t.Errorf("job = %+v", j)
			}
			requireHead(t, c, mine)
			requirePoison(t, c, want)

			ref := requireOrderFree(t, concat(n1, n2), 12, 12)
			requireSameDump(t, ref.dump(), c.dump())
		})
	}

	// The other way round: node2's started is stored first, so the
	// attempt is node2's, though node1's events claim earlier times.
	t.Run("node2 started first in the stream", func(t *testing.T) {
		mine := spec{job: "j-own", disks: both, at: t0.Add(-time.Hour)}
		theirs := spec{job: "j-own", disks: both}
		c := requireOrderFree(t, concat(attemptOf("node1", 20, mine), attemptOf("node2", 10, theirs)), 12, 13)
		if j := c.job(mine.job); j.Status != backup.StatusCompleted || j.Agent != "node2" {
			t.Errorf("job = %+v, want completed by node2", j)
		}
		requireHead(t, c, theirs)
	})
}

// TestNoAttemptAfterCompleted: once the stream holds the job's completed,
// another completed and every event of a higher attempt stored after it
// are poison (rule 6), whichever attempt is lower: here node1 completed
// attempt 1 first, and node2's whole attempt 2 comes after; then the
// other way round.
func TestNoAttemptAfterCompleted(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	a1 := spec{job: "j-after", disks: both}
	a2 := spec{job: "j-after", disks: both, attempt: 2, at: t0.Add(-time.Hour)} // claims to be older
	t.Run("attempt 2 after attempt 1 completed", func(t *testing.T) {
		n1, n2 := attemptOf("node1", 10, a1), attemptOf("node2", 20, a2)
		c := newTestCatalog(t)
		c.mustApply(n1...)
		const reason = "job already completed at attempt 1"
		for i, err := range c.apply(n2...) {
			if !errors.Is(err, ErrInconsistent) || !strings.Contains(err.Error(), reason) {
				t.Errorf("node2's event %d: %v, want ErrInconsistent with %q", i, err, reason)
			}
		}
		j := c.job(a1.job)
		if j.Status != backup.StatusCompleted || j.Attempt != 1 || j.Agent != "node1" || len(j.PoisonedEventIDs) != len(n2) {
			t.Errorf("job = %+v", j)
		}
		requireHead(t, c, a1)
		want := map[string]string{}
		for _, ev := range n2 {
			want[ev.EventHeader().ID] = reason
		}
		requirePoison(t, c, want)
		ref := requireOrderFree(t, concat(n2, n1), 12, 14)
		requireSameDump(t, ref.dump(), c.dump())
	})
	t.Run("attempt 1 completes after attempt 2 completed", func(t *testing.T) {
		// node1 started attempt 1 first; node2's attempt 2 completed
		// before node1's completed: attempt 2 is the job's, node1's
		// completed is poison, its earlier events history.
		n1, n2 := attemptOf("node1", 10, a1), attemptOf("node2", 20, a2)
		n1[len(n1)-1].(*sourced).src.Seq = 30
		c := requireOrderFree(t, concat(n1, n2), 12, 15)
		j := c.job(a1.job)
		if j.Status != backup.StatusCompleted || j.Attempt != 2 || j.Agent != "node2" || !slices.Equal(j.PoisonedEventIDs, []string{a1.completed().ID}) {
			t.Errorf("job = %+v", j)
		}
		requireHead(t, c, a2)
		requirePoison(t, c, map[string]string{a1.completed().ID: "job already completed at attempt 2"})
	})
	t.Run("higher attempt stored before the completed is history", func(t *testing.T) {
		// node2's started of attempt 2 comes before node1's completed of
		// attempt 1 (a retry that raced the late completed): history; its
		// changeid after the completed is poison.
		n1 := attemptOf("node1", 10, a1)
		n1[len(n1)-1].(*sourced).src.Seq = 30
		st, ci := at("node2", 20, a2.started()), at("node2", 40, a2.changeIDEvent(0))
		c := requireOrderFree(t, concat(n1, []schemas.Event{st, ci}), 12, 16)
		j := c.job(a1.job)
		if j.Status != backup.StatusCompleted || j.Attempt != 1 || j.Agent != "node1" || !slices.Contains(j.EventIDs, a2.started().ID) {
			t.Errorf("job = %+v", j)
		}
		requireHead(t, c, a1)
		requirePoison(t, c, map[string]string{a2.changeIDEvent(0).ID: "job already completed at attempt 1"})
	})
}

// TestCompletedAppliedBeforeStarted: the catalog applies node1's completed
// before its started and changeid events (a redelivery, a replay in
// batches), and node2's attempt of the same job in between; by stream
// sequence node1's started comes first, so node1's completed is applied
// when its started arrives and node2's events are poison, as if they had
// been applied in stream order.
func TestCompletedAppliedBeforeStarted(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	mine := spec{job: "j-late", disks: both}
	n1 := attemptOf("node1", 10, mine)
	n2 := attemptOf("node2", 20, spec{job: "j-late", disks: both, at: t0.Add(-time.Minute)}) // claims to be first
	completed := n1[len(n1)-1]

	c := newTestCatalog(t)
	if errs := c.apply(completed); !errors.Is(errs[0], ErrInconsistent) {
		t.Errorf("completed alone: %v, want ErrInconsistent", errs[0])
	}
	c.apply(n2...)
	if j := c.job(mine.job); j.Agent != "node2" || j.Status != backup.StatusCompleted {
		t.Fatalf("with node2's attempt applied: %+v", j)
	}
	for i, err := range c.apply(n1[:len(n1)-1]...) {
		if err != nil {
			t.Errorf("node1's event %d: %v", i, err)
		}
	}
	j := c.job(mine.job)
	if j.Status != backup.StatusCompleted || j.Agent != "node1" || len(j.PoisonedEventIDs) != len(n2) { // node2's ids are node1's
		t.Errorf("job = %+v", j)
	}
	requireHead(t, c, mine)
	want := map[string]string{}
	for _, ev := range n2 {
		want[ev.EventHeader().ID+"/node2"] = "attempt 1 belongs to agent node1"
	}
	requirePoison(t, c, want)

	inOrder := newTestCatalog(t)
	inOrder.applyBatches(concat(n1, n2), 1)
	requireSameDump(t, inOrder.dump(), c.dump())
}

// TestLateSourceCannotTakeOver: node1's completed of attempt 1 lacks a
// changeid when the stream stores it, node2's attempt 2 completes the job,
// and only then node1 publishes the missing changeid, with a change id of
// its choosing. node1's completed is valid now, and it has the lowest
// sequence, but the stream completed node2's first: the job stays node2's
// (rule 6 ranks a completed by the last of it and its sources).
func TestLateSourceCannotTakeOver(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	a1 := spec{job: "j-take", disks: both}
	a2 := spec{job: "j-take", disks: both, attempt: 2, at: t0.Add(time.Minute)}
	n1 := attemptOf("node1", 10, a1) // started 10, changeids 11 and 12, completed 13
	late := n1[2]                    // disk B's changeid
	late.(*sourced).src.Seq = 30
	n2 := attemptOf("node2", 20, a2)

	c := newTestCatalog(t)
	c.apply(concat(n1[:2], n1[3:], n2)...)
	if j := c.job(a1.job); j.Status != backup.StatusCompleted || j.Agent != "node2" || j.Attempt != 2 {
		t.Fatalf("before the late changeid: %+v", j)
	}
	errs := c.apply(late)
	if errs[0] != nil {
		t.Errorf("late changeid of attempt 1 (history): %v", errs[0])
	}
	j := c.job(a1.job)
	if j.Status != backup.StatusCompleted || j.Agent != "node2" || j.Attempt != 2 {
		t.Errorf("after the late changeid: %+v", j)
	}
	requireHead(t, c, a2)
	requirePoison(t, c, map[string]string{a1.completed().ID: "job already completed at attempt 2"})
	ref := requireOrderFree(t, concat(n1, n2), 12, 17)
	requireSameDump(t, ref.dump(), c.dump())
}

// TestPoisonRecordsPerAgent: the poison records of events that share an
// id are one per agent (and per job): neither hides the other.
func TestPoisonRecordsPerAgent(t *testing.T) {
	s := spec{job: "j-twice"}
	forged := forgedCompleted(s, 1)
	other := spec{job: "j-other"}
	sameID := other.completed()
	sameID.ID = forged.ID // a non-canonical id: another job's
	evs := []schemas.Event{at("node1", 1, forged), at("node2", 2, forged), at("", 3, forged), at("node1", 4, sameID)}
	c := requireOrderFree(t, evs, 8, 18)
	var got []string
	for _, p := range c.poison() {
		got = append(got, fmt.Sprintf("%s %s %s", p.JobID, p.EventID, p.Agent))
	}
	slices.Sort(got)
	want := []string{
		"j-other " + forged.ID + " node1",
		"j-twice " + forged.ID + " ",
		"j-twice " + forged.ID + " node1",
		"j-twice " + forged.ID + " node2",
	}
	if !slices.Equal(got, want) {
		t.Errorf("poison records %q, want %q", got, want)
	}
	for _, p := range c.poison() {
		if !strings.Contains(p.Reason, "from agent "+agentName(p.Agent)) && !strings.Contains(p.Reason, "is not the canonical") {
			t.Errorf("poison record of %s from %q: reason %q", p.EventID, p.Agent, p.Reason)
		}
	}
}
