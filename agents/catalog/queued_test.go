package catalog

import (
	"errors"
	"testing"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
)

// TestQueuedJobs: requests waiting in BACKUP_REQUESTS (no agent took
// them) show as queued jobs in Job, Jobs and ResolveJob, created at the
// request's stream time; a request whose job the catalog knows shows the
// catalog's record; reading them consumes nothing.
func TestQueuedJobs(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		e := newEnv(t, start)
		ctx := testCtx(t)
		known := catalogtest.Job{ID: "job-known", VM: catalogtest.VM(3)}
		if _, err := e.cat.Apply(catalogtest.FromAgent(known.Run()...)...); err != nil {
			t.Fatal(err)
		}
		pub := func(body string) uint64 {
			t.Helper()
			ack, err := e.js.Publish(ctx, bus.SubjectRequested, []byte(body))
			if err != nil {
				t.Fatal(err)
			}
			return ack.Sequence
		}
		seqQueued := pub(`{"vm":"pgtest9","job_id":"job-queued-1","backup_type":"full","requested_by":"alice"}`)
		seqRaw := pub(`{"vm":"pgtest8"}`)
		pub(`{"vm":"pgtest3","job_id":"job-known"}`)
		pub(`not json`)
		reqs, err := e.js.Stream(ctx, bus.StreamRequests)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := reqs.GetMsg(ctx, seqRaw)
		if err != nil {
			t.Fatal(err)
		}
		derived := bus.DeriveJobID(bus.StreamRequests, seqRaw, raw.Time)
		first, _ := reqs.GetMsg(ctx, seqQueued)

		svc, err := Serve(e.srv.Conn, e.cat, e.log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Stop() })
		c := NewClient(e.srv.Conn)

		j, err := c.Job(ctx, "job-queued-1")
		if err != nil {
			t.Fatalf("queued job: %v", err)
		}
		if j.Status != backup.StatusQueued || j.VM.Name != "pgtest9" || j.RequestedType != "full" || j.RequestedBy != "alice" ||
			j.RequestSeq != seqQueued || !j.CreatedAt.Equal(first.Time) || j.Repository != "default" {
			t.Errorf("queued job = %+v, want queued pgtest9 full by alice seq %d created %s", j, seqQueued, first.Time)
		}
		if j, err := c.Job(ctx, derived); err != nil || j.Status != backup.StatusQueued || j.VM.Name != "pgtest8" {
			t.Errorf("raw request's job %s = %+v, %v; want queued pgtest8", derived, j, err)
		}
		if j, err := c.Job(ctx, "job-known"); err != nil || j.Status != backup.StatusCompleted {
			t.Errorf("known job = %+v, %v; want the catalog's completed record", j, err)
		}
		if _, err := c.Job(ctx, "job-nowhere"); !errors.Is(err, backup.ErrNotFound) {
			t.Errorf("unknown job: %v, want ErrNotFound", err)
		}
		if j, err := c.ResolveJob(ctx, "job-queued"); err != nil || j.ID != "job-queued-1" {
			t.Errorf("short id job-queued = %+v, %v", j, err)
		}

		q, err := c.Jobs(ctx, backup.JobFilter{Status: backup.StatusQueued})
		if err != nil {
			t.Fatal(err)
		}
		if len(q) != 2 || q[0].ID != derived || q[1].ID != "job-queued-1" {
			t.Errorf("queued jobs = %v, want [%s job-queued-1] (newest first)", ids(q), derived)
		}
		all, err := c.Jobs(ctx, backup.JobFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != 3 || all[2].ID != "job-known" {
			t.Errorf("all jobs = %v, want the 2 queued ones, then job-known", ids(all))
		}
		if got, _ := c.Jobs(ctx, backup.JobFilter{Limit: 1, Offset: 1}); len(got) != 1 || got[0].ID != "job-queued-1" {
			t.Errorf("page 2 of 1 = %v, want [job-queued-1]", ids(got))
		}
		if got, _ := c.Jobs(ctx, backup.JobFilter{VM: "pgtest9"}); len(got) != 1 || got[0].ID != "job-queued-1" {
			t.Errorf("jobs of pgtest9 = %v, want [job-queued-1]", ids(got))
		}
		if got, _ := c.Jobs(ctx, backup.JobFilter{Status: backup.StatusCompleted}); len(got) != 1 || got[0].ID != "job-known" {
			t.Errorf("completed jobs = %v, want [job-known]", ids(got))
		}
		info, err := reqs.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 4 {
			t.Errorf("requests stream holds %d messages after the reads, want 4 (none consumed)", info.State.Msgs)
		}
	})
}

func ids(jobs []backup.Job) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}
