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

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/testutil"
)

// TestServeNATSTLS: serve listening off loopback makes DATA/tls and
// requires TLS; a client on another host with the exported seed and CA
// connects with tls://, one without the CA is refused, and the hub's
// host finds the CA by itself.
func TestServeNATSTLS(t *testing.T) {
	data := t.TempDir()
	port := freePort(t)
	p := startProc(t, "serve", "--data", data, "--nats-listen", fmt.Sprintf("0.0.0.0:%d", port), "--nats-advertise", "127.0.0.1",
		"--api-listen", "none", "--log-format", "json")
	tlsURL := fmt.Sprintf("tls://127.0.0.1:%d", port)
	plainURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	ca := filepath.Join(data, "tls", "ca.pem")

	// The hub's host: the CA under --data is found.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := cli(t, "jobs", "--data", data, "--nats-url", plainURL)
		if err == nil {
			break
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("jobs on the hub's host: %v (serve exited: %v)", err, p.exited())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, f := range []string{"ca-key.pem", "server-key.pem"} {
		if fi, err := os.Stat(filepath.Join(data, "tls", f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, fi, err)
		}
	}
	opts := bus.Creds{Dir: filepath.Join(data, "creds")}.Options(bus.Identity{Role: bus.RoleMonitor})
	opts.URLs, opts.TLSCA = []string{tlsURL}, ca
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, opts, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if !nc.TLSRequired() {
		t.Error("serve off loopback does not require tls")
	}
	nc.Close()

	// Another host: only what creds export wrote.
	other := filepath.Join(t.TempDir(), "other")
	out := mustCLI(t, "creds", "export", "--data", data, "--role", "requester", "--out", other)
	if !strings.Contains(out, filepath.Join(other, "tls", "ca.pem")) {
		t.Errorf("creds export output %q does not name the CA", out)
	}
	mustCLI(t, "jobs", "--data", other, "--nats-url", tlsURL)
	mustCLI(t, "jobs", "--data", t.TempDir(), "--nats-url", plainURL, "--nats-ca", filepath.Join(other, "tls", "ca.pem"),
		"--nats-nkey", filepath.Join(other, "creds", "requester.nk"))
	if _, err := cli(t, "jobs", "--data", t.TempDir(), "--nats-url", tlsURL, "--nats-nkey", filepath.Join(other, "creds", "requester.nk")); err == nil ||
		!strings.Contains(err.Error(), "certificate") {
		t.Errorf("jobs without the CA: %v, want a certificate error", err)
	}

	// The nats CLI contexts serve wrote verify against the CA.
	ctxFile := filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "nats", "context", "sendense.json")
	raw, err := os.ReadFile(ctxFile)
	if err != nil {
		t.Fatal(err)
	}
	var nctx map[string]string
	if err := json.Unmarshal(raw, &nctx); err != nil {
		t.Fatal(err)
	}
	if nctx["ca"] != ca || nctx["url"] != tlsURL {
		t.Errorf("nats context %v: want ca %s and url %s", nctx, ca, tlsURL)
	}
	natsCLI := testutil.NATSCLI(t)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	if out, err := exec.CommandContext(ctx2, natsCLI, "--context", "sendense", "rtt").CombinedOutput(); err != nil {
		t.Errorf("nats --context sendense rtt over tls: %v\n%s", err, out)
	}
}

// TestCredsServerConfigTLS: the configuration creds server-config --tls
// prints, with a certificate from creds tls, runs a real nats-server that
// requires TLS and admits an agent with its seed and the CA.
func TestCredsServerConfigTLS(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	init := mustCLI(t, "creds", "init", "--data", data, "--agent", "node1")
	if !strings.Contains(init, filepath.Join(data, "tls", "ca.pem")) {
		t.Errorf("creds init output does not name the CA:\n%s", init)
	}
	certs := filepath.Join(t.TempDir(), "nats1")
	mustCLI(t, "creds", "tls", "--data", data, "--host", "nats1.example", "--ip", "127.0.0.1", "--out", certs)
	conf := mustCLI(t, "creds", "server-config", "--data", data, "--tls", "--tls-dir", certs)
	for _, want := range []string{"cert_file: " + fmt.Sprintf("%q", filepath.Join(certs, "server.pem")), "ca_file:", "authorization {"} {
		if !strings.Contains(conf, want) {
			t.Errorf("server config lacks %q:\n%s", want, conf)
		}
	}
	url := bustest.ExternalWithConfig(t, conf)
	if !strings.HasPrefix(url, "tls://") {
		t.Fatalf("server url %s, want tls://", url)
	}
	opts := bus.Creds{Dir: filepath.Join(data, "creds")}.Options(bus.AgentIdentity("node1"))
	opts.URLs, opts.TLSCA = []string{url}, filepath.Join(data, "tls", "ca.pem")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, opts, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !nc.TLSRequired() {
		t.Error("server from server-config --tls does not require tls")
	}

	cluster := mustCLI(t, "creds", "server-config", "--data", data, "--tls", "--tls-dir", certs, "--name", "nats1",
		"--cluster-listen", "0.0.0.0:6222", "--routes", "nats-route://nats1.example:6222,nats-route://nats2.example:6222")
	if !strings.Contains(cluster, "cluster {") || strings.Count(cluster, "tls {") != 2 || !strings.Contains(cluster, "verify: true") {
		t.Errorf("cluster config without route tls:\n%s", cluster)
	}

	for _, bad := range [][]string{
		{"creds", "tls", "--data", data, "--ip", "127.0.0.1"},
		{"creds", "tls", "--data", data, "--out", t.TempDir()},
		{"creds", "tls", "--data", data, "--ip", "not-an-ip", "--out", t.TempDir()},
		{"creds", "server-config", "--data", data, "--routes", "nats-route://a:6222"},
		{"creds", "export", "--data", data, "--out", t.TempDir()},
		{"creds", "export", "--data", data, "--agent", "nobody", "--out", t.TempDir()},
	} {
		if out, err := cli(t, bad...); err == nil {
			t.Errorf("%v succeeded: %s", bad, out)
		}
	}
	// A relative --tls-dir is kept relative: nats-server resolves it from
	// its working directory, where a deployment mounts the node's files.
	out := mustCLI(t, "creds", "server-config", "--data", data, "--tls", "--tls-dir", "tls", "--store-dir", "js")
	for _, want := range []string{`"tls/server.pem"`, `"tls/server-key.pem"`, `"tls/ca.pem"`, `"js"`} {
		if !strings.Contains(out, want) {
			t.Errorf("server-config with relative paths lacks %s:\n%s", want, out)
		}
	}
}

// TestNATSOptionsCA: the CA under --data is used by itself; TLS is then
// required unless every URL is on loopback; --nats-ca always requires it.
func TestNATSOptionsCA(t *testing.T) {
	t.Parallel()
	a := &app{dataDir: t.TempDir()}
	if o := a.natsOptions("x", []string{"tls://10.0.0.1:4222"}); o.TLSCA != "" {
		t.Errorf("no CA under --data: TLSCA %q", o.TLSCA)
	}
	ca, err := a.tlsDir().EnsureCA()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		urls     []string
		explicit string
		ifOffer  bool
	}{
		{nil, "", true},
		{[]string{"nats://127.0.0.1:4222"}, "", true},
		{[]string{"localhost:4222,nats://[::1]:4222"}, "", true},
		{[]string{"nats://127.0.0.1:4222", "nats://10.0.0.2:4222"}, "", false},
		{[]string{"hub.example:4222"}, "", false},
		{[]string{"nats://127.0.0.1:4222"}, "/elsewhere/ca.pem", false},
	}
	for _, tt := range tests {
		a.nats.tlsCA = tt.explicit
		o := a.natsOptions("x", tt.urls)
		wantCA := ca
		if tt.explicit != "" {
			wantCA = tt.explicit
		}
		if o.TLSCA != wantCA || o.TLSIfOffered != tt.ifOffer {
			t.Errorf("urls %v, --nats-ca %q: TLSCA %q TLSIfOffered %v; want %q %v", tt.urls, tt.explicit, o.TLSCA, o.TLSIfOffered, wantCA, tt.ifOffer)
		}
	}
}
