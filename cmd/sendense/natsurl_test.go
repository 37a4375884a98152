package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/internal/testutil"
)

// TestClientNATSSources: a client command takes its server from
// --nats-url, else NATS_URL, else the nats CLI context (--context, else
// NATS_CONTEXT, else the one `nats context select` chose), else the
// default; contexts written by the nats CLI itself work; a refused
// connection fails at once naming the URL and the dial's error; the
// client logs no connection lifecycle lines.
func TestClientNATSSources(t *testing.T) {
	t.Parallel()
	natsCLI := testutil.NATSCLI(t)
	s := startServe(t, "small")
	cfg := t.TempDir()
	work := t.TempDir() // no ./var here: nothing comes from a data directory
	env := []string{"XDG_CONFIG_HOME=" + cfg, "NATS_URL=", "NATS_CONTEXT=", "NATS_CREDS=", "NATS_NKEY=", "NATS_CA="}
	run := func(extraEnv []string, args ...string) (stdout, stderr string, err error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, sendenseBin(t), args...)
		cmd.Dir = work
		cmd.Env = append(append(os.Environ(), env...), extraEnv...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.String(), e.String(), err
	}
	nats := func(args ...string) {
		t.Helper()
		cmd := exec.Command(natsCLI, args...)
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+cfg)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nats %v: %v\n%s", args, err, out)
		}
	}
	seed := filepath.Join(s.data, "creds", "requester.nk")
	nats("context", "add", "lab", "--server", s.url, "--nkey", seed, "--inbox-prefix", "_INBOX.requester")
	nats("context", "add", "elsewhere", "--server", "nats://127.0.0.1:1", "--nkey", seed, "--inbox-prefix", "_INBOX.requester")

	ok := func(what string, extraEnv []string, args ...string) {
		t.Helper()
		out, errOut, err := run(extraEnv, append([]string{"jobs", "--json"}, args...)...)
		if err != nil || !strings.HasPrefix(out, "[") {
			t.Errorf("%s: jobs: %v\nstdout %s\nstderr %s", what, err, out, errOut)
		}
		if strings.Contains(errOut, "nats connected") || strings.Contains(errOut, "nats connection closed") {
			t.Errorf("%s: a client command logged the connection's lifecycle:\n%s", what, errOut)
		}
	}
	refused := func(what, url, from string, extraEnv []string, args ...string) {
		t.Helper()
		_, errOut, err := run(extraEnv, append([]string{"jobs"}, args...)...)
		if exitCode(err) != 1 || !strings.Contains(errOut, url) || !strings.Contains(errOut, "connection refused") ||
			!strings.Contains(errOut, from) || strings.Contains(errOut, "<nil>") {
			t.Errorf("%s: jobs: %v\n%s\nwant exit 1 naming %s, from %s, and the refused dial", what, err, errOut, url, from)
		}
	}

	ok("--context", nil, "--context", "lab")
	ok("NATS_CONTEXT", []string{"NATS_CONTEXT=lab"})
	ok("--nats-url beats the context", nil, "--context", "elsewhere", "--nats-url", s.url, "--nats-nkey", seed)
	refused("the default URL", "nats://127.0.0.1:4222", "the default", nil, "--nats-url", "")
	nats("context", "select", "lab")
	ok("the selected context", nil)
	refused("--nats-url beats the selected context", "nats://127.0.0.1:2", "--nats-url", nil, "--nats-url", "nats://127.0.0.1:2")
	refused("NATS_URL beats the selected context", "nats://127.0.0.1:3", "$NATS_URL", []string{"NATS_URL=nats://127.0.0.1:3"})
	refused("--context beats the selected one", "nats://127.0.0.1:1", `nats context "elsewhere"`, nil, "--context", "elsewhere")

	if _, errOut, err := run(nil, "jobs", "--context", "nosuch"); exitCode(err) != 1 || !strings.Contains(errOut, `nats context "nosuch"`) {
		t.Errorf("jobs --context nosuch: %v\n%s", err, errOut)
	}

	// Another role's key: the server's refusal, not a bare timeout. The
	// monitor may not ask the catalog; cancel (admin's inbox) with the
	// requester's key may not receive the catalog's answer.
	monitor := filepath.Join(s.data, "creds", "monitor.nk")
	if _, errOut, err := run(nil, "jobs", "--nats-url", s.url, "--nats-nkey", monitor); exitCode(err) != 1 ||
		!strings.Contains(errOut, `permissions violation: Permissions Violation for Publish to "sendense.catalog.jobs.list"`) {
		t.Errorf("jobs with the monitor's key: %v\n%s", err, errOut)
	}
	if _, errOut, err := run(nil, "cancel", "no-such-job", "--nats-url", s.url, "--nats-nkey", seed); exitCode(err) != 1 ||
		!strings.Contains(errOut, `Permissions Violation for Subscription to "_INBOX.admin.`) || !strings.Contains(errOut, "credentials lack the rights") {
		t.Errorf("cancel with the requester's key: %v\n%s", err, errOut)
	}
}
