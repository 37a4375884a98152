package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/internal/testutil"
)

// TestVerifyCommand runs the binary: verify of sound backups exits 0, a
// flipped byte in a data cluster exits 2 naming the chunk, an unknown job
// exits 1 naming it, and restore --verify checks the manifest too.
func TestVerifyCommand(t *testing.T) {
	t.Parallel()
	s := startServe(t, "small")
	s.must(t, "backup", "--vm", "pgtest1", "--wait", "--job-id", "v-full")
	out := s.must(t, "verify", "--job", "v-full")
	if !strings.Contains(out, "2 disks verified: 2 ok, 0 failed") {
		t.Errorf("verify of a sound backup:\n%s", out)
	}
	out = s.must(t, "restore", "--job", "v-full", "--to", t.TempDir(), "--verify")
	if strings.Count(out, "and to its manifest taken at backup time") != 2 {
		t.Errorf("restore --verify does not check the manifests:\n%s", out)
	}

	// A verify schedule: the hub verifies at every firing, and the
	// catalog shows the job's verification.
	if _, err := s.run(t, "schedule", "add", "vbad", "--verify", "--cron", "@daily"); err == nil || !strings.Contains(err.Error(), "--vm VM or --all") {
		t.Errorf("verify schedule without a selection: %v", err)
	}
	if out := s.must(t, "schedule", "add", "vsched", "--verify", "--vm", "pgtest1", "--cron", "@every 1s"); !strings.Contains(out, "verify vm pgtest1") {
		t.Errorf("schedule add --verify: %s", out)
	}
	if out := s.must(t, "schedule", "list"); !strings.Contains(out, "verify") {
		t.Errorf("schedule list:\n%s", out)
	}
	var job backup.Job
	deadline := time.Now().Add(time.Minute)
	for job.Verification == nil {
		if time.Now().After(deadline) {
			t.Fatalf("no scheduled verification of v-full within a minute: %+v", job)
		}
		time.Sleep(200 * time.Millisecond)
		if err := json.Unmarshal([]byte(s.must(t, "job", "v-full", "--json")), &job); err != nil {
			t.Fatal(err)
		}
	}
	s.must(t, "schedule", "rm", "vsched")
	if job.Verification.Status != "ok" || job.Disks[0].Verified != "ok" {
		t.Errorf("scheduled verification: %+v", job.Verification)
	}
	guest := testutil.FlipQcow2DataByte(t, filepath.Join(s.data, "repo", job.Disks[0].Target), 4096)
	out, err := s.run(t, "verify", "--vm", "pgtest1", "--json")
	if exitCode(err) != 2 {
		t.Fatalf("verify of a damaged backup: exit %d (%v), want 2\n%s", exitCode(err), err, out)
	}
	var rep repoapi.VerifyReply
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, out)
	}
	chunk := guest >> 20
	if len(rep.Results) != 2 || rep.Results[0].Problem != repoapi.VerifyProblemData || rep.Results[0].ChunkIndex != chunk ||
		rep.Results[0].ChunkOffset != chunk<<20 || rep.Results[1].Status != repoapi.VerifyOK {
		t.Errorf("verify --json after a byte flipped at guest offset %d: %+v", guest, rep.Results)
	}
	out, _ = s.run(t, "verify", "--all")
	if !strings.Contains(out, "first bad chunk") || !strings.Contains(out, "1 failed") {
		t.Errorf("verify --all:\n%s", out)
	}

	if out, err := s.run(t, "verify", "--job", "nope"); exitCode(err) != 1 || !strings.Contains(err.Error(), "unknown job nope") {
		t.Errorf("verify of an unknown job: exit %d, %v\n%s", exitCode(err), err, out)
	}
	if _, err := s.run(t, "verify"); err == nil || !strings.Contains(err.Error(), "job vm all") {
		t.Errorf("verify without a selection: %v", err)
	}
}
