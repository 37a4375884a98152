package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// TestBackupCommands drives `sendense serve --simulate-vcenter` the way a
// user does: `backup --wait` exits 0 on completed and 3 on rejected, `job
// --json` shows every disk's change id, the next backup is an incremental
// from it, `chain` lists both, a raw publish (as `nats pub`) works like
// the CLI, and `restore --verify` writes each point identical to what the
// snapshot froze.
func TestBackupCommands(t *testing.T) {
	t.Parallel()
	s := startServe(t, "small")
	p, nc, nurl := s.p, s.nc, s.cli

	out := mustCLI(t, append([]string{"backup", "--vm", "pgtest1", "--wait", "--job-id", "cli-full"}, nurl...)...)
	if !strings.Contains(out, "job cli-full completed") || strings.Count(out, "change id") != 2 {
		t.Errorf("backup --wait output:\n%s", out)
	}
	// On a pipe: plain lines, no escape codes, per-disk progress and the
	// summary (duration, bytes, throughput, disks per type).
	if strings.ContainsRune(out, 0x1b) || !regexp.MustCompile(`(?m)^disk 2000: 100% .* MiB/s, done$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^backup of vm pgtest1 completed in [0-9.]+m?s: 2 disk\(s\) of .+, .+ read, .+ written, .+/s\n  full: 2 disk\(s\), `).MatchString(out) {
		t.Errorf("backup --wait to a pipe: want plain progress lines and a summary:\n%q", out)
	}
	// A job id names one job for good (attack 5): asking again under it
	// fails fast with its own exit code, and nothing waits forever.
	_, err := cli(t, append([]string{"backup", "--vm", "pgtest1", "--wait", "--job-id", "cli-full"}, nurl...)...)
	if exitCode(err) != exitConflict || !strings.Contains(err.Error(), "job id cli-full is taken") {
		t.Errorf("backup with a used job id: %v, want exit %d saying the id is taken", err, exitConflict)
	}
	// On a host without DATA/creds, the role's seed given explicitly is
	// enough: the command still gets its replies (its role's inbox).
	out = mustCLI(t, "jobs", "--nats-url", s.url, "--data", t.TempDir(), "--nats-nkey", filepath.Join(s.data, "creds", "requester.nk"))
	if !strings.Contains(out, "cli-full") {
		t.Errorf("jobs with --nats-nkey:\n%s", out)
	}
	var full backup.Job
	if err := json.Unmarshal([]byte(mustCLI(t, append([]string{"job", "cli-full", "--json"}, nurl...)...)), &full); err != nil {
		t.Fatal(err)
	}
	if full.Status != backup.StatusCompleted || len(full.Disks) != 2 {
		t.Fatalf("job cli-full: %+v", full)
	}
	for _, d := range full.Disks {
		if d.ChangeID == "" {
			t.Errorf("disk %d has no change id in `job --json`", d.Disk.Key)
		}
	}

	// 1% guest writes through the testbed's control service, then a raw
	// publish as `nats pub backup.requested '{"vm":"pgtest1"}'` would.
	if _, err := simctl.NewClient(nc).Write(context.Background(), simctl.WriteRequest{VM: "pgtest1", Percent: 1, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(schemas.NameRequested, []byte(`{"vm":"pgtest1","job_id":"raw-inc"}`)); err != nil {
		t.Fatal(err)
	}
	var inc backup.Job
	deadline := time.Now().Add(time.Minute)
	for inc.Status != backup.StatusCompleted {
		if time.Now().After(deadline) {
			t.Fatalf("raw request did not complete: %+v", inc)
		}
		time.Sleep(100 * time.Millisecond)
		if o, err := cli(t, append([]string{"job", "raw-inc", "--json"}, nurl...)...); err == nil {
			_ = json.Unmarshal([]byte(o), &inc)
		}
	}
	for i, d := range inc.Disks {
		if d.BackupType != schemas.TypeIncremental || d.BaseChangeID != full.Disks[i].ChangeID || d.Backing != "cli-full" {
			t.Errorf("disk %d of the second backup: %s since %q backing %q", d.Disk.Key, d.BackupType, d.BaseChangeID, d.Backing)
		}
	}
	chain := mustCLI(t, append([]string{"chain", "--vm", "pgtest1"}, nurl...)...)
	if !strings.Contains(chain, "cli-full") || !strings.Contains(chain, "raw-inc") {
		t.Errorf("chain output lacks a backup:\n%s", chain)
	}

	// Rejected: exit code 3 with the reason.
	_, err = cli(t, append([]string{"backup", "--vm", "no-such-vm", "--wait"}, nurl...)...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitRejected || !strings.Contains(err.Error(), schemas.RejectUnknownVM) {
		t.Errorf("backup of an unknown vm: %v, want exit %d with %s", err, exitRejected, schemas.RejectUnknownVM)
	}

	// Restore every disk of both points and compare with the frozen images.
	sim := simctl.NewClient(nc)
	for _, job := range []string{"cli-full", "raw-inc"} {
		dir := filepath.Join(t.TempDir(), job)
		out := mustCLI(t, append([]string{"restore", "--job", job, "--to", dir, "--verify"}, nurl...)...)
		if strings.Count(out, "identical") != 2 || strings.ContainsRune(out, 0x1b) ||
			!regexp.MustCompile(`(?m)^disk 2001: 100% .*, done$`).MatchString(out) ||
			!regexp.MustCompile(`(?m)^restore of job `+job+` completed in [0-9.]+m?s: 2 disk\(s\) of .+/s\n  restore: 2 disk\(s\)`).MatchString(out) {
			t.Errorf("restore --verify of %s:\n%s", job, out)
		}
		for _, key := range []int32{2000, 2001} {
			fr, err := sim.Frozen(context.Background(), "pgtest1", "sendense-"+job, key)
			if err != nil {
				t.Fatal(err)
			}
			restored := filepath.Join(dir, fmt.Sprintf("%d.raw", key))
			if o, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", fr.Path, restored).CombinedOutput(); err != nil {
				t.Errorf("restored %s differs from the frozen image of job %s: %v %s", restored, job, err, o)
			}
		}
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("serve exited with %d after SIGTERM", code)
	}
}

// TestWaitShowsOnlyStoredOutcomes is part of attack 4: `backup --wait`
// printed "completed" for a backup.completed that the stream never stored.
// Here a schema-valid completed event for the job goes out on a subject no
// stream binds (seen on backup.>, never stored): --wait does not report
// it; the job is still only queued (no agent runs).
func TestWaitShowsOnlyStoredOutcomes(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	p := startProc(t, "serve", "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--api-listen", "none", "--log-format", "json")
	nc := connectTest(t, url, data)
	waitCatalog(t, nc, p)

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	wait := exec.CommandContext(ctx, sendenseBin(t), "backup", "--vm", "pgtest1", "--wait", "--job-id", "unstored-1",
		"--nats-url", url, "--data", data)
	var out bytes.Buffer
	wait.Stdout, wait.Stderr = &out, &out
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), "job unstored-1 requested") && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	ev := catalogtest.Job{ID: "unstored-1"}.Completed()
	data2, _ := json.Marshal(ev)
	if err := nc.Publish(schemas.NameCompleted, data2); err != nil { // bound to no stream: never stored
		t.Fatal(err)
	}
	_ = nc.Flush()
	err := wait.Wait()
	if strings.Contains(out.String(), "completed") {
		t.Errorf("backup --wait reported an outcome the stream never stored:\n%s", out.String())
	}
	if err == nil {
		t.Errorf("backup --wait exited 0 without an outcome:\n%s", out.String())
	}
}
