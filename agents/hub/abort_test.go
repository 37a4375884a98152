package hub_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
)

// TestAbortKeepsCompletedBackup: sendense.repo.target.abort, which every
// agent may call, removes a target that is open here (partial by
// definition), but the file of a closed target only when the catalog,
// caught up with the stream, does not show its job completed: an abort
// must never delete a completed backup.
func TestAbortKeepsCompletedBackup(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 41)
	e.fullBackup(t, "job-done", raw)
	e.catalog.set(job("job-done", backup.StatusCompleted, "", testDisk))
	path := e.diskPath(testDisk, "job-done")
	if err := e.client.Abort(ctx, ref("job-done")); serviceCode(err) != repoapi.CodeConflict {
		t.Errorf("abort of a completed job's target: %v, want code %s", err, repoapi.CodeConflict)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("completed backup removed by an abort: %v", err)
	}

	// A closed target of a job the catalog shows failed goes.
	e.fullBackup(t, "job-failed", raw)
	e.catalog.set(job("job-failed", backup.StatusFailed, "", testDisk))
	if err := e.client.Abort(ctx, ref("job-failed")); err != nil {
		t.Errorf("abort of a failed job's closed target: %v", err)
	}
	if _, err := os.Stat(e.diskPath(testDisk, "job-failed")); err == nil {
		t.Error("a failed job's file stayed after its abort")
	}
}
