package nbd_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/nbd"
)

const (
	testIdentity = "sendense"
	testKey      = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	otherKey     = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
)

// pskFile writes "identity:key" in a private file and returns its path.
func pskFile(t *testing.T, identity, key string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys.psk")
	if err := os.WriteFile(p, []byte(identity+":"+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startQemuNbdTLS serves image with qemu-nbd on a free loopback port with
// TLS-PSK (testIdentity, testKey) and returns the port. Stopped in cleanup.
func startQemuNbdTLS(t *testing.T, image string) int {
	t.Helper()
	bin := testutil.RequireTool(t, "qemu-nbd")
	dir := filepath.Dir(pskFile(t, testIdentity, testKey))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "-f", "qcow2", "-t", "--shared=4", "--bind=127.0.0.1", fmt.Sprintf("--port=%d", port),
		"--object", "tls-creds-psk,id=tls0,endpoint=server,dir="+dir, "--tls-creds=tls0", image)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu-nbd: %v", err)
	}
	t.Cleanup(func() { stop(cmd) })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return port
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-nbd on port %d not ready: %v", port, err)
		}
	}
}

// TestTLSPSK: a TLS-PSK export of qemu-nbd is read and written with the
// key; a plain client, a wrong key, a wrong identity and an nbd:// URI
// with a key fail with clear errors.
func TestTLSPSK(t *testing.T) {
	port := startQemuNbdTLS(t, qcow2(t, 4<<20))
	uri := fmt.Sprintf("nbds://127.0.0.1:%d/", port)
	ctx := ctxT(t, 30*time.Second)

	h, err := nbd.Open(ctx, uri, nbd.Options{TLS: &nbd.TLS{PSKFile: pskFile(t, testIdentity, testKey), Username: testIdentity}})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte(strings.Repeat("tls!", 1024))
	if err := h.Pwrite(ctx, want, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if err := h.Pread(ctx, got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatal("read back differs")
	}
	if err := h.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	h.Close()

	for _, tc := range []struct {
		name string
		uri  string
		tls  *nbd.TLS
		want error
	}{
		{"plain client", fmt.Sprintf("nbd://127.0.0.1:%d/", port), nil, nil},
		{"wrong key", uri, &nbd.TLS{PSKFile: pskFile(t, testIdentity, otherKey), Username: testIdentity}, nbd.ErrTLS},
		{"wrong identity", uri, &nbd.TLS{PSKFile: pskFile(t, "other", testKey), Username: "other"}, nbd.ErrTLS},
		{"missing file", uri, &nbd.TLS{PSKFile: filepath.Join(t.TempDir(), "none.psk"), Username: testIdentity}, nbd.ErrTLS},
		{"plain uri with key", fmt.Sprintf("nbd://127.0.0.1:%d/", port), &nbd.TLS{PSKFile: pskFile(t, testIdentity, testKey), Username: testIdentity}, nbd.ErrTLSURI},
		{"no username", uri, &nbd.TLS{PSKFile: pskFile(t, testIdentity, testKey)}, nbd.ErrTLSURI},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := nbd.Open(ctx, tc.uri, nbd.Options{TLS: tc.tls, ConnectTimeout: 5 * time.Second})
			if err == nil {
				h.Close()
				t.Fatal("Open succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want errors.Is %v", err, tc.want)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v: a refusal must not wait for the deadline", err)
			}
			if strings.Contains(err.Error(), testKey) || strings.Contains(err.Error(), otherKey) {
				t.Errorf("error holds a key: %v", err)
			}
			t.Logf("%s: %v", tc.name, err)
		})
	}
}
