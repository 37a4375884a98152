package system

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

// TestJobIDReusedWhileRunning: a second request under the id of a running
// job, for another VM (a raw `nats pub`, or the CLI or API once the
// stream's duplicate window passed while the first request was queued).
// A review found it ran as a later attempt of the same job on the other
// VM (then poisoned), or was acked with no event at all. Now it is
// rejected as job_id_reused, under a job id of its own, and the first
// job's record stays that of its own VM.
func TestJobIDReusedWhileRunning(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	id := bus.NewJobID()
	h.request("pgtest1", schemas.TypeFull, id)
	h.waitStarted(id)
	b, _ := json.Marshal(schemas.Request{VM: "bigvm", BackupType: schemas.TypeFull, JobID: id})
	h.publish(string(b)) // no Nats-Msg-Id, as `nats pub` sends it

	var rejected *schemas.Rejected
	var done *schemas.Completed
	for rejected == nil || done == nil {
		ev := h.next(2*time.Minute, func(ev schemas.Event) bool {
			switch e := ev.(type) {
			case *schemas.Rejected:
				return e.Reason == schemas.RejectJobIDReused
			case *schemas.Completed:
				return e.JobID == id
			}
			return false
		})
		switch e := ev.(type) {
		case *schemas.Rejected:
			rejected = e
		case *schemas.Completed:
			done = e
		}
	}
	if rejected.JobID == id {
		t.Errorf("the rejection went out under the reused job id %s", id)
	}
	t.Logf("second request rejected as job %s: %s", rejected.JobID, rejected.Message)
	// Nothing of the bigvm request went under the job: no event of it, no
	// failure counted, nothing refused. (When the second request comes
	// before the catalog applied the first's started event, it may create
	// and remove a snapshot, then find the attempt taken and wait.)
	j := h.job(id, backup.StatusCompleted)
	if j.VM.Name != "pgtest1" || j.Attempt != done.Attempt || j.FailedAttempts != 0 || len(j.PoisonedEventIDs) != 0 {
		t.Errorf("job %s: vm %s attempt %d failed attempts %d poisoned %v, want pgtest1's own backup and nothing else",
			id, j.VM.Name, j.Attempt, j.FailedAttempts, j.PoisonedEventIDs)
	}
	// What the stream stored (a publish the stream drops as a duplicate
	// id is still seen by plain subscribers, never stored).
	st, err := h.sys.JS.Stream(context.Background(), bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			continue
		}
		if ev, err := schemas.Decode(m.Subject, m.Data); err == nil && ev.EventHeader().JobID == id && ev.EventHeader().VM.Name == "bigvm" {
			t.Errorf("an event of the bigvm request was stored under job %s: %s", id, m.Data)
		}
	}
	h.queueDrains()
	if snaps := h.snapshots("bigvm"); len(snaps) != 0 {
		t.Errorf("snapshots left on bigvm: %v", snaps)
	}
}
