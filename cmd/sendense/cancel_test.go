package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

// TestCancelRunning runs `sendense cancel` on a job whose copy is under
// way: it waits for the outcome, prints it and exits 0; the catalog shows
// the job failed with reason canceled and no file of it is left in the
// repository; the next backup completes, and canceling that completed job
// exits 6 saying it already completed. The target's qemu-nbd is stopped
// (SIGSTOP) from the first progress until the agent logged the cancel, so
// the copy cannot finish first.
func TestCancelRunning(t *testing.T) {
	s := startServe(t, "scale:vms=1,disks=1,size=1GiB,fill=768MiB,prefix=cancel")
	id := bus.NewJobID()
	copying := make(chan struct{}, 1)
	sub, err := s.nc.Subscribe(bus.ProgressSubject(id), func(m *nats.Msg) {
		ev, err := schemas.Decode(m.Subject, m.Data)
		if p, ok := ev.(*schemas.Progress); err == nil && ok && p.BytesDone > 0 && p.BytesDone < p.BytesTotal {
			select {
			case copying <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	s.must(t, "backup", "--vm", "cancel001", "--job-id", id)
	select {
	case <-copying:
	case <-time.After(2 * time.Minute):
		t.Fatalf("no progress of job %s under way", id)
	}
	target := processWith(t, "qemu-nbd", id)
	if err := syscall.Kill(target, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(target, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)

	c := startProc(t, append([]string{"cancel", id[:8]}, s.cli...)...)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.p.out.String(), `"message":"cancel requested"`) {
		if time.Now().After(deadline) || c.exited() {
			t.Fatalf("the agent did not log the cancel; cancel said:\n%s", c.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resume()
	select {
	case <-c.done:
	case <-time.After(time.Minute):
		t.Fatal("cancel did not return within a minute")
	}
	if code := c.state.ExitCode(); code != 0 || !strings.Contains(c.out.String(), "job "+id+" canceled: agent ") {
		t.Fatalf("cancel exit %d:\n%s", code, c.out.String())
	}
	j := s.awaitJob(t, id, 10*time.Second, func(j backup.Job) bool { return j.Status == backup.StatusFailed })
	if j.Failure == nil || j.Failure.Reason != schemas.FailCanceled || j.Failure.Retryable {
		t.Errorf("job %s failure %+v, want reason canceled, not retryable", id, j.Failure)
	}
	_ = filepath.WalkDir(s.data, func(p string, _ os.DirEntry, err error) error {
		if err == nil && strings.Contains(filepath.Base(p), id) {
			t.Errorf("file of the canceled job left: %s", p)
		}
		return nil
	})

	out := s.must(t, "backup", "--vm", "cancel001", "--wait")
	if !strings.Contains(out, "completed") {
		t.Fatalf("backup after the cancel:\n%s", out)
	}
	done := strings.Fields(out[strings.Index(out, "job "):])[1]
	_, err = s.run(t, "cancel", done)
	if code := exitCode(err); code != exitCancelEnded || !strings.Contains(err.Error(), "already ended (completed)") {
		t.Errorf("cancel of a completed job: exit %d (%v), want %d saying it already completed", code, err, exitCancelEnded)
	}
}

// processWith returns the pid of a running process named name whose
// command line contains arg; it fails the test when there is none.
func processWith(t *testing.T, name, arg string) int {
	t.Helper()
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if filepath.Base(args[0]) == name && strings.Contains(string(cmdline), arg) {
			return pid
		}
	}
	t.Fatalf("no %s process with %q in its command line", name, arg)
	return 0
}
