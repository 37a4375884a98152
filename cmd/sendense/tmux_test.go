package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/internal/testutil"
)

// TestBackupWaitInTmux runs `backup --wait` in a real terminal (a detached
// tmux session of 160x40) against `serve --simulate-vcenter` and reads
// the screen as a user sees it at the end: the started and "change id
// recorded" lines are all there once, no bar line stayed behind, and the
// summary ends it.
func TestBackupWaitInTmux(t *testing.T) {
	t.Parallel()
	tmux := testutil.RequireTool(t, "tmux")
	s := startServe(t, "small")
	sock := fmt.Sprintf("sendense-test-%d", time.Now().UnixNano())
	run := func(args ...string) (string, error) {
		out, err := exec.Command(tmux, append([]string{"-L", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { _, _ = run("kill-server") })
	log := filepath.Join(t.TempDir(), "exit")
	cmdline := fmt.Sprintf("%s backup --vm pgtest1 --wait --job-id tmux-1 %s; echo $? > %s; echo EXIT-DONE; sleep 600",
		sendenseBin(t), strings.Join(s.cli, " "), log)
	if out, err := run("new-session", "-d", "-x", "160", "-y", "40", "-s", "prog", cmdline); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	var screen string
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := run("capture-pane", "-p", "-t", "prog")
		if err != nil {
			t.Fatalf("tmux capture-pane: %v: %s", err, out)
		}
		screen = out
		if strings.Contains(screen, "EXIT-DONE") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup --wait did not end in 60 s; screen:\n%s", screen)
		}
		time.Sleep(200 * time.Millisecond) // polling a screen: nothing to wait on
	}
	t.Logf("screen at the end:\n%s", strings.TrimRight(screen, "\n"))
	for _, want := range []string{"job tmux-1 requested", "disk 2000: full", "disk 2001: full", "disk 2000: change id", "disk 2001: change id", "job tmux-1 completed"} {
		if n := strings.Count(screen, want); n != 1 {
			t.Errorf("screen shows %q %d times, want once:\n%s", want, n, screen)
		}
	}
	if !regexp.MustCompile(`(?m)^backup of vm pgtest1 completed in [0-9.]+m?s: 2 disk\(s\) of .+ read, .+ written, .+/s\n  full: 2 disk\(s\)`).MatchString(screen) {
		t.Errorf("screen lacks the summary:\n%s", screen)
	}
	// A bar is "disk N [====>---] …" with counters and a percentage; none
	// may stay once the summary is printed.
	if regexp.MustCompile(`\[[=>\-_ ]+\]|KiB / |MiB / |GiB / `).MatchString(screen) {
		t.Errorf("stale bar lines on the screen:\n%s", screen)
	}
}
