package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
)

// TestRepoCheck runs `sendense repo check` against `sendense serve`: clean
// after a backup; after a completed backup's file is deleted and a partial
// file is left behind it exits 1 naming the missing file, lists the orphan
// without removing it under --dry-run, and removes it without.
func TestRepoCheck(t *testing.T) {
	t.Parallel()
	s := startServe(t, "small")
	p, nurl, data := s.p, s.cli, s.data
	mustCLI(t, append([]string{"backup", "--vm", "pgtest1", "--wait", "--job-id", "chk-full"}, nurl...)...)
	var full backup.Job
	if err := json.Unmarshal([]byte(mustCLI(t, append([]string{"job", "chk-full", "--json"}, nurl...)...)), &full); err != nil {
		t.Fatal(err)
	}
	if len(full.Disks) != 2 {
		t.Fatalf("job chk-full: %+v", full)
	}

	check := func(args ...string) (repoapi.CheckReply, error) {
		t.Helper()
		out, err := cli(t, append(append([]string{"repo", "check", "--json"}, args...), nurl...)...)
		var rep repoapi.CheckReply
		if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
			t.Fatalf("repo check --json printed no report (%v): %v\n%s", err, jerr, out)
		}
		return rep, err
	}
	rep, err := check()
	if err != nil || rep.Disks != 2 || len(rep.Problems) != 0 || len(rep.Orphans) != 0 || rep.OrphansSkipped != "" {
		t.Fatalf("check after one backup: %+v, %v; want 2 disks, nothing wrong", rep, err)
	}

	repoDir := filepath.Join(data, "repo", full.VM.UUID)
	gone := filepath.Join(repoDir, "2001", "chk-full.qcow2")
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(repoDir, "2000", "chk-partial.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", orphan, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(orphan, old, old); err != nil {
		t.Fatal(err)
	}

	rep, err = check("--dry-run", "--repository", "default")
	if exitCode(err) != 1 {
		t.Errorf("repo check --dry-run with a missing file: %v, want exit 1", err)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].JobID != "chk-full" || rep.Problems[0].DiskKey != 2001 ||
		rep.Problems[0].Problem != repoapi.ProblemMissing || rep.Problems[0].Path != gone {
		t.Errorf("problems %+v, want chk-full disk 2001 missing at %s", rep.Problems, gone)
	}
	if len(rep.Orphans) != 1 || rep.Orphans[0].Path != orphan || rep.Orphans[0].Removed || !rep.DryRun {
		t.Errorf("orphans %+v, want %s listed, not removed", rep.Orphans, orphan)
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Fatalf("dry run removed the orphan: %v", err)
	}

	out, err := cli(t, append([]string{"repo", "check"}, nurl...)...)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "1 of 2 completed disks have a problem") {
		t.Errorf("repo check: %v, want exit 1 naming the problem", err)
	}
	for _, want := range []string{"chk-full", repoapi.ProblemMissing, "chk-partial", "removed", "1 orphan files, 1 removed"} {
		if !strings.Contains(out, want) {
			t.Errorf("repo check output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan still there after repo check: %v", err)
	}
	if _, err := cli(t, append([]string{"repo", "check", "--repository", "nope"}, nurl...)...); exitCode(err) != 1 || !strings.Contains(err.Error(), "unknown repository") {
		t.Errorf("repo check of an unknown repository: %v", err)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("serve exited with %d after SIGTERM", code)
	}
}
