package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// bumped is a change id with a higher sequence: what a forger writes so
// that the next incremental asks VMware for the changes since a point that
// never was, and copies nothing.
func bumped(changeID string) string {
	base, seq, _ := strings.Cut(changeID, "/")
	return fmt.Sprintf("%s/%s0", base, seq)
}

// forgedCompleted is the attack: a copy of s's completed event with a
// higher attempt (and the matching canonical id) and every change id
// bumped.
func forgedCompleted(s spec, attempt int) *schemas.Completed {
	c := s.completed()
	c.Attempt = attempt
	c.ID = eventID(s.job, attempt, schemas.NameCompleted, 0, 0)
	for i := range c.Disks {
		c.Disks[i].ChangeID = bumped(c.Disks[i].ChangeID)
	}
	return c
}

// requireOrderFree applies evs in one batch, then in rounds random orders
// and batchings with a few events redelivered, and requires the same
// catalog every time. It returns the one-batch catalog.
func requireOrderFree(t *testing.T, evs []schemas.Event, rounds int, seed uint64) *testCatalog {
	t.Helper()
	ref := newTestCatalog(t)
	ref.apply(evs...)
	want := ref.dump()
	rng := rand.New(rand.NewPCG(seed, 11))
	for range rounds {
		mixed := slices.Clone(evs)
		for range 1 + rng.IntN(3) {
			mixed = append(mixed, evs[rng.IntN(len(evs))])
		}
		rng.Shuffle(len(mixed), func(i, j int) { mixed[i], mixed[j] = mixed[j], mixed[i] })
		c := newTestCatalog(t)
		c.applyBatches(mixed, 1+rng.IntN(len(mixed)))
		requireSameDump(t, want, c.dump())
		c.close()
	}
	return ref
}

// requirePoison requires exactly the poison records of want's keys (any
// order), each with a reason containing want's value. A key is an event id,
// or "<event id>/<agent>" for the record of one agent's event.
func requirePoison(t *testing.T, c *testCatalog, want map[string]string) {
	t.Helper()
	recs := c.poison()
	if len(recs) != len(want) {
		var got []string
		for _, p := range recs {
			got = append(got, fmt.Sprintf("%s from %q: %s", p.EventID, p.Agent, p.Reason))
		}
		t.Errorf("poison records = %q, want %d", got, len(want))
	}
	for _, p := range recs {
		reason, ok := want[p.EventID+"/"+p.Agent]
		if !ok {
			reason, ok = want[p.EventID]
		}
		if !ok || !strings.Contains(p.Reason, reason) || p.Time.IsZero() || len(p.Raw) == 0 {
			t.Errorf("poison record %s (agent %q): %q, want reason with %q", p.EventID, p.Agent, p.Reason, reason)
		}
	}
}

// requireHead requires the chain head of every disk of s in its repository
// to be s's job with s's own change ids.
func requireHead(t *testing.T, c *testCatalog, s spec) {
	t.Helper()
	s = s.withDefaults()
	for _, d := range s.disks {
		head, err := c.ChainHead(s.vm.UUID, d.Key, s.repo)
		if err != nil || head.JobID != s.job || head.ChangeID != s.changeID(d) || head.Target != s.target(d) {
			t.Errorf("chain head of disk %d = %+v, %v; want job %s with change id %s", d.Key, head, err, s.job, s.changeID(d))
		}
	}
}

// TestForgedCompleted: a backup.completed that does not match the started
// and changeid events of its attempt from its agent is poison, never a
// chain head, in any order (design invariant 10).
func TestForgedCompleted(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	prev := spec{job: "j-prev", disks: both, at: t0.Add(-time.Hour)}
	legit := spec{job: "j-legit", disks: both}
	later := spec{job: "j-forged", disks: both, at: t0.Add(time.Hour)}
	otherChangeID := legit.completed()
	otherChangeID.Disks[0].ChangeID = bumped(otherChangeID.Disks[0].ChangeID)
	extraDisk := spec{job: "j-legit", disks: []schemas.DiskRef{diskA}}
	otherVM := legit.completed()
	otherVM.VM = vm2
	for i, d := range otherVM.Disks {
		otherVM.Disks[i].Target = spec{job: legit.job, vm: vm2}.target(d.Disk)
	}
	otherRepo := legit.completed()
	otherRepo.Repository = "offsite"

	tests := []struct {
		name       string
		history    []schemas.Event // applied, and consistent
		forged     schemas.Event
		wantReason string
		wantHead   spec // of every disk afterwards
		legitDone  bool // j-legit is completed at attempt 1 from node1
	}{
		{
			name:       "higher attempt with bumped change ids, from another agent",
			history:    concat(from("node1", prev.run()...), from("node1", legit.run()...)),
			forged:     by("node2", forgedCompleted(legit, 2)),
			wantReason: "no backup.started of attempt 2 from agent node2",
			wantHead:   legit, legitDone: true,
		},
		{
			name:       "higher attempt with bumped change ids, from the same agent without a started",
			history:    concat(from("node1", prev.run()...), from("node1", legit.run()...)),
			forged:     by("node1", forgedCompleted(legit, 2)),
			wantReason: "no backup.started of attempt 2 from agent node1",
			wantHead:   legit, legitDone: true,
		},
		{
			name:       "a new job of the vm without any started",
			history:    concat(from("node1", prev.run()...), from("node1", legit.run()...)),
			forged:     by("node2", later.completed()),
			wantReason: "no backup.started of attempt 1 from agent node2",
			wantHead:   legit, legitDone: true,
		},
		{
			name:       "change id differs from its changeid event",
			history:    concat(from("node1", prev.run()...), from("node1", legit.run()[:3]...)),
			forged:     by("node1", otherChangeID),
			wantReason: fmt.Sprintf("disk 2000: change id %q differs from %q of backup.changeid", bumped(legit.changeID(diskA)), legit.changeID(diskA)),
			wantHead:   prev,
		},
		{
			name:       "completed from agent node2 after started from agent node1",
			history:    concat(from("node1", prev.run()...), from("node1", legit.run()[:3]...)),
			forged:     by("node2", legit.completed()),
			wantReason: "attempt 1 belongs to agent node1",
			wantHead:   prev,
		},
		{
			name:       "completed from an agent after legacy started",
			history:    concat(from("node1", prev.run()...), legit.run()[:3]),
			forged:     by("node1", legit.completed()),
			wantReason: `attempt 1 belongs to agent "" (legacy)`,
			wantHead:   prev,
		},
		{
			name:       "legacy completed after started from an agent",
			history:    concat(from("node1", prev.run()...), from("node1", legit.run()[:3]...)),
			forged:     legit.completed(),
			wantReason: "attempt 1 belongs to agent node1",
			wantHead:   prev,
		},
		{
			name:       "completed with a disk the started does not list",
			history:    concat(from("node1", prev.run()...), from("node1", extraDisk.run()[:2]...)),
			forged:     by("node1", legit.completed()),
			wantReason: "disk 2001 is not in backup.started of attempt 1; disk 2001: no backup.changeid of attempt 1 from agent node1",
			wantHead:   prev,
		},
		{
			name:       "completed of another vm",
			history:    concat(from("node1", prev.run()...), from("node1", legit.run()[:3]...)),
			forged:     by("node1", otherVM),
			wantReason: "vm uuid " + vm2.UUID + " differs from " + vm1.UUID + " of backup.started",
			wantHead:   prev,
		},
		{
			name:       "completed in another repository",
			history:    concat(from("node1", prev.run()...), from("node1", legit.run()[:3]...)),
			forged:     by("node1", otherRepo),
			wantReason: "repository offsite differs from default of backup.started",
			wantHead:   prev,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCatalog(t)
			c.mustApply(tt.history...)
			errs := c.apply(tt.forged)
			if !errors.Is(errs[0], ErrInconsistent) || !strings.Contains(errs[0].Error(), tt.wantReason) {
				t.Errorf("forged completed: error %v, want ErrInconsistent with %q", errs[0], tt.wantReason)
			}
			id := tt.forged.EventHeader().ID
			requirePoison(t, c, map[string]string{id: tt.wantReason})
			requireHead(t, c, tt.wantHead)
			j, err := c.Job(legit.job)
			switch {
			case tt.legitDone && (err != nil || j.Status != backup.StatusCompleted || j.Attempt != 1 || j.Agent != "node1"):
				t.Errorf("legit job = %+v, %v", j, err)
			case tt.forged.EventHeader().JobID == legit.job && (err != nil || !slices.Contains(j.PoisonedEventIDs, id)):
				t.Errorf("legit job = %+v, %v; want %s among its poisoned events", j, err, id)
			case !tt.legitDone && err == nil && j.Status == backup.StatusCompleted:
				t.Errorf("job completed by the forged event: %+v", j)
			}
			if j, err := c.Job(later.job); err == nil {
				t.Errorf("a job of poison alone has a record: %+v", j)
			}
			// Redelivered: a no-op.
			if errs := c.apply(tt.forged); errs[0] != nil {
				t.Errorf("redelivered forged completed: %v", errs[0])
			}

			// In any order and batching, the same catalog.
			requireOrderFree(t, concat(tt.history, []schemas.Event{tt.forged}), 8, 1)
		})
	}
}

// TestCompletedBeforeStarted: a completed event that arrives before its
// started and changeid events is poison until they arrive; then it is
// applied and its poison record removed, whatever the batching.
func TestCompletedBeforeStarted(t *testing.T) {
	s := spec{job: "j-early", disks: []schemas.DiskRef{diskA, diskB}}
	run := from("node1", s.run()...)
	started, cid0, cid1, completed := run[0], run[1], run[2], run[3]
	ref := newTestCatalog(t)
	ref.mustApply(run...)
	want := ref.dump()

	tests := []struct {
		name    string
		batches [][]schemas.Event
		// reasons are the completed event's poison reason after each
		// batch ("" once it is applied).
		reasons []string
	}{
		{"completed first, in the same batch", [][]schemas.Event{{completed, cid1, started, cid0}}, []string{""}},
		{"completed, then the rest", [][]schemas.Event{{completed}, {started, cid0, cid1}}, []string{"no backup.started of attempt 1 from agent node1", ""}},
		{"changeids, completed, started", [][]schemas.Event{{cid0, cid1}, {completed}, {started}}, []string{"", "no backup.started of attempt 1", ""}},
		{"started, completed, changeids one by one", [][]schemas.Event{{started}, {completed}, {cid1}, {cid0}},
			[]string{"", "disk 2000: no backup.changeid of attempt 1 from agent node1; disk 2001: no backup.changeid", "disk 2000: no backup.changeid", ""}},
		{"completed redelivered meanwhile", [][]schemas.Event{{completed}, {cid0, completed}, {started, completed}, {cid1}},
			[]string{"no backup.started", "no backup.started", "disk 2001: no backup.changeid of attempt 1 from agent node1", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCatalog(t)
			poisoned := false // the completed event is poison
			for bi, b := range tt.batches {
				errs := c.apply(b...)
				for ei, err := range errs {
					// Only the completed event's first filing may fail.
					wantErr := b[ei] == completed && !poisoned && tt.reasons[bi] != ""
					if wantErr != errors.Is(err, ErrInconsistent) || (!wantErr && err != nil) {
						t.Errorf("batch %d event %d: error %v, want ErrInconsistent %v", bi, ei, err, wantErr)
					}
				}
				if slices.Contains(b, completed) {
					poisoned = true // filed: a redelivery is a no-op
				}
				recs := c.poison()
				switch want := tt.reasons[bi]; {
				case want == "" && len(recs) != 0:
					t.Errorf("batch %d: poison records %+v, want none", bi, recs)
				case want != "" && (len(recs) != 1 || recs[0].EventID != completed.EventHeader().ID || !strings.Contains(recs[0].Reason, want)):
					t.Errorf("batch %d: poison records %+v, want the completed with %q", bi, recs, want)
				}
			}
			j := c.job(s.job)
			if j.Status != backup.StatusCompleted || j.Agent != "node1" || len(j.PoisonedEventIDs) != 0 {
				t.Errorf("job = %+v", j)
			}
			requireHead(t, c, s)
			requireSameDump(t, want, c.dump())
		})
	}
}

// TestTargets: every target of a started, changeid or completed event is
// the job's own path in the repository (rule 2); an event naming another
// path is poison, and so is a completed that relies on it.
func TestTargets(t *testing.T) {
	s := spec{job: "j-t", disks: []schemas.DiskRef{diskA, diskB}}
	run := func(edit func(evs []schemas.Event)) []schemas.Event {
		evs := s.run()
		edit(evs)
		return from("node1", evs...)
	}
	dots := spec{job: "j-t", vm: schemas.VMRef{Name: "dots", UUID: ".."}}
	tests := []struct {
		name    string
		evs     []schemas.Event
		poison  map[string]string // event id -> reason
		wantErr map[int]bool      // events with ErrInconsistent
	}{
		{
			name: "started outside the repository",
			evs:  run(func(evs []schemas.Event) { evs[0].(*schemas.Started).Disks[1].Target = "../../etc/passwd" }),
			poison: map[string]string{
				"j-t.1.started.0.0":   `disk 2001: target "../../etc/passwd" is not "` + s.target(diskB) + `"`,
				"j-t.1.completed.0.0": "backup.started of attempt 1 from agent node1 is poison",
			},
			wantErr: map[int]bool{0: true, 3: true},
		},
		{
			name: "changeid of another job's file",
			evs:  run(func(evs []schemas.Event) { evs[1].(*schemas.ChangeID).Target = spec{job: "j-other"}.target(diskA) }),
			poison: map[string]string{
				"j-t.1.changeid.2000.0": `target "` + spec{job: "j-other"}.target(diskA) + `" is not`,
				"j-t.1.completed.0.0":   "disk 2000: backup.changeid of attempt 1 from agent node1 is poison",
			},
			wantErr: map[int]bool{1: true, 3: true},
		},
		{
			name: "completed outside the repository",
			evs: run(func(evs []schemas.Event) {
				evs[3].(*schemas.Completed).Disks[0].Target = "/etc/passwd"
			}),
			poison:  map[string]string{"j-t.1.completed.0.0": `disk 2000: target "/etc/passwd" is not`},
			wantErr: map[int]bool{3: true},
		},
		{
			name: "started and changeid in another vm's directory",
			evs: run(func(evs []schemas.Event) {
				evs[0].(*schemas.Started).Disks[0].Target = spec{job: "j-t", vm: vm2}.target(diskA)
				evs[1].(*schemas.ChangeID).Target = spec{job: "j-t", vm: vm2}.target(diskA)
			}),
			poison: map[string]string{
				"j-t.1.started.0.0":     `disk 2000: target "` + vm2.UUID + `/2000/j-t.qcow2" is not "` + vm1.UUID,
				"j-t.1.changeid.2000.0": `disk 2000: target "` + vm2.UUID,
				"j-t.1.completed.0.0":   "is poison",
			},
			wantErr: map[int]bool{0: true, 1: true, 3: true},
		},
		{
			name:    "a consistent job",
			evs:     run(func([]schemas.Event) {}),
			poison:  nil,
			wantErr: nil,
		},
		{
			name: "vm uuid that climbs out of the repository",
			evs:  from("node1", dots.run()...),
			poison: map[string]string{
				"j-t.1.started.0.0":     `vm uuid ".." and job id "j-t" do not name a path`,
				"j-t.1.changeid.2000.0": `vm uuid ".."`,
				"j-t.1.completed.0.0":   `vm uuid ".."`,
			},
			wantErr: map[int]bool{0: true, 1: true, 2: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCatalog(t)
			errs := c.apply(tt.evs...)
			for i, err := range errs {
				if tt.wantErr[i] != errors.Is(err, ErrInconsistent) || (!tt.wantErr[i] && err != nil) {
					t.Errorf("event %d: error %v, want ErrInconsistent %v", i, err, tt.wantErr[i])
				}
			}
			requirePoison(t, c, tt.poison)
			done := len(tt.poison) == 0
			if j, err := c.Job(s.job); (err == nil && done != (j.Status == backup.StatusCompleted)) || (done && err != nil) {
				t.Errorf("job %+v, %v with %d events poisoned", j, err, len(tt.poison))
			}
			if links, err := c.Chain(vm1.UUID, diskA.Key, "default"); err != nil || done != (len(links) == 1) {
				t.Errorf("chain of vm1 = %+v, %v", links, err)
			}
			requireOrderFree(t, tt.evs, 4, 2)
		})
	}
}

// TestCanonicalIDs: an event's id is bus.EventID's (rule 1); any other id
// is poison, and the reason names the id expected.
func TestCanonicalIDs(t *testing.T) {
	s := spec{job: "j-id"}
	withID := func(ev schemas.Event, id string) schemas.Event {
		ev.EventHeader().ID = id
		return ev
	}
	otherAttempt := s.failed(false)
	otherAttempt.ID = "j-id.2.failed.0.0"
	tests := []struct {
		name string
		ev   schemas.Event
		want string // the canonical id
	}{
		{"long type name", withID(s.started(), "j-id.1.backup.started"), "j-id.1.started.0.0"},
		{"no disk and seq", withID(s.started(), "j-id.1.started"), "j-id.1.started.0.0"},
		{"changeid of another disk", withID(s.changeIDEvent(0), "j-id.1.changeid.2001.0"), "j-id.1.changeid.2000.0"},
		{"completed with a seq", withID(s.completed(), "j-id.1.completed.0.1"), "j-id.1.completed.0.0"},
		{"failed naming another attempt", otherAttempt, "j-id.1.failed.0.0"},
		{"rejected naming another job", withID(s.rejected(), "j-other.1.rejected.0.0"), "j-id.1.rejected.0.0"},
		{"progress with another seq", withID(s.progress(3), "j-id.1.progress.0.7"), "j-id.1.progress.0.3"},
		{"changeid of another type", withID(s.changeIDEvent(0), "j-id.1.completed.2000.0"), "j-id.1.changeid.2000.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCatalog(t)
			errs := c.apply(by("node1", tt.ev))
			reason := fmt.Sprintf("is not the canonical %q", tt.want)
			if !errors.Is(errs[0], ErrInconsistent) || !strings.Contains(errs[0].Error(), reason) {
				t.Errorf("error %v, want ErrInconsistent with %s", errs[0], reason)
			}
			requirePoison(t, c, map[string]string{tt.ev.EventHeader().ID: reason})
			if j, err := c.Job(s.job); err == nil {
				t.Errorf("job derived from a poisoned event: %+v", j)
			}
			// A filed event's redelivery is a no-op; progress is not
			// filed, so it is judged again (and kept once).
			_, progress := tt.ev.(*schemas.Progress)
			if errs := c.apply(by("node1", tt.ev)); progress != (errs[0] != nil) {
				t.Errorf("redelivered: %v", errs[0])
			}
			if n := len(c.poison()); n != 1 {
				t.Errorf("%d poison records after redelivery", n)
			}
		})
	}
}

// TestCompletedJobNotRewritten: events of a later attempt than the
// completed one stored after it are poison and change nothing of the job;
// events of the completed attempt and earlier ones are history (rule 6).
// Another agent's events of an attempt node1 started are poison by rule 4
// first.
func TestCompletedJobNotRewritten(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	a1 := spec{job: "j-done", disks: both}
	a2 := spec{job: "j-done", disks: both, attempt: 2, at: t0.Add(time.Hour)}
	done := from("node1", a1.run()...)
	const done1 = "job already completed at attempt 1"
	tests := []struct {
		name   string
		ev     schemas.Event
		reason string
	}{
		{"failed of attempt 2", by("node1", a2.failed(false)), done1},
		{"started of attempt 2", by("node1", a2.started()), done1},
		{"changeid of attempt 2", by("node1", a2.changeIDEvent(1)), done1},
		{"rejected of attempt 2", by("node1", a2.rejected()), done1},
		{"failed of attempt 2 from another agent", by("node2", a2.failed(true)), "attempt 2 belongs to agent node1"},
		{"legacy started of attempt 2", by("", a2.started()), "attempt 2 belongs to agent node1"},
	}
	c := newTestCatalog(t)
	c.mustApply(done...)
	before := c.job(a1.job)
	if before.Status != backup.StatusCompleted || before.Attempt != 1 || before.Agent != "node1" || before.FailedAttempts != 0 {
		t.Fatalf("job = %+v", before)
	}
	want := map[string]string{}
	var all []schemas.Event
	for _, tt := range tests {
		errs := c.apply(tt.ev)
		if !errors.Is(errs[0], ErrInconsistent) || !strings.Contains(errs[0].Error(), tt.reason) {
			t.Errorf("%s: error %v, want ErrInconsistent with %q", tt.name, errs[0], tt.reason)
		}
		j := c.job(a1.job)
		if j.Status != before.Status || j.Attempt != before.Attempt || !j.FinishedAt.Equal(before.FinishedAt) ||
			!slices.Equal(j.EventIDs, before.EventIDs) || !slices.Equal(j.Disks, before.Disks) || j.Failure != nil ||
			j.FailedAttempts != 0 || j.Agent != "node1" {
			t.Errorf("%s changed the job:\n got  %+v\n want %+v", tt.name, j, before)
		}
		want[tt.ev.EventHeader().ID+"/"+tt.ev.(*sourced).src.Agent] = tt.reason
		all = append(all, tt.ev)
	}
	requirePoison(t, c, want)
	requireHead(t, c, a1)
	if j := c.job(a1.job); len(j.PoisonedEventIDs) != 4 { // two ids come from two agents
		t.Errorf("poisoned event ids = %v, want 4", j.PoisonedEventIDs)
	}

	// A failed of the completed attempt (the agent could not confirm its
	// completed publish) is history: the job stays completed.
	c.mustApply(by("node1", a1.failed(true)))
	j := c.job(a1.job)
	if j.Status != backup.StatusCompleted || j.FailedAttempts != 1 || !slices.Contains(j.EventIDs, a1.failed(true).ID) || j.Failure != nil {
		t.Errorf("job after a failed of attempt 1 = %+v", j)
	}
	requireHead(t, c, a1)

	requireOrderFree(t, concat(done, all, from("node1", a1.failed(true))), 10, 3)
}

// TestTwoValidCompleted: two attempts that each completed consistently:
// the lower attempt wins and the other attempt's events are poison,
// whichever arrived first (rule 5).
func TestTwoValidCompleted(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	a1 := spec{job: "j-two", disks: both}
	a2 := spec{job: "j-two", disks: both, attempt: 2, at: t0.Add(time.Hour)}
	r1, r2 := from("node1", a1.run()...), from("node1", a2.run()...)

	c := newTestCatalog(t)
	c.mustApply(r2...)
	if j := c.job(a1.job); j.Status != backup.StatusCompleted || j.Attempt != 2 {
		t.Fatalf("attempt 2 alone: %+v", j)
	}
	requireHead(t, c, a2)
	c.mustApply(r1...) // applied; attempt 2's events move to the poison records (logged)
	j := c.job(a1.job)
	if j.Status != backup.StatusCompleted || j.Attempt != 1 || !j.FinishedAt.Equal(a1.completedAt()) || len(j.EventIDs) != len(r1) {
		t.Errorf("job = %+v", j)
	}
	requireHead(t, c, a1)
	want := map[string]string{}
	for _, ev := range r2 {
		want[ev.EventHeader().ID] = "job already completed at attempt 1"
	}
	requirePoison(t, c, want)

	ref := requireOrderFree(t, concat(r1, r2), 10, 4)
	requireSameDump(t, ref.dump(), c.dump())
}

// TestLegacyEvents: events without an agent (published before agents had
// identities) derive as before, as the agent "".
func TestLegacyEvents(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	s := spec{job: "j-old", disks: both}
	c := newTestCatalog(t)
	c.mustApply(s.run()...)
	j := c.job(s.job)
	if j.Status != backup.StatusCompleted || j.Agent != "" || j.Attempt != 1 || len(j.EventIDs) != 4 || len(j.PoisonedEventIDs) != 0 {
		t.Errorf("legacy job = %+v", j)
	}
	requireHead(t, c, s)
	if n := len(c.poison()); n != 0 {
		t.Errorf("%d poison records", n)
	}

	// The same events from an agent with the payloads, as the consumer
	// hands them over, give the same job but for the agent.
	named := newTestCatalog(t)
	named.mustApply(withPayloads(t, "node1", s.run()...)...)
	nj := named.job(s.job)
	nj.Agent = ""
	if !slices.Equal(nj.EventIDs, j.EventIDs) || !slices.Equal(nj.Disks, j.Disks) || nj.Status != j.Status || !nj.FinishedAt.Equal(j.FinishedAt) {
		t.Errorf("job from node1 = %+v, legacy %+v", nj, j)
	}

	// The same ids from an agent after the legacy ones are other events
	// (identity includes the agent): both filed. Events without a
	// sequence come first in the stream, so attempt 1 belongs to the
	// legacy agent and node1's events are poison (rule 4).
	errs := c.apply(from("node1", s.run()...)...)
	for i, err := range errs {
		if !errors.Is(err, ErrInconsistent) {
			t.Errorf("event %d from node1: %v", i, err)
		}
	}
	j2 := c.job(s.job)
	if j2.Status != backup.StatusCompleted || j2.Agent != "" || !slices.Equal(j2.EventIDs, j.EventIDs) ||
		!slices.Equal(j2.PoisonedEventIDs, j.EventIDs) {
		t.Errorf("after the same events from node1: %+v", j2)
	}
	want := map[string]string{}
	for _, id := range j.EventIDs {
		want[id] = `attempt 1 belongs to agent "" (legacy)`
	}
	requirePoison(t, c, want)
	for _, p := range c.poison() {
		if p.Agent != "node1" {
			t.Errorf("poison record of %s from agent %q, want node1", p.EventID, p.Agent)
		}
	}
	requireHead(t, c, s)
}

// TestAttackedJobShuffled mixes a legitimate job with every kind of forged
// or late event and applies them in random orders and batchings.
func TestAttackedJobShuffled(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	legit := spec{job: "j-legit", disks: both}
	a2 := spec{job: "j-legit", disks: both, attempt: 2, at: t0.Add(time.Hour)}
	next := spec{job: "j-next", disks: both, at: t0.Add(2 * time.Hour), typ: schemas.TypeIncremental, backing: "j-legit"}
	wrongChangeID := next.completed()
	wrongChangeID.Disks[1].ChangeID = bumped(wrongChangeID.Disks[1].ChangeID)
	escape := spec{job: "j-escape"}.run()
	escape[0].(*schemas.Started).Disks[0].Target = "../../etc/passwd"
	evs := concat(
		from("node1", legit.run()...),
		from("node2", forgedCompleted(legit, 2), forgedCompleted(legit, 3)),
		from("node1", forgedCompleted(legit, 4)),
		from("node1", a2.failed(false), a2.started(), a2.changeIDEvent(0), legit.failed(true)),
		from("node2", legit.completed()),
		from("node1", next.run()[:3]...),
		from("node2", wrongChangeID),
		from("node1", escape...),
		from("node1", next.progress(1), next.progress(2)),
	)
	ref := requireOrderFree(t, evs, 40, 5)
	j := ref.job(legit.job)
	if j.Status != backup.StatusCompleted || j.Attempt != 1 || j.Agent != "node1" || j.FailedAttempts != 1 {
		t.Errorf("legit job = %+v", j)
	}
	requireHead(t, ref, legit)
	if nj := ref.job(next.job); nj.Status != backup.StatusRunning || nj.Progress == nil || nj.Progress.Seq != 2 {
		t.Errorf("next job = %+v", nj)
	}
	if ej := ref.job("j-escape"); ej.Status == backup.StatusCompleted {
		t.Errorf("escaping job completed: %+v", ej)
	}
}

// TestOtherAgentsStartedIsPoison: another agent's backup.started of the
// completed attempt is poison (the attempt belongs to node1, rule 4) and
// lends the completed job nothing: its disks, and so its chain links, come
// from the completed event's agent alone.
func TestOtherAgentsStartedIsPoison(t *testing.T) {
	s := spec{job: "j-full"}
	evil := s.started()
	evil.Disks[0].Backing = "j-evil"
	evil.Disks[0].BaseChangeID = bumped(s.changeID(diskA))
	evil.Disks[0].Disk.CapacityBytes = 1
	evs := concat(from("node1", s.run()...), from("node2", evil))
	c := requireOrderFree(t, evs, 6, 6)
	head, err := c.ChainHead(vm1.UUID, diskA.Key, "default")
	if err != nil || head.JobID != s.job || head.Backing != "" || head.CapacityBytes != diskA.CapacityBytes {
		t.Errorf("chain head = %+v, %v; want a full of %s", head, err, s.job)
	}
	j := c.job(s.job)
	if j.Agent != "node1" || j.Disks[0].BaseChangeID != "" || !slices.Equal(j.PoisonedEventIDs, []string{evil.ID}) {
		t.Errorf("job = %+v", j)
	}
	requirePoison(t, c, map[string]string{evil.ID: "attempt 1 belongs to agent node1"})
}

// TestIsEventIDAndTarget: the checks of rules 1 and 2 accept exactly the
// canonical forms, and allocate nothing on the way (Apply runs them on
// every event of a job at every re-derivation).
func TestIsEventIDAndTarget(t *testing.T) {
	for _, tt := range []struct {
		id   string
		want bool
	}{{"j.1.started.0.0", true}, {"j.1.started.0.00", false}, {"j.12.started.0.0", false}, {"j.1.started.0", false}, {"j.1.backup.started.0.0", false}, {"jj.1.started.0.0", false}, {"j.1.started.0.0.", false}} {
		if got := isEventID(tt.id, "j", 1, "backup.started", 0, 0); got != tt.want {
			t.Errorf("%s: %v", tt.id, got)
		}
	}
	if !isEventID("j-x.3.changeid.2000.0", "j-x", 3, "backup.changeid", 2000, 0) || !isEventID("j.1.progress.0.17", "j", 1, "backup.progress", 0, 17) {
		t.Error("canonical refused")
	}
	if n := testing.AllocsPerRun(100, func() { isEventID("j-x.3.changeid.2000.0", "j-x", 3, "backup.changeid", 2000, 0) }); n != 0 {
		t.Errorf("%v allocs", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		isTarget("50123456-aaaa-bbbb-cccc-000000000001/2000/j.qcow2", "50123456-aaaa-bbbb-cccc-000000000001", 2000, "j")
	}); n != 0 {
		t.Errorf("isTarget: %v allocs", n)
	}
	const vm = "50123456-aaaa-bbbb-cccc-000000000001"
	for _, tt := range []struct {
		target string
		want   bool
	}{{vm + "/2000/j.qcow2", true}, {vm + "/2000/j.qcow", false}, {vm + "/200/j.qcow2", false}, {vm + "/2000/../j.qcow2", false},
		{"../../etc/passwd", false}, {"/" + vm + "/2000/j.qcow2", false}, {vm + "/2000/jj.qcow2", false}, {"", false}} {
		if got := isTarget(tt.target, vm, 2000, "j"); got != tt.want {
			t.Errorf("isTarget(%q) = %v", tt.target, got)
		}
	}
}
