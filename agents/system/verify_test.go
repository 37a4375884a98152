package system

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/schemas"
)

// manifestOf reads a completed disk's manifest next to its image and checks
// the file's SHA-256 against the completed event's manifest_sha256.
func (h *harness) manifestOf(d schemas.DiskResult) *manifest.Manifest {
	h.t.Helper()
	path := strings.TrimSuffix(h.targetPath(d), ".qcow2") + manifest.Ext
	m, sum, err := manifest.Read(path)
	if err != nil {
		h.t.Fatalf("manifest of disk %d: %v", d.Disk.Key, err)
	}
	if sum.String() != d.ManifestSHA256 {
		h.t.Errorf("disk %d: manifest file's SHA-256 %s, backup.completed says %q", d.Disk.Key, sum, d.ManifestSHA256)
	}
	return m
}

// sameManifest: a point's manifest equals the SHA-256 per 1 MiB chunk of
// the testbed's frozen image of its snapshot.
func (h *harness) sameManifest(vm, jobID string, d schemas.DiskResult) {
	h.t.Helper()
	want, err := manifest.HashFile(h.frozen(vm, jobID, d.Disk.Key))
	if err != nil {
		h.t.Fatal(err)
	}
	if i, differ := h.manifestOf(d).FirstMismatch(want); differ {
		h.t.Errorf("job %s disk %d: manifest differs from the frozen image's at chunk %d", jobID, d.Disk.Key, i)
	}
}

func (h *harness) verify(req repoapi.VerifyRequest) repoapi.VerifyReply {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := repoapi.NewClient(h.sys.NC).Verify(ctx, req)
	if err != nil {
		h.t.Fatalf("verify %+v: %v", req, err)
	}
	return rep
}

// TestVerify: a full and an incremental carry manifests equal to the
// frozen source's chunk digests and verify ok; a byte flipped in a data
// cluster of the incremental's qcow2 is found by verify at its chunk and
// published as a failed backup.verified, which the catalog keeps, so that
// disk's next backup is a full (base_unverified) while the other disk's is
// an incremental; a refcount broken in the full fails its qemu-img check;
// an unknown job is a clear error.
func TestVerify(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	fullID := h.request("pgtest1", schemas.TypeAuto, "")
	full := h.completed(fullID)
	for _, key := range []int32{2000, 2001} {
		if _, err := h.sys.Testbed.WriteRandom("pgtest1", key, 0.01, int64(key)); err != nil {
			t.Fatal(err)
		}
	}
	incID := h.request("pgtest1", schemas.TypeAuto, "")
	inc := h.completed(incID)
	for _, c := range []*schemas.Completed{full, inc} {
		for _, d := range c.Disks {
			if len(d.ManifestSHA256) != 64 {
				t.Fatalf("job %s disk %d: manifest_sha256 %q", c.JobID, d.Disk.Key, d.ManifestSHA256)
			}
			h.sameManifest("pgtest1", c.JobID, d)
		}
	}
	job := h.job(incID, "completed")
	if job.Disks[0].ManifestSHA256 != diskOf(t, inc, job.Disks[0].Disk.Key).ManifestSHA256 {
		t.Errorf("catalog disk %+v lacks the event's manifest digest", job.Disks[0])
	}

	rep := h.verify(repoapi.VerifyRequest{VM: "pgtest1"})
	if len(rep.Results) != 4 || rep.Failed() {
		t.Fatalf("verify of a sound vm: %+v", rep)
	}
	for _, r := range rep.Results {
		if r.Status != repoapi.VerifyOK || r.BytesRead != capacityOf(full, r.DiskKey) {
			t.Errorf("result %+v, want ok after reading the whole disk", r)
		}
	}

	// Bit rot in the incremental's own data.
	d := diskOf(t, inc, 2000)
	guest := testutil.FlipQcow2DataByte(t, h.targetPath(d), 12345)
	rep = h.verify(repoapi.VerifyRequest{JobID: incID})
	bad := resultOf(t, rep, 2000)
	wantChunk := guest / manifest.ChunkSize
	if bad.Status != repoapi.VerifyFailed || bad.Problem != repoapi.VerifyProblemData || bad.ChunkIndex != wantChunk || bad.ChunkOffset != wantChunk*manifest.ChunkSize {
		t.Errorf("flipped byte at guest offset %d: result %+v, want data_mismatch at chunk %d", guest, bad, wantChunk)
	}
	if ok := resultOf(t, rep, 2001); ok.Status != repoapi.VerifyOK {
		t.Errorf("untouched disk: %+v", ok)
	}
	t.Logf("flipped guest byte %d, verify says: %s", guest, bad.Detail)
	if len(rep.Events) != 1 || len(rep.PublishErrors) != 0 {
		t.Fatalf("verify published %v, errors %v", rep.Events, rep.PublishErrors)
	}

	// backup.verified says so on the bus, and the catalog keeps it.
	ev := h.next(30*time.Second, func(ev schemas.Event) bool {
		v, ok := ev.(*schemas.Verified)
		return ok && v.JobID == incID && v.Status == schemas.VerifyFailed
	}).(*schemas.Verified)
	if ev.ID != rep.Events[0] || len(ev.Disks) != 2 || ev.Disks[0].ChunkOffset != wantChunk*manifest.ChunkSize || ev.Disks[0].Problem != repoapi.VerifyProblemData {
		t.Errorf("backup.verified %+v", ev)
	}
	h.waitCatalog(incID, func(j backup.Job) bool { return j.Verification != nil && j.Verification.Status == schemas.VerifyFailed })
	head, err := h.cat.ChainHead(context.Background(), inc.VM.UUID, 2000, "default")
	if err != nil || head.JobID != incID || head.Verified != schemas.VerifyFailed {
		t.Fatalf("chain head %+v, %v: want the incremental, verified failed", head, err)
	}

	// The failed point is no base: its disk's next backup is a full.
	next := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	if d := diskOf(t, next, 2000); d.BackupType != schemas.TypeFull || d.Reason != schemas.ReasonBaseUnverified {
		t.Errorf("disk 2000 after a failed verification: %s (%s), want a full for base_unverified", d.BackupType, d.Reason)
	}
	if d := diskOf(t, next, 2001); d.BackupType != schemas.TypeIncremental {
		t.Errorf("disk 2001, verified ok: %s (%s), want an incremental", d.BackupType, d.Reason)
	}
	for _, d := range next.Disks {
		h.sameManifest("pgtest1", next.JobID, d)
	}

	// Broken metadata in the full: qemu-img check fails.
	testutil.BreakQcow2Refcount(t, h.targetPath(diskOf(t, full, 2001)))
	rep = h.verify(repoapi.VerifyRequest{JobID: fullID})
	if r := resultOf(t, rep, 2001); r.Status != repoapi.VerifyFailed || r.Problem != repoapi.VerifyProblemCheck {
		t.Errorf("broken refcount: %+v, want check_failed", r)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := repoapi.NewClient(h.sys.NC).Verify(ctx, repoapi.VerifyRequest{JobID: "no-such-job"}); err == nil || !strings.Contains(err.Error(), "unknown job no-such-job") {
		t.Errorf("verify of an unknown job: %v", err)
	}
	if _, err := repoapi.NewClient(h.sys.NC).Verify(ctx, repoapi.VerifyRequest{JobID: fullID, All: true}); err == nil {
		t.Error("verify of a job and all at once accepted")
	}
}

// waitCatalog reads the catalog until job id satisfies ok.
func (h *harness) waitCatalog(id string, ok func(backup.Job) bool) backup.Job {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, err := h.cat.Job(context.Background(), id)
		if err == nil && ok(j) {
			return j
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("catalog: job %s still %+v (%v)", id, j, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func capacityOf(c *schemas.Completed, key int32) int64 {
	for _, d := range c.Disks {
		if d.Disk.Key == key {
			return d.Disk.CapacityBytes
		}
	}
	return -1
}

func resultOf(t *testing.T, rep repoapi.VerifyReply, key int32) repoapi.VerifyResult {
	t.Helper()
	for _, r := range rep.Results {
		if r.DiskKey == key {
			return r
		}
	}
	t.Fatalf("no result for disk %d in %+v", key, rep)
	return repoapi.VerifyResult{}
}

// TestVerifyScheduled: a verify schedule (fired by nats-server onto
// backup.verify.requested) makes the hub verify the VM's backups and
// publish backup.verified, with no request from anyone.
func TestVerifyScheduled(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	full := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sched := bus.Schedule{Name: "verify-pgtest1", Cron: "@every 1s", Verify: &schemas.VerifyRequest{VM: "pgtest1"}}
	if _, err := bus.AddSchedule(ctx, h.sys.JS, sched, bus.AddOptions{}); err != nil {
		t.Fatal(err)
	}
	ev := h.next(30*time.Second, func(ev schemas.Event) bool {
		v, ok := ev.(*schemas.Verified)
		return ok && v.JobID == full.JobID
	}).(*schemas.Verified)
	if err := bus.RemoveSchedule(ctx, h.sys.JS, "verify-pgtest1"); err != nil {
		t.Fatal(err)
	}
	if ev.Status != schemas.VerifyOK || len(ev.Disks) != 2 {
		t.Errorf("scheduled verification: %+v", ev)
	}
	h.waitCatalog(full.JobID, func(j backup.Job) bool { return j.Verification != nil && j.Verification.Status == schemas.VerifyOK })
	if !strings.Contains(h.logs.String(), `"requested_by":"schedule:verify-pgtest1"`) {
		t.Error("the hub did not log the scheduled verification")
	}
}
