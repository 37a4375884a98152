package hub_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/repository"
)

// TestOpenUnusableBase: an incremental whose base file is missing answers
// CodeBaseMissing, one whose base does not check (damaged header, broken
// backing chain, corrupt refcounts) CodeBaseInvalid, so the agent takes a
// full; nothing is created and nothing stays exported. A base with leaked
// clusters only is fine.
func TestOpenUnusableBase(t *testing.T) {
	tests := []struct {
		name     string
		damage   func(t *testing.T, full, inc string) // the base asked for is job-inc, backed by job-full
		wantCode string                               // "" for success
		wantErr  error
	}{
		{"base missing", func(t *testing.T, _, inc string) { mustRemove(t, inc) }, repoapi.CodeBaseMissing, repoapi.ErrBaseMissing},
		{"base header corrupted", func(t *testing.T, _, inc string) { testutil.BreakQcow2Magic(t, inc) }, repoapi.CodeBaseInvalid, repoapi.ErrBaseInvalid},
		{"base's backing file deleted", func(t *testing.T, full, _ string) { mustRemove(t, full) }, repoapi.CodeBaseInvalid, repoapi.ErrBaseInvalid},
		{"base's backing file corrupted", func(t *testing.T, full, _ string) { testutil.BreakQcow2Magic(t, full) }, repoapi.CodeBaseInvalid, repoapi.ErrBaseInvalid},
		{"base refcounts corrupted", func(t *testing.T, _, inc string) { testutil.BreakQcow2Refcount(t, inc) }, repoapi.CodeBaseInvalid, repoapi.ErrBaseInvalid},
		{"base with a leaked cluster", func(t *testing.T, _, inc string) { testutil.LeakQcow2Cluster(t, inc) }, "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newSvcEnv(t, nil)
			ctx := testCtx(t)
			raw := filepath.Join(t.TempDir(), "disk.raw")
			writeRaw(t, raw, 40)
			full := e.makeFile(t, "job-full", "", raw, time.Time{})
			inc := e.makeFile(t, "job-inc", "job-full", "", time.Time{})
			tc.damage(t, full, inc)

			out, err := e.client.Open(ctx, openReq("job-next", "job-inc"))
			if tc.wantCode == "" {
				if err != nil {
					t.Fatalf("open on a usable base: %v", err)
				}
				if i := imgInfo(t, out.Path); i.BackingFilename != "job-inc.qcow2" {
					t.Errorf("backing file %q, want job-inc.qcow2", i.BackingFilename)
				}
				if _, err := e.client.Close(ctx, ref("job-next")); err != nil {
					t.Fatal(err)
				}
				return
			}
			if serviceCode(err) != tc.wantCode || !errors.Is(err, tc.wantErr) {
				t.Fatalf("open: error %v (code %q), want code %s (%v)", err, serviceCode(err), tc.wantCode, tc.wantErr)
			}
			assertNoFile(t, e.diskPath(testDisk, "job-next"))
			e.assertNoExports(t)
			// The agent's full then works. (Closed, not aborted: Remove
			// refuses while a file of the disk has an unreadable header.)
			if _, err := e.client.Open(ctx, openReq("job-next", "")); err != nil {
				t.Fatalf("open of the full instead: %v", err)
			}
			if _, err := e.client.Close(ctx, ref("job-next")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOpenCompletedJobConflict: an open for a job the catalog shows
// completed (a redelivered request whose completed event was stored)
// answers CodeConflict and leaves the backup file exactly as it was.
func TestOpenCompletedJobConflict(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 41)
	e.fullBackup(t, "job-done", raw)
	e.catalog.set(job("job-done", backup.StatusCompleted, "", testDisk))
	path := e.diskPath(testDisk, "job-done")
	before := readFile(t, path)
	st0, _ := os.Stat(path)

	for _, behind := range []error{nil, errBehind} {
		e.progress.set(behind)
		_, err := e.client.Open(ctx, openReq("job-done", ""))
		if serviceCode(err) != repoapi.CodeConflict || !errors.Is(err, repoapi.ErrConflict) {
			t.Errorf("open of a completed job (catalog behind: %v): error %v, want code %s", behind, err, repoapi.CodeConflict)
		}
	}
	if after := readFile(t, path); !bytes.Equal(before, after) {
		t.Errorf("completed backup %s changed by the refused open", path)
	}
	if st1, err := os.Stat(path); err != nil || !st1.ModTime().Equal(st0.ModTime()) {
		t.Errorf("completed backup %s touched: %v", path, err)
	}
	if !compareImages(t, raw, path) {
		t.Errorf("completed backup differs from its source")
	}
	e.assertNoExports(t)
}

// TestOpenEarlierFile: the file an earlier attempt left (not open in this
// service: the hub restarted) is replaced only when the catalog is caught
// up with the event stream and does not show the job completed; while it
// is behind or does not answer, CodeUnavailable and the file stays.
func TestOpenEarlierFile(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	dir := t.TempDir()
	writeRaw(t, filepath.Join(dir, "a.raw"), 42)
	writeRaw(t, filepath.Join(dir, "b.raw"), 43)
	path := e.makeFile(t, "job-retry", "", filepath.Join(dir, "a.raw"), time.Time{})
	before := readFile(t, path)
	e.catalog.set(job("job-retry", backup.StatusFailed, "", testDisk))

	e.progress.set(errBehind)
	if _, err := e.client.Open(ctx, openReq("job-retry", "")); serviceCode(err) != repoapi.CodeUnavailable || !errors.Is(err, repoapi.ErrUnavailable) {
		t.Errorf("open while the catalog is behind: error %v, want code %s", err, repoapi.CodeUnavailable)
	}
	e.progress.set(nil)
	e.catalog.fail(errors.New("no responders"))
	if _, err := e.client.Open(ctx, openReq("job-retry", "")); serviceCode(err) != repoapi.CodeUnavailable {
		t.Errorf("open while the catalog does not answer: error %v, want code %s", err, repoapi.CodeUnavailable)
	}
	if after := readFile(t, path); !bytes.Equal(before, after) {
		t.Fatalf("earlier file changed while the catalog could not vouch for it")
	}
	e.assertNoExports(t)

	// Caught up, and the job is not completed: the partial file goes.
	e.catalog.fail(nil)
	out, _ := e.mustOpen(t, openReq("job-retry", ""))
	nbdcopy(t, filepath.Join(dir, "b.raw"), out.URI)
	if _, err := e.client.Close(ctx, ref("job-retry")); err != nil {
		t.Fatal(err)
	}
	if !compareImages(t, filepath.Join(dir, "b.raw"), path) {
		t.Errorf("new attempt's file differs from what it wrote")
	}

	// A job the catalog does not know at all (its events not stored yet
	// when the file was made, or never) is not completed either.
	other := e.makeFile(t, "job-unknown", "", filepath.Join(dir, "a.raw"), time.Time{})
	if _, err := e.client.Open(ctx, openReq("job-unknown", "")); err != nil {
		t.Fatalf("open over the file of an unknown job: %v", err)
	}
	if compareImages(t, filepath.Join(dir, "a.raw"), other) {
		t.Errorf("the earlier file of job-unknown was not replaced")
	}
	if err := e.client.Abort(ctx, ref("job-unknown")); err != nil {
		t.Fatal(err)
	}
}

// TestOpenEarlierFileWithoutCatalog: without a catalog the service never
// removes a file it did not make.
func TestOpenEarlierFileWithoutCatalog(t *testing.T) {
	e := newSvcEnv(t, func(o *hub.RepoOptions) { o.Catalog, o.Progress = nil, nil })
	path := e.makeFile(t, "job-x", "", "", time.Time{})
	before := readFile(t, path)
	if _, err := e.client.Open(testCtx(t), openReq("job-x", "")); serviceCode(err) != repoapi.CodeUnavailable {
		t.Errorf("open: error %v, want code %s", err, repoapi.CodeUnavailable)
	}
	if !bytes.Equal(before, readFile(t, path)) {
		t.Errorf("file changed")
	}
}

// TestOpenRepositoryFull: a repository whose file system has no room for
// a new image answers CodeRepositoryFull (not a retry at once), and leaves
// no file behind.
func TestOpenRepositoryFull(t *testing.T) {
	root := testutil.Tmpfs(t, 8<<20)
	repo, err := repository.Open(filepath.Join(root, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = repo.Close(t.Context()) })
	e := newSvcEnv(t, func(o *hub.RepoOptions) { o.Repositories["small"] = repo })
	// qemu-img create writes about 192 KiB for any virtual size: leave
	// 100 KiB.
	testutil.FillFS(t, root, 100<<10)
	req := openReq("job-big", "")
	req.Repository = "small"
	req.CapacityBytes = 1 << 30
	_, err = e.client.Open(testCtx(t), req)
	if serviceCode(err) != repoapi.CodeRepositoryFull || !errors.Is(err, repoapi.ErrRepositoryFull) {
		t.Fatalf("open in a full repository: error %v (code %q), want code %s", err, serviceCode(err), repoapi.CodeRepositoryFull)
	}
	if got := walkFiles(t, repo.Root()); len(got) != 0 {
		t.Errorf("files left in the full repository: %v", got)
	}
	e.assertNoExports(t)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustRemove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}
