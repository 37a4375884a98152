package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
)

// TestQueuedWithoutAgent: with a catalog but no agent (an external
// nats-server with the printed permissions), a requested backup shows as
// queued in `job`, `job SHORT` and `jobs --status queued`; `backup --wait
// --timeout` says it is queued with no agent, gives up with exit 5 and
// says the backup goes on; Ctrl-C while waiting exits 130 with the same
// hint instead of "context canceled". A cancel before any hub made the
// cancel bucket changes nothing and says why; then it ends the queued job.
func TestQueuedWithoutAgent(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	mustCLI(t, "creds", "init", "--data", data, "--agent", catalogtest.Agent)
	url := bustest.ExternalWithConfig(t, mustCLI(t, "creds", "server-config", "--data", data))
	admin := connectTest(t, url, data)
	adminJS, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(context.Background(), adminJS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "catalog", "--nats-url", url, "--data", data, "--log-format", "json")
	waitCatalog(t, admin, p)
	conn := []string{"--nats-url", url, "--data", data}

	start := time.Now()
	out, err := cli(t, append([]string{"backup", "--vm", "pgtest1", "--wait", "--timeout", "5s"}, conn...)...)
	if code := exitCode(err); code != exitWaitTimeout {
		t.Fatalf("backup --wait --timeout 5s: exit %d (%v), want %d", code, err, exitWaitTimeout)
	}
	t.Logf("backup --wait --timeout 5s returned after %v", time.Since(start).Round(time.Millisecond))
	m := regexp.MustCompile(`job (\S+) requested`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no job id in %q", out)
	}
	id := m[1]
	for _, want := range []string{
		"job " + id + " is queued: no agent has taken it yet",
		"gave up waiting after 5s",
		"the backup goes on: follow it with `sendense watch --job " + id + "`",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("backup --wait stderr lacks %q:\n%v", want, err)
		}
	}

	var j backup.Job
	if err := json.Unmarshal([]byte(mustCLI(t, append([]string{"job", id, "--json"}, conn...)...)), &j); err != nil {
		t.Fatal(err)
	}
	if j.Status != backup.StatusQueued || j.VM.Name != "pgtest1" || j.CreatedAt.IsZero() || j.CreatedAt.Before(start.Add(-time.Second)) || j.CreatedAt.After(time.Now()) {
		t.Errorf("job %s = %+v, want queued pgtest1 created at the request", id, j)
	}
	if short := mustCLI(t, append([]string{"job", id[:8]}, conn...)...); !regexp.MustCompile(`status\s+queued`).MatchString(short) {
		t.Errorf("job %s (short id):\n%s", id[:8], short)
	}
	list := mustCLI(t, append([]string{"jobs", "--status", "queued"}, conn...)...)
	if lines := strings.Split(strings.TrimSpace(list), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], id+" ") || !strings.Contains(lines[1], "queued") {
		t.Errorf("jobs --status queued:\n%s", list)
	}
	if done := mustCLI(t, append([]string{"jobs", "--status", "completed"}, conn...)...); strings.Contains(done, id) {
		t.Errorf("jobs --status completed lists the queued job:\n%s", done)
	}

	// Ctrl-C while waiting.
	w := startProc(t, append([]string{"backup", "--vm", "pgtest1", "--wait"}, conn...)...)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(w.out.String(), "is queued: no agent") {
		if time.Now().After(deadline) || w.exited() {
			t.Fatalf("backup --wait did not say the job is queued:\n%s", w.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = w.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-w.done:
	case <-time.After(20 * time.Second):
		t.Fatal("backup --wait did not exit on SIGINT")
	}
	got := w.out.String()
	if code := w.state.ExitCode(); code != exitInterrupted {
		t.Errorf("backup --wait after SIGINT: exit %d, want %d:\n%s", code, exitInterrupted, got)
	}
	if !strings.Contains(got, "stopped waiting (interrupted); the backup goes on: follow it with `sendense watch --job") || strings.Contains(got, "context canceled") {
		t.Errorf("backup --wait after SIGINT said:\n%s", got)
	}

	// Without the cancel bucket (no hub ever ran) cancel changes nothing
	// and says why; then the bucket is made, as the hub's process does.
	_, err = cli(t, append([]string{"cancel", id}, conn...)...)
	if code := exitCode(err); code != 1 || !strings.Contains(err.Error(), "nothing canceled") || !strings.Contains(err.Error(), "has a hub of this version run?") {
		t.Errorf("cancel without the cancel bucket: exit %d (%v), want 1 saying nothing was canceled and why", code, err)
	}
	if status := jobStatus(t, admin, id); status != backup.StatusQueued {
		t.Errorf("job %s is %q after a cancel that could not be recorded, want still queued", id, status)
	}
	if _, err := bus.EnsureCancels(context.Background(), adminJS, 1, bus.AwaitOptions{}); err != nil {
		t.Fatal(err)
	}

	// Cancel the first job: its request leaves the queue and the catalog
	// shows it rejected (canceled); the second stays queued.
	if out := mustCLI(t, append([]string{"cancel", id[:18]}, conn...)...); !strings.Contains(out, "job "+id+" canceled") {
		t.Errorf("cancel %s said %q", id[:18], out)
	}
	if err := json.Unmarshal([]byte(mustCLI(t, append([]string{"job", id, "--json"}, conn...)...)), &j); err != nil {
		t.Fatal(err)
	}
	if j.Status != backup.StatusRejected || j.Failure == nil || j.Failure.Reason != "canceled" || j.Failure.Retryable {
		t.Errorf("canceled job = %+v, want rejected, reason canceled", j)
	}
	list = mustCLI(t, append([]string{"jobs", "--status", "queued"}, conn...)...)
	if lines := strings.Split(strings.TrimSpace(list), "\n"); len(lines) != 2 || strings.HasPrefix(lines[1], id+" ") {
		t.Errorf("jobs --status queued after the cancel (want only the second job):\n%s", list)
	}
	reqs, err := adminJS.Stream(context.Background(), bus.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	info, err := reqs.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("requests stream holds %d messages after the cancel, want 1 (the second job's)", info.State.Msgs)
	}
	if _, err := cli(t, append([]string{"cancel", id}, conn...)...); err == nil || !strings.Contains(err.Error(), "already ended (rejected)") {
		t.Errorf("cancel of a canceled job: %v", err)
	}
	if _, err := cli(t, append([]string{"cancel", "no-such-job"}, conn...)...); exitCode(err) != 1 || !strings.Contains(err.Error(), "not found") {
		t.Errorf("cancel of an unknown job: %v", err)
	}
}

// TestQueuedWhileLeaseHeld: with an agent running but the VM's lease held
// (another job backs it up), a requested job is queued, not unknown, for
// as long as the lease is held; once released the agent runs it, and its
// created time stays the request's, before its start.
func TestQueuedWhileLeaseHeld(t *testing.T) {
	t.Parallel()
	api := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := startServe(t, "small", "--api-listen", api)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vms, err := simctl.NewClient(s.nc).VMs(ctx)
	if err != nil || len(vms) == 0 {
		t.Fatalf("simulated vms: %v %v", vms, err)
	}
	vm := vms[0]
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	leases, err := bus.OpenLeases(ctx, js, bus.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := leases.Acquire(ctx, bus.VMLeaseKey(vm.UUID), bus.Holder{Agent: "test", JobID: "test-holder", Attempt: 1})
	if err != nil {
		t.Fatal(err)
	}
	out := s.must(t, "backup", "--vm", vm.Name)
	m := regexp.MustCompile(`job (\S+) requested`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no job id in %q", out)
	}
	id := m[1]
	// The agent takes the request, finds the lease held and naks it: the
	// job stays queued all along.
	for i := 0; i < 10; i++ {
		j := s.awaitJob(t, id, 10*time.Second, func(backup.Job) bool { return true })
		if j.Status != backup.StatusQueued {
			t.Fatalf("job %s while its VM's lease is held = %s, want queued", id, j.Status)
		}
		if i == 0 {
			resp, err := http.Get("http://" + api + "/api/v1/backups/" + id)
			if err != nil {
				t.Fatal(err)
			}
			var got backup.Job
			err = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || err != nil || got.ID != id || got.Status != backup.StatusQueued {
				t.Errorf("GET /api/v1/backups/%s = %d %+v (%v), want 200 queued", id, resp.StatusCode, got, err)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	released := time.Now()
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	j := s.awaitJob(t, id, 90*time.Second, backup.Job.Ended)
	if j.Status != backup.StatusCompleted || !j.CreatedAt.Before(released) || !j.StartedAt.After(released.Add(-time.Second)) {
		t.Errorf("job %s = %s created %s started %s, want completed, created before the release at %s", id, j.Status, j.CreatedAt, j.StartedAt, released)
	}
}
