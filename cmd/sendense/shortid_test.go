package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
)

// TestShortIDsAndVMs: `job`, `restore --job`, `verify --job`, `forget
// --protect` and `schedule add --forget --protect` take a unique prefix of
// at least 4 characters; an ambiguous one fails naming the candidates; `vms`
// lists the VM with its last backup and restore points.
func TestShortIDsAndVMs(t *testing.T) {
	t.Parallel()
	s := startServe(t, "small")
	s.must(t, "backup", "--vm", "pgtest1", "--wait", "--job-id", "abcd-one")
	s.must(t, "backup", "--vm", "pgtest1", "--wait", "--job-id", "abcd-two")

	var j backup.Job
	if err := json.Unmarshal([]byte(s.must(t, "job", "abcd-t", "--json")), &j); err != nil || j.ID != "abcd-two" {
		t.Errorf("job abcd-t: %+v %v, want abcd-two", j, err)
	}
	if out := s.must(t, "job", "abcd-one"); !strings.Contains(out, "abcd-one") {
		t.Errorf("job abcd-one:\n%s", out)
	}
	_, err := s.run(t, "job", "abcd")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "ambiguous") || !strings.Contains(err.Error(), "abcd-one") || !strings.Contains(err.Error(), "abcd-two") {
		t.Errorf("job abcd: %v, want an error naming both jobs", err)
	}
	if _, err := s.run(t, "job", "abc"); exitCode(err) != 1 || !strings.Contains(err.Error(), "at least 4 characters") {
		t.Errorf("job abc: %v, want not found naming the 4 characters", err)
	}
	if _, err := s.run(t, "job", "zzzz"); exitCode(err) != 1 || !strings.Contains(err.Error(), "job zzzz: not found") {
		t.Errorf("job zzzz: %v", err)
	}

	to := filepath.Join(t.TempDir(), "disk.raw")
	if out := s.must(t, "restore", "--job", "abcd-o", "--disk", "2000", "--to", to, "--verify"); !strings.Contains(out, "identical") {
		t.Errorf("restore --job abcd-o:\n%s", out)
	}
	if _, err := s.run(t, "restore", "--job", "abcd", "--to", filepath.Join(t.TempDir(), "x")); exitCode(err) != 1 || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("restore --job abcd: %v, want ambiguous", err)
	}

	if _, err := s.run(t, "watch", "--job", "abcd"); exitCode(err) != 1 || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("watch --job abcd: %v, want ambiguous", err)
	}

	// verify --job and forget --protect take short ids too; a forget
	// schedule stores the full id.
	var vrep repoapi.VerifyReply
	if err := json.Unmarshal([]byte(s.must(t, "verify", "--job", "abcd-o", "--json")), &vrep); err != nil || len(vrep.Results) == 0 || vrep.Results[0].JobID != "abcd-one" {
		t.Errorf("verify --job abcd-o: %+v %v, want abcd-one's disks", vrep, err)
	}
	if _, err := s.run(t, "verify", "--job", "abcd"); exitCode(err) != 1 || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("verify --job abcd: %v, want ambiguous", err)
	}
	var frep repoapi.ForgetReply
	if err := json.Unmarshal([]byte(s.must(t, "forget", "--vm", "pgtest1", "--keep-last", "1", "--protect", "abcd-o", "--dry-run", "--json")), &frep); err != nil ||
		len(frep.VMs) != 1 || len(frep.VMs[0].Points) != 2 || !frep.VMs[0].Points[1].Keep || frep.VMs[0].Points[1].JobID != "abcd-one" ||
		!slices.Contains(frep.VMs[0].Points[1].Reasons, "protected") {
		t.Errorf("forget --protect abcd-o: %+v %v, want abcd-one kept as protected", frep, err)
	}
	for _, id := range []string{"abcd", "zzzz"} {
		if _, err := s.run(t, "forget", "--vm", "pgtest1", "--keep-last", "1", "--protect", id, "--dry-run"); exitCode(err) != 1 || !strings.Contains(err.Error(), "--protect "+id) {
			t.Errorf("forget --protect %s: %v, want an error naming it", id, err)
		}
	}
	s.must(t, "schedule", "add", "keep", "--forget", "--vm", "pgtest1", "--keep-daily", "7", "--protect", "abcd-t", "--cron", "@yearly")
	var rows []scheduleRow
	if err := json.Unmarshal([]byte(s.must(t, "schedule", "list", "--json")), &rows); err != nil || len(rows) != 1 || rows[0].Policy == nil ||
		!slices.Equal(rows[0].Policy.Protect, []string{"abcd-two"}) {
		t.Errorf("forget schedule with --protect abcd-t: %+v %v, want abcd-two stored", rows, err)
	}
	s.must(t, "schedule", "rm", "keep")
	if _, err := s.run(t, "schedule", "add", "keep", "--forget", "--vm", "pgtest1", "--keep-daily", "7", "--protect", "abcd", "--cron", "@yearly"); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("forget schedule with --protect abcd: %v, want ambiguous", err)
	}

	var vms []backup.VM
	if err := json.Unmarshal([]byte(s.must(t, "vms", "--json")), &vms); err != nil {
		t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].Name != "pgtest1" || vms[0].Points != 2 || vms[0].LastJobID != "abcd-two" || vms[0].LastStatus != backup.StatusCompleted {
		t.Errorf("vms --json: %+v, want pgtest1 with 2 points, last abcd-two", vms)
	}
	out := s.must(t, "vms")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "pgtest1") || !strings.HasSuffix(lines[1], " 2") {
		t.Errorf("vms:\n%s", out)
	}
}

// TestVersionSchemasHelp: `version` prints what the build set (-ldflags
// -X main.version, as make build does), also as JSON; `schemas common`
// prints the shared definitions; the commands that never connect do not
// list the NATS flags in their help.
func TestVersionSchemasHelp(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "sendense")
	if out, err := exec.Command("go", "build", "-ldflags", "-X main.version=v9.9.9-test", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "sendense v9.9.9-test go") {
		t.Errorf("version: %v %q", err, out)
	}
	var v struct{ Version, Go string }
	out, err = exec.Command(bin, "version", "--json").Output()
	if err != nil || json.Unmarshal(out, &v) != nil || v.Version != "v9.9.9-test" || v.Go == "" || strings.Count(string(out), "\n") != 1 {
		t.Errorf("version --json: %v %q", err, out)
	}

	if out := mustCLI(t, "schemas"); !strings.Contains(out, "backup.completed\n") || !strings.Contains(out, "common\n") {
		t.Errorf("schemas:\n%s", out)
	}
	var common map[string]any
	if err := json.Unmarshal([]byte(mustCLI(t, "schemas", "common")), &common); err != nil || common["$id"] != "https://sendense.dev/schemas/common/v1.json" {
		t.Errorf("schemas common: %v %v", err, common["$id"])
	}
	if _, err := cli(t, "schemas", "bogus"); exitCode(err) != 1 {
		t.Errorf("schemas bogus: %v", err)
	}

	for _, args := range [][]string{{"version", "--help"}, {"schemas", "--help"}, {"completion", "--help"}, {"completion", "bash", "--help"}, {"help", "--help"}, {"help", "version"}} {
		if out := mustCLI(t, args...); strings.Contains(out, "--nats-") || strings.Contains(out, "--context") {
			t.Errorf("%v lists the NATS flags:\n%s", args, out)
		}
	}
	if out := mustCLI(t, "jobs", "--help"); !strings.Contains(out, "--nats-url") || !strings.Contains(out, "--context") {
		t.Errorf("jobs --help lacks the NATS flags:\n%s", out)
	}
	// They are still accepted, so scripts that always pass them work.
	mustCLI(t, "version", "--nats-url", "nats://127.0.0.1:1")
}

// TestServeRepositoryIDFlag: --repository-id is checked before anything
// starts: ID=NAME, and NAME a repository that exists.
func TestServeRepositoryIDFlag(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ arg, want string }{
		{"x", "want ID=NAME"},
		{"2=nosuch", "no repository nosuch"},
	} {
		_, err := cli(t, "serve", "--data", t.TempDir(), "--nats-listen", "none", "--api-listen", "none", "--repository-id", tt.arg)
		if exitCode(err) != 1 || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("serve --repository-id %s: %v, want %q", tt.arg, err, tt.want)
		}
	}
}
