package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/backup"
)

// TestForgetCLI runs `sendense forget` against `sendense serve`: three
// backups of pgtest1 with guest writes in between; a dry run prints each
// point and removes nothing; --keep-last 1 --protect the first removes the
// middle point (its child rebased onto the full); every kept point
// restores identically to the frozen image of its snapshot, `jobs` shows
// the removed job pruned and repo check is clean. Bad flags exit 2.
func TestForgetCLI(t *testing.T) {
	t.Parallel()
	s := startServe(t, "small")
	sim := simctl.NewClient(s.nc)
	jobs := []string{"fg-1", "fg-2", "fg-3"}
	for i, job := range jobs {
		if i > 0 {
			if _, err := sim.Write(context.Background(), simctl.WriteRequest{VM: "pgtest1", Percent: 1, Seed: int64(i)}); err != nil {
				t.Fatal(err)
			}
		}
		s.must(t, "backup", "--vm", "pgtest1", "--wait", "--job-id", job)
	}

	for _, bad := range [][]string{
		{"forget", "--vm", "pgtest1"},                              // no policy
		{"forget", "--keep-last", "1"},                             // no vm
		{"forget", "--vm", "pgtest1", "--all", "--keep-last", "1"}, // both
		{"forget", "--vm", "pgtest1", "--keep-last", "-2"},         // below -1 (all)
		{"forget", "--vm", "pgtest1", "--keep-daily", "many"},      // no count
		{"forget", "--vm", "pgtest1", "--protect", "fg-1"},         // protect alone keeps nothing else
	} {
		if _, err := s.run(t, bad...); exitCode(err) != 2 {
			t.Errorf("%v: %v, want exit 2", bad, err)
		}
	}
	if _, err := s.run(t, "forget", "--vm", "no-such-vm", "--keep-last", "1"); err == nil || !strings.Contains(err.Error(), "no completed backup") {
		t.Errorf("forget of an unknown vm: %v", err)
	}

	out := s.must(t, "forget", "--vm", "pgtest1", "--keep-last", "1", "--keep-yearly", "0", "--protect", "fg-1", "--dry-run", "--json")
	var rep repoapi.ForgetReply
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("forget --json: %v\n%s", err, out)
	}
	if len(rep.VMs) != 1 || len(rep.VMs[0].Points) != 3 || !rep.DryRun {
		t.Fatalf("dry run: %+v", rep)
	}
	want := []struct {
		job  string
		keep bool
	}{{"fg-3", true}, {"fg-2", false}, {"fg-1", true}}
	for i, p := range rep.VMs[0].Points {
		if p.JobID != want[i].job || p.Keep != want[i].keep || p.Removed {
			t.Errorf("point %d: %+v, want %s keep=%t", i, p, want[i].job, want[i].keep)
		}
	}
	if !strings.Contains(strings.Join(rep.VMs[0].Points[2].Reasons, ","), "protected") {
		t.Errorf("fg-1's reasons %v do not say it is protected", rep.VMs[0].Points[2].Reasons)
	}

	out = s.must(t, "forget", "--vm", "pgtest1", "--keep-last", "1", "--protect", "fg-1")
	t.Logf("sendense forget --vm pgtest1 --keep-last 1 --protect fg-1:\n%s", out)
	for _, w := range []string{"JOB", "fg-2", "removed", "fg-3", "keep", "protected"} {
		if !strings.Contains(out, w) {
			t.Errorf("forget output lacks %q:\n%s", w, out)
		}
	}
	j := s.awaitJob(t, "fg-2", 10*time.Second, func(j backup.Job) bool { return true })
	if j.Status != backup.StatusPruned || j.Prune == nil || j.Prune.State != backup.PruneDone {
		t.Errorf("fg-2 after forget: status %s prune %+v", j.Status, j.Prune)
	}
	if out := s.must(t, "job", "fg-2"); !strings.Contains(out, "pruned") {
		t.Errorf("job fg-2 does not say it is pruned:\n%s", out)
	}
	if out := s.must(t, "jobs", "--status", "pruned"); !strings.Contains(out, "fg-2") {
		t.Errorf("jobs --status pruned:\n%s", out)
	}
	if out := s.must(t, "chain", "--vm", "pgtest1"); strings.Contains(out, "fg-2") {
		t.Errorf("chain still shows fg-2:\n%s", out)
	}
	var check repoapi.CheckReply
	if err := json.Unmarshal([]byte(s.must(t, "repo", "check", "--json")), &check); err != nil || len(check.Problems) != 0 {
		t.Errorf("repo check after forget: %+v, %v", check.Problems, err)
	}
	for _, job := range []string{"fg-1", "fg-3"} {
		dir := filepath.Join(t.TempDir(), job)
		s.must(t, "restore", "--job", job, "--to", dir)
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
	if _, err := s.run(t, "restore", "--job", "fg-2", "--to", t.TempDir()+"/x"); err == nil {
		t.Errorf("restore of the pruned fg-2 succeeded")
	}
	// The next backup is an incremental on the kept head.
	s.must(t, "backup", "--vm", "pgtest1", "--wait", "--job-id", "fg-4")
	next := s.awaitJob(t, "fg-4", 10*time.Second, func(j backup.Job) bool { return true })
	for _, d := range next.Disks {
		if d.BackupType != "incremental" || d.Backing != "fg-3" {
			t.Errorf("fg-4 disk %d: %s on %q, want an incremental on fg-3", d.Disk.Key, d.BackupType, d.Backing)
		}
	}

	// A forget schedule: bad ones are refused before anything is stored;
	// a good one keeps the newest 2 points at every firing, so fg-1 and
	// fg-3 go (fg-1 merged into fg-3, then fg-3 into fg-4), and fg-4 and
	// fg-5 restore identically.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"schedule", "add", "fs", "--forget", "--keep-last", "2", "--cron", "@daily"}, "--vm VM or --all"},
		{[]string{"schedule", "add", "fs", "--forget", "--vm", "pgtest1", "--cron", "@daily"}, "no retention policy"},
		{[]string{"schedule", "add", "fs", "--forget", "--vm", "pgtest1", "--keep-daily", "many", "--cron", "@daily"}, "not a count"},
		{[]string{"schedule", "add", "fs", "--vm", "pgtest1", "--keep-last", "7", "--cron", "@daily"}, "--keep-last goes with --forget"},
		{[]string{"schedule", "add", "fs", "--forget", "--verify", "--all", "--keep-last", "7", "--cron", "@daily"}, "none of the others"},
	} {
		if _, err := s.run(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
	if out := s.must(t, "schedule", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("schedules after only bad adds: %s", out)
	}
	if _, err := sim.Write(context.Background(), simctl.WriteRequest{VM: "pgtest1", Percent: 1, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	s.must(t, "backup", "--vm", "pgtest1", "--wait", "--job-id", "fg-5")
	out = s.must(t, "schedule", "add", "fs", "--forget", "--vm", "pgtest1", "--keep-last", "2", "--cron", "@every 1s")
	if !strings.Contains(out, "forget vm pgtest1: keep 2 latest snapshots") {
		t.Errorf("schedule add --forget: %s", out)
	}
	var rows []scheduleRow
	if err := json.Unmarshal([]byte(s.must(t, "schedule", "list", "--json")), &rows); err != nil ||
		len(rows) != 1 || rows[0].Kind != "forget" || rows[0].Policy == nil || rows[0].Policy.Last != 2 || rows[0].VM != "pgtest1" {
		t.Errorf("schedule list --json: %+v, %v", rows, err)
	}
	if table := s.must(t, "schedule", "list"); !strings.Contains(table, "forget") || !strings.Contains(table, "keep 2 latest snapshots") {
		t.Errorf("schedule list:\n%s", table)
	}
	for _, job := range []string{"fg-1", "fg-3"} {
		s.awaitJob(t, job, time.Minute, func(j backup.Job) bool { return j.Status == backup.StatusPruned })
	}
	s.must(t, "schedule", "rm", "fs")
	for _, job := range []string{"fg-4", "fg-5"} {
		dir := filepath.Join(t.TempDir(), job)
		s.must(t, "restore", "--job", job, "--to", dir)
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
	if strings.Count(s.p.out.String(), "forget request done") == 0 {
		t.Error("serve did not log a scheduled forget")
	}
}
