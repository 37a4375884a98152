package system

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/node"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// TestFullThenIncremental is the seed's acceptance: after a full every disk's
// change id is in the catalog and logged as stored; the next backup is an
// incremental from exactly that change id, backed onto the full; with 1% of
// the disks changed it is ≤ 10% of the full's size; both points restore
// identical to what the snapshot froze. It runs with both ways the agent
// reads the simulated vCenter's disks: local files, and https (its /folder
// interface through nbdkit curl, as an agent on another host reads them).
func TestFullThenIncremental(t *testing.T) {
	t.Parallel()
	for _, transport := range []string{"", TransportHTTPS} {
		name := transport
		if name == "" {
			name = "local"
		}
		t.Run(name, func(t *testing.T) { fullThenIncremental(t, transport) })
	}
}

func fullThenIncremental(t *testing.T, transport string) {
	h := startHarness(t, func(c *Config) { c.Transport = transport })
	if want := `"transport":"https /folder (nbdkit curl)"`; transport == TransportHTTPS && !strings.Contains(h.logs.String(), want) {
		t.Errorf("the agent does not log %s", want)
	}

	// A raw JetStream publish, no CLI and no hub: the job id is derived.
	h.publish(`{"vm":"pgtest1"}`)
	full := h.completed("")
	if len(full.Disks) != 2 {
		t.Fatalf("full backup has %d disks, want 2", len(full.Disks))
	}
	job := h.job(full.JobID, backup.StatusCompleted)
	for _, d := range job.Disks {
		if d.ChangeID == "" || d.BackupType != schemas.TypeFull || d.Reason != schemas.ReasonNoBase {
			t.Errorf("catalog disk %d after full: %+v", d.Disk.Key, d)
		}
		if n := strings.Count(h.logs.String(), `"disk_key":`+itoa(d.Disk.Key)+`,`); n == 0 {
			t.Errorf("no log line for disk %d", d.Disk.Key)
		}
	}
	if n := countLines(h.logs.String(), "change id stored", full.JobID); n != 2 {
		t.Errorf("agent logged %d 'change id stored' lines for job %s, want one per disk (2)", n, full.JobID)
	}

	if _, err := h.sys.Testbed.WriteRandom("pgtest1", 2000, 0.01, 11); err != nil {
		t.Fatal(err)
	}
	if _, err := h.sys.Testbed.WriteRandom("pgtest1", 2001, 0.01, 12); err != nil {
		t.Fatal(err)
	}
	incID := h.request("pgtest1", schemas.TypeAuto, "")
	inc := h.completed(incID)
	byKey := map[int32]schemas.DiskResult{}
	for _, d := range full.Disks {
		byKey[d.Disk.Key] = d
	}
	for _, d := range inc.Disks {
		base := byKey[d.Disk.Key]
		if d.BackupType != schemas.TypeIncremental || d.Reason != schemas.ReasonBaseUsable {
			t.Errorf("disk %d: second backup is %s (%s), want incremental", d.Disk.Key, d.BackupType, d.Reason)
		}
		if d.BaseChangeID != base.ChangeID {
			t.Errorf("disk %d: incremental used change id %q, want the full's %q", d.Disk.Key, d.BaseChangeID, base.ChangeID)
		}
		if d.Backing != full.JobID {
			t.Errorf("disk %d: backing job %q, want %q", d.Disk.Key, d.Backing, full.JobID)
		}
		chain := h.chain(h.targetPath(d))
		if len(chain) != 2 || filepath.Base(chain[0].FullBackingFilename) != filepath.Base(base.Target) {
			t.Errorf("disk %d: backing chain %+v, want the full %s", d.Disk.Key, chain, base.Target)
		}
		if d.ActualSizeBytes*10 > base.ActualSizeBytes {
			t.Errorf("disk %d: incremental %d bytes > 10%% of full %d bytes", d.Disk.Key, d.ActualSizeBytes, base.ActualSizeBytes)
		}
		t.Logf("disk %d: full %d bytes, incremental %d bytes (%.1f%% saved)", d.Disk.Key, base.ActualSizeBytes, d.ActualSizeBytes,
			100-100*float64(d.ActualSizeBytes)/float64(base.ActualSizeBytes))
		h.sameData(h.frozen("pgtest1", full.JobID, d.Disk.Key), h.targetPath(base))
		h.sameData(h.frozen("pgtest1", incID, d.Disk.Key), h.targetPath(d))
	}
	incJob := h.job(incID, backup.StatusCompleted)
	for _, d := range incJob.Disks {
		if d.BaseChangeID != byKey[d.Disk.Key].ChangeID {
			t.Errorf("catalog: disk %d base change id %q", d.Disk.Key, d.BaseChangeID)
		}
	}
	// The snapshots are gone.
	if snaps := h.snapshots("pgtest1"); len(snaps) != 0 {
		t.Errorf("snapshots left: %v", snaps)
	}
	// What the agent's metrics say matches the events.
	var read, written int64
	for _, c := range []*schemas.Completed{full, inc} {
		for _, d := range c.Disks {
			read, written = read+d.BytesRead, written+d.BytesWritten
		}
	}
	h.waitMetric("sendense_agent_jobs_total", node.OutcomeCompleted, 2)
	h.waitMetric("sendense_agent_read_bytes_total", "", float64(read))
	h.waitMetric("sendense_agent_written_bytes_total", "", float64(written))
	h.waitMetric("sendense_agent_jobs_running", "", 0)
	if got := h.metric("sendense_agent_jobs_total", node.OutcomeFailed); got != 0 {
		t.Errorf("agent counted %v failed jobs, want 0", got)
	}
}

// TestBadRequests: each bad input gets backup.rejected with its reason and
// is not redelivered; the next valid request still completes.
func TestBadRequests(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	cases := []struct {
		body, reason string
	}{
		{`{"vm":`, schemas.RejectInvalidJSON},
		{`{"vm":"pgtest1","colour":"red"}`, schemas.RejectSchema},
		{`{"vm":"pgtest1","backup_type":"sometimes"}`, schemas.RejectSchema},
		{`{"vm":42}`, schemas.RejectSchema},
		{`{"vm":"../../etc/passwd"}`, schemas.RejectSchema},
		// A repeated key must not let one reader see another value.
		{`{"vm":"../../etc","vm":"pgtest1"}`, schemas.RejectSchema},
		{`{"vm":"no-such-vm"}`, schemas.RejectUnknownVM},
		{`{"vm":"pgtest1","repository":"elsewhere"}`, schemas.RejectUnknownRepository},
	}
	for _, c := range cases {
		h.publish(c.body)
		ev := h.terminal("")
		rj, ok := ev.(*schemas.Rejected)
		if !ok {
			b, _ := json.Marshal(ev)
			t.Errorf("%s: got %s, want backup.rejected", c.body, b)
			continue
		}
		if rj.Reason != c.reason || rj.Message == "" || rj.Retryable {
			t.Errorf("%s: rejected %q (%s), want reason %s", c.body, rj.Reason, rj.Message, c.reason)
		}
		if strings.Count(c.body, `"vm"`) > 1 && !strings.Contains(rj.Message, `duplicate key "vm"`) {
			t.Errorf("%s: rejection %q does not name the repeated key", c.body, rj.Message)
		}
		h.job(rj.JobID, backup.StatusRejected)
	}
	id := h.request("pgtest1", schemas.TypeFull, "")
	h.completed(id)
	// Nothing is left in the work queue: rejected requests were terminated.
	h.queueDrains()
	h.waitMetric("sendense_agent_jobs_total", node.OutcomeRejected, float64(len(cases)))
	h.waitMetric("sendense_agent_jobs_total", node.OutcomeCompleted, 1)
}

// TestSameVMTwice: two requests at once run one after the other, both
// complete, and the chain is in order.
func TestSameVMTwice(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	a := h.request("pgtest1", schemas.TypeAuto, "job-a")
	b := h.request("pgtest1", schemas.TypeAuto, "job-b")
	first := h.terminal("")
	second := h.terminal("")
	for _, ev := range []schemas.Event{first, second} {
		if _, ok := ev.(*schemas.Completed); !ok {
			b, _ := json.Marshal(ev)
			t.Fatalf("not completed: %s", b)
		}
	}
	c1, c2 := first.(*schemas.Completed), second.(*schemas.Completed)
	if c2.Disks[0].Backing != c1.JobID {
		t.Errorf("second job %s backs onto %q, want %s", c2.JobID, c2.Disks[0].Backing, c1.JobID)
	}
	j1, j2 := h.job(c1.JobID, backup.StatusCompleted), h.job(c2.JobID, backup.StatusCompleted)
	chain, err := h.cat.Chain(context.Background(), c1.VM.UUID, 2000, "default")
	if err != nil || len(chain) != 2 || chain[0].JobID != c1.JobID || chain[1].JobID != c2.JobID {
		t.Errorf("chain %+v %v, want [%s %s]", chain, err, c1.JobID, c2.JobID)
	}
	_ = a
	_ = b
	// The lease kept them apart: the second started after the first completed.
	if j2.StartedAt.Before(j1.FinishedAt) {
		t.Errorf("jobs overlapped: second started %s before first finished %s", j2.StartedAt, j1.FinishedAt)
	}
}

// TestWritesDuringBackup: guest writes made while a backup copies are not
// in that backup and are in the next incremental.
func TestWritesDuringBackup(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	id := h.request("pgtest1", schemas.TypeAuto, "")
	h.next(time.Minute, func(ev schemas.Event) bool {
		_, ok := ev.(*schemas.Started)
		return ok && ev.EventHeader().JobID == id
	})
	// The snapshot exists now: these writes go to the live disk.
	if err := h.sys.Testbed.Write("pgtest1", 2000, 5<<20, []byte(strings.Repeat("during-backup!", 1000))); err != nil {
		t.Fatal(err)
	}
	c := h.completed(id)
	live := h.sys.Testbed.VMs()[0].Disks[0].ImagePath
	h.sameData(h.frozen("pgtest1", id, 2000), h.targetPath(c.Disks[0]))
	next := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	if next.Disks[0].BackupType != schemas.TypeIncremental {
		t.Fatalf("next backup is %s", next.Disks[0].BackupType)
	}
	h.sameData(live, h.targetPath(next.Disks[0]))
}

// TestResetAndResize: a CBT reset and a disk resize between backups make
// the next backup a full with that reason, and the chain restarts.
func TestResetAndResize(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	if err := h.sys.Testbed.ResetCBT("pgtest1", 2000); err != nil {
		t.Fatal(err)
	}
	if err := h.sys.Testbed.Resize(context.Background(), "pgtest1", 2001, 192<<20); err != nil {
		t.Fatal(err)
	}
	c := h.completed(h.request("pgtest1", schemas.TypeIncremental, ""))
	want := map[int32]string{2000: schemas.ReasonCBTReset, 2001: schemas.ReasonDiskResized}
	for _, d := range c.Disks {
		if d.BackupType != schemas.TypeFull || d.Reason != want[d.Disk.Key] || d.Backing != "" {
			t.Errorf("disk %d: %s (%s) backing %q, want full (%s)", d.Disk.Key, d.BackupType, d.Reason, d.Backing, want[d.Disk.Key])
		}
		if chain := h.chain(h.targetPath(d)); len(chain) != 1 {
			t.Errorf("disk %d: chain did not restart: %+v", d.Disk.Key, chain)
		}
		h.sameData(h.frozen("pgtest1", c.JobID, d.Disk.Key), h.targetPath(d))
	}
	again := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	for _, d := range again.Disks {
		if d.BackupType != schemas.TypeIncremental || d.Backing != c.JobID {
			t.Errorf("disk %d after restart: %s backing %q", d.Disk.Key, d.BackupType, d.Backing)
		}
	}
}

func itoa(k int32) string { b, _ := json.Marshal(k); return string(b) }

func countLines(logs, msg, jobID string) int {
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"message":"`+msg+`"`) && strings.Contains(l, `"job_id":"`+jobID+`"`) {
			n++
		}
	}
	return n
}

func (h *harness) snapshots(vm string) []string {
	h.t.Helper()
	ctx := context.Background()
	v, err := h.sys.vc.FindVM(ctx, vm)
	if err != nil {
		h.t.Fatal(err)
	}
	snaps, err := h.sys.vc.Snapshots(ctx, v)
	if err != nil {
		h.t.Fatal(err)
	}
	var names []string
	for _, s := range snaps {
		names = append(names, s.Name)
	}
	return names
}

// queueDrains waits until the work queue is empty: every request was acked
// or terminated, none is redelivered forever.
func (h *harness) queueDrains() {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := h.sys.JS.Stream(context.Background(), "BACKUP_REQUESTS")
		if err != nil {
			h.t.Fatal(err)
		}
		info, err := st.Info(context.Background())
		if err != nil {
			h.t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d requests left in the work queue", info.State.Msgs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
