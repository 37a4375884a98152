package hub_test

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/repository"
)

// holdPort listens on a free loopback port, as another program would, and
// returns it; the listener closes in cleanup.
func holdPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// pskURI is the URI nbdcopy reads an export with: its port on loopback,
// the key from a private file.
func pskURI(t *testing.T, uri string, psk repository.PSK) string {
	t.Helper()
	dir, err := psk.WriteDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	port := portOf(t, uri)
	return "nbds://" + psk.Identity + "@127.0.0.1:" + strconv.Itoa(port) + "/?tls-psk-file=" + filepath.Join(dir, repository.PSKFileName)
}

func portOf(t *testing.T, uri string) int {
	t.Helper()
	_, rest, _ := strings.Cut(uri, "://")
	_, port, err := net.SplitHostPort(strings.TrimSuffix(rest, "/"))
	if err != nil {
		t.Fatalf("uri %q: %v", uri, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("uri %q: %v", uri, err)
	}
	return n
}

// TestTCPExports: with Listen set, targets and restore exports are served
// over TCP with TLS only: the reply carries an nbds:// URI on the
// advertised host and a fresh key per export; a plain client is refused; a
// port taken by another program is skipped; the key is in no log line.
func TestTCPExports(t *testing.T) {
	taken := holdPort(t)
	logs := &testutil.Buffer{}
	e := newSvcEnv(t, func(o *hub.RepoOptions) {
		o.Listen = "127.0.0.1"
		o.Advertise = "backup-hub.example"
		o.Ports = hub.PortRange{Lo: taken, Hi: taken + 40}
		o.Log = zerolog.New(zerolog.MultiLevelWriter(logs, zerolog.NewTestWriter(t))).Level(zerolog.DebugLevel)
	})
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 7)

	out, _ := e.mustOpen(t, openReq("job-tls", ""))
	if out.TLS == nil {
		t.Fatalf("open reply over tcp has no key: %+v", out)
	}
	if err := out.TLS.Validate(); err != nil || out.TLS.Identity != repository.PSKIdentity {
		t.Errorf("key of identity %q: %v", out.TLS.Identity, err)
	}
	if !strings.HasPrefix(out.URI, "nbds://backup-hub.example:") || !strings.HasSuffix(out.URI, "/") {
		t.Errorf("uri %q, want nbds://backup-hub.example:PORT/", out.URI)
	}
	if p := portOf(t, out.URI); p == taken || p < taken || p > taken+40 {
		t.Errorf("port %d, want in %d-%d and not the taken %d", p, taken, taken+40, taken)
	}
	if strings.Contains(out.URI, out.TLS.Key) {
		t.Errorf("uri holds the key")
	}
	if b, err := runNbdcopy(t, raw, "nbd://127.0.0.1:"+strconv.Itoa(portOf(t, out.URI))+"/"); err == nil {
		t.Errorf("a plain nbd:// client wrote to the target: %s", b)
	}
	nbdcopy(t, raw, pskURI(t, out.URI, *out.TLS))
	if _, err := e.client.Close(ctx, ref("job-tls")); err != nil {
		t.Fatal(err)
	}
	if !compareImages(t, raw, out.Path) {
		t.Fatal("target differs from the source written over tls")
	}

	rs, err := e.client.OpenRestore(ctx, ref("job-tls"))
	if err != nil {
		t.Fatal(err)
	}
	if rs.TLS == nil || !strings.HasPrefix(rs.URI, "nbds://backup-hub.example:") {
		t.Fatalf("restore reply uri %q key %v, want nbds:// and a key", rs.URI, rs.TLS)
	}
	if rs.TLS.Key == out.TLS.Key {
		t.Error("restore export reuses the target's key")
	}
	restored := filepath.Join(t.TempDir(), "restored.raw")
	nbdcopy(t, pskURI(t, rs.URI, *rs.TLS), restored)
	a, _ := os.ReadFile(raw)
	b, _ := os.ReadFile(restored)
	if !bytes.Equal(a, b) {
		t.Error("restored disk differs")
	}
	if err := e.client.CloseRestore(ctx, rs.ExportID); err != nil {
		t.Fatal(err)
	}
	e.assertNoExports(t)

	for _, key := range []string{out.TLS.Key, rs.TLS.Key} {
		if strings.Contains(logs.String(), key) {
			t.Errorf("a key is in the service's logs")
		}
	}
	if !strings.Contains(logs.String(), "nbds://backup-hub.example:") {
		t.Error("logs captured nothing of the opens: the key check checked nothing")
	}
}

// TestTCPExportsPortsExhausted: when every port of the range is taken the
// open answers CodeUnavailable and leaves no file or export.
func TestTCPExportsPortsExhausted(t *testing.T) {
	taken := holdPort(t)
	e := newSvcEnv(t, func(o *hub.RepoOptions) {
		o.Listen = "127.0.0.1"
		o.Ports = hub.PortRange{Lo: taken, Hi: taken}
	})
	_, err := e.client.Open(testCtx(t), openReq("job-noport", ""))
	if serviceCode(err) != repoapi.CodeUnavailable {
		t.Fatalf("open with every port taken: %v (code %q), want %s", err, serviceCode(err), repoapi.CodeUnavailable)
	}
	assertNoFile(t, e.diskPath(testDisk, "job-noport"))
	e.assertNoExports(t)
}

// TestRepoOptionsTCP: listen, advertise and port range settings that could
// not work are refused when the service is made.
func TestRepoOptionsTCP(t *testing.T) {
	repo, err := repository.Open(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	repos := map[string]*repository.Repo{testRepo: repo}
	for _, tc := range []struct {
		name string
		opts hub.RepoOptions
		want string
	}{
		{"unspecified listen without advertise", hub.RepoOptions{Listen: "0.0.0.0"}, "advertised address"},
		{"unspecified v6 listen without advertise", hub.RepoOptions{Listen: "::"}, "advertised address"},
		{"advertise without listen", hub.RepoOptions{Advertise: "hub"}, "without a listen address"},
		{"reversed ports", hub.RepoOptions{Listen: "127.0.0.1", Ports: hub.PortRange{Lo: 2000, Hi: 1000}}, "port range"},
		{"port 0", hub.RepoOptions{Listen: "127.0.0.1", Ports: hub.PortRange{Lo: 0, Hi: 10}}, "port range"},
		{"port too big", hub.RepoOptions{Listen: "127.0.0.1", Ports: hub.PortRange{Lo: 65000, Hi: 70000}}, "port range"},
	} {
		tc.opts.Repositories = repos
		if _, err := hub.NewRepoService(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: NewRepoService = %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := hub.NewRepoService(hub.RepoOptions{Repositories: repos, Listen: "0.0.0.0", Advertise: "hub.example"}); err != nil {
		t.Errorf("listen on every address with an advertised name: %v", err)
	}

	for in, want := range map[string]hub.PortRange{"10809-10909": {10809, 10909}, "7000": {7000, 7000}, " 1 - 2 ": {1, 2}} {
		if got, err := hub.ParsePortRange(in); err != nil || got != want {
			t.Errorf("ParsePortRange(%q) = %v, %v, want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "a-b", "10-", "2-1", "0-5", "1-65536", "1-2-3"} {
		if _, err := hub.ParsePortRange(in); err == nil {
			t.Errorf("ParsePortRange(%q) accepted", in)
		}
	}
}
