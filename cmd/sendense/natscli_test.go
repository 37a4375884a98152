package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/internal/testutil"
)

// TestNATSCLIContexts runs the README's nats CLI commands against
// `sendense serve`, with the contexts serve writes: the requester context
// asks for a backup with `nats pub backup.requested` and it completes; the
// monitor context follows `backup.>`; neither may publish an event or
// delete a lease.
func TestNATSCLIContexts(t *testing.T) {
	natsCLI := testutil.NATSCLI(t)
	s := startServe(t, "small")
	url, data := s.url, s.data

	ctxFile := filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "nats", "context", "sendense.json")
	var nctx map[string]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		b, err := os.ReadFile(ctxFile)
		if err == nil && json.Unmarshal(b, &nctx) == nil && nctx["url"] == url {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats context %s: %v %v", ctxFile, nctx, err)
		}
	}
	if nctx["nkey"] != filepath.Join(data, "creds", "requester.nk") || nctx["inbox_prefix"] != "_INBOX.requester" {
		t.Errorf("nats context %s: %v, want the requester's seed and inbox", ctxFile, nctx)
	}
	nats := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, natsCLI, args...).CombinedOutput()
		return string(out), err
	}

	// The monitor follows every message; the requester asks.
	mon := exec.Command(natsCLI, "--context", "sendense-monitor", "sub", "backup.>", "--count", "1")
	var monOut bytes.Buffer
	mon.Stdout, mon.Stderr = &monOut, &monOut
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mon.Process.Kill(); _ = mon.Wait() })
	time.Sleep(500 * time.Millisecond)
	if out, err := nats("--context", "sendense", "pub", "backup.requested", `{"vm":"pgtest1","job_id":"natscli-1"}`); err != nil {
		t.Fatalf("nats pub backup.requested as the requester: %v\n%s", err, out)
	}
	done := make(chan error, 1)
	go func() { done <- mon.Wait() }()
	select {
	case err := <-done:
		if err != nil || !strings.Contains(monOut.String(), `"job_id":"natscli-1"`) {
			t.Errorf("nats sub as the monitor: %v\n%s", err, monOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Errorf("the monitor saw nothing:\n%s", monOut.String())
	}
	if j := s.awaitJob(t, "natscli-1", time.Minute, backup.Job.Ended); j.Status != backup.StatusCompleted {
		t.Fatalf("the request published with nats pub: job %s %+v", j.Status, j.Failure)
	}

	// Forgeries from the nats CLI are refused by the server.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--context", "sendense-monitor", "pub", "backup.completed.test-agent", `{}`}, "Permissions Violation for Publish"},
		{[]string{"--context", "sendense", "pub", "backup.completed.test-agent", `{}`}, "Permissions Violation for Publish"},
		{[]string{"--context", "sendense", "kv", "del", "sendense_leases", "vm.x", "-f"}, "Permissions Violation"},
		{[]string{"--context", "sendense", "stream", "rm", "BACKUP_EVENTS", "-f"}, ""},
	} {
		out, err := nats(c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("nats %s: %v, want a refusal (%s)\n%s", strings.Join(c.args, " "), err, c.want, out)
		}
	}
}
