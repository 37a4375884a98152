package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
)

// TestCancelRunning runs `sendense cancel` on a job whose copy is under
// way: it waits for the outcome, prints it and exits 0; the catalog shows
// the job failed with reason canceled and no file of it is left in the
// repository; the next backup completes, and canceling that completed job
// exits 6 saying it already completed; a job between attempts is canceled
// too. The target's qemu-nbd is stopped (SIGSTOP) from backup.started
// until the agent logged the cancel, so the copy cannot finish first.
func TestCancelRunning(t *testing.T) {
	t.Parallel()
	s := startServe(t, "scale:vms=1,disks=1,size=1GiB,fill=768MiB,prefix=cancel")
	id := bus.NewJobID()
	target := s.stopTargetOnStart(t, "cancel001", id)
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
	_, err := s.run(t, "cancel", done)
	if code := exitCode(err); code != exitCancelEnded || !strings.Contains(err.Error(), "already ended (completed)") {
		t.Errorf("cancel of a completed job: exit %d (%v), want %d saying it already completed", code, err, exitCancelEnded)
	}

	// Between attempts: its target killed mid-copy, attempt 1 failed
	// (retryable) and the request waits for its redelivery (5 s). cancel
	// removes it and the job ends canceled (had attempt 2 started, its
	// agent would have stopped it: canceled too).
	retried := bus.NewJobID()
	if err := syscall.Kill(s.stopTargetOnStart(t, "cancel001", retried, "--type", "full"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.awaitJob(t, retried, time.Minute, func(j backup.Job) bool { return j.Status == backup.StatusFailed })
	out, err = s.run(t, "cancel", retried, "--json")
	if err != nil {
		t.Fatalf("cancel between attempts: %q, %v", out, err)
	}
	// --json: the job's record as the catalog shows it once canceled.
	if err := json.Unmarshal([]byte(out), &j); err != nil || j.ID != retried {
		t.Fatalf("cancel --json printed %q (%v), want job %s's record", out, err, retried)
	}
	if j.Status != backup.StatusFailed || j.Failure == nil || j.Failure.Reason != schemas.FailCanceled || j.Failure.Retryable {
		t.Errorf("job %s canceled between attempts: %s, failure %+v; want failed, reason canceled, not retryable", retried, j.Status, j.Failure)
	}
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), bus.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(context.Background()); err != nil || info.State.Msgs != 0 {
		t.Errorf("requests left in the queue after the cancel: %+v, %v", info.State, err)
	}
}

// stopTargetOnStart requests a backup of vm as job id (with backup's
// flags) and, once backup.started says its target is open and the copy
// begins, stops the target's qemu-nbd (SIGSTOP): the copy cannot finish.
// It returns the stopped process's pid.
func (s *served) stopTargetOnStart(t *testing.T, vm, id string, flags ...string) int {
	t.Helper()
	backupStarted(t, s.nc, id, time.Minute, func() { s.must(t, append([]string{"backup", "--vm", vm, "--job-id", id}, flags...)...) })
	pid := processWith(t, "qemu-nbd", s.data, id)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	return pid
}

// backupStarted runs request (which requests job id) and waits until
// backup.started of the job is seen on nc, failing the test after timeout.
func backupStarted(t *testing.T, nc *nats.Conn, id string, timeout time.Duration, request func()) {
	t.Helper()
	started := make(chan struct{}, 1)
	sub, err := nc.Subscribe(schemas.NameStarted+".*", func(m *nats.Msg) {
		if ev, err := schemas.Decode(m.Subject, m.Data); err == nil && ev.EventHeader().JobID == id {
			select {
			case started <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	request()
	select {
	case <-started:
	case <-time.After(timeout):
		t.Fatalf("job %s did not start within %s", id, timeout)
	}
}

// processWith waits for a running process named name whose command line
// contains every one of args (polling /proc) and returns its pid; it fails
// the test after a minute. Tests run in parallel: give an arg unique to
// the test, such as its data directory.
func processWith(t *testing.T, name string, args ...string) int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
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
			argv := strings.Split(string(cmdline), "\x00")
			if filepath.Base(argv[0]) == name && containsAll(string(cmdline), args) {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s process with %q in its command line within a minute", name, args)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestCancelOutlivesItsAgent: the agent running a job hangs (SIGSTOP)
// when `cancel` asks, so nobody answers; cancel records the cancel, says
// so and waits. The agent is then killed (-9) and started again: the
// request comes back after the ack wait, and the agent finds the record
// and ends the job as canceled (not retryable) instead of running it
// again; cancel prints that and exits 0. The VM's next backup completes.
// Hub, catalog and agent are separate processes on one nats-server.
func TestCancelOutlivesItsAgent(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"qemu-img", "qemu-nbd", "nbdkit"} {
		testutil.RequireTool(t, tool)
	}
	src := t.TempDir()
	mustCLI(t, "creds", "init", "--data", src, "--agent", "a1")
	url := bustest.ExternalWithConfig(t, mustCLI(t, "creds", "server-config", "--data", src))
	common := []string{"--nats-url", url, "--log-format", "json"}
	hub := startProc(t, append([]string{"hub", "--data", dataWithCreds(t, src, "admin", "hub"), "--api-listen", "none",
		"--request-ack-wait", "8s", "--lease-ttl", "8s"}, common...)...)
	cat := startProc(t, append([]string{"catalog", "--data", dataWithCreds(t, src, "catalog")}, common...)...)
	agentData := dataWithCreds(t, src, "admin", "agent-a1")
	agentArgs := append([]string{"agent", "--agent-id", "a1", "--data", agentData, "--simulate-vcenter",
		"--simulate-inventory", "scale:vms=1,disks=1,size=1GiB,fill=768MiB,prefix=outlive"}, common...)
	agent := startProc(t, agentArgs...)
	nc := connectTest(t, url, src)
	waitCatalog(t, nc, cat)
	client := append([]string{}, common[:2]...)
	client = append(client, "--data", src)

	id := bus.NewJobID()
	backupStarted(t, nc, id, 2*time.Minute, func() {
		mustCLI(t, append([]string{"backup", "--vm", "outlive001", "--job-id", id}, client...)...)
	})
	// The agent hangs mid-copy.
	if err := syscall.Kill(agent.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	c := startProc(t, append([]string{"cancel", id, "--timeout", "2m"}, client...)...)
	waitOutput(t, c, "the cancel is recorded")
	agent.kill()
	if got := jobStatus(t, nc, id); got != backup.StatusRunning {
		t.Fatalf("job %s is %s after its agent died, want running", id, got)
	}
	agent = startProc(t, agentArgs...) // the agent comes back on its data dir

	select {
	case <-c.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("cancel did not return within two minutes:\n%s", c.out.String())
	}
	if code := c.state.ExitCode(); code != 0 || !strings.Contains(c.out.String(), "job "+id+" canceled: recorded; its request came again and attempt 2 ended as canceled without running") {
		t.Fatalf("cancel exit %d:\n%s", code, c.out.String())
	}
	j, err := catalog.NewClient(nc).Job(context.Background(), id)
	if err != nil || j.Status != backup.StatusFailed || j.Failure == nil || j.Failure.Reason != schemas.FailCanceled || j.Failure.Retryable {
		t.Fatalf("job %s: %+v (%v), want failed, reason canceled, not retryable", id, j, err)
	}
	if !strings.Contains(j.Failure.Message, "attempt 2 did not run") {
		t.Errorf("failure message %q, want it to say attempt 2 did not run", j.Failure.Message)
	}
	out := mustCLI(t, append([]string{"backup", "--vm", "outlive001", "--wait"}, client...)...)
	if !strings.Contains(out, "completed") {
		t.Fatalf("the backup after the cancel:\n%s", out)
	}
	if strings.Contains(agent.out.String(), `"job_id":"`+id+`","vm":"outlive001","attempt":2,"vm_uuid"`) {
		t.Errorf("the canceled job's attempt 2 resolved its VM (it ran):\n%s", agent.out.String())
	}
	for _, p := range []*proc{agent, cat, hub} {
		if code := p.stop(t); code != 0 {
			t.Errorf("%s exited %d after SIGTERM", p.name, code)
		}
	}
}

// jobStatus is job id's status as the catalog shows it ("" when unknown).
func jobStatus(t *testing.T, nc *nats.Conn, id string) string {
	t.Helper()
	j, err := catalog.NewClient(nc).Job(context.Background(), id)
	if err != nil {
		return ""
	}
	return j.Status
}
