package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/health"
	"github.com/sendense/sendense/internal/testutil"
)

// dataWithCreds makes a fresh data dir holding a copy of the seeds of
// roles (file names without .nk) from src: each role of these tests runs
// with a data dir of its own, as on its own host.
func dataWithCreds(t *testing.T, src string, roles ...string) string {
	t.Helper()
	data := t.TempDir()
	dst := filepath.Join(data, "creds")
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, r := range roles {
		f := filepath.Join(src, "creds", r+".nk")
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return data
}

// natsCluster runs a 3-node JetStream cluster of nats-server processes on
// the given client ports, configured with auth (the block `sendense creds
// server-config` prints); killed in cleanup.
func natsCluster(t *testing.T, clientPorts []int, auth string) {
	t.Helper()
	bin := bustest.NatsServerBinary(t)
	routePorts := []int{freePort(t), freePort(t), freePort(t)}
	var routes []string
	for _, p := range routePorts {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	for i := range 3 {
		dir := t.TempDir()
		conf := fmt.Sprintf("%s\nserver_name: n%d\njetstream { store_dir: %q, sync_interval: always }\ncluster { name: sendense-test, listen: \"127.0.0.1:%d\", routes: [%s] }\n",
			auth, i+1, dir, routePorts[i], strings.Join(routes, ", "))
		path := filepath.Join(dir, "nats-server.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-c", path, "-a", "127.0.0.1", "-p", strconv.Itoa(clientPorts[i]))
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start nats-server: %v", err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if t.Failed() {
				t.Logf("nats-server n%d:\n%s", i+1, out.String())
			}
		})
	}
}

// waitOutput waits until p's output contains s.
func waitOutput(t testing.TB, p *proc, s string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.out.String(), s) {
		if p.exited() {
			t.Fatalf("sendense %s exited (%v) before it logged %s", p.name, p.state, s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("sendense %s did not log %s in 60s", p.name, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readyz returns the status code and report of GET http://addr/readyz.
func readyz(addr string) (int, health.Report, error) {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, health.Report{}, err
	}
	defer resp.Body.Close()
	var rep health.Report
	err = json.NewDecoder(resp.Body).Decode(&rep)
	return resp.StatusCode, rep, err
}

// waitReady waits until addr's /readyz answers 200.
func waitReady(t *testing.T, p *proc, addr string) health.Report {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		code, rep, err := readyz(addr)
		if err == nil && code == http.StatusOK {
			return rep
		}
		if p.exited() {
			t.Fatalf("sendense %s exited: %v", p.name, p.state)
		}
		if time.Now().After(deadline) {
			t.Fatalf("sendense %s not ready after 90s: %d %+v %v", p.name, code, rep, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The roles start before the NATS cluster they are given exists (as
// docker-compose starts them); each logs what it waits for. The cluster
// comes up after every role has waited at least once, and then each role
// becomes ready (/readyz 200 on its metrics listener, and on the hub's
// API), with streams of 3 replicas. Before, /readyz answered 503 with the
// start-up check, and /healthz 200.
func TestStartupWaitsForCluster(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"qemu-img", "qemu-nbd", "nbdkit"} {
		testutil.RequireTool(t, tool)
	}
	src := t.TempDir()
	mustCLI(t, "creds", "init", "--data", src, "--agent", "a1")
	auth := mustCLI(t, "creds", "server-config", "--data", src)
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var urls []string
	for _, p := range ports {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	// Short tries, so that a try the forming cluster left unanswered is
	// repeated soon (the default is 10 s).
	common := []string{"--nats-url", strings.Join(urls, ","), "--log-format", "json", "--startup-timeout", "2m", "--startup-attempt-timeout", "2s"}
	api := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	metrics := map[string]string{}
	start := func(roles []string, args ...string) *proc {
		m := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		metrics[args[0]] = m
		return startProc(t, append(append(args, "--data", dataWithCreds(t, src, roles...), "--metrics-listen", m), common...)...)
	}
	// The agent's simulated vCenter serves its control service as admin.
	procs := []*proc{
		start([]string{"admin", "hub"}, "hub", "--stream-replicas", "3", "--api-listen", api),
		start([]string{"catalog"}, "catalog"),
		start([]string{"admin", "agent-a1"}, "agent", "--agent-id", "a1", "--simulate-vcenter", "--simulate-inventory", "small"),
	}
	for _, p := range procs {
		waitOutput(t, p, `"message":"waiting"`)
		if !strings.Contains(p.out.String(), `"waiting_for":"nats `) {
			t.Errorf("%s waits, but not for nats:\n%s", p.name, p.out.String())
		}
	}
	code, rep, err := readyz(metrics["catalog"])
	if err != nil || code != http.StatusServiceUnavailable || len(rep.Checks) != 1 || rep.Checks[0].Name != "startup" {
		t.Errorf("catalog's /readyz while waiting: %d %+v %v; want 503 with the startup check", code, rep, err)
	}
	if resp, err := http.Get("http://" + metrics["catalog"] + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("catalog's /healthz while waiting: %v %v; want 200", resp, err)
	} else {
		resp.Body.Close()
	}

	natsCluster(t, ports, auth)
	for _, p := range procs {
		rep := waitReady(t, p, metrics[p.name])
		t.Logf("%s ready: %+v", p.name, rep.Checks)
	}
	rep = waitReady(t, procs[0], api)
	if len(rep.Checks) == 0 {
		t.Errorf("hub api's /readyz lists no checks")
	}
	agentRep := waitReady(t, procs[2], metrics["agent"])
	for _, name := range []string{"agent/vcenter", "agent/repository", "agent/consumer", "agent/streams", "nats/agent-a1"} {
		found := false
		for _, c := range agentRep.Checks {
			found = found || c.Name == name && c.OK
		}
		if !found {
			t.Errorf("agent's /readyz lacks a passing %s: %+v", name, agentRep.Checks)
		}
	}
	js, err := jetstream.New(connectTest(t, urls[0], src))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), bus.StreamEvents)
	if err != nil || st.CachedInfo().Config.Replicas != 3 {
		t.Errorf("BACKUP_EVENTS: %v, want 3 replicas", err)
	}
	for _, p := range procs {
		for _, line := range strings.Split(p.out.String(), "\n") {
			if strings.Contains(line, `"message":"waiting"`) || strings.Contains(line, `"message":"ready after waiting"`) {
				t.Logf("%s: %s", p.name, line)
			}
		}
	}
	for i := len(procs) - 1; i >= 0; i-- {
		if code := procs[i].stop(t); code != 0 {
			t.Errorf("%s exited with %d after SIGTERM", procs[i].name, code)
		}
	}
}

// With the cluster never up, each role exits after --startup-timeout with
// an error naming what it waited for; with a server up but no hub, the
// agent names the lease bucket and the catalog its consumer's stream.
func TestStartupTimeout(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	mustCLI(t, "creds", "init", "--data", src, "--agent", "a1")
	down := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	up := bustest.ExternalWithConfig(t, mustCLI(t, "creds", "server-config", "--data", src))
	agent := []string{"agent", "--agent-id", "a1", "--simulate-vcenter", "--simulate-inventory", "small"}
	tests := []struct {
		name  string
		roles []string // seeds in its data dir
		args  []string
		want  string
	}{
		{"hub, no nats", []string{"admin", "hub"}, []string{"hub", "--nats-url", down, "--api-listen", "none"}, "wait for nats " + down + " as admin"},
		{"catalog, no nats", []string{"catalog"}, []string{"catalog", "--nats-url", down}, "wait for nats " + down + " as catalog"},
		{"agent, no nats", []string{"admin", "agent-a1"}, append(agent, "--nats-url", down), "wait for nats " + down + " as admin"},
		{"agent, no hub", []string{"admin", "agent-a1"}, append(agent, "--nats-url", up), "wait for lease bucket sendense_leases"},
		{"catalog, no hub", []string{"catalog"}, []string{"catalog", "--nats-url", up}, "wait for consumer sendense-catalog on BACKUP_EVENTS"},
		{"vcenter-sim, no nats", []string{"testbed"}, []string{"vcenter-sim", "--nats-url", down, "--inventory", "small", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t))}, "wait for nats " + down + " as testbed"},
	}
	var procs []*proc
	for _, tc := range tests {
		procs = append(procs, startProc(t, append(tc.args, "--data", dataWithCreds(t, src, tc.roles...), "--startup-timeout", "3s", "--log-format", "json")...))
	}
	for i, tc := range tests {
		p := procs[i]
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: still running 60s after a 3s start-up timeout", tc.name)
		}
		out := p.out.String()
		if p.state.ExitCode() != 1 || !strings.Contains(out, tc.want) || !strings.Contains(out, "start-up timeout (3s) reached") {
			t.Errorf("%s: exit %d; want 1 and an error with %q and the timeout:\n%s", tc.name, p.state.ExitCode(), tc.want, lastLines(out, 3))
		}
	}
}

// SIGTERM ends a process within 10 s, also while it waits for the cluster.
func TestSIGTERMWhileWaiting(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	mustCLI(t, "creds", "init", "--data", src)
	down := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	p := startProc(t, "catalog", "--nats-url", down, "--data", dataWithCreds(t, src, "catalog"), "--startup-timeout", "10m", "--log-format", "json")
	waitOutput(t, p, `"message":"waiting"`)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("catalog still running 10s after SIGTERM while waiting for nats")
	}
	if code := p.state.ExitCode(); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0:\n%s", code, lastLines(p.out.String(), 3))
	}
}

// A second serve on the same data dir refuses before it touches any file:
// it names the data dir and the first one's pid, exits 1, and every file
// under the data dir is as it was (no NATS store opened, no catalog, no
// seed made, no nats CLI context).
func TestSecondServeRefused(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	port := freePort(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	first := startProc(t, "serve", "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--api-listen", "none",
		"--metrics-listen", metrics, "--log-format", "json")
	waitReady(t, first, metrics)
	before := snapshot(t, data)

	_, err := cli(t, "serve", "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--api-listen", "none", "--log-format", "json")
	if exitCode(err) != 1 {
		t.Fatalf("second serve: %v, want exit 1", err)
	}
	for _, want := range []string{"data dir " + data, "in use by another sendense process", fmt.Sprintf("pid %d", first.cmd.Process.Pid)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("second serve's error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "Starting nats-server") || strings.Contains(err.Error(), "nats connected") {
		t.Errorf("second serve got as far as NATS: %v", err)
	}
	if after := snapshot(t, data); after != before {
		t.Errorf("the second serve changed the data dir: %s", firstDiff(after, before))
	}
	if code := first.stop(t); code != 0 {
		t.Errorf("first serve exited with %d after SIGTERM", code)
	}
	// The lock goes with the process: a new serve starts.
	again := startProc(t, "serve", "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--api-listen", "none",
		"--metrics-listen", metrics, "--log-format", "json")
	waitReady(t, again, metrics)
	if code := again.stop(t); code != 0 {
		t.Errorf("serve after the first stopped exited with %d after SIGTERM", code)
	}
}

// snapshot lists every file and directory under dir with its size, mode
// and modification time.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %s %d %s\n", path, fi.Mode(), fi.Size(), fi.ModTime().Format(time.RFC3339Nano))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
