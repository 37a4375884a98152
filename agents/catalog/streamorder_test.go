package catalog

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// TestStreamOrder: the consumer and a replay file each event with the
// stream sequence it was stored at, which decides between competing
// events (store's consistency rules): attempt 2 of a job completed first
// in the stream, then a late completed of attempt 1 arrives. The job is
// attempt 2's in the live catalog and in a replay, though attempt 1 is
// the lower one and claims the earlier times; filed without sequences,
// attempt 1 would win.
func TestStreamOrder(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		e := newEnv(t, start)
		a1 := catalogtest.Job{ID: "job-race", VM: catalogtest.VM(2), Disks: []schemas.DiskRef{catalogtest.Disk(2, 0)}, At: catalogtest.T0}
		a2 := a1
		a2.Attempt, a2.At = 2, a1.At.Add(time.Minute)
		evs := slices.Concat(a2.Run(), a1.Run()) // in stream order
		e.publish(evs...)
		r := e.start(Options{})
		e.waitIdle()
		r.stop(t)
		if j := e.waitJob(a1.ID, backup.StatusCompleted); j.Attempt != 2 || len(j.PoisonedEventIDs) != 1 {
			t.Errorf("job = %+v, want completed at attempt 2 with attempt 1's completed poisoned", j)
		}
		live := e.dump()
		requireEqual(t, reference(t, evs...), live)

		cat := openCatalog(t, filepath.Join(t.TempDir(), "replay.db"), e.log)
		if _, err := Replay(testCtx(t), e.js, cat, e.log); err != nil {
			t.Fatal(err)
		}
		got, err := cat.Dump()
		if err != nil {
			t.Fatal(err)
		}
		requireEqual(t, live, got)
	})
}
