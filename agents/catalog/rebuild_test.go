package catalog

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// A few hundred events of mixed jobs, with poison of both kinds among
// them, filed by the live consumer; then replayed into fresh catalogs,
// twice, into a partial catalog, and rebuilt in place: every result equals
// the live catalog.
func TestRebuild(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		e := newEnv(t, start)
		evs := catalogtest.Mixed("job", 120, 9)
		half := len(evs) / 2
		e.publishMany(evs[:half]...)
		e.publishRaw(schemas.NameStarted, "poison-json", []byte(`{"job_id":`))
		e.publishRaw(schemas.NameCompleted, "poison-schema", []byte(`{"job_id":"job-x","id":"job-x.1.completed.0.0"}`))
		bad := catalogtest.Job{ID: "job-incomplete", VM: catalogtest.VM(5),
			Disks: []schemas.DiskRef{catalogtest.Disk(5, 0), catalogtest.Disk(5, 1)}}
		incomplete := bad.Completed()
		incomplete.Disks = incomplete.Disks[:1]
		e.publish(bad.Started(), incomplete)
		e.publishMany(evs[half:]...)
		total := len(evs) + 4

		r := e.start(Options{})
		e.waitIdle()
		r.stop(t)
		live := e.dump()
		if len(live.Poison) != 3 || len(live.Jobs) < 100 {
			t.Fatalf("live catalog: %d jobs, %d poison records; want >= 100 and 3", len(live.Jobs), len(live.Poison))
		}
		ctx := testCtx(t)

		t.Run("ReplayTwice", func(t *testing.T) {
			cat := openCatalog(t, filepath.Join(t.TempDir(), "replay.db"), e.log)
			for i := range 2 {
				st, err := Replay(ctx, e.js, cat, e.log)
				if err != nil {
					t.Fatal(err)
				}
				// The second time, the event the store refused is a
				// known id (a no-op) and counts as filed; schema poison
				// is recognised again.
				wantPoison := 3 - i
				if st.Messages != total || st.Poison != wantPoison || st.Filed != total-wantPoison || st.Jobs != len(live.Jobs) {
					t.Errorf("replay %d: %+v; want %d messages, %d poison", i+1, st, total, wantPoison)
				}
				got, err := cat.Dump()
				if err != nil {
					t.Fatal(err)
				}
				requireEqual(t, live, got)
			}
		})
		t.Run("ReplayIntoPartial", func(t *testing.T) {
			for _, upTo := range []uint64{1, uint64(half), uint64(total - 1)} {
				cat := openCatalog(t, filepath.Join(t.TempDir(), "partial.db"), e.log)
				if _, err := replay(ctx, e.js, cat, e.log, upTo); err != nil {
					t.Fatal(err)
				}
				part, _ := cat.Dump()
				if len(part.Applied) >= len(live.Applied) {
					t.Fatalf("replay up to %d applied %d ids, live has %d: not partial", upTo, len(part.Applied), len(live.Applied))
				}
				if _, err := Replay(ctx, e.js, cat, e.log); err != nil {
					t.Fatal(err)
				}
				got, _ := cat.Dump()
				requireEqual(t, live, got)
			}
		})
		t.Run("RebuildInPlace", func(t *testing.T) {
			if _, err := Rebuild(ctx, e.js, e.path, e.log); !errors.Is(err, ErrCatalogInUse) {
				t.Fatalf("Rebuild while the catalog is open: %v, want ErrCatalogInUse", err)
			}
			if err := CheckIdle(e.path); !errors.Is(err, ErrCatalogInUse) {
				t.Fatalf("CheckIdle while the catalog is open: %v, want ErrCatalogInUse", err)
			}
			if err := e.cat.Close(); err != nil {
				t.Fatal(err)
			}
			if err := CheckIdle(e.path); err != nil {
				t.Fatalf("CheckIdle after close: %v", err)
			}
			st, err := Rebuild(ctx, e.js, e.path, e.log)
			if err != nil {
				t.Fatal(err)
			}
			if st.Messages != total || st.Backup != e.path+BackupSuffix || st.Jobs != len(live.Jobs) {
				t.Errorf("rebuild stats %+v", st)
			}
			if _, err := os.Stat(e.path + RebuildSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("rebuild left %s behind: %v", e.path+RebuildSuffix, err)
			}
			for _, p := range []string{e.path, e.path + BackupSuffix} {
				cat := openCatalog(t, p, e.log)
				got, err := cat.Dump()
				if err != nil {
					t.Fatal(err)
				}
				requireEqual(t, live, got)
				_ = cat.Close()
			}
			// The rebuilt catalog is a working one: the consumer goes on
			// from where the durable consumer stands.
			e.cat = openCatalog(t, e.path, e.log)
			r := e.start(Options{})
			next := catalogtest.Job{ID: "job-after-rebuild", VM: catalogtest.VM(7)}
			e.publish(next.Run()...)
			e.waitJob(next.ID, backup.StatusCompleted)
			r.stop(t)
			got := e.dump()
			if len(got.Jobs) != len(live.Jobs)+1 || !slices.ContainsFunc(got.Jobs, func(j backup.Job) bool { return j.ID == next.ID }) {
				t.Errorf("after rebuild and more events: %d jobs, want %d", len(got.Jobs), len(live.Jobs)+1)
			}
		})
		t.Run("EmptyStream", func(t *testing.T) {
			e2 := newEnv(t, start)
			if err := e2.cat.Close(); err != nil {
				t.Fatal(err)
			}
			st, err := Rebuild(ctx, e2.js, e2.path, e2.log)
			if err != nil || st.Messages != 0 || st.Jobs != 0 {
				t.Fatalf("rebuild of an empty stream: %+v, %v", st, err)
			}
		})
	})
}
