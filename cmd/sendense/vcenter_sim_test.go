package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
)

// copySeed gives a data directory of its own the one seed a process on
// another host would be handed.
func copySeed(t testing.TB, from string, id bus.Identity) string {
	t.Helper()
	src := bus.Creds{Dir: filepath.Join(from, "creds")}
	data := t.TempDir()
	dst := bus.Creds{Dir: filepath.Join(data, "creds")}
	if err := os.MkdirAll(dst.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	seed, err := os.ReadFile(src.File(id))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst.File(id), seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return data
}

// simReady waits for vcenter-sim's ready lines and returns them by key.
func simReady(t testing.TB, p *proc) map[string]string {
	t.Helper()
	return simReadyWithin(t, p, 30*time.Second)
}

// simReadyWithin is simReady waiting up to d (a large inventory takes
// longer to make).
func simReadyWithin(t testing.TB, p *proc, d time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := map[string]string{}
		for _, line := range strings.Split(p.out.String(), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok && !strings.ContainsAny(k, " {\"") {
				got[k] = v
			}
		}
		if got["ca_file"] != "" {
			return got
		}
		if p.exited() {
			t.Fatalf("vcenter-sim exited: %v", p.state)
		}
		if time.Now().After(deadline) {
			t.Fatalf("vcenter-sim not ready after %s", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestVCenterSimRemoteAgent runs the pieces as separate processes, each
// with only its own credentials: `serve` (hub, catalog, embedded NATS, no
// agent), `vcenter-sim` (the simulated vCenter and its control service as
// the testbed identity) and `agent`, which knows the vCenter only by its
// URL, user, password file and certificate and reads disks with the https
// transport (vCenter's /folder through nbdkit curl). A full and an
// incremental backup of the small inventory complete, and both restore
// identical to the images the snapshots froze.
func TestVCenterSimRemoteAgent(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"qemu-img", "qemu-nbd", "nbdkit"} {
		testutil.RequireTool(t, tool)
	}
	data := t.TempDir()
	mustCLI(t, "creds", "init", "--agent", "remote1", "--data", data)
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	nurl := []string{"--nats-url", url, "--data", data}
	serve := startProc(t, "serve", "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--api-listen", "none", "--log-format", "json")
	nc := connectTest(t, url, data)
	waitCatalog(t, nc, serve)

	simData := copySeed(t, data, bus.Identity{Role: bus.RoleTestbed})
	sim := startProc(t, "vcenter-sim", "--data", simData, "--nats-url", url, "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--inventory", "small", "--log-format", "json")
	ready := simReady(t, sim)
	if !strings.HasPrefix(ready["sdk_url"], "https://127.0.0.1:") || ready["user"] == "" {
		t.Fatalf("vcenter-sim ready lines: %v", ready)
	}

	agentData := copySeed(t, data, bus.AgentIdentity("remote1"))
	agent := startProc(t, "agent", "--data", agentData, "--nats-url", url, "--agent-id", "remote1", "--log-format", "json",
		"--vcenter-url", ready["sdk_url"], "--vcenter-user", ready["user"], "--vcenter-password-file", ready["password_file"],
		"--vcenter-ca", ready["ca_file"], "--transport", "https")

	simc := simctl.NewClient(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := simc.VMs(ctx); err != nil {
		t.Fatalf("control service of vcenter-sim: %v", err)
	}
	out := mustCLI(t, append([]string{"backup", "--vm", "pgtest1", "--wait", "--job-id", "https-full", "--type", "full"}, nurl...)...)
	if !strings.Contains(out, "job https-full completed") {
		t.Fatalf("full backup:\n%s", out)
	}
	if _, err := simc.Write(ctx, simctl.WriteRequest{VM: "pgtest1", Percent: 2, Seed: 9}); err != nil {
		t.Fatal(err)
	}
	out = mustCLI(t, append([]string{"backup", "--vm", "pgtest1", "--wait", "--job-id", "https-inc"}, nurl...)...)
	if !strings.Contains(out, "job https-inc completed") {
		t.Fatalf("incremental backup:\n%s", out)
	}
	var inc backup.Job
	if err := json.Unmarshal([]byte(mustCLI(t, append([]string{"job", "https-inc", "--json"}, nurl...)...)), &inc); err != nil {
		t.Fatal(err)
	}
	if inc.Agent != "remote1" || len(inc.Disks) != 2 {
		t.Errorf("job https-inc: agent %q with %d disks, want remote1 with 2", inc.Agent, len(inc.Disks))
	}
	for _, d := range inc.Disks {
		if d.BackupType != schemas.TypeIncremental || d.Backing != "https-full" {
			t.Errorf("disk %d of https-inc: %s backing %q, want an incremental on https-full", d.Disk.Key, d.BackupType, d.Backing)
		}
	}
	if !strings.Contains(agent.out.String(), `"transport":"https /folder (nbdkit curl)"`) {
		t.Errorf("the agent does not say it reads over https")
	}

	for _, job := range []string{"https-full", "https-inc"} {
		dir := filepath.Join(t.TempDir(), job)
		out := mustCLI(t, append([]string{"restore", "--job", job, "--to", dir, "--verify"}, nurl...)...)
		if strings.Count(out, "identical") != 2 {
			t.Errorf("restore --verify of %s:\n%s", job, out)
		}
		for _, key := range []int32{2000, 2001} {
			fr, err := simc.FrozenChecksum(ctx, "pgtest1", "sendense-"+job, key)
			if err != nil {
				t.Fatal(err)
			}
			restored := filepath.Join(dir, fmt.Sprintf("%d.raw", key))
			if o, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", fr.Path, restored).CombinedOutput(); err != nil {
				t.Errorf("restored %s differs from the frozen image of job %s: %v %s", restored, job, err, o)
			}
			if fi, err := os.Stat(restored); err != nil || fi.Size() != fr.Size {
				t.Errorf("restored %s: %v, want %d bytes", restored, err, fr.Size)
			}
		}
	}

	for _, p := range []*proc{agent, sim, serve} {
		if code := p.stop(t); code != 0 {
			t.Errorf("sendense %s exited with %d after SIGTERM", p.name, code)
		}
	}
	if out, _ := exec.Command("pgrep", "-f", simData).Output(); len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("processes left on %s: %s", simData, out)
	}
}

// TestTransportFlags: a wrong transport choice is refused before anything
// starts, saying what is wrong.
func TestTransportFlags(t *testing.T) {
	t.Parallel()
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	vc := []string{"agent", "--data", t.TempDir(), "--vcenter-url", "https://127.0.0.1:1/sdk", "--vcenter-user", "u", "--vcenter-password-file", pw}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{append(vc, "--transport", "nfs"), `unknown --transport "nfs"`},
		{append(vc, "--transport", "vddk"), "--transport vddk needs --vddk-libdir"},
		{append(vc, "--vcenter-insecure", "--vcenter-ca", pw), "exclude each other"},
		{[]string{"agent", "--data", t.TempDir(), "--vcenter-url", "https://127.0.0.1:1/sdk"}, "needs --vcenter-user and --vcenter-password-file"},
		{[]string{"vcenter-sim", "--data", t.TempDir(), "--inventory", "huge"}, `unknown simulated inventory "huge"`},
		{[]string{"vcenter-sim", "--data", t.TempDir(), "--inventory", "scale:vms=0,disks=1,size=1MiB"}, `simulated inventory "scale:vms=0,disks=1,size=1MiB": vms=0 is not a number in [1, 10000]`},
		{[]string{"serve", "--data", t.TempDir(), "--simulate-vcenter", "--simulate-inventory", "scale:vms=2,disks=1"}, "size= is required"},
		{[]string{"vcenter-sim", "--data", t.TempDir(), "--password-file", "/nonexistent/pw"}, "read --password-file"},
		{[]string{"vcenter-sim", "--data", t.TempDir(), "--tls-cert", "/nonexistent/c.pem"}, "--tls-cert and --tls-key go together"},
		{[]string{"vcenter-sim", "--data", t.TempDir(), "--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"}, "load --tls-cert"},
	} {
		_, err := cli(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("sendense %s: %v, want an error saying %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
}
