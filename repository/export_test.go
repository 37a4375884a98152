package repository

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/internal/testutil"
)

// socketOf returns the socket path of a unix export.
func socketOf(t *testing.T, e *Export) string {
	t.Helper()
	s, ok := strings.CutPrefix(e.URI(), "nbd+unix:///?socket=")
	if !ok {
		t.Fatalf("URI %q is not nbd+unix", e.URI())
	}
	return s
}

// assertClosed checks that an export left no process, socket or registry entry.
func assertClosed(t *testing.T, r *Repo, e *Export) {
	t.Helper()
	if !processGone(e.PID()) {
		t.Errorf("qemu-nbd pid %d still exists", e.PID())
	}
	if e.sockDir != "" && fileExists(e.sockDir) {
		t.Errorf("socket directory %s still exists", e.sockDir)
	}
	for _, o := range r.Exports() {
		if o == e {
			t.Error("export still registered")
		}
	}
}

// TestExportChain writes a full and an incremental through writable exports,
// relying on Close for the flush, then reads each chain point back through
// read-only exports.
func TestExportChain(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	tmp := t.TempDir()
	a := filepath.Join(tmp, "a.raw")
	b := filepath.Join(tmp, "b.raw")
	base := writeRaw(t, a, 11)
	overlay(t, b, base, 12)

	full := mustCreate(t, r, ctx, "full", "")
	e := mustExport(t, r, ctx, full, ExportOptions{})
	sock := socketOf(t, e)
	if st, err := os.Stat(filepath.Dir(sock)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v, %v; want 0700", st.Mode(), err)
	}
	if len(sock) >= MaxSocketPath {
		t.Errorf("socket path of %d bytes", len(sock))
	}
	if e.Path() != full || e.Owner() != "full" || e.ReadOnly() {
		t.Errorf("export path %s owner %s read-only %t", e.Path(), e.Owner(), e.ReadOnly())
	}
	nbdcopy(t, a, e.URI())
	if err := r.Remove(testVM, 2000, "full"); !errors.Is(err, ErrBusy) {
		t.Errorf("Remove of an exported file = %v, want ErrBusy", err)
	}
	if err := r.Check(ctx, full); !errors.Is(err, ErrBusy) {
		t.Errorf("Check of a file exported writable = %v, want ErrBusy", err)
	}
	if _, err := r.Export(ctx, full, exportOpts(t, ExportOptions{ReadOnly: true})); !errors.Is(err, ErrBusy) {
		t.Errorf("read-only export of a file exported writable = %v, want ErrBusy", err)
	}
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	assertClosed(t, r, e)
	if err := e.ExitErr(); err != nil {
		t.Errorf("ExitErr after Close = %v", err)
	}
	mustEqual(t, r, full, a)
	if err := r.Check(ctx, full); err != nil {
		t.Errorf("Check after Close = %v", err)
	}

	inc := mustCreate(t, r, ctx, "inc", "full")
	e = mustExport(t, r, ctx, inc, ExportOptions{})
	nbdcopy(t, b, e.URI())
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	assertClosed(t, r, e)
	mustEqual(t, r, inc, b)
	mustEqual(t, r, full, a)

	// Read each chain point back through read-only exports, two at once
	// on the base (the incremental's export opens it read-only too).
	tests := []struct{ path, want string }{{full, a}, {inc, b}, {full, a}}
	var exps []*Export
	for i, tt := range tests {
		ro := mustExport(t, r, ctx, tt.path, ExportOptions{ReadOnly: true, Shared: 1})
		if !ro.ReadOnly() {
			t.Error("export not read-only")
		}
		out := filepath.Join(tmp, "out"+string(rune('0'+i))+".raw")
		nbdcopy(t, ro.URI(), out)
		mustEqual(t, r, out, tt.want)
		exps = append(exps, ro)
	}
	if _, err := r.Export(ctx, full, exportOpts(t, ExportOptions{})); !errors.Is(err, ErrBusy) {
		t.Errorf("writable export of a file exported read-only = %v, want ErrBusy", err)
	}
	if len(r.Exports()) != 3 {
		t.Errorf("%d exports registered, want 3", len(r.Exports()))
	}
	for _, ro := range exps {
		if err := ro.Close(ctx); err != nil {
			t.Error(err)
		}
		assertClosed(t, r, ro)
	}
	if err := r.Remove(testVM, 2000, "full"); !errors.Is(err, ErrIsBacking) {
		t.Errorf("Remove of a backing file = %v, want ErrIsBacking", err)
	}
}

// TestCloseWithClientConnected: SIGTERM stops qemu-nbd cleanly even while a
// client holds a connection, without falling back to SIGKILL.
func TestCloseWithClientConnected(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	e := mustExport(t, r, ctx, full, ExportOptions{})
	c, err := net.Dial("unix", socketOf(t, e))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	greeting := make([]byte, 18) // NBDMAGIC IHAVEOPT flags
	if _, err := io.ReadFull(c, greeting); err != nil || string(greeting[:8]) != "NBDMAGIC" {
		t.Fatalf("read greeting: %q, %v", greeting, err)
	}
	start := time.Now()
	if err := e.Close(ctx); err != nil {
		t.Fatalf("Close with a client connected = %v", err)
	}
	t.Logf("close took %s", time.Since(start))
	assertClosed(t, r, e)
}

func TestCloseAfterExternalKill(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	e := mustExport(t, r, ctx, full, ExportOptions{})
	if err := syscall.Kill(e.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("qemu-nbd not reaped after SIGKILL")
	}
	if err := e.ExitErr(); !errors.Is(err, ErrExportDied) {
		t.Errorf("ExitErr = %v, want ErrExportDied", err)
	}
	if err := e.Close(ctx); err != nil {
		t.Errorf("Close after external kill = %v, want nil", err)
	}
	if err := e.Close(ctx); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	assertClosed(t, r, e)
	// The file is free again.
	e2 := mustExport(t, r, ctx, full, ExportOptions{})
	if err := e2.Close(ctx); err != nil {
		t.Error(err)
	}
}

func TestCloseConcurrentIdempotent(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	e := mustExport(t, r, ctx, full, ExportOptions{ReadOnly: true})
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = e.Close(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Close %d = %v", i, err)
		}
	}
	assertClosed(t, r, e)
}

func TestCloseCancelledKills(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	e := mustExport(t, r, ctx, full, ExportOptions{})
	// Stop qemu-nbd so it cannot act on SIGTERM; a cancelled ctx must
	// make Close kill it rather than wait.
	if err := syscall.Kill(e.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err := e.Close(cctx)
	if !errors.Is(err, ErrKilled) || !errors.Is(err, context.Canceled) {
		t.Errorf("Close with a cancelled ctx = %v, want ErrKilled and context.Canceled", err)
	}
	assertClosed(t, r, e)
}

func TestReap(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	ea := mustExport(t, r, ctx, mustCreate(t, r, ctx, "job-a", ""), ExportOptions{})
	eb := mustExport(t, r, ctx, mustCreate(t, r, ctx, "job-b", ""), ExportOptions{})
	ro := mustExport(t, r, ctx, mustCreate(t, r, ctx, "job-c", ""), ExportOptions{ReadOnly: true, Owner: "restore-1"})
	if ro.Owner() != "restore-1" || ea.Owner() != "job-a" {
		t.Errorf("owners %q %q", ro.Owner(), ea.Owner())
	}

	var asked []string
	reaped, err := r.Reap(ctx, func(owner string) bool {
		asked = append(asked, owner)
		return owner == "job-a"
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(asked) != 3 {
		t.Errorf("keep asked about %v, want 3 owners", asked)
	}
	if len(reaped) != 2 || !(reaped[0] == eb && reaped[1] == ro || reaped[0] == ro && reaped[1] == eb) {
		t.Errorf("reaped %v, want job-b's and restore-1's exports", reaped)
	}
	assertClosed(t, r, eb)
	assertClosed(t, r, ro)
	if got := r.Exports(); len(got) != 1 || got[0] != ea {
		t.Fatalf("exports after reap: %v, want job-a's only", got)
	}

	// An export whose qemu-nbd died is reaped even if its owner is kept.
	if err := syscall.Kill(ea.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-ea.Done()
	reaped, err = r.Reap(ctx, func(string) bool { return true })
	if err != nil || len(reaped) != 1 || reaped[0] != ea {
		t.Errorf("Reap of a dead export = %v, %v", reaped, err)
	}
	assertClosed(t, r, ea)
	if len(r.Exports()) != 0 {
		t.Errorf("%d exports left", len(r.Exports()))
	}
}

func TestRepoClose(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	e := mustExport(t, r, ctx, full, ExportOptions{})
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	assertClosed(t, r, e)
	if _, err := r.Export(ctx, full, exportOpts(t, ExportOptions{})); !errors.Is(err, ErrClosed) {
		t.Errorf("Export after Close = %v, want ErrClosed", err)
	}
}

// TestExportTLS: a TCP export serves with TLS-PSK only: a client with the
// key reads it, a plain nbd:// client and a client with another key are
// refused, the key is in no argv, and Close removes the key's directory.
func TestExportTLS(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	tmp := t.TempDir()
	a := filepath.Join(tmp, "a.raw")
	writeRaw(t, a, 21)
	full := mustCreate(t, r, ctx, "full", "")
	fill(t, a, full)
	psk := mustPSK(t)
	e := mustExport(t, r, ctx, full, ExportOptions{ReadOnly: true, TCPAddr: "127.0.0.1:0", PSK: &psk, AdvertiseHost: "localhost"})
	if !strings.HasPrefix(e.URI(), "nbds://localhost:") || !strings.HasSuffix(e.URI(), "/") || strings.Contains(e.URI(), ":0/") {
		t.Errorf("URI %q, want nbds://localhost:PORT/", e.URI())
	}
	port := strings.TrimSuffix(strings.TrimPrefix(e.URI(), "nbds://localhost:"), "/")

	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", e.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cmdline), psk.Key) {
		t.Errorf("qemu-nbd's argv holds the key: %q", cmdline)
	}
	for path, want := range map[string]os.FileMode{e.pskDir: 0o700, filepath.Join(e.pskDir, PSKFileName): 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", path, st.Mode().Perm(), want)
		}
	}

	keyFile := func(p PSK) string {
		dir, err := p.WriteDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, PSKFileName)
	}
	uri := func(file string) string {
		return "nbds://" + PSKIdentity + "@127.0.0.1:" + port + "/?tls-psk-file=" + file
	}
	out := filepath.Join(tmp, "out.raw")
	nbdcopy(t, uri(keyFile(psk)), out)
	mustEqual(t, r, out, a)

	testutil.RequireTool(t, "nbdinfo")
	other := mustPSK(t)
	for name, u := range map[string]string{
		"plain":     "nbd://127.0.0.1:" + port + "/",
		"wrong key": uri(keyFile(other)),
	} {
		if out, err := exec.Command("nbdinfo", "--size", u).CombinedOutput(); err == nil {
			t.Errorf("%s client: nbdinfo %s read the export: %s", name, u, out)
		}
	}

	dir := e.pskDir
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	assertClosed(t, r, e)
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("key directory %s after Close: %v", dir, err)
	}
}

// TestExportTCPNeedsTLS: no export is ever served over TCP without TLS,
// and bad addresses or keys fail before qemu-nbd starts.
func TestExportTCPNeedsTLS(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	psk := mustPSK(t)
	short := PSK{Identity: PSKIdentity, Key: "abcd"}
	badID := PSK{Identity: "a:b", Key: psk.Key}
	for _, tc := range []struct {
		name string
		opts ExportOptions
		want error
	}{
		{"tcp without psk", ExportOptions{TCPAddr: "127.0.0.1:0"}, ErrInsecure},
		{"read-only tcp without psk", ExportOptions{ReadOnly: true, TCPAddr: "0.0.0.0:0"}, ErrInsecure},
		{"psk without tcp", ExportOptions{PSK: &psk}, ErrInvalidAddr},
		{"short key", ExportOptions{TCPAddr: "127.0.0.1:0", PSK: &short}, ErrInvalidPSK},
		{"bad identity", ExportOptions{TCPAddr: "127.0.0.1:0", PSK: &badID}, ErrInvalidPSK},
		{"no host", ExportOptions{TCPAddr: "nohost", PSK: &psk}, ErrInvalidAddr},
		{"empty host", ExportOptions{TCPAddr: ":10809", PSK: &psk}, ErrInvalidAddr},
		{"bad port", ExportOptions{TCPAddr: "127.0.0.1:x", PSK: &psk}, ErrInvalidAddr},
		{"port too big", ExportOptions{TCPAddr: "127.0.0.1:70000", PSK: &psk}, ErrInvalidAddr},
	} {
		_, err := r.Export(ctx, full, exportOpts(t, tc.opts))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Export = %v, want %v", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), psk.Key) {
			t.Errorf("%s: error holds the key: %v", tc.name, err)
		}
	}
	if len(r.Exports()) != 0 {
		t.Errorf("%d exports registered after refused starts", len(r.Exports()))
	}
}

// TestExportAddrInUse: a port taken by another program fails with
// ErrAddrInUse, so the caller can try another.
func TestExportAddrInUse(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	psk := mustPSK(t)
	_, err = r.Export(ctx, full, exportOpts(t, ExportOptions{TCPAddr: l.Addr().String(), PSK: &psk}))
	if !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("Export on a taken port = %v, want ErrAddrInUse", err)
	}
	if len(r.Exports()) != 0 {
		t.Errorf("%d exports registered after a failed start", len(r.Exports()))
	}
}

// TestExportStartFailure: qemu-nbd exiting at start gives its output in the
// error and leaves no process, socket directory or registry entry.
func TestExportStartFailure(t *testing.T) {
	t.Parallel()
	testutil.RequireTool(t, "qemu-nbd")
	r, ctx := newRepo(t)
	p, _ := r.Path(testVM, 2000, "garbage")
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("not a qcow2 image"), 0o600); err != nil {
		t.Fatal(err)
	}
	sockParent := testutil.SocketDir(t)
	_, err := r.Export(ctx, p, ExportOptions{SocketDir: sockParent})
	if !errors.Is(err, ErrExportDied) || !strings.Contains(err.Error(), "qcow2") {
		t.Fatalf("Export of a non-qcow2 file = %v, want ErrExportDied with qemu-nbd's message", err)
	}
	t.Logf("error: %v", err)
	if entries, _ := os.ReadDir(sockParent); len(entries) != 0 {
		t.Errorf("socket directory left: %v", entries)
	}
	if len(r.Exports()) != 0 {
		t.Error("failed export registered")
	}
	missing, _ := r.Path(testVM, 2000, "missing")
	if _, err := r.Export(ctx, missing, ExportOptions{SocketDir: sockParent}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Export of a missing file = %v, want ErrNotExist", err)
	}
}

func TestSocketPathTooLong(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	long := filepath.Join(testutil.SocketDir(t), strings.Repeat("d", 90))
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Export(ctx, full, ExportOptions{SocketDir: long}); !errors.Is(err, ErrSocketPath) {
		t.Errorf("Export = %v, want ErrSocketPath", err)
	}
	if entries, _ := os.ReadDir(long); len(entries) != 0 {
		t.Errorf("socket directory left: %v", entries)
	}
}

// TestCloseRightAfterExport: a Close as soon as Export returns stops
// qemu-nbd with SIGTERM, never needing SIGKILL (qemu-nbd ignores a SIGTERM
// that arrives before its main loop; Export must not return before that).
func TestCloseRightAfterExport(t *testing.T) {
	t.Parallel()
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	for i := 0; i < 10; i++ {
		e := mustExport(t, r, ctx, full, ExportOptions{ReadOnly: true, StopTimeout: 5 * time.Second})
		e.termRepeat = 0 // one SIGTERM only: it must not be lost
		if err := e.Close(ctx); err != nil {
			t.Fatalf("Close %d = %v", i, err)
		}
		assertClosed(t, r, e)
	}
}
