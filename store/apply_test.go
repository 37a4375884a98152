package store

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

func TestApplyJobSequence(t *testing.T) {
	tests := []struct {
		name  string
		spec  spec
		batch int // events per Apply; 0: all in one
		extra func(s spec) []schemas.Event
	}{
		{name: "one disk full, one batch", spec: spec{job: "j-one"}},
		{name: "two disks full, one event per batch", spec: spec{job: "j-two", disks: []schemas.DiskRef{diskA, diskB}}, batch: 1},
		{
			name: "two disks with progress", spec: spec{job: "j-prog", disks: []schemas.DiskRef{diskA, diskB}},
			extra: func(s spec) []schemas.Event { return []schemas.Event{s.progress(1), s.progress(2)} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCatalog(t)
			s := tt.spec.withDefaults()
			evs := s.run()
			if tt.extra != nil {
				evs = append(evs, tt.extra(s)...)
			}
			c.applyBatches(evs, tt.batch)

			j := c.job(s.job)
			if j.Status != backup.StatusCompleted {
				t.Fatalf("status = %s, want completed", j.Status)
			}
			if j.VM != s.vm || j.Repository != s.repo || j.Attempt != 1 || j.RequestedBy != "test" || j.RequestedType != schemas.TypeAuto {
				t.Errorf("job header = %+v", j)
			}
			if !j.StartedAt.Equal(s.at) || !j.FinishedAt.Equal(s.completedAt()) || !j.CreatedAt.Equal(s.at) {
				t.Errorf("times: created %s started %s finished %s", j.CreatedAt, j.StartedAt, j.FinishedAt)
			}
			if j.Failure != nil {
				t.Errorf("failure = %+v, want none", j.Failure)
			}
			if len(j.EventIDs) != len(s.disks)+2 {
				t.Errorf("event ids = %v, want %d", j.EventIDs, len(s.disks)+2)
			}
			if len(j.Disks) != len(s.disks) {
				t.Fatalf("disks = %+v", j.Disks)
			}
			for i, d := range j.Disks {
				want := s.disks[i]
				if d.Disk != want || d.ChangeID != s.changeID(want) || d.Target != s.target(want) ||
					d.BackupType != schemas.TypeFull || d.ActualSizeBytes == 0 || d.BytesRead == 0 {
					t.Errorf("disk %d = %+v", i, d)
				}
				head, err := c.ChainHead(s.vm.UUID, want.Key, s.repo)
				if err != nil {
					t.Fatalf("chain head of disk %d: %v", want.Key, err)
				}
				if head.JobID != s.job || head.ChangeID != d.ChangeID || head.Target != d.Target ||
					head.DiskUUID != want.UUID || head.CapacityBytes != want.CapacityBytes || !head.Time.Equal(j.FinishedAt) {
					t.Errorf("chain head of disk %d = %+v", want.Key, head)
				}
			}
			if tt.extra != nil {
				if j.Progress == nil || j.Progress.Seq != 2 {
					t.Errorf("progress = %+v, want seq 2", j.Progress)
				}
			}
			if _, err := c.Job("nope"); !errors.Is(err, backup.ErrNotFound) {
				t.Errorf("Job(nope) error = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestApplyDuplicate(t *testing.T) {
	s := spec{job: "j-dup", disks: []schemas.DiskRef{diskA, diskB}}
	evs := s.run()
	ref := newTestCatalog(t)
	ref.mustApply(evs...)
	want := ref.dump()

	tests := []struct {
		name    string
		batches [][]schemas.Event
	}{
		{"same batch twice", [][]schemas.Event{concat(evs, evs)}},
		{"two batches", [][]schemas.Event{evs, evs}},
		{"each event twice in a row", func() [][]schemas.Event {
			var b [][]schemas.Event
			for _, ev := range evs {
				b = append(b, []schemas.Event{ev, ev})
			}
			return b
		}()},
		{"completed redelivered alone", [][]schemas.Event{evs, {s.completed()}, {s.started()}}},
		{"same id with other content is ignored", [][]schemas.Event{evs, {func() schemas.Event {
			c := s.completed()
			c.Disks[0].ChangeID = "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1"
			c.Disks[0].ActualSizeBytes = 1
			return c
		}()}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCatalog(t)
			for _, b := range tt.batches {
				c.mustApply(b...) // duplicates are nil, never an error
			}
			requireSameDump(t, want, c.dump())
			st, err := c.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Applied != len(evs) || st.Links != 2 || st.Jobs != 1 || st.Poison != 0 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

// TestApplyShuffled applies every permutation of a job's events (and random
// permutations of a failed-then-retried job), in one batch and one event per
// batch, with a redelivered started after the completed: the catalog must
// always end the same.
func TestApplyShuffled(t *testing.T) {
	t.Run("all permutations of one attempt", func(t *testing.T) {
		s := spec{job: "j-perm", disks: []schemas.DiskRef{diskA, diskB}}
		evs := s.run()
		ref := newTestCatalog(t)
		ref.mustApply(evs...)
		want := ref.dump()

		for _, perm := range permutations(len(evs)) {
			shuffled := make([]schemas.Event, 0, len(evs)+1)
			for _, i := range perm {
				shuffled = append(shuffled, evs[i])
			}
			shuffled = append(shuffled, s.started()) // redelivered after completed
			for _, batch := range []int{0, 1} {
				c := newTestCatalog(t)
				c.applyBatches(shuffled, batch)
				requireSameDump(t, want, c.dump())
				c.close()
			}
		}
	})
	t.Run("all permutations of an attempt with a forged completed and a late failure", func(t *testing.T) {
		s := spec{job: "j-forged"}
		late := spec{job: "j-forged", attempt: 2, at: t0.Add(time.Hour)}
		evs := concat(from("node1", s.run()...), from("node2", forgedCompleted(s, 2)), from("node1", late.failed(false)))
		ref := newTestCatalog(t)
		ref.apply(evs...)
		want := ref.dump()
		if j := ref.job(s.job); j.Status != backup.StatusCompleted || j.Attempt != 1 || len(want.Poison) != 2 {
			t.Fatalf("reference: job %+v, poison %+v", j, want.Poison)
		}
		for _, perm := range permutations(len(evs)) {
			shuffled := make([]schemas.Event, 0, len(evs))
			for _, i := range perm {
				shuffled = append(shuffled, evs[i])
			}
			for _, batch := range []int{0, 1} {
				c := newTestCatalog(t)
				c.applyBatches(shuffled, batch)
				requireSameDump(t, want, c.dump())
				c.close()
			}
		}
	})
	t.Run("random permutations of a retried job", func(t *testing.T) {
		a1 := spec{job: "j-retry", disks: []schemas.DiskRef{diskA, diskB}}
		a2 := spec{job: "j-retry", disks: []schemas.DiskRef{diskA, diskB}, attempt: 2, at: t0.Add(time.Minute)}
		evs := concat(a1.failedRun(true), a2.run(), []schemas.Event{a1.started(), a2.progress(3)})
		ref := newTestCatalog(t)
		ref.applyBatches(evs, 1)
		want := ref.dump()
		j := ref.job("j-retry")
		if j.Status != backup.StatusCompleted || j.Attempt != 2 || j.Disks[0].ChangeID != a2.changeID(diskA) {
			t.Fatalf("reference job = %+v", j)
		}

		rng := rand.New(rand.NewPCG(1, 2))
		for range 30 {
			shuffled := append([]schemas.Event(nil), evs...)
			rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			c := newTestCatalog(t)
			c.applyBatches(shuffled, 1+rng.IntN(len(shuffled)))
			requireSameDump(t, want, c.dump())
			c.close()
		}
	})
}

func permutations(n int) [][]int {
	var out [][]int
	var rec func(p []int, used []bool)
	rec = func(p []int, used []bool) {
		if len(p) == n {
			out = append(out, append([]int(nil), p...))
			return
		}
		for i := range n {
			if !used[i] {
				used[i] = true
				rec(append(p, i), used)
				used[i] = false
			}
		}
	}
	rec(nil, make([]bool, n))
	return out
}

func TestCompletedIncomplete(t *testing.T) {
	two := spec{job: "j-inc", disks: []schemas.DiskRef{diskA, diskB}}
	noChangeID := two.completed()
	noChangeID.Disks[1].ChangeID = ""
	missingDisk := two.completed()
	missingDisk.Disks = missingDisk.Disks[:1]
	noDisks := two.completed()
	noDisks.Disks = nil
	otherUUID := two.completed()
	otherUUID.Disks[0].Disk.UUID = "6000c291-ffff-0000-0000-00000000000a"
	noVM := two.completed()
	noVM.VM.UUID = ""

	// at is a (batch, event) position.
	type at [2]int
	tests := []struct {
		name    string
		batches [][]schemas.Event
		// wantErrs are the per-event errors other than nil; the completed
		// event is the one at poisoned.
		wantErrs   map[at]error
		poisoned   at
		wantReason string // of the final poison record (and of its ErrIncomplete)
	}{
		{"no change id, same batch", [][]schemas.Event{{two.started(), two.changeIDEvent(0), noChangeID}}, map[at]error{{0, 2}: ErrIncomplete}, at{0, 2}, "disk 2001 has no change id"},
		{"no change id, alone", [][]schemas.Event{{noChangeID}}, map[at]error{{0, 0}: ErrIncomplete}, at{0, 0}, "disk 2001 has no change id"},
		{"missing disk, started first", [][]schemas.Event{{two.started()}, {missingDisk}}, map[at]error{{1, 0}: ErrIncomplete}, at{1, 0}, "disk 2001 (uuid " + diskB.UUID + ") of backup.started attempt 1 is missing"},
		{"missing disk, completed first in the batch", [][]schemas.Event{{missingDisk, two.started()}}, map[at]error{{0, 0}: ErrIncomplete}, at{0, 0}, "of backup.started attempt 1 is missing"},
		// Alone, the completed lacks its started (rule 4); the started
		// shows it lacks a disk: the record's reason follows.
		{"missing disk, completed in an earlier batch", [][]schemas.Event{{missingDisk}, {two.started()}}, map[at]error{{0, 0}: ErrInconsistent}, at{0, 0}, "of backup.started attempt 1 is missing"},
		{"no disks", [][]schemas.Event{{two.started(), noDisks}}, map[at]error{{0, 1}: ErrIncomplete}, at{0, 1}, "no disks"},
		{"disk uuid differs", [][]schemas.Event{{two.started(), otherUUID}}, map[at]error{{0, 1}: ErrIncomplete}, at{0, 1}, "disk 2000 has uuid 6000c291-ffff"},
		{"no vm uuid", [][]schemas.Event{{noVM}}, map[at]error{{0, 0}: ErrIncomplete}, at{0, 0}, "no vm uuid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCatalog(t)
			for bi, b := range tt.batches {
				errs := c.apply(b...)
				for ei, err := range errs {
					want := tt.wantErrs[at{bi, ei}]
					switch {
					case want == nil && err != nil:
						t.Errorf("batch %d event %d: unexpected error %v", bi, ei, err)
					case want != nil && !errors.Is(err, want):
						t.Errorf("batch %d event %d: error = %v, want %v", bi, ei, err, want)
					case want == ErrIncomplete && !strings.Contains(err.Error(), tt.wantReason):
						t.Errorf("batch %d event %d: error = %v, want reason %q", bi, ei, err, tt.wantReason)
					}
				}
			}
			poisoned := tt.batches[tt.poisoned[0]][tt.poisoned[1]]

			// Kept as a poison record, with the event's JSON.
			recs := c.poison()
			if len(recs) != 1 {
				t.Fatalf("poison records = %+v, want 1", recs)
			}
			p := recs[0]
			h := poisoned.EventHeader()
			if p.EventID != h.ID || p.JobID != h.JobID || p.Subject != schemas.NameCompleted ||
				!strings.Contains(p.Reason, tt.wantReason) || p.Time.IsZero() {
				t.Errorf("poison record = %+v", p)
			}
			var back schemas.Completed
			if err := json.Unmarshal(p.Raw, &back); err != nil || back.ID != h.ID {
				t.Errorf("poison raw does not hold the event: %v %s", err, p.Raw)
			}

			// Not applied: never completed, never in a chain.
			if j, err := c.Job(two.job); err == nil && j.Status == backup.StatusCompleted {
				t.Errorf("job completed: %+v", j)
			}
			if links, err := c.Chain(vm1.UUID, diskA.Key, "default"); err != nil || len(links) != 0 {
				t.Errorf("chain = %+v, %v; want empty", links, err)
			}
			if _, err := c.ChainHead(vm1.UUID, diskA.Key, "default"); !errors.Is(err, backup.ErrNotFound) {
				t.Errorf("chain head error = %v, want ErrNotFound", err)
			}

			// Redelivery is a no-op: no second record, no error.
			c.mustApply(poisoned)
			if n := len(c.poison()); n != 1 {
				t.Errorf("poison records after redelivery = %d", n)
			}

			// The catalog keeps working.
			ok := spec{job: "j-next", vm: vm2}
			c.mustApply(ok.run()...)
			if j := c.job("j-next"); j.Status != backup.StatusCompleted {
				t.Errorf("next job status = %s", j.Status)
			}
		})
	}
}

// The three orders of "completed lacks a disk the started listed" leave the
// same catalog.
func TestCompletedIncompleteOrderTolerant(t *testing.T) {
	two := spec{job: "j-inc", disks: []schemas.DiskRef{diskA, diskB}}
	missing := two.completed()
	missing.Disks = missing.Disks[:1]
	orders := [][][]schemas.Event{
		{{two.started(), two.changeIDEvent(0), missing}},
		{{missing}, {two.changeIDEvent(0)}, {two.started()}},
		{{missing, two.changeIDEvent(0), two.started()}},
		{{two.changeIDEvent(0), missing}, {two.started(), missing}},
	}
	var want Snapshot
	for i, batches := range orders {
		c := newTestCatalog(t)
		for _, b := range batches {
			c.apply(b...)
		}
		got := c.dump()
		if got.Jobs[0].Status != backup.StatusRunning || len(got.Links) != 0 || len(got.Poison) != 1 {
			t.Errorf("order %d: jobs %+v links %d poison %d", i, got.Jobs, len(got.Links), len(got.Poison))
		}
		if i == 0 {
			want = got
			continue
		}
		requireSameDump(t, want, got)
	}
}

func TestStatus(t *testing.T) {
	a1 := spec{job: "j"}
	a2 := spec{job: "j", attempt: 2, at: t0.Add(time.Hour)}
	rej := spec{job: "j", vm: schemas.VMRef{Name: "ghost"}}
	tests := []struct {
		name        string
		evs         []schemas.Event
		wantStatus  string
		wantAttempt int
		wantFailure string // failure reason, "" for none
		wantFailed  int    // Job.FailedAttempts
	}{
		{"started only", []schemas.Event{a1.started()}, backup.StatusRunning, 1, "", 0},
		{"changeid only", []schemas.Event{a1.changeIDEvent(0)}, backup.StatusRunning, 1, "", 0},
		{"failed", a1.failedRun(false), backup.StatusFailed, 1, schemas.FailTargetNBD, 1},
		{"failed without started", []schemas.Event{a1.failed(true)}, backup.StatusFailed, 1, schemas.FailTargetNBD, 1},
		{"retry running after retryable failure", concat(a1.failedRun(true), []schemas.Event{a2.started()}), backup.StatusRunning, 2, "", 1},
		{"failed, retried, completed", concat(a1.failedRun(true), a2.run()), backup.StatusCompleted, 2, "", 1},
		{"failed twice", concat(a1.failedRun(true), a2.failedRun(false)), backup.StatusFailed, 2, schemas.FailTargetNBD, 2},
		{"completed, then started redelivered", concat(a1.run(), []schemas.Event{a1.started()}), backup.StatusCompleted, 1, "", 0},
		{"completed wins over a late failure", concat(a1.run(), []schemas.Event{a1.failed(false)}), backup.StatusCompleted, 1, "", 1},
		{"rejected only", []schemas.Event{rej.rejected()}, backup.StatusRejected, 1, schemas.RejectUnknownVM, 0},
		{"rejected, then started", []schemas.Event{rej.rejected(), a1.started()}, backup.StatusRunning, 1, "", 0},
	}
	for _, tt := range tests {
		for _, reverse := range []bool{false, true} {
			name := tt.name
			evs := append([]schemas.Event(nil), tt.evs...)
			if reverse {
				name += " reversed"
				for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
					evs[i], evs[j] = evs[j], evs[i]
				}
			}
			t.Run(name, func(t *testing.T) {
				c := newTestCatalog(t)
				c.applyBatches(evs, 1)
				j := c.job("j")
				if j.Status != tt.wantStatus || j.Attempt != tt.wantAttempt {
					t.Errorf("status %s attempt %d, want %s attempt %d", j.Status, j.Attempt, tt.wantStatus, tt.wantAttempt)
				}
				gotFailure := ""
				if j.Failure != nil {
					gotFailure = j.Failure.Reason
				}
				if gotFailure != tt.wantFailure {
					t.Errorf("failure = %+v, want reason %q", j.Failure, tt.wantFailure)
				}
				if j.FailedAttempts != tt.wantFailed {
					t.Errorf("failed attempts = %d, want %d", j.FailedAttempts, tt.wantFailed)
				}
				if (j.Status == backup.StatusRunning) != j.FinishedAt.IsZero() {
					t.Errorf("status %s with finished_at %s", j.Status, j.FinishedAt)
				}
				links, err := c.Chain(vm1.UUID, diskA.Key, "default")
				if err != nil {
					t.Fatal(err)
				}
				if wantLinks := tt.wantStatus == backup.StatusCompleted; wantLinks != (len(links) == 1) {
					t.Errorf("status %s with %d chain links", j.Status, len(links))
				}
			})
		}
	}
}

func TestInvalidEvents(t *testing.T) {
	type fake struct{ schemas.Header }
	good := spec{job: "j-good"}
	noID := good.started()
	noID.ID = ""
	noJob := spec{job: "j-nojob"}.started()
	noJob.JobID = ""
	longID := spec{job: strings.Repeat("x", maxIDLen+1)}.started()

	c := newTestCatalog(t)
	evs := []schemas.Event{
		nil,
		(*schemas.Started)(nil),
		noID,
		noJob,
		&fake{Header: schemas.Header{ID: "fake-1", JobID: "j-fake"}},
		longID,
		good.started(),
	}
	errs := c.apply(evs...)
	for i := range 6 {
		if !errors.Is(errs[i], ErrInvalid) {
			t.Errorf("event %d: error = %v, want ErrInvalid", i, errs[i])
		}
	}
	if errs[6] != nil {
		t.Errorf("valid event: %v", errs[6])
	}
	if got := len(c.poison()); got != 4 { // nil events leave nothing to keep
		t.Errorf("poison records = %d, want 4", got)
	}
	if j := c.job("j-good"); j.Status != backup.StatusRunning {
		t.Errorf("good job = %+v", j)
	}
	// Redelivered: the same records, no new ones.
	c.apply(evs...)
	if got := len(c.poison()); got != 4 {
		t.Errorf("poison records after redelivery = %d, want 4", got)
	}
}

func TestProgress(t *testing.T) {
	s := spec{job: "j-p"}
	for _, order := range [][]int64{{1, 5, 3}, {5, 3, 1}, {3, 1, 5}} {
		c := newTestCatalog(t)
		for _, seq := range order {
			c.mustApply(s.progress(seq))
		}
		if _, err := c.Job(s.job); !errors.Is(err, backup.ErrNotFound) {
			t.Errorf("progress alone created a job: %v", err)
		}
		c.mustApply(s.started(), s.progress(5)) // redelivered too
		j := c.job(s.job)
		if j.Progress == nil || j.Progress.Seq != 5 || j.Progress.BytesDone != 5<<20 || j.Progress.BytesTotal != 100<<20 {
			t.Errorf("order %v: progress = %+v", order, j.Progress)
		}
		if len(j.EventIDs) != 1 {
			t.Errorf("progress ids recorded as job events: %v", j.EventIDs)
		}
		c.close()
	}
}

func TestRecordPoison(t *testing.T) {
	c := newTestCatalog(t)
	bad := backup.PoisonRecord{Subject: schemas.NameCompleted, Seq: 42, Reason: "schema: /disks/0: missing property 'change_id'", Raw: []byte(`{"job_id":"x"`)}
	for range 2 {
		if err := c.RecordPoison(bad); err != nil {
			t.Fatal(err)
		}
	}
	bad.Seq = 43
	if err := c.RecordPoison(bad); err != nil {
		t.Fatal(err)
	}
	huge := backup.PoisonRecord{Subject: schemas.NameStarted, Seq: 44, Reason: "payload too large", Raw: make([]byte, backup.MaxPoisonRaw+10)}
	if err := c.RecordPoison(huge); err != nil {
		t.Fatal(err)
	}
	noSeq := backup.PoisonRecord{Subject: schemas.NameFailed, Reason: "invalid json", Raw: []byte("{")}
	for range 2 {
		if err := c.RecordPoison(noSeq); err != nil {
			t.Fatal(err)
		}
	}
	recs := c.poison()
	if len(recs) != 4 {
		t.Fatalf("records = %d, want 4", len(recs))
	}
	if recs[0].Seq != 42 || recs[1].Seq != 43 || recs[2].Seq != 44 || recs[3].Subject != schemas.NameFailed {
		t.Errorf("order: %d %d %d %s", recs[0].Seq, recs[1].Seq, recs[2].Seq, recs[3].Subject)
	}
	if string(recs[0].Raw) != `{"job_id":"x"` || recs[0].Truncated {
		t.Errorf("raw = %q", recs[0].Raw)
	}
	if len(recs[2].Raw) != backup.MaxPoisonRaw || !recs[2].Truncated {
		t.Errorf("huge record: %d bytes, truncated %v", len(recs[2].Raw), recs[2].Truncated)
	}
	c.reopen()
	if n := len(c.poison()); n != 4 {
		t.Errorf("records after reopen = %d", n)
	}
}

// json.Marshal replaces invalid UTF-8; the job must not depend on whether
// it was derived from the caller's values or from the stored JSON (here the
// disk uuid check of the completed event against the started one).
func TestInvalidUTF8SameInAnyBatching(t *testing.T) {
	d := diskA
	d.UUID = "6000c291-\xff"
	s := spec{job: "j-utf8", disks: []schemas.DiskRef{d}}
	one := newTestCatalog(t)
	one.mustApply(s.run()...)
	perEvent := newTestCatalog(t)
	perEvent.applyBatches(s.run(), 1)
	requireSameDump(t, one.dump(), perEvent.dump())
	if j := perEvent.job(s.job); j.Status != backup.StatusCompleted || j.Disks[0].Disk.UUID != "6000c291-\uFFFD" {
		t.Errorf("job = %+v", j)
	}
}

// TestPoisonedCompletedRedelivered: a poisoned completed event stays filed,
// so its redelivery is a no-op (nil error, no second effect), not a new
// ErrIncomplete.
func TestPoisonedCompletedRedelivered(t *testing.T) {
	two := spec{job: "j-inc", disks: []schemas.DiskRef{diskA, diskB}}
	missing := two.completed()
	missing.Disks = missing.Disks[:1]
	c := newTestCatalog(t)
	if errs := c.apply(missing); !errors.Is(errs[0], ErrInconsistent) { // no started yet
		t.Fatalf("completed alone: %v, want ErrInconsistent", errs[0])
	}
	c.mustApply(two.started()) // the poison record now says the completed lacks a disk
	before := c.dump()
	if len(before.Poison) != 1 || before.Jobs[0].Status != backup.StatusRunning {
		t.Fatalf("after started: poison %d, jobs %+v", len(before.Poison), before.Jobs)
	}
	if errs := c.apply(missing); errs[0] != nil {
		t.Errorf("redelivered poisoned completed: %v, want nil (duplicate)", errs[0])
	}
	requireSameDump(t, before, c.dump())
	if !slices.Contains(before.Applied, missing.ID) {
		t.Errorf("applied ids %v lack the poisoned event %s", before.Applied, missing.ID)
	}
}

// TestSameIDOtherJob: an event's identity is (job id, event id, agent), and
// its id must name its job (rule 1). Events filed under another job than
// their ids name are poison there and do not disturb the job the ids name,
// whatever the order.
func TestSameIDOtherJob(t *testing.T) {
	a := spec{job: "j-a"}
	b := spec{job: "j-b", at: t0.Add(time.Hour)}
	ea, eb := a.run(), b.run()
	for _, ev := range eb {
		ev.EventHeader().ID = strings.Replace(ev.EventHeader().ID, "j-b", "j-a", 1)
	}
	var want Snapshot
	for i, order := range [][]schemas.Event{concat(ea, eb), concat(eb, ea)} {
		c := newTestCatalog(t)
		errs := c.apply(order...)
		for k, err := range errs {
			if fromB := (k >= len(ea)) == (i == 0); fromB != errors.Is(err, ErrInconsistent) {
				t.Errorf("order %d event %d: error %v", i, k, err)
			}
		}
		got := c.dump()
		if len(got.Jobs) != 1 || got.Jobs[0].ID != a.job || got.Jobs[0].Status != backup.StatusCompleted || len(got.Links) != 1 {
			t.Fatalf("order %d: jobs %+v, %d links", i, got.Jobs, len(got.Links))
		}
		if len(got.Poison) != len(eb) || got.Poison[0].JobID != b.job || !strings.Contains(got.Poison[0].Reason, `is not the canonical "j-b.1.`) {
			t.Fatalf("order %d: poison %+v", i, got.Poison)
		}
		if i == 0 {
			want = got
			continue
		}
		requireSameDump(t, want, got)
	}
}
