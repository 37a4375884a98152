package catalog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// The tests in this file are one behaviour suite, run against an embedded
// server and a separate nats-server process (bustest.ForEach).

func TestConsumer(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		t.Run("GroupCommit", func(t *testing.T) { testGroupCommit(t, start) })
		t.Run("DuplicatesAndRedelivery", func(t *testing.T) { testDuplicates(t, start) })
		t.Run("ShuffledOrder", func(t *testing.T) { testShuffled(t, start) })
		t.Run("Poison", func(t *testing.T) { testPoison(t, start) })
		t.Run("ServerRestart", func(t *testing.T) { testServerRestart(t, start) })
		t.Run("Shutdown", func(t *testing.T) { testShutdown(t, start) })
	})
}

// commits collects the ids OnCommit reports.
type commits struct {
	mu      sync.Mutex
	batches [][]string
}

func (c *commits) add(ids []string) {
	c.mu.Lock()
	c.batches = append(c.batches, slices.Clone(ids))
	c.mu.Unlock()
}

func (c *commits) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, b := range c.batches {
		n += len(b)
	}
	return n
}

func (c *commits) largest() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, b := range c.batches {
		n = max(n, len(b))
	}
	return n
}

// Events published before the consumer starts are applied in groups, each
// group in one transaction, and all of them acked: the catalog equals one
// built by applying the events one by one.
func testGroupCommit(t *testing.T, start bustest.StartFunc) {
	e := newEnv(t, start)
	evs := catalogtest.Mixed("job", 100, 1)
	e.publishMany(evs...)

	var c commits
	e.start(Options{MaxBatch: 64, OnCommit: c.add})
	e.waitIdle()

	requireEqual(t, reference(t, evs...), e.dump())
	// Published from 8 goroutines, a completed can reach the catalog before
	// its changeid: the store keeps it as poison until the changeid comes.
	applied, held := e.metric("sendense_catalog_events_applied_total"), e.metric("sendense_catalog_events_poison_total", "stage", StageStore)
	if applied+held != float64(len(evs)) {
		t.Errorf("applied %v + held as poison %v = %v, want %d", applied, held, applied+held, len(evs))
	}
	batches := e.metric("sendense_catalog_batches_total")
	if batches < 1 || batches >= float64(len(evs)) {
		t.Errorf("%d events in %v batches: want group commits", len(evs), batches)
	}
	if got := e.metric("sendense_catalog_commit_seconds"); got != batches {
		t.Errorf("commit latency samples = %v, want one per batch (%v)", got, batches)
	}
	if l := c.largest(); l < 2 || l > 64 {
		t.Errorf("largest batch %d events, want 2..64 (MaxBatch)", l)
	}
	if c.count() != len(evs) {
		t.Errorf("OnCommit reported %d ids, want %d", c.count(), len(evs))
	}
}

// The same event published twice with the same message id is stored once;
// published again under another id (after the duplicate window) and
// redelivered because a catalog died between commit and ack, it still has
// one effect.
func testDuplicates(t *testing.T, start bustest.StartFunc) {
	e := newEnv(t, start)
	j := catalogtest.Job{ID: "job-dup", Disks: []schemas.DiskRef{catalogtest.Disk(0, 0), catalogtest.Disk(0, 1)}}
	evs := j.Run()
	e.publish(evs...)
	ack, err := e.pub.PublishEvent(testCtx(t), evs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !ack.Duplicate {
		t.Errorf("second publish of %s with the same id was stored again (seq %d)", evs[0].EventHeader().ID, ack.Sequence)
	}
	completed, _ := json.Marshal(evs[len(evs)-1])
	e.publishRaw(schemas.NameCompleted, "same-event-other-msg-id", completed)
	stored := len(evs) + 1

	// A catalog that commits and never acks, as if killed after its commit.
	var first commits
	r1 := e.start(Options{AckWait: 500 * time.Millisecond, withholdAcks: true, OnCommit: first.add})
	e.waitFor("first catalog commits", func() bool { return first.count() >= stored })
	r1.stop(t)
	if j, err := e.cat.Job(j.ID); err != nil || j.Status != backup.StatusCompleted {
		t.Fatalf("after the first catalog: job %+v, %v; want completed", j, err)
	}
	dupsBefore := e.metric("sendense_catalog_events_duplicate_total")

	// The next catalog gets every message again.
	e.start(Options{AckWait: 500 * time.Millisecond})
	e.waitIdle()
	requireEqual(t, reference(t, evs...), e.dump())
	if got := e.metric("sendense_catalog_events_duplicate_total") - dupsBefore; got < float64(stored) {
		t.Errorf("second catalog counted %v duplicates, want >= %d (every stored message redelivered)", got, stored)
	}
	job, _ := e.cat.Job(j.ID)
	if len(job.EventIDs) != len(evs) {
		t.Errorf("job has %d event ids, want %d: %v", len(job.EventIDs), len(evs), job.EventIDs)
	}
}

// Events of jobs delivered in shuffled order give the same jobs and chains
// as in order.
func testShuffled(t *testing.T, start bustest.StartFunc) {
	e := newEnv(t, start)
	disks := []schemas.DiskRef{catalogtest.Disk(1, 0), catalogtest.Disk(1, 1), catalogtest.Disk(1, 2)}
	full := catalogtest.Job{ID: "job-s1", VM: catalogtest.VM(1), Disks: disks}
	incr := full.Next("job-s2")
	retry := incr.Next("job-s3")
	retry2 := retry
	retry2.Attempt, retry2.At = 2, retry.At.Add(time.Minute)
	inOrder := slices.Concat(full.Run(), incr.Run(), retry.FailedRun(true), retry2.Run())

	e.start(Options{})
	e.publish(catalogtest.Shuffle(inOrder, 42)...)
	e.waitIdle()
	requireEqual(t, reference(t, inOrder...), e.dump())
	j := e.waitJob("job-s3", backup.StatusCompleted)
	if j.Attempt != 2 || len(j.Disks) != 3 {
		t.Errorf("job-s3: attempt %d, %d disks; want 2, 3", j.Attempt, len(j.Disks))
	}
	links, err := e.cat.Chain(full.VM.UUID, disks[2].Key, "default")
	if err != nil || len(links) != 3 {
		t.Fatalf("chain of disk %d: %d links, %v; want 3", disks[2].Key, len(links), err)
	}
	if links[2].Backing != "job-s2" || links[1].Backing != "job-s1" {
		t.Errorf("chain backing: %s <- %s <- %s", links[0].JobID, links[1].Backing, links[2].Backing)
	}
}

// mutate decodes ev's JSON into a map, lets fn change it and encodes it.
func mutate(t *testing.T, ev schemas.Event, fn func(m map[string]any)) []byte {
	t.Helper()
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	fn(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Every kind of bad message is terminated with a reason (the server's
// terminated advisory carries it), logged with subject and sequence,
// recorded as poison and counted, and the consumer goes on: the next valid
// event is applied.
func testPoison(t *testing.T, start bustest.StartFunc) {
	e := newEnv(t, start)
	e.start(Options{})
	j := catalogtest.Job{ID: "job-p", Disks: []schemas.DiskRef{catalogtest.Disk(2, 0), catalogtest.Disk(2, 1)}, VM: catalogtest.VM(2)}
	started := j.Started()
	completed := j.Completed()

	big := bytes.Repeat([]byte("a"), 1<<20-8<<10)
	big = append(append([]byte(`{"pad":"`), big...), `"}`...)

	cases := []struct {
		name       string
		subject    string
		payload    []byte
		wantReason string
	}{
		{"malformed json", schemas.NameStarted, []byte(`{"schema":{"name":"backup.started","version":1},"id":`), "invalid json"},
		{"wrong type", schemas.NameStarted, mutate(t, started, func(m map[string]any) { m["attempt"] = "one" }), "/attempt"},
		{"unknown field", schemas.NameStarted, mutate(t, started, func(m map[string]any) { m["colour"] = "blue" }), "colour"},
		{"completed without change id", schemas.NameCompleted, mutate(t, completed, func(m map[string]any) {
			delete(m["disks"].([]any)[1].(map[string]any), "change_id")
		}), "change_id"},
		{"completed with empty change id", schemas.NameCompleted, mutate(t, completed, func(m map[string]any) {
			m["disks"].([]any)[0].(map[string]any)["change_id"] = ""
		}), "change_id"},
		{"event on another event's subject", schemas.NameChangeID, mutate(t, started, func(map[string]any) {}), "backup.changeid"},
		{"1 MiB payload", schemas.NameFailed, big, "too large"},
	}
	for i, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			seq := e.publishRaw(tc.subject, fmt.Sprintf("poison-%d", i), tc.payload)
			probe := catalogtest.Job{ID: fmt.Sprintf("probe-%d", i), At: catalogtest.T0.Add(time.Duration(i) * time.Hour)}
			e.publish(probe.Started())
			e.waitJob(probe.ID, backup.StatusRunning)

			var adv termAdvisory
			e.waitFor("terminated advisory", func() (ok bool) { adv, ok = e.termFor(seq); return ok })
			if !strings.Contains(adv.Reason, tc.wantReason) {
				t.Errorf("term reason %q does not mention %q", adv.Reason, tc.wantReason)
			}
			if got := e.metric("sendense_catalog_events_poison_total", "stage", StageSchema); got != float64(i+1) {
				t.Errorf("schema poison metric = %v, want %d", got, i+1)
			}
			recs, err := e.cat.Poison()
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, r := range recs {
				if r.Seq == seq && r.Subject == bus.AgentSubject(tc.subject, catalogtest.Agent) {
					found = true
					if !strings.Contains(r.Reason, tc.wantReason) {
						t.Errorf("poison record reason %q does not mention %q", r.Reason, tc.wantReason)
					}
					if len(tc.payload) <= backup.MaxPoisonRaw && !bytes.Equal(r.Raw, tc.payload) {
						t.Errorf("poison record keeps %d bytes, want the %d-byte payload", len(r.Raw), len(tc.payload))
					}
				}
			}
			if !found {
				t.Errorf("no poison record for %s seq %d", tc.subject, seq)
			}
			logged := false
			for _, l := range e.logs.lines("catalog event poisoned") {
				if l["seq"] == float64(seq) && l["subject"] == bus.AgentSubject(tc.subject, catalogtest.Agent) && strings.Contains(fmt.Sprint(l["reason"]), tc.wantReason) {
					logged = true
				}
			}
			if !logged {
				t.Errorf("no log line for the poisoned message (seq %d)", seq)
			}
		})
	}

	// Valid by schema, refused by the store: completed lacks a disk that
	// started listed.
	t.Run("completed missing a started disk", func(t *testing.T) {
		incomplete := j.Completed()
		incomplete.Disks = incomplete.Disks[:1]
		e.publish(started)
		e.publish(incomplete)
		probe := catalogtest.Job{ID: "probe-store"}
		e.publish(probe.Started())
		e.waitJob(probe.ID, backup.StatusRunning)
		e.waitFor("store poison counted", func() bool {
			return e.metric("sendense_catalog_events_poison_total", "stage", StageStore) == 1
		})
		if jb := e.waitJob(j.ID, backup.StatusRunning); len(jb.Disks) != 2 {
			t.Errorf("job %s keeps %d disks, want 2", j.ID, len(jb.Disks))
		}
		recs, _ := e.cat.Poison()
		if !slices.ContainsFunc(recs, func(r backup.PoisonRecord) bool { return r.EventID == incomplete.ID }) {
			t.Errorf("no poison record for %s", incomplete.ID)
		}
		e.mu.Lock()
		terms := slices.Clone(e.terms)
		e.mu.Unlock()
		if !slices.ContainsFunc(terms, func(a termAdvisory) bool { return strings.Contains(a.Reason, "backup incomplete") }) {
			t.Errorf("no terminated advisory with reason 'backup incomplete': %+v", terms)
		}
		// A later attempt that reports every disk completes the job.
		again := j
		again.Attempt = 2
		e.publish(again.Run()...)
		e.waitJob(j.ID, backup.StatusCompleted)
	})
	e.waitIdle()
}

// The consumer survives a restart of its server: events published after
// it are applied.
func testServerRestart(t *testing.T, start bustest.StartFunc) {
	e := newEnv(t, start)
	// A crashed server may forget acks it got just before (consumer state
	// is flushed asynchronously) and redeliver after the ack wait.
	r := e.start(Options{AckWait: time.Second})
	a := catalogtest.Job{ID: "job-before"}
	e.publish(a.Run()...)
	e.waitJob(a.ID, backup.StatusCompleted)

	e.srv.Restart(t)
	b := a.Next("job-after")
	e.publish(b.Run()...)
	e.waitJob(b.ID, backup.StatusCompleted)
	e.waitIdle()
	requireEqual(t, reference(t, slices.Concat(a.Run(), b.Run())...), e.dump())
	r.stop(t) // before the restarted server's cleanup, which runs first
}

// Cancelling Run while events flow returns nil promptly; what was applied
// is acked, what was delivered but not applied is handed back, and the
// next Run finishes the job with the same result.
func testShutdown(t *testing.T, start bustest.StartFunc) {
	e := newEnv(t, start)
	evs := catalogtest.Mixed("job", 300, 3)
	e.publishMany(evs...)
	var c commits
	r := e.start(Options{MaxBatch: 16, AckWait: 2 * time.Second, OnCommit: c.add})
	e.waitFor("a first commit", func() bool { return c.count() > 0 })
	began := time.Now()
	r.stop(t)
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("Run took %s to stop", d)
	}
	if c.count() >= len(evs) {
		t.Logf("all %d events applied before the stop; the test proves less", len(evs))
	}
	e.start(Options{AckWait: 2 * time.Second})
	e.waitIdle()
	requireEqual(t, reference(t, evs...), e.dump())
}
