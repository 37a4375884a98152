package hub_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sendense/sendense/agents/hub/repoapi"
)

func TestInfo(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)

	got, err := e.client.Info(ctx, testRepo)
	if err != nil {
		t.Fatalf("Info(%s): %v", testRepo, err)
	}
	if got.Repository != testRepo || got.Root != e.repo.Root() {
		t.Errorf("Info(%s) = %+v, want repository %s at %s", testRepo, got, testRepo, e.repo.Root())
	}

	_, err = e.client.Info(ctx, "nope")
	if !errors.Is(err, repoapi.ErrUnknownRepository) {
		t.Errorf("Info(nope) error = %v, want ErrUnknownRepository", err)
	}
	if c := serviceCode(err); c != repoapi.CodeUnknownRepository {
		t.Errorf("Info(nope) code = %q, want %s", c, repoapi.CodeUnknownRepository)
	}
}

// TestFullTargetRoundTrip writes a disk through the exported URI and
// checks the closed file holds exactly those bytes, with nothing left
// running.
func TestFullTargetRoundTrip(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 1)

	out, pid := e.mustOpen(t, openReq("job-full-1", ""))
	wantRel := filepath.Join(testVM, "2000", "job-full-1.qcow2")
	if out.Target != wantRel || out.Path != filepath.Join(e.repo.Root(), wantRel) {
		t.Errorf("open reply target %q path %q, want %q under %s", out.Target, out.Path, wantRel, e.repo.Root())
	}
	if !strings.HasPrefix(out.URI, "nbd+unix://") || out.TLS != nil {
		t.Errorf("uri %q key %v, want nbd+unix and no key (unix sockets need none)", out.URI, out.TLS)
	}
	if n := e.svc.OpenTargets(); n != 1 {
		t.Errorf("OpenTargets = %d, want 1", n)
	}
	nbdcopy(t, raw, out.URI)

	cl, err := e.client.Close(ctx, ref("job-full-1"))
	if err != nil {
		t.Fatalf("close: %v", err)
	}
	if cl.Target != wantRel || cl.ActualSizeBytes <= 0 || cl.VirtualSize != testCapacity || cl.BackingFile != "" {
		t.Errorf("close reply = %+v, want target %s, actual size > 0, virtual %d, no backing file", cl, wantRel, testCapacity)
	}
	if !compareImages(t, raw, out.Path) {
		t.Errorf("%s differs from the source written to it", out.Path)
	}
	e.assertNoExports(t)
	assertGone(t, pid)
	if i := imgInfo(t, out.Path); i.Format != "qcow2" || i.VirtualSize != testCapacity || i.BackingFilename != "" {
		t.Errorf("qemu-img info = %+v, want a qcow2 full of %d bytes", i, testCapacity)
	}

	// Closing again: the target is gone.
	if _, err := e.client.Close(ctx, ref("job-full-1")); serviceCode(err) != repoapi.CodeNotFound {
		t.Errorf("second close error = %v, want code %s", err, repoapi.CodeNotFound)
	}
	if _, err := os.Stat(out.Path); err != nil {
		t.Errorf("completed backup file: %v", err)
	}
}

// TestIncrementalBacksOntoPrevious opens an incremental with BackingJobID
// and checks its backing file is the previous backup and the chain reads
// as the new disk state.
func TestIncrementalBacksOntoPrevious(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	dir := t.TempDir()
	base := writeRaw(t, filepath.Join(dir, "full.raw"), 2)
	overlayRaw(t, filepath.Join(dir, "inc.raw"), base, 3)
	e.fullBackup(t, "job-a", filepath.Join(dir, "full.raw"))

	out, pid := e.mustOpen(t, openReq("job-b", "job-a"))
	info := imgInfo(t, out.Path)
	fullPath := filepath.Join(e.repo.Root(), testVM, "2000", "job-a.qcow2")
	if info.BackingFilename != "job-a.qcow2" || info.FullBackingFilename != fullPath || info.BackingFormat != "qcow2" {
		t.Errorf("incremental backing = %q (full %q, format %q), want job-a.qcow2 (%s, qcow2)",
			info.BackingFilename, info.FullBackingFilename, info.BackingFormat, fullPath)
	}
	nbdcopy(t, filepath.Join(dir, "inc.raw"), out.URI)
	cl, err := e.client.Close(ctx, ref("job-b"))
	if err != nil {
		t.Fatalf("close incremental: %v", err)
	}
	if cl.BackingFile == "" || filepath.Base(cl.BackingFile) != "job-a.qcow2" {
		t.Errorf("close reply backing file %q, want job-a.qcow2", cl.BackingFile)
	}
	if !compareImages(t, filepath.Join(dir, "inc.raw"), out.Path) {
		t.Errorf("incremental chain differs from the second disk state")
	}
	if !compareImages(t, filepath.Join(dir, "full.raw"), fullPath) {
		t.Errorf("full changed after the incremental was written")
	}
	assertGone(t, pid)
	e.assertNoExports(t)

	// A base that does not exist is missing (the agent takes a full);
	// nothing is created.
	if _, err := e.client.Open(ctx, openReq("job-c", "job-missing")); serviceCode(err) != repoapi.CodeBaseMissing || !errors.Is(err, repoapi.ErrBaseMissing) {
		t.Errorf("open with missing base: error %v, want code %s", err, repoapi.CodeBaseMissing)
	}
	assertNoFile(t, filepath.Join(e.repo.Root(), testVM, "2000", "job-c.qcow2"))
	e.assertNoExports(t)
}

func TestAbortRemovesPartialFile(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 4)

	out, pid := e.mustOpen(t, openReq("job-abort", ""))
	nbdcopy(t, raw, out.URI)
	if err := e.client.Abort(ctx, ref("job-abort")); err != nil {
		t.Fatalf("abort: %v", err)
	}
	assertNoFile(t, out.Path)
	assertGone(t, pid)
	e.assertNoExports(t)
	if got := e.files(t); len(got) != 0 {
		t.Errorf("files left in the repository: %v", got)
	}
	// Abort is idempotent: a retried abort succeeds.
	if err := e.client.Abort(ctx, ref("job-abort")); err != nil {
		t.Errorf("second abort: %v", err)
	}
	// The aborted target cannot be closed into a backup.
	if _, err := e.client.Close(ctx, ref("job-abort")); serviceCode(err) != repoapi.CodeNotFound {
		t.Errorf("close after abort: error %v, want code %s", err, repoapi.CodeNotFound)
	}
}

// TestReopenReplacesEarlierAttempt: a retried attempt of the same job gets
// a fresh target; the earlier attempt's export and partial data are gone.
func TestReopenReplacesEarlierAttempt(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	dir := t.TempDir()
	writeRaw(t, filepath.Join(dir, "a.raw"), 5)
	writeRaw(t, filepath.Join(dir, "b.raw"), 6)

	first, pid1 := e.mustOpen(t, openReq("job-retry", ""))
	nbdcopy(t, filepath.Join(dir, "a.raw"), first.URI)
	req := openReq("job-retry", "")
	req.Attempt = 2
	second, pid2 := e.mustOpen(t, req)
	assertGone(t, pid1)
	if len(e.repo.Exports()) != 1 || e.svc.OpenTargets() != 1 {
		t.Errorf("after reopen: %d exports, %d targets, want 1 and 1", len(e.repo.Exports()), e.svc.OpenTargets())
	}
	// Write only part of the disk: what attempt 1 wrote must not show.
	nbdcopy(t, filepath.Join(dir, "b.raw"), second.URI)
	if _, err := e.client.Close(ctx, ref("job-retry")); err != nil {
		t.Fatalf("close: %v", err)
	}
	if !compareImages(t, filepath.Join(dir, "b.raw"), second.Path) {
		t.Errorf("second attempt's file differs from what it wrote")
	}
	assertGone(t, pid2)
	e.assertNoExports(t)
}

func TestCloseUnknownTarget(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	_, err := e.client.Close(ctx, ref("job-never-opened"))
	if serviceCode(err) != repoapi.CodeNotFound {
		t.Errorf("close of unknown target: error %v, want code %s", err, repoapi.CodeNotFound)
	}
	r := ref("job-x")
	r.Repository = "nope"
	if _, err := e.client.Close(ctx, r); !errors.Is(err, repoapi.ErrUnknownRepository) {
		t.Errorf("close in unknown repository: error %v, want ErrUnknownRepository", err)
	}
	if _, err := e.client.Open(ctx, repoapi.OpenRequest{TargetRef: r, CapacityBytes: testCapacity}); !errors.Is(err, repoapi.ErrUnknownRepository) {
		t.Errorf("open in unknown repository: error %v, want ErrUnknownRepository", err)
	}
	if got := e.files(t); len(got) != 0 {
		t.Errorf("files in the repository: %v", got)
	}
}

// TestBadIDs: ids that could leave the repository directory are refused
// with 400, and nothing is created anywhere.
func TestBadIDs(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	parent := filepath.Dir(e.repo.Root())

	good := openReq("job-ok", "")
	// refBad: the TargetRef itself is bad (not just the open parameters),
	// so abort and restore are refused too.
	tests := []struct {
		name   string
		refBad bool
		req    func() repoapi.OpenRequest
	}{
		{"vm dotdot", true, func() repoapi.OpenRequest { r := good; r.VMUUID = "../x"; return r }},
		{"job dotdot", true, func() repoapi.OpenRequest { r := good; r.JobID = "../x"; return r }},
		{"job slash", true, func() repoapi.OpenRequest { r := good; r.JobID = "a/b"; return r }},
		{"job dot", true, func() repoapi.OpenRequest { r := good; r.JobID = "."; return r }},
		{"vm empty", true, func() repoapi.OpenRequest { r := good; r.VMUUID = ""; return r }},
		{"vm absolute", true, func() repoapi.OpenRequest { r := good; r.VMUUID = "/etc"; return r }},
		{"job option", true, func() repoapi.OpenRequest { r := good; r.JobID = "-rf"; return r }},
		{"negative disk", true, func() repoapi.OpenRequest { r := good; r.DiskKey = -1; return r }},
		{"backing dotdot", false, func() repoapi.OpenRequest { r := good; r.BackingJobID = "../x"; return r }},
		{"backing itself", false, func() repoapi.OpenRequest { r := good; r.BackingJobID = r.JobID; return r }},
		{"capacity zero", false, func() repoapi.OpenRequest { r := good; r.CapacityBytes = 0; return r }},
		{"capacity unaligned", false, func() repoapi.OpenRequest { r := good; r.CapacityBytes = 1000; return r }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req()
			if _, err := e.client.Open(ctx, req); serviceCode(err) != repoapi.CodeBadRequest {
				t.Errorf("Open: error %v, want code %s", err, repoapi.CodeBadRequest)
			}
			if !tc.refBad {
				return
			}
			if err := e.client.Abort(ctx, req.TargetRef); serviceCode(err) != repoapi.CodeBadRequest {
				t.Errorf("Abort: error %v, want code %s", err, repoapi.CodeBadRequest)
			}
			if _, err := e.client.OpenRestore(ctx, req.TargetRef); serviceCode(err) != repoapi.CodeBadRequest {
				t.Errorf("OpenRestore: error %v, want code %s", err, repoapi.CodeBadRequest)
			}
		})
	}
	if got := walkFiles(t, parent); len(got) != 0 {
		t.Errorf("files created: %v", got)
	}
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != filepath.Base(e.repo.Root()) {
		t.Errorf("entries next to the repository: %v, want only %s", ents, filepath.Base(e.repo.Root()))
	}
	if ents, _ := os.ReadDir(e.repo.Root()); len(ents) != 0 {
		t.Errorf("repository root not empty: %v", ents)
	}
	e.assertNoExports(t)

	// Undecodable requests are bad requests too.
	msg, err := e.nats.Conn.RequestWithContext(ctx, repoapi.SubjectTargetOpen, []byte("{not json"))
	if err != nil {
		t.Fatal(err)
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != repoapi.CodeBadRequest {
		t.Errorf("open with invalid json: code %q, want %s", code, repoapi.CodeBadRequest)
	}
}

// TestRestoreExport exports a completed backup read-only: it reads back as
// the data written, refuses writes, and closes.
func TestRestoreExport(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	dir := t.TempDir()
	src := writeRaw(t, filepath.Join(dir, "disk.raw"), 7)
	e.fullBackup(t, "job-r", filepath.Join(dir, "disk.raw"))

	rs, err := e.client.OpenRestore(ctx, ref("job-r"))
	if err != nil {
		t.Fatalf("open restore: %v", err)
	}
	if rs.ExportID == "" || rs.VirtualSize != testCapacity || rs.Path != filepath.Join(e.repo.Root(), testVM, "2000", "job-r.qcow2") {
		t.Errorf("restore reply = %+v", rs)
	}
	pid := e.exportPID(t, rs.Path, true)
	if pid == 0 {
		t.Fatalf("no read-only export of %s", rs.Path)
	}
	// Two readers at once (a restore and a verify).
	var wg sync.WaitGroup
	outs := []string{filepath.Join(dir, "out1.raw"), filepath.Join(dir, "out2.raw")}
	for _, o := range outs {
		wg.Go(func() {
			if b, err := runNbdcopy(t, rs.URI, o); err != nil {
				t.Errorf("nbdcopy %s %s: %v: %s", rs.URI, o, err, b)
			}
		})
	}
	wg.Wait()
	for _, o := range outs {
		got, err := os.ReadFile(o)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, src) {
			t.Errorf("%s read through the restore export differs from the backed-up disk", o)
		}
	}
	if out, err := runNbdcopy(t, filepath.Join(dir, "disk.raw"), rs.URI); err == nil {
		t.Errorf("write to the read-only restore export succeeded: %s", out)
	}

	// The restore of a job that has no file is not found.
	if _, err := e.client.OpenRestore(ctx, ref("job-none")); serviceCode(err) != repoapi.CodeNotFound {
		t.Errorf("restore of missing backup: error %v, want code %s", err, repoapi.CodeNotFound)
	}

	if err := e.client.CloseRestore(ctx, rs.ExportID); err != nil {
		t.Fatalf("close restore: %v", err)
	}
	assertGone(t, pid)
	e.assertNoExports(t)
	if err := e.client.CloseRestore(ctx, rs.ExportID); serviceCode(err) != repoapi.CodeNotFound {
		t.Errorf("second close restore: error %v, want code %s", err, repoapi.CodeNotFound)
	}
	if !compareImages(t, filepath.Join(dir, "disk.raw"), rs.Path) {
		t.Errorf("backup changed by the restore export")
	}
}

// TestConcurrentTargets opens the disks of two jobs at once, as an agent
// copying disks in parallel does.
func TestConcurrentTargets(t *testing.T) {
	e := newSvcEnv(t, nil)
	dir := t.TempDir()
	type disk struct {
		job string
		key int32
		raw string
	}
	var disks []disk
	for i, job := range []string{"job-p1", "job-p2"} {
		for j, key := range []int32{2000, 2001} {
			raw := filepath.Join(dir, job+"-"+string(rune('a'+j))+".raw")
			writeRaw(t, raw, int64(10+2*i+j))
			disks = append(disks, disk{job, key, raw})
		}
	}
	var wg sync.WaitGroup
	paths := make([]string, len(disks))
	for i, d := range disks {
		wg.Go(func() {
			ctx := context.Background()
			req := openReq(d.job, "")
			req.DiskKey = d.key
			out, err := e.client.Open(ctx, req)
			if err != nil {
				t.Errorf("open %s/%d: %v", d.job, d.key, err)
				return
			}
			paths[i] = out.Path
			if b, err := runNbdcopy(t, d.raw, out.URI); err != nil {
				t.Errorf("nbdcopy to %s/%d: %v: %s", d.job, d.key, err, b)
			}
			if _, err := e.client.Close(ctx, req.TargetRef); err != nil {
				t.Errorf("close %s/%d: %v", d.job, d.key, err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, d := range disks {
		if !compareImages(t, d.raw, paths[i]) {
			t.Errorf("%s differs from its source", paths[i])
		}
	}
	e.assertNoExports(t)
}
