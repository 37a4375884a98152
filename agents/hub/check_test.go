package hub_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
)

// TestCheck: sendense.repo.check reports every completed disk whose file
// is missing or whose backing file is not the file of the base the
// catalog names, and the orphans; a dry run removes nothing, a real run
// removes the orphans. Completed jobs of repositories not asked about are
// not checked.
func TestCheck(t *testing.T) {
	e := newSvcEnv(t, graceHour)
	ctx := testCtx(t)
	e.makeFile(t, "job-full", "", "", old)
	e.makeFile(t, "job-inc", "job-full", "", old)
	gone := e.makeFile(t, "job-gone", "", "", old)
	mustRemove(t, gone)
	e.makeFile(t, "job-wrong", "job-full", "", old) // the catalog says it backs onto job-inc
	e.makeFile(t, "job-notfull", "job-full", "", old)
	orphan := e.makeFile(t, "job-orphan", "", "", old)
	e.catalog.set(
		job("job-full", backup.StatusCompleted, "", testDisk),
		job("job-inc", backup.StatusCompleted, "job-full", testDisk),
		job("job-gone", backup.StatusCompleted, "", testDisk),
		job("job-wrong", backup.StatusCompleted, "job-inc", testDisk),
		job("job-notfull", backup.StatusCompleted, "", testDisk),
		job("job-orphan", backup.StatusFailed, "", testDisk),
	)
	elsewhere := job("job-elsewhere", backup.StatusCompleted, "", testDisk)
	elsewhere.Repository = "elsewhere"
	e.catalog.set(elsewhere)

	rep, err := e.client.Check(ctx, repoapi.CheckRequest{Repository: testRepo, DryRun: true})
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if rep.Disks != 5 || !rep.DryRun || len(rep.Repositories) != 1 || rep.Repositories[0] != testRepo || rep.OrphansSkipped != "" {
		t.Errorf("report %+v, want 5 disks of %s checked, dry run", rep, testRepo)
	}
	want := []struct{ job, problem, detail string }{
		{"job-gone", repoapi.ProblemMissing, ""},
		{"job-notfull", repoapi.ProblemBacking, `backing file "job-full.qcow2", the catalog says a full`},
		{"job-wrong", repoapi.ProblemBacking, `backing file "job-full.qcow2", the catalog says "job-inc.qcow2"`},
	}
	if len(rep.Problems) != len(want) {
		t.Fatalf("problems %+v, want %d", rep.Problems, len(want))
	}
	for i, w := range want {
		p := rep.Problems[i]
		if p.JobID != w.job || p.Problem != w.problem || !strings.Contains(p.Detail, w.detail) ||
			p.VMUUID != testVM || p.DiskKey != testDisk || p.Repository != testRepo || p.Path != e.diskPath(testDisk, w.job) {
			t.Errorf("problem %d = %+v, want %s %s (%s)", i, p, w.job, w.problem, w.detail)
		}
	}
	if len(rep.Orphans) != 1 || rep.Orphans[0].JobID != "job-orphan" || rep.Orphans[0].Removed || rep.Orphans[0].Bytes <= 0 {
		t.Errorf("orphans %+v, want job-orphan, not removed, with its size", rep.Orphans)
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Fatalf("dry run removed the orphan: %v", err)
	}
	if n := e.counter(t, "sendense_repo_reconciled_files_total", nil); n != 0 {
		t.Errorf("dry run counted %v removals", n)
	}

	// The catalog behind: problems still, orphans not looked for.
	e.progress.set(errBehind)
	rep, err = e.client.Check(ctx, repoapi.CheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 3 || len(rep.Orphans) != 0 || !strings.Contains(rep.OrphansSkipped, "behind") {
		t.Errorf("check with the catalog behind: %+v", rep)
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Fatalf("orphan removed while the catalog was behind: %v", err)
	}

	e.progress.set(nil)
	rep, err = e.client.Check(ctx, repoapi.CheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Orphans) != 1 || !rep.Orphans[0].Removed {
		t.Errorf("orphans %+v, want job-orphan removed", rep.Orphans)
	}
	assertNoFile(t, orphan)

	if _, err := e.client.Check(ctx, repoapi.CheckRequest{Repository: "nope"}); serviceCode(err) != repoapi.CodeUnknownRepository {
		t.Errorf("check of an unknown repository: %v, want code %s", err, repoapi.CodeUnknownRepository)
	}
	e.catalog.fail(os.ErrDeadlineExceeded)
	if _, err := e.client.Check(ctx, repoapi.CheckRequest{}); serviceCode(err) != repoapi.CodeUnavailable {
		t.Errorf("check without a catalog answering: %v, want code %s", err, repoapi.CodeUnavailable)
	}
}

// TestCheckClean: a repository that agrees with the catalog has no
// problem and no orphan; young files of running jobs are no orphans.
func TestCheckClean(t *testing.T) {
	e := newSvcEnv(t, graceHour)
	e.makeFile(t, "job-full", "", "", old)
	e.makeFile(t, "job-inc", "job-full", "", old)
	e.makeFile(t, "job-running", "job-inc", "", time.Time{})
	e.catalog.set(
		job("job-full", backup.StatusCompleted, "", testDisk),
		job("job-inc", backup.StatusCompleted, "job-full", testDisk),
		job("job-running", backup.StatusRunning, "job-inc", testDisk),
	)
	rep, err := e.client.Check(testCtx(t), repoapi.CheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Disks != 2 || len(rep.Problems) != 0 || len(rep.Orphans) != 0 || rep.OrphansSkipped != "" {
		t.Errorf("report %+v, want 2 disks, nothing wrong", rep)
	}
	if got := e.files(t); len(got) != 6 {
		t.Errorf("files %v, want 3 images and their manifests", got)
	}
}
