package bus_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no pem block", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func verifyFor(t *testing.T, caFile, certFile, host string) error {
	t.Helper()
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(ca)
	_, err = readCert(t, certFile).Verify(x509.VerifyOptions{Roots: pool, DNSName: host})
	return err
}

// TestTLSDir: the CA and the server certificate are made once, with keys
// readable by their owner only; reused while they name every host; a new
// advertised host gets a new certificate from the same CA.
func TestTLSDir(t *testing.T) {
	d := bus.TLSDir{Dir: filepath.Join(t.TempDir(), "tls")}
	files, err := d.EnsureServer([]string{"0.0.0.0", "hub.example"})
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{
		files.CA: 0o644, filepath.Join(d.Dir, bus.TLSCAKeyFile): 0o600, files.Cert: 0o644, files.Key: 0o600, d.Dir: 0o700,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	ca := readCert(t, files.CA)
	if !ca.IsCA || time.Until(ca.NotAfter) < 10*365*24*time.Hour {
		t.Errorf("ca: IsCA %v, valid until %v; want a long-lived CA", ca.IsCA, ca.NotAfter)
	}
	for _, h := range []string{"hub.example", "localhost", "127.0.0.1"} {
		if err := verifyFor(t, files.CA, files.Cert, h); err != nil {
			t.Errorf("server certificate for %s: %v", h, err)
		}
	}
	if err := verifyFor(t, files.CA, files.Cert, "other.example"); err == nil {
		t.Error("server certificate valid for a host it was not made for")
	}

	before, _ := os.ReadFile(files.Cert)
	if _, err := d.EnsureServer([]string{"hub.example"}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(files.Cert); !bytes.Equal(before, after) {
		t.Error("server certificate reissued although it names every host")
	}
	caBefore, _ := os.ReadFile(files.CA)
	if _, err := d.EnsureServer([]string{"hub.example", "10.1.2.3"}); err != nil {
		t.Fatal(err)
	}
	if err := verifyFor(t, files.CA, files.Cert, "10.1.2.3"); err != nil {
		t.Errorf("server certificate after a new advertised address: %v", err)
	}
	if caAfter, _ := os.ReadFile(files.CA); !bytes.Equal(caBefore, caAfter) {
		t.Error("the CA changed when the server certificate was reissued")
	}

	// Another host's certificate from the same CA.
	out := filepath.Join(t.TempDir(), "nats2")
	f2, err := d.IssueServer(out, []string{"nats2.example", "10.0.0.2"})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"nats2.example", "10.0.0.2"} {
		if err := verifyFor(t, files.CA, f2.Cert, h); err != nil {
			t.Errorf("issued certificate for %s: %v", h, err)
		}
	}
	if got, _ := os.ReadFile(f2.CA); !bytes.Equal(got, caBefore) {
		t.Error("issued files do not carry the CA")
	}
	if fi, err := os.Stat(f2.Key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("issued key: %v, %v; want mode 0600", fi, err)
	}
}

func TestTLSDirErrors(t *testing.T) {
	noKey := bus.TLSDir{Dir: t.TempDir()}
	if _, err := noKey.EnsureCA(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(noKey.Dir, bus.TLSCAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := noKey.EnsureServer(nil); !errors.Is(err, bus.ErrTLSFiles) {
		t.Errorf("ca without its key: %v, want ErrTLSFiles", err)
	}
	d := bus.TLSDir{Dir: t.TempDir()}
	if _, err := d.IssueServer(t.TempDir(), nil); !errors.Is(err, bus.ErrTLSFiles) {
		t.Errorf("issue without hosts: %v, want ErrTLSFiles", err)
	}
	if _, err := d.IssueServer(d.Dir, []string{"x"}); !errors.Is(err, bus.ErrTLSFiles) {
		t.Errorf("issue into the CA's directory: %v, want ErrTLSFiles", err)
	}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if nc, err := bus.Connect(testCtx(t), bus.Options{TLSCA: notPEM}, bustest.Logger(t)); !errors.Is(err, bus.ErrTLSFiles) {
		if nc != nil {
			nc.Close()
		}
		t.Errorf("connect with a ca file that is not pem: %v, want ErrTLSFiles", err)
	}
	if _, err := bus.StartEmbedded(testCtx(t), bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:-1", TLS: true, Users: someUsers(t)}); err == nil {
		t.Error("tls without a tls directory started")
	}
}

// loopbackURL is the server's client URL with 127.0.0.1 for an
// unspecified listen host.
func loopbackURL(t *testing.T, e *bus.Embedded) string {
	t.Helper()
	u, err := url.Parse(e.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Host = net.JoinHostPort("127.0.0.1", u.Port())
	return u.String()
}

// TestEmbeddedTLS: off loopback the embedded server requires TLS with a
// certificate of DATA/tls; a client that trusts the CA connects over TLS,
// a plain client and one that does not trust the CA are refused.
func TestEmbeddedTLS(t *testing.T) {
	c := bus.Creds{Dir: t.TempDir()}
	admin := bus.Identity{Role: bus.RoleAdmin}
	if err := c.Ensure(admin); err != nil {
		t.Fatal(err)
	}
	users, err := c.Users()
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(t.TempDir(), "tls")
	e, err := bus.StartEmbedded(testCtx(t), bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "0.0.0.0:-1", TLSDir: tlsDir,
		Users: users, Log: bustest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	if !e.TLS() || !strings.HasPrefix(e.ClientURL(), "tls://") {
		t.Fatalf("server off loopback: TLS %v, url %s; want tls", e.TLS(), e.ClientURL())
	}
	ca := bus.TLSDir{Dir: tlsDir}.CAFile()
	u := loopbackURL(t, e)
	plainURL := "nats://" + strings.TrimPrefix(u, "tls://")

	for _, tc := range []struct {
		name string
		opts bus.Options
	}{
		{"tls url", bus.Options{URLs: []string{u}, TLSCA: ca}},
		{"nats url with ca", bus.Options{URLs: []string{plainURL}, TLSCA: ca}},
		{"ca if offered", bus.Options{URLs: []string{plainURL}, TLSCA: ca, TLSIfOffered: true}},
	} {
		opts := c.Options(admin)
		opts.URLs, opts.TLSCA, opts.TLSIfOffered = tc.opts.URLs, tc.opts.TLSCA, tc.opts.TLSIfOffered
		nc, err := bus.Connect(testCtx(t), opts, bustest.Logger(t))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !nc.TLSRequired() {
			t.Errorf("%s: server does not require tls", tc.name)
		}
		if st, err := nc.TLSConnectionState(); err != nil || !st.HandshakeComplete || st.Version < tls.VersionTLS12 {
			t.Errorf("%s: tls state %+v, %v; want a completed TLS 1.2+ handshake", tc.name, st, err)
		}
		nc.Close()
	}

	// A plain client is refused even with the right seed.
	seedOpt, err := nats.NkeyOptionFromSeed(c.File(admin))
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(plainURL, seedOpt, nats.Timeout(5*time.Second), func(o *nats.Options) error { o.TLSConfig = nil; return nil }); err == nil {
		nc.Close()
		t.Error("a client without TLS connected")
	}
	// A raw TCP client gets no INFO it could use without TLS: the server
	// says tls_required.
	wantTLSRequired(t, strings.TrimPrefix(plainURL, "nats://"))
	// A client that does not trust the CA is refused.
	other := bus.TLSDir{Dir: t.TempDir()}
	otherCA, err := other.EnsureCA()
	if err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string]bus.Options{
		"system cas": {URLs: []string{u}},
		"another ca": {URLs: []string{u}, TLSCA: otherCA},
	} {
		o := c.Options(admin)
		o.URLs, o.TLSCA = opts.URLs, opts.TLSCA
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		nc, err := bus.Connect(ctx, o, bustest.Logger(t))
		cancel()
		if err == nil {
			nc.Close()
			t.Errorf("%s: a client that does not trust the server's CA connected", name)
		} else if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s: %v, want a certificate error", name, err)
		}
	}

	// Restarted, the server keeps its CA and certificate.
	caBefore, _ := os.ReadFile(ca)
	e.Shutdown()
	e2, err := bus.StartEmbedded(testCtx(t), bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "0.0.0.0:-1", TLSDir: tlsDir,
		Users: users, Log: bustest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e2.Shutdown()
	if caAfter, _ := os.ReadFile(ca); !bytes.Equal(caBefore, caAfter) {
		t.Error("the CA changed at a restart")
	}
}

// TestEmbeddedLoopbackPlain: on loopback the server stays in clear text
// unless TLS is asked, and a client with the hub's CA found on its host
// (TLSIfOffered) still connects; one given the CA explicitly insists on
// TLS.
func TestEmbeddedLoopbackPlain(t *testing.T) {
	tlsDir := filepath.Join(t.TempDir(), "tls")
	ca, err := bus.TLSDir{Dir: tlsDir}.EnsureCA()
	if err != nil {
		t.Fatal(err)
	}
	e, err := bus.StartEmbedded(testCtx(t), bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:-1", TLSDir: tlsDir,
		NoAuth: true, Log: bustest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	if e.TLS() || !strings.HasPrefix(e.ClientURL(), "nats://") {
		t.Fatalf("loopback server: TLS %v, url %s; want clear text", e.TLS(), e.ClientURL())
	}
	nc, err := bus.Connect(testCtx(t), bus.Options{URLs: []string{e.ClientURL()}, TLSCA: ca, TLSIfOffered: true}, bustest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if nc, err := bus.Connect(ctx, bus.Options{URLs: []string{e.ClientURL()}, TLSCA: ca}, bustest.Logger(t)); err == nil {
		nc.Close()
		t.Error("a client given a CA connected to a server without TLS")
	}

	e2, err := bus.StartEmbedded(testCtx(t), bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:-1", TLSDir: tlsDir, TLS: true,
		NoAuth: true, Log: bustest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e2.Shutdown)
	if !e2.TLS() {
		t.Fatal("TLS asked on loopback, server without")
	}
}

// TestClusterTLS: the routes of an embedded cluster with TLS are TLS too
// (mutual, against the CA), and the cluster forms and replicates.
func TestClusterTLS(t *testing.T) {
	creds := bus.Creds{Dir: t.TempDir()}
	admin := bus.Identity{Role: bus.RoleAdmin}
	if err := creds.Ensure(admin); err != nil {
		t.Fatal(err)
	}
	users, err := creds.Users()
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(t.TempDir(), "tls")
	c := bustest.SecureClusterWith(t, 3, users, func(i int, o *bus.EmbeddedOptions) { o.TLSDir, o.TLS = tlsDir, true })
	for i, s := range c.Servers {
		if !s.TLS() {
			t.Errorf("server %d without tls", i)
		}
		wantRouteTLS(t, strings.TrimPrefix(s.ClusterURL(), "nats-route://"), bus.TLSDir{Dir: tlsDir}.Files())
	}
	opts := creds.Options(admin)
	opts.URLs, opts.TLSCA = c.URLs, bus.TLSDir{Dir: tlsDir}.CAFile()
	nc, err := bus.Connect(testCtx(t), opts, bustest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !nc.TLSRequired() {
		t.Error("cluster client connection without tls")
	}
}

// wantTLSRequired reads the INFO a NATS port (client or route) sends
// first and wants it to say tls_required.
func wantTLSRequired(t *testing.T, hostPort string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", hostPort, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, _ := conn.Read(buf)
	if !strings.Contains(string(buf[:n]), `"tls_required":true`) {
		t.Errorf("%s: INFO %q does not require tls", hostPort, buf[:n])
	}
}

// wantRouteTLS checks that a route port speaks mutual TLS: a handshake
// with a certificate of the CA completes and one without is refused.
func wantRouteTLS(t *testing.T, hostPort string, files bus.TLSFiles) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(files.CA)
	pool.AppendCertsFromPEM(ca)
	dial := func(certs []tls.Certificate) error {
		d := &net.Dialer{Timeout: 5 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", hostPort, &tls.Config{RootCAs: pool, Certificates: certs, ServerName: "127.0.0.1"})
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		// TLS 1.3 reports a refused client certificate on the first read.
		_, err = conn.Read(make([]byte, 1))
		return err
	}
	if err := dial([]tls.Certificate{pair}); err != nil {
		t.Errorf("route %s: tls handshake with the CA's certificate: %v", hostPort, err)
	}
	if err := dial(nil); err == nil {
		t.Errorf("route %s: tls without a client certificate accepted", hostPort)
	}
}
