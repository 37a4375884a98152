package store

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/schemas"
)

// testdata/catalog-v1.db is a layout version 1 catalog written by commit
// 336e763 (the last build with that layout): workload(1) filled in batches
// of 50 with its poison records (fill), nothing else.
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
			p := &schemas.Progress{Header: schemas.Header{ID: j.ID + ".after-migration", JobID: j.ID,
				Attempt: 9, Time: t0, VM: j.VM}, Seq: 1}
			if errs := c.apply(p); errs[0] != nil {
				t.Fatalf("progress of migrated job %s: %v", j.ID, errs[0])
			}
		}
	}
	requireSameDump(t, fresh.dump(), migrated.dump())
}
