package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// Helpers for tests that run the sendense binary: it is built once per
// test run (sendenseBin) and removed by TestMain.

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	// serve writes nats CLI contexts: keep them out of the user's config.
	cfg, err := os.MkdirTemp("", "sendense-cli-test-config")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XDG_CONFIG_HOME", cfg)
	code := m.Run()
	_ = os.RemoveAll(cfg)
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// sendenseBin returns the path of this package built with `go build`,
// once per test run.
func sendenseBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "sendense-cli-test")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "sendense")
		goCmd, err := exec.LookPath("go")
		if err != nil && os.Getenv("GOROOT") != "" {
			goCmd = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		} else if err != nil {
			binErr = fmt.Errorf("go build: no go on PATH and no GOROOT: %w", err)
			return
		}
		out, err := exec.Command(goCmd, "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatalf("build sendense: %v", binErr)
	}
	return binPath
}

// syncBuffer collects output for assertions.
type syncBuffer = testutil.Buffer

// proc is a long-running sendense process (serve, catalog).
type proc struct {
	name  string
	cmd   *exec.Cmd
	out   syncBuffer
	done  chan struct{}
	state *os.ProcessState
}

// startProc starts the binary with args; cleanup kills it (SIGKILL) if it
// still runs and, when the test failed, logs its output.
func startProc(t testing.TB, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(sendenseBin(t), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return startCmd(t, args[0], cmd)
}

// startCmd starts cmd as the process called name, with startProc's
// cleanup. cmd's output goes to the proc's buffer.
func startCmd(t testing.TB, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s %v: %v", name, cmd.Args, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		p.shutdown()
		if t.Failed() {
			t.Logf("output of %s (pid %d):\n%s", p.name, p.cmd.Process.Pid, p.out.String())
		}
	})
	return p
}

// kill crashes the process (SIGKILL) and waits for it.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// shutdown stops a process still running as an operator would (SIGTERM),
// so that it removes what it made outside the test's directories (the
// simulator's /tmp/govcsim-* among them); one that has not exited 10 s
// later is killed.
func (p *proc) shutdown() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// stop sends SIGTERM and returns the exit code, failing after 20 s.
func (p *proc) stop(t testing.TB) int {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.state.ExitCode()
	case <-time.After(20 * time.Second):
		t.Fatalf("sendense %s did not exit within 20s of SIGTERM", p.name)
		return -1
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// cli runs a short sendense command and returns its stdout; err carries
// the exit status and stderr.
func cli(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sendenseBin(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("sendense %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// mustCLI is cli that fails the test on error.
func mustCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, err := cli(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func testLog(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// connectTest connects to url as admin with the seed under data/creds
// (waiting up to 30 s for the server and the seed), closed in cleanup.
func connectTest(t testing.TB, url, data string) *nats.Conn {
	t.Helper()
	return connectAs(t, url, data, bus.Identity{Role: bus.RoleAdmin})
}

// connectAs connects to url as id with its seed under data/creds.
func connectAs(t testing.TB, url, data string, id bus.Identity) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	creds := bus.Creds{Dir: filepath.Join(data, "creds")}
	for {
		if _, err := os.Stat(creds.File(id)); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no seed of %s in %s", id, creds.Dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
	opts := creds.Options(id)
	opts.URLs = []string{url}
	nc, err := bus.Connect(ctx, opts, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// waitCatalog waits until the catalog service answers on nc.
func waitCatalog(t testing.TB, nc *nats.Conn, p *proc) {
	t.Helper()
	cl := catalog.NewClient(nc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cl.Stats(ctx)
		cancel()
		if err == nil {
			return
		}
		if p.exited() {
			t.Fatalf("sendense %s exited: %v", p.name, p.state)
		}
		if time.Now().After(deadline) {
			t.Fatalf("catalog service not answering after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// referenceCatalog applies evs to a fresh catalog file: what the catalog
// of a sendense process must answer after the same events.
func referenceCatalog(t *testing.T, evs ...schemas.Event) *store.Catalog {
	t.Helper()
	cat, err := store.Open(filepath.Join(t.TempDir(), "reference.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cat.Close() })
	if _, err := cat.Apply(catalogtest.FromAgent(evs...)...); err != nil {
		t.Fatal(err)
	}
	return cat
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitJobs polls `sendense jobs --json --limit 0` until it prints want.
func waitJobs(t *testing.T, want []backup.Job, args ...string) {
	t.Helper()
	wantJSON := jsonOf(t, want)
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		out, err := cli(t, append([]string{"jobs", "--json", "--limit", "0"}, args...)...)
		if err == nil {
			var got []backup.Job
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("jobs --json printed no JSON array: %v\n%s", err, out)
			}
			if last = jsonOf(t, got); last == wantJSON {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("jobs --json still differs after 30s (last error %v, want %d jobs): %s", err, len(want), firstDiff(last, wantJSON))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func firstDiff(got, want string) string {
	if d := testutil.FirstDiff(strings.Split(want, "\n"), strings.Split(got, "\n")); d != "" {
		return d
	}
	return "no difference"
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// served is a `sendense serve --simulate-vcenter` running for a test.
type served struct {
	p    *proc
	url  string
	data string
	nc   *nats.Conn // as admin, with the seed serve made
	// cli are the flags a client command needs to reach it:
	// --nats-url URL --data DATA.
	cli  []string
	args []string // serve's own
}

// startServe runs serve with the simulated vCenter's inventory ("small"
// or "sample") on a fresh --data and port, plus extra flags, and waits
// until the catalog and the simulated vCenter's control service answer.
// fastFailover makes a hub retry a killed agent's job after 8 s instead
// of the production 30 s (--request-ack-wait, --lease-ttl): the tests that
// kill an agent check that its job is retried and how it ends, not when.
var fastFailover = []string{"--request-ack-wait", "8s", "--lease-ttl", "8s"}

func startServe(t *testing.T, inventory string, extra ...string) *served {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-nbd", "nbdkit"} {
		testutil.RequireTool(t, tool)
	}
	data := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	args := append([]string{"serve", "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--api-listen", "none",
		"--simulate-vcenter", "--simulate-inventory", inventory, "--log-format", "json"}, extra...)
	s := &served{url: url, data: data, cli: []string{"--nats-url", url, "--data", data}, args: args}
	s.start(t)
	return s
}

// start starts serve (again, on the same --data and port) and waits
// until it answers.
func (s *served) start(t *testing.T) {
	t.Helper()
	s.p = startProc(t, s.args...)
	s.nc = connectTest(t, s.url, s.data)
	waitCatalog(t, s.nc, s.p)
	for {
		if _, err := simctl.NewClient(s.nc).VMs(context.Background()); err == nil {
			return
		}
		if s.p.exited() {
			t.Fatalf("serve exited: %v", s.p.state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run runs a client command against s (its --nats-url and --data added).
func (s *served) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return cli(t, append(args, s.cli...)...)
}

// must is run that fails the test on error.
func (s *served) must(t *testing.T, args ...string) string {
	t.Helper()
	return mustCLI(t, append(args, s.cli...)...)
}

// awaitJob polls `sendense job ID --json` until done says the job is what
// the test waits for, and returns it; it fails the test after timeout.
func (s *served) awaitJob(t *testing.T, id string, timeout time.Duration, done func(backup.Job) bool) backup.Job {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var j backup.Job
	for {
		if o, err := s.run(t, "job", id, "--json"); err == nil && json.Unmarshal([]byte(o), &j) == nil && done(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s not as awaited after %v: %+v", id, timeout, j)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
