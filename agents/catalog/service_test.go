package catalog

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

func TestService(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		e := newEnv(t, start)
		disks := []schemas.DiskRef{catalogtest.Disk(3, 0), catalogtest.Disk(3, 1)}
		full := catalogtest.Job{ID: "job-full", VM: catalogtest.VM(3), Disks: disks}
		incr := full.Next("job-incr")
		failed := incr.Next("job-failed")
		rejected := catalogtest.Job{ID: "job-rejected", VM: catalogtest.VM(4), At: catalogtest.T0.Add(-time.Hour)}
		evs := slices.Concat(full.Run(), incr.Run(), failed.FailedRun(false), []schemas.Event{rejected.Rejected()})
		if _, err := e.cat.Apply(catalogtest.FromAgent(evs...)...); err != nil {
			t.Fatal(err)
		}
		raw := bytes.Repeat([]byte("x"), 10_000)
		if err := e.cat.RecordPoison(backup.PoisonRecord{Subject: "backup.started", Seq: 99, Reason: "test", Raw: raw}); err != nil {
			t.Fatal(err)
		}

		c := NewClient(e.srv.Conn)
		ctx := testCtx(t)
		if _, err := c.Job(ctx, "job-full"); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Job before Serve: %v, want ErrUnavailable", err)
		}
		svc, err := Serve(e.srv.Conn, e.cat, e.log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Stop() })

		t.Run("Job", func(t *testing.T) {
			got, err := c.Job(ctx, "job-incr")
			if err != nil {
				t.Fatal(err)
			}
			want, _ := e.cat.Job("job-incr")
			if got.Status != backup.StatusCompleted || !slices.Equal(got.EventIDs, want.EventIDs) || len(got.Disks) != 2 {
				t.Errorf("job-incr = %+v, want %+v", got, want)
			}
			if _, err := c.Job(ctx, "no-such-job"); !errors.Is(err, backup.ErrNotFound) {
				t.Errorf("unknown job: %v, want backup.ErrNotFound", err)
			}
			if _, err := c.Job(ctx, ""); !errors.Is(err, ErrBadRequest) {
				t.Errorf("empty id: %v, want ErrBadRequest", err)
			}
		})
		t.Run("Jobs", func(t *testing.T) {
			tests := []struct {
				f       backup.JobFilter
				want    []string
				wantErr error
			}{
				{backup.JobFilter{}, []string{"job-failed", "job-incr", "job-full", "job-rejected"}, nil},
				{backup.JobFilter{VM: "vm-03"}, []string{"job-failed", "job-incr", "job-full"}, nil},
				{backup.JobFilter{VM: catalogtest.VM(3).UUID, Status: backup.StatusCompleted}, []string{"job-incr", "job-full"}, nil},
				{backup.JobFilter{Status: backup.StatusRejected}, []string{"job-rejected"}, nil},
				{backup.JobFilter{Limit: 1}, []string{"job-failed"}, nil},
				{backup.JobFilter{VM: "nobody"}, []string{}, nil},
				{backup.JobFilter{Status: "lost"}, nil, ErrBadRequest},
			}
			for _, tc := range tests {
				jobs, err := c.Jobs(ctx, tc.f)
				if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
					t.Errorf("Jobs(%+v): %v, want %v", tc.f, err, tc.wantErr)
					continue
				}
				var ids []string
				for _, j := range jobs {
					ids = append(ids, j.ID)
				}
				if tc.wantErr == nil && !slices.Equal(ids, tc.want) && !(len(ids) == 0 && len(tc.want) == 0) {
					t.Errorf("Jobs(%+v) = %v, want %v", tc.f, ids, tc.want)
				}
			}
		})
		t.Run("Chain", func(t *testing.T) {
			uuid := full.VM.UUID
			links, err := c.Chain(ctx, uuid, disks[1].Key, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(links) != 2 || links[0].JobID != "job-full" || links[1].JobID != "job-incr" || links[1].Backing != "job-full" {
				t.Errorf("chain = %+v", links)
			}
			head, err := c.ChainHead(ctx, uuid, disks[1].Key, "default")
			if err != nil || head.JobID != "job-incr" || head.ChangeID != incr.ChangeIDOf(disks[1]) {
				t.Errorf("chain head = %+v, %v; want job-incr", head, err)
			}
			if _, err := c.ChainHead(ctx, uuid, 2999, "default"); !errors.Is(err, backup.ErrNotFound) {
				t.Errorf("head of unknown disk: %v, want backup.ErrNotFound", err)
			}
			if links, err := c.Chain(ctx, uuid, 2999, ""); err != nil || len(links) != 0 {
				t.Errorf("chain of unknown disk: %v, %v; want empty", links, err)
			}
			if _, err := c.ChainHead(ctx, "", 2000, ""); !errors.Is(err, ErrBadRequest) {
				t.Errorf("head without vm: %v, want ErrBadRequest", err)
			}
			chains, err := c.Chains(ctx, uuid, "")
			if err != nil || len(chains) != 2 || len(chains[0].Links) != 2 {
				t.Errorf("chains = %+v, %v; want 2 chains of 2", chains, err)
			}
		})
		t.Run("PoisonAndStats", func(t *testing.T) {
			recs, err := c.Poison(ctx, 0)
			if err != nil || len(recs) != 1 {
				t.Fatalf("poison = %+v, %v; want 1 record", recs, err)
			}
			if len(recs[0].Raw) != MaxPoisonRawReply || !recs[0].Truncated || recs[0].Seq != 99 {
				t.Errorf("poison record: %d raw bytes, truncated %v, seq %d", len(recs[0].Raw), recs[0].Truncated, recs[0].Seq)
			}
			st, err := c.Stats(ctx)
			if err != nil || st.Jobs != 4 || st.ByStatus[backup.StatusCompleted] != 2 || st.Links != 4 {
				t.Errorf("stats = %+v, %v", st, err)
			}
		})
	})
}
