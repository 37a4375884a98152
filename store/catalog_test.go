package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// workload is a few hundred events of mixed jobs over several VMs, disks
// and repositories: fulls, incrementals backing onto the previous backup,
// failures and retries, rejections, progress, one incomplete completed,
// plus poison records from upstream schema validation.
func workload(seed uint64) ([]schemas.Event, []backup.PoisonRecord) {
	rng := rand.New(rand.NewPCG(seed, 7))
	var evs []schemas.Event
	var poison []backup.PoisonRecord
	vms := []schemas.VMRef{vm1, vm2,
		{Name: "db3", UUID: "50123456-aaaa-bbbb-cccc-000000000003", Moref: "vm-103"},
		{Name: "app4", UUID: "50123456-aaaa-bbbb-cccc-000000000004", Moref: "vm-104"},
	}
	at := t0
	n := 0
	for round := range 6 {
		for vi, vm := range vms {
			for _, repo := range []string{"default", "offsite"} {
				n++
				at = at.Add(time.Duration(1+rng.IntN(60)) * time.Minute)
				disks := []schemas.DiskRef{diskA}
				if vi%2 == 0 {
					disks = append(disks, diskB)
				}
				s := spec{job: fmt.Sprintf("job-%03d", n), vm: vm, repo: repo, at: at, disks: disks}
				if round > 0 {
					s.typ = schemas.TypeIncremental
					s.backing = "previous"
				}
				switch r := rng.IntN(10); {
				case r == 0: // failed for good
					evs = append(evs, s.failedRun(false)...)
				case r == 1: // failed, retried, completed
					evs = append(evs, s.failedRun(true)...)
					s.attempt, s.at = 2, s.at.Add(5*time.Minute)
					evs = append(evs, s.run()...)
				case r == 2: // still running, with progress
					evs = append(evs, s.started(), s.progress(1), s.progress(2), s.changeIDEvent(0))
				default:
					evs = append(evs, s.progress(1))
					evs = append(evs, s.run()...)
				}
			}
		}
		rej := spec{job: fmt.Sprintf("rej-%d", round), vm: schemas.VMRef{Name: "ghost"}, at: at}
		evs = append(evs, rej.rejected())
		poison = append(poison, backup.PoisonRecord{
			Subject: schemas.NameCompleted, Seq: uint64(1000 + round), Reason: "schema: missing change_id",
			Raw: fmt.Appendf(nil, `{"job_id":"bad-%d"}`, round),
		})
	}
	bad := spec{job: "job-incomplete", vm: vm1, disks: []schemas.DiskRef{diskA, diskB}, at: at.Add(time.Hour)}
	cpl := bad.completed()
	cpl.Disks = cpl.Disks[:1]
	evs = append(evs, cpl, bad.started(), bad.changeIDEvent(0))
	return evs, poison
}

// fill applies evs in batches of n, recording poison every few batches, the
// way the catalog consumer interleaves them.
func fill(t *testing.T, c *testCatalog, evs []schemas.Event, poison []backup.PoisonRecord, n int) {
	t.Helper()
	for i := 0; len(evs) > 0; i++ {
		k := min(n, len(evs))
		c.apply(evs[:k]...)
		evs = evs[k:]
		if i < len(poison) {
			if err := c.RecordPoison(poison[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, p := range poison {
		if err := c.RecordPoison(p); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReplay(t *testing.T) {
	evs, poison := workload(1)
	live := newTestCatalog(t)
	fill(t, live, evs, poison, 50)
	want := live.dump()

	st, err := live.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("workload: %d events, stats %+v", len(evs), st)
	for _, status := range []string{backup.StatusCompleted, backup.StatusFailed, backup.StatusRunning, backup.StatusRejected} {
		if st.ByStatus[status] == 0 {
			t.Errorf("workload has no %s job: %+v", status, st)
		}
	}
	if st.Links == 0 || st.Poison != len(poison)+1 || len(evs) < 200 {
		t.Errorf("workload too thin: %d events, stats %+v", len(evs), st)
	}

	tests := []struct {
		name string
		run  func(t *testing.T, c *testCatalog)
	}{
		{"fresh file, one batch", func(t *testing.T, c *testCatalog) {
			fill(t, c, evs, poison, len(evs))
		}},
		{"fresh file, replayed twice", func(t *testing.T, c *testCatalog) {
			fill(t, c, evs, poison, 100)
			fill(t, c, evs, poison, 100)
		}},
		{"file with part of them, reopened, then all", func(t *testing.T, c *testCatalog) {
			fill(t, c, evs[:len(evs)*2/5], poison[:2], 30)
			c.reopen()
			fill(t, c, evs, poison, 64)
		}},
		{"shuffled with duplicates, random batches", func(t *testing.T, c *testCatalog) {
			rng := rand.New(rand.NewPCG(3, 4))
			mixed := append([]schemas.Event(nil), evs...)
			for i := 0; i < len(evs)/10; i++ {
				mixed = append(mixed, evs[rng.IntN(len(evs))])
			}
			rng.Shuffle(len(mixed), func(i, j int) { mixed[i], mixed[j] = mixed[j], mixed[i] })
			for len(mixed) > 0 {
				k := min(1+rng.IntN(40), len(mixed))
				c.apply(mixed[:k]...)
				mixed = mixed[k:]
			}
			for i := len(poison) - 1; i >= 0; i-- {
				if err := c.RecordPoison(poison[i]); err != nil {
					t.Fatal(err)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCatalog(t)
			tt.run(t, c)
			requireSameDump(t, want, c.dump())
		})
	}
}

func TestReopen(t *testing.T) {
	evs, poison := workload(2)
	c := newTestCatalog(t)
	fill(t, c, evs, poison, 80)
	want := c.dump()
	head, err := c.ChainHead(vm1.UUID, diskA.Key, "default")
	if err != nil {
		t.Fatal(err)
	}

	c.reopen()
	requireSameDump(t, want, c.dump())
	got, err := c.ChainHead(vm1.UUID, diskA.Key, "default")
	if err != nil || got.JobID != head.JobID || got.ChangeID != head.ChangeID {
		t.Errorf("head after reopen = %+v, %v; want %+v", got, err, head)
	}
	// Everything redelivered after a restart is a no-op.
	fill(t, c, evs, poison, 80)
	requireSameDump(t, want, c.dump())
}

func TestOpenLocked(t *testing.T) {
	c := newTestCatalog(t)
	start := time.Now()
	_, err := Open(c.path, &Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open error = %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timed out after %s", d)
	}
}

func TestOpenSchemaVersion(t *testing.T) {
	tests := []struct {
		name    string
		version string
		wantErr error
	}{
		{"current", strconv.Itoa(schemaVersion), nil},
		{"older, migrated", "1", nil},
		{"newer", strconv.Itoa(schemaVersion + 1), ErrSchemaVersion},
		{"unknown older", "0", ErrSchemaVersion},
		{"garbage", "x", ErrSchemaVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "catalog.db")
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket(bucketMeta)
				if err != nil {
					return err
				}
				return b.Put(keySchemaVersion, []byte(tt.version))
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			c, err := Open(path, nil)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("open error = %v, want %v", err, tt.wantErr)
			}
			if err == nil {
				if s, err := c.Dump(); err != nil || s.SchemaVersion != schemaVersion {
					t.Errorf("dump = %+v, %v", s, err)
				}
				if err := c.Check(); err != nil {
					t.Error(err)
				}
				if err := c.Close(); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func TestClosed(t *testing.T) {
	c := newTestCatalog(t)
	c.close()
	cat, err := Open(c.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Apply(spec{job: "x"}.started()); err == nil {
		t.Error("apply after close succeeded")
	}
	if _, err := cat.Job("x"); err == nil || errors.Is(err, backup.ErrNotFound) {
		t.Errorf("job after close error = %v", err)
	}
}
