package store

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// testdata/catalog-v1.db is a layout version 1 catalog written by commit
// 336e763 (the last build with that layout): workload(1) filled in batches
// of 50 with its poison records (fill), nothing else. The test helpers of
// that commit made ids such as "job-001.1.backup.started", which layout 3
// refuses (they are not bus.EventID's); the file was written again at that
// commit with its helpers' header patched to give canonical ids
// ("job-001.1.started.0.0"), as the agents have always published.
const catalogV1 = "testdata/catalog-v1.db"

// TestMigrateV1 opens a version 1 file and checks that the migrated
// catalog has exactly the content of a catalog built by this build from
// the same events, passes bbolt's check, keeps no version 1 bucket, and
// goes on: the next backup of a chain links onto the migrated head.
func TestMigrateV1(t *testing.T) {
	evs, poison := workload(1)
	fresh := newTestCatalog(t)
	fill(t, fresh, evs, poison, 50)
	want := fresh.dump()

	path := filepath.Join(t.TempDir(), "catalog.db")
	data, err := os.ReadFile(catalogV1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	migrated := openTestCatalog(t, path)
	got := migrated.dump()
	if got.SchemaVersion != schemaVersion {
		t.Errorf("schema version after migration = %d, want %d", got.SchemaVersion, schemaVersion)
	}
	if len(got.Jobs) == 0 || len(got.Links) == 0 || len(got.Poison) == 0 {
		t.Fatalf("migrated catalog lost content: %d jobs, %d links, %d poison records", len(got.Jobs), len(got.Links), len(got.Poison))
	}
	requireSameDump(t, want, got)
	if err := migrated.Check(); err != nil {
		t.Fatal(err)
	}
	err = migrated.db.View(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketEventsV1, bucketChainsV1} {
			if tx.Bucket(name) != nil {
				t.Errorf("version 1 bucket %s left after migration", name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Reopening does not migrate again; queries and new events work on
	// the migrated file as on the fresh one.
	migrated.reopen()
	requireSameDump(t, want, migrated.dump())
	for _, c := range []*testCatalog{fresh, migrated} {
		head, err := c.ChainHead(vm1.UUID, diskA.Key, "default")
		if err != nil {
			t.Fatal(err)
		}
		next := spec{job: "job-after-migration", vm: vm1, at: head.Time.Add(time.Hour),
			typ: "incremental", backing: head.JobID}
		c.mustApply(next.run()...)
		if h, err := c.ChainHead(vm1.UUID, diskA.Key, "default"); err != nil || h.JobID != next.job {
			t.Errorf("chain head after the next backup = %+v, %v; want job %s", h, err, next.job)
		}
		// An event of a migrated job is still a duplicate, and a new one
		// re-derives every migrated job from its moved events.
		if errs := c.apply(evs[0]); errs[0] != nil {
			t.Errorf("re-applying a migrated event: %v", errs[0])
		}
		for _, j := range want.Jobs {
			p := &schemas.Progress{Header: schemas.Header{ID: eventID(j.ID, 9, schemas.NameProgress, 0, 1), JobID: j.ID,
				Attempt: 9, Time: t0, VM: j.VM}, Seq: 1}
			if errs := c.apply(p); errs[0] != nil {
				t.Fatalf("progress of migrated job %s: %v", j.ID, errs[0])
			}
		}
	}
	requireSameDump(t, fresh.dump(), migrated.dump())
}

// testdata/catalog-v2.db is a layout version 2 catalog written at commit
// 9c62275 (the last build with that layout) by testdata/catalog-v2/main.go
// from v2Batches, each event with its payload (WithPayload). Layout 2
// applied both forged completed events: job-legit was completed at attempt
// 2 with bumped change ids, and job-forged, which has no started at all,
// was vm1's chain head.
const catalogV2 = "testdata/catalog-v2.db"

var (
	v2Legit      = spec{job: "job-legit", disks: []schemas.DiskRef{diskA, diskB}}
	v2Other      = spec{job: "job-other", vm: vm2, at: t0.Add(10 * time.Minute)}
	v2Incomplete = spec{job: "job-incomplete", vm: vm2, disks: []schemas.DiskRef{diskA, diskB}, at: t0.Add(20 * time.Minute)}
	v2Forged     = spec{job: "job-forged", disks: []schemas.DiskRef{diskA, diskB}, at: t0.Add(time.Hour)}
)

// v2Batches are the batches testdata/catalog-v2/main.go applied: a
// legitimate job, another VM's job, a completed lacking a disk that the
// next batch's started moved to the poison records (a tombstone), a forged
// completed of the legitimate job (attempt 2, change ids bumped), and a
// forged completed of a new job.
func v2Batches() [][]schemas.Event {
	missing := v2Incomplete.completed()
	missing.Disks = missing.Disks[:1]
	return [][]schemas.Event{
		v2Legit.run(),
		v2Other.run(),
		{missing},
		{v2Incomplete.started(), v2Incomplete.changeIDEvent(0)},
		{forgedCompleted(v2Legit, 2)},
		{forgedCompleted(v2Forged, 1)},
	}
}

// TestMigrateV2 opens the version 2 file: the keys stay, every job is
// re-derived under the consistency rules, so the legitimate job is
// completed again at attempt 1 with its own change ids and chain, the
// forged events are poison and no chain head, the tombstone stays, and the
// catalog equals one built by this build from the same (legacy) events.
func TestMigrateV2(t *testing.T) {
	fresh := newTestCatalog(t)
	for _, b := range v2Batches() {
		fresh.apply(withPayloads(t, "", b...)...)
	}
	want := fresh.dump()

	path := filepath.Join(t.TempDir(), "catalog.db")
	data, err := os.ReadFile(catalogV2)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// Layout 2 made the forged completed the head; read it before Open
	// migrates, to be sure the file holds the attack.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		if v := string(tx.Bucket(bucketMeta).Get(keySchemaVersion)); v != "2" {
			t.Errorf("fixture schema version %s, want 2", v)
		}
		raw := tx.Bucket(bucketJobs).Get([]byte(v2Legit.job))
		if !strings.Contains(string(raw), bumped(v2Legit.changeID(diskA))) {
			t.Errorf("fixture's job-legit lacks the forged change id: %s", raw)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	c := openTestCatalog(t, path)
	got := c.dump()
	if got.SchemaVersion != schemaVersion {
		t.Errorf("schema version = %d, want %d", got.SchemaVersion, schemaVersion)
	}
	requireSameDump(t, want, got)

	j := c.job(v2Legit.job)
	if j.Status != backup.StatusCompleted || j.Attempt != 1 || j.Agent != "" || j.Disks[0].ChangeID != v2Legit.changeID(diskA) ||
		!slices.Equal(j.PoisonedEventIDs, []string{"job-legit.2.completed.0.0"}) {
		t.Errorf("legit job = %+v", j)
	}
	requireHead(t, c, v2Legit)
	requireHead(t, c, v2Other)
	if links, err := c.Chain(vm1.UUID, diskB.Key, "default"); err != nil || len(links) != 1 || links[0].JobID != v2Legit.job {
		t.Errorf("chain of vm1 disk 2001 = %+v, %v", links, err)
	}
	if _, err := c.Job(v2Forged.job); !errors.Is(err, backup.ErrNotFound) {
		t.Errorf("forged job: %v, want ErrNotFound (poison alone)", err)
	}
	if ij := c.job(v2Incomplete.job); ij.Status != backup.StatusRunning || !slices.Equal(ij.PoisonedEventIDs, []string{"job-incomplete.1.completed.0.0"}) {
		t.Errorf("incomplete job = %+v", ij)
	}
	requirePoison(t, c, map[string]string{
		"job-legit.2.completed.0.0":      `no backup.started of attempt 2 from agent "" (legacy)`,
		"job-forged.1.completed.0.0":     `no backup.started of attempt 1 from agent "" (legacy)`,
		"job-incomplete.1.completed.0.0": "disk 2001 (uuid " + diskB.UUID + ") of backup.started attempt 1 is missing",
	})
	err = c.db.View(func(tx *bolt.Tx) error {
		k := eventKey(v2Incomplete.job, "job-incomplete.1.completed.0.0", eventCode(schemas.NameCompleted), "", 0)
		if v := tx.Bucket(bucketEvents).Get(k); v == nil || len(v) != 0 {
			t.Errorf("tombstone %x = %q, want kept empty", k, v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Reopening does not migrate again; redelivered events are no-ops;
	// the next backup from an agent links onto the legitimate head.
	c.reopen()
	requireSameDump(t, want, c.dump())
	for _, b := range v2Batches() {
		for i, err := range c.apply(withPayloads(t, "", b...)...) {
			if err != nil {
				t.Errorf("redelivered %s: %v", b[i].EventHeader().ID, err)
			}
		}
	}
	requireSameDump(t, want, c.dump())
	next := spec{job: "job-next", disks: []schemas.DiskRef{diskA, diskB}, at: t0.Add(2 * time.Hour),
		typ: schemas.TypeIncremental, backing: v2Legit.job}
	c.mustApply(withPayloads(t, "node1", next.run()...)...)
	requireHead(t, c, next)
	if j := c.job(next.job); j.Agent != "node1" {
		t.Errorf("next job = %+v", j)
	}
}

// TestMigrateV3: layout 3 named a job record's id "id"; version 4 names it
// "job_id" as the events do. A version 3 file (this build's records with
// the old name, as layout 3 wrote them) opens with the same content as a
// fresh catalog of the same events, every record rewritten, and the jobs
// and chains readable by id.
func TestMigrateV3(t *testing.T) {
	evs, poison := workload(1)
	fresh := newTestCatalog(t)
	fill(t, fresh, evs, poison, 50)
	want := fresh.dump()
	fresh.close()

	db, err := bolt.Open(fresh.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = db.Update(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		old := map[string][]byte{}
		if err := jobs.ForEach(func(k, v []byte) error {
			if !strings.HasPrefix(string(v), `{"job_id":`) {
				t.Errorf("record of job %s: %.40s..., want it to start with job_id", k, v)
			}
			old[string(k)] = append([]byte(`{"id":`), v[len(`{"job_id":`):]...)
			return nil
		}); err != nil {
			return err
		}
		for k, v := range old {
			if err := jobs.Put([]byte(k), v); err != nil {
				return err
			}
			n++
		}
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte("3"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("workload made no job records")
	}

	c := openTestCatalog(t, fresh.path)
	got := c.dump()
	if got.SchemaVersion != schemaVersion {
		t.Errorf("schema version = %d, want %d", got.SchemaVersion, schemaVersion)
	}
	requireSameDump(t, want, got)
	for _, j := range got.Jobs {
		if j.ID == "" {
			t.Fatalf("a migrated job has no id: %+v", j)
		}
		if g, err := c.Job(j.ID); err != nil || g.ID != j.ID {
			t.Errorf("job %s after migration: %+v, %v", j.ID, g.ID, err)
		}
	}
}
