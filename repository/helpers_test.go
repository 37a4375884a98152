package repository

import (
	"context"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/internal/testutil"
)

// testCapacity is the virtual size of the test images: small, and not a
// multiple of the 64 KiB cluster size.
const testCapacity = 4<<20 + 512

const testVM = "5012abcd-0000-4000-8000-000000000001"

// testCtx returns a context carrying a logger that writes to t.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	return zerolog.New(zerolog.NewTestWriter(t)).WithContext(context.Background())
}

// newRepo opens a repository in a temp dir and closes all its exports in
// cleanup.
func newRepo(t *testing.T) (*Repo, context.Context) {
	t.Helper()
	testutil.RequireTool(t, "qemu-img")
	ctx := testCtx(t)
	r, err := Open(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(context.Background()); err != nil {
			t.Errorf("close repo: %v", err)
		}
	})
	return r, ctx
}

func writeRaw(t *testing.T, path string, seed int64) []byte {
	t.Helper()
	return testutil.WriteRawImage(t, path, testCapacity, seed)
}

// overlay returns a copy of base with some blocks changed: new data, and
// some data blocks overwritten with zeros, and writes it as a raw file.
func overlay(t *testing.T, path string, base []byte, seed int64) []byte {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	buf := append([]byte(nil), base...)
	for off := 0; off+65536 <= len(buf); off += 65536 {
		switch rng.Intn(6) {
		case 0:
			rng.Read(buf[off : off+65536])
		case 1:
			clear(buf[off : off+4096])
		}
	}
	rng.Read(buf[len(buf)-512:])
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	return buf
}

// fill writes a raw image into an existing qcow2 file with qemu-img convert -n
// (no NBD), for tests not about exports.
func fill(t *testing.T, raw, qcow2 string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", raw, qcow2).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img convert %s %s: %v: %s", raw, qcow2, err, out)
	}
}

// nbdcopy copies src to dst (files or NBD URIs) with nbdcopy, without
// --flush, so a test relies on Close for the flush.
func nbdcopy(t *testing.T, src, dst string) {
	t.Helper()
	testutil.RequireTool(t, "nbdcopy")
	out, err := exec.Command("nbdcopy", src, dst).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdcopy %s %s: %v: %s", src, dst, err, out)
	}
}

func mustEqual(t *testing.T, r *Repo, a, b string) {
	t.Helper()
	eq, err := r.Compare(context.Background(), a, b)
	if err != nil {
		t.Fatal(err)
	}
	if !eq {
		t.Fatalf("%s and %s differ", a, b)
	}
}

// processGone reports whether pid no longer exists (Close waits for it, so
// it cannot be a zombie of ours).
func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func mustCreate(t *testing.T, r *Repo, ctx context.Context, job, backing string) string {
	t.Helper()
	p, err := r.Create(ctx, testVM, 2000, job, testCapacity, backing)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func exportOpts(t *testing.T, o ExportOptions) ExportOptions {
	o.SocketDir = testutil.SocketDir(t)
	return o
}

func mustExport(t *testing.T, r *Repo, ctx context.Context, path string, o ExportOptions) *Export {
	t.Helper()
	testutil.RequireTool(t, "qemu-nbd")
	e, err := r.Export(ctx, path, exportOpts(t, o))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	return e
}
