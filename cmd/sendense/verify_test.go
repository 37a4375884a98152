package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/store"
)

// TestVerifyCommand runs the binary: verify of sound backups exits 0, a
// flipped byte in a data cluster exits 2 naming the chunk, an unknown job
// exits 1 naming it, and restore --verify checks the manifest too.
func TestVerifyCommand(t *testing.T) {
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

	var job store.Job
	if err := json.Unmarshal([]byte(s.must(t, "job", "v-full", "--json")), &job); err != nil {
		t.Fatal(err)
	}
	guest := testutil.FlipQcow2DataByte(t, filepath.Join(s.data, "repo", job.Disks[0].Target), 4096)
	out, err := s.run(t, "verify", "--vm", "pgtest1", "--json")
	if exitCode(err) != 2 {
		t.Fatalf("verify of a damaged backup: exit %d (%v), want 2\n%s", exitCode(err), err, out)
	}
	var rep hub.VerifyReply
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, out)
	}
	chunk := guest >> 20
	if len(rep.Results) != 2 || rep.Results[0].Problem != hub.VerifyProblemData || rep.Results[0].ChunkIndex != chunk ||
		rep.Results[0].ChunkOffset != chunk<<20 || rep.Results[1].Status != hub.VerifyOK {
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
