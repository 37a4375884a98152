package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/nbd"
)

const testSize = 64 << 20

// servers is the behaviour suite's list of NBD servers: every test in it
// runs against each.
func servers(t *testing.T) []struct {
	name string
	uri  func(t *testing.T) string
} {
	return []struct {
		name string
		uri  func(t *testing.T) string
	}{
		{"nbdkit-memory", func(t *testing.T) string { return testutil.StartNbdkit(t, "memory", "size=64M") }},
		{"nbdkit-file", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "disk.raw")
			if err := os.Truncate(mustCreate(t, p), testSize); err != nil {
				t.Fatal(err)
			}
			return testutil.StartNbdkit(t, "file", "file="+p)
		}},
		{"nbdkit-tcp", func(t *testing.T) string { return startNbdkitTCP(t, "memory", "size=64M") }},
		{"qemu-nbd-qcow2", func(t *testing.T) string {
			return startQemuNbd(t, qcow2(t, testSize), "qcow2", "--shared=4", "--cache=writeback", "--discard=unmap", "--detect-zeroes=unmap")
		}},
	}
}

func mustCreate(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

func TestRoundTrip(t *testing.T) {
	for _, srv := range servers(t) {
		t.Run(srv.name, func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			h, err := nbd.Open(ctx, srv.uri(t), nbd.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if h.Size() != testSize {
				t.Fatalf("size = %d, want %d", h.Size(), testSize)
			}
			if !h.CanZero() || !h.CanFlush() {
				t.Fatalf("caps %+v: want zero and flush", h.Caps())
			}

			// A write larger than one request (maxIO is 32 MiB) and one
			// that crosses no alignment.
			big := random(1, 40<<20)
			if err := h.Pwrite(ctx, big, 4096); err != nil {
				t.Fatal(err)
			}
			odd := random(2, 12345)
			if err := h.Pwrite(ctx, odd, testSize-12345); err != nil {
				t.Fatal(err)
			}
			if err := h.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(big))
			if err := h.Pread(ctx, got, 4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, big) {
				t.Fatal("read back differs from written data")
			}
			got = make([]byte, len(odd))
			if err := h.Pread(ctx, got, testSize-12345); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, odd) {
				t.Fatal("read back at the end differs")
			}

			for _, flags := range []nbd.Flags{0, nbd.FlagNoHole} {
				if err := h.Zero(ctx, 1<<20, 8<<20, flags); err != nil {
					t.Fatalf("zero flags %d: %v", flags, err)
				}
				z := make([]byte, 1<<20+2)
				if err := h.Pread(ctx, z, 8<<20-1); err != nil {
					t.Fatal(err)
				}
				if z[0] != big[8<<20-1-4096] || z[len(z)-1] != big[9<<20-4096] {
					t.Fatal("zero touched bytes outside its range")
				}
				if !bytes.Equal(z[1:len(z)-1], make([]byte, 1<<20)) {
					t.Fatalf("zeroed range (flags %d) does not read as zeroes", flags)
				}
			}
			if h.CanTrim() {
				if err := h.Trim(ctx, 1<<20, 16<<20); err != nil {
					t.Fatal(err)
				}
			}
			// Reading past the end is the server's error, reported with
			// libnbd's message and errno.
			err = h.Pread(ctx, make([]byte, 4096), testSize)
			var ne *nbd.Error
			if !errors.As(err, &ne) || ne.Msg == "" {
				t.Fatalf("read past end: err = %v, want *nbd.Error", err)
			}
			if err := h.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestAioManyInFlight(t *testing.T) {
	for _, srv := range servers(t) {
		t.Run(srv.name, func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			h, err := nbd.Open(ctx, srv.uri(t), nbd.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()

			const n, blk = 64, 256 << 10
			want := random(3, n*blk)
			buf := nbd.NewBuffer(n * blk)
			defer buf.Free()
			copy(buf.Bytes(), want)

			// Issue everything, then collect: 64 writes in flight.
			pending := map[nbd.Cookie]int{}
			for i := 0; i < n; i++ {
				c, err := h.AioPwrite(buf.Span(i*blk, (i+1)*blk), int64(i*blk), 0)
				if err != nil {
					t.Fatal(err)
				}
				pending[c] = i
			}
			if got := h.InFlight(); got == 0 {
				t.Fatal("no commands in flight after issuing 64")
			}
			drain(ctx, t, h, pending)
			c, err := h.AioFlush()
			if err != nil {
				t.Fatal(err)
			}
			if err := h.Await(ctx, c); err != nil {
				t.Fatal(err)
			}

			// Read it back with 64 reads in flight, in reverse order.
			clear(buf.Bytes())
			for i := n - 1; i >= 0; i-- {
				c, err := h.AioPread(buf.Span(i*blk, (i+1)*blk), int64(i*blk))
				if err != nil {
					t.Fatal(err)
				}
				pending[c] = i
			}
			drain(ctx, t, h, pending)
			if !bytes.Equal(buf.Bytes(), want) {
				t.Fatal("aio read back differs")
			}
			// Zero in flight too.
			c, err = h.AioZero(blk, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.Await(ctx, c); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func drain(ctx context.Context, t *testing.T, h *nbd.Handle, pending map[nbd.Cookie]int) {
	t.Helper()
	for len(pending) > 0 {
		if err := nbd.Poll(ctx, h); err != nil {
			t.Fatal(err)
		}
		for {
			done, ok := h.NextCompleted()
			if !ok {
				break
			}
			if _, mine := pending[done.Cookie]; !mine {
				t.Fatalf("unknown cookie %d completed", done.Cookie)
			}
			if done.Err != nil {
				t.Fatalf("command %d: %v", pending[done.Cookie], done.Err)
			}
			delete(pending, done.Cookie)
		}
	}
	if h.InFlight() != 0 {
		t.Fatalf("in flight = %d after draining", h.InFlight())
	}
}

func TestBlockStatusSparseFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	// Data at [1 MiB, 2 MiB) and in the last 64 KiB; the rest a hole.
	if _, err := f.WriteAt(random(4, 1<<20), 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(random(5, 64<<10), testSize-64<<10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	uri := testutil.StartNbdkit(t, "file", "file="+p)
	ctx := ctxT(t, 30*time.Second)

	h, err := nbd.Open(ctx, uri, nbd.Options{MetaContexts: []string{nbd.MetaBaseAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ext, err := h.BlockStatus(ctx, nbd.MetaBaseAllocation, 0, h.Size())
	if err != nil {
		t.Fatal(err)
	}
	want := []nbd.Extent{
		{0, 1 << 20, nbd.StateHole | nbd.StateZero},
		{1 << 20, 1 << 20, 0},
		{2 << 20, testSize - 64<<10 - 2<<20, nbd.StateHole | nbd.StateZero},
		{testSize - 64<<10, 64 << 10, 0},
	}
	if !equalExtents(ext, want) {
		t.Fatalf("extents\n got %v\nwant %v", ext, want)
	}
	// A sub-range is clipped exactly.
	ext, err = h.BlockStatus(ctx, nbd.MetaBaseAllocation, 1<<20+7, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !equalExtents(ext, []nbd.Extent{{1<<20 + 7, 100, 0}}) {
		t.Fatalf("sub-range extents %v", ext)
	}
	// A context that was not requested is refused.
	if _, err := h.BlockStatus(ctx, nbd.DirtyBitmapContext("b0"), 0, 4096); !errors.Is(err, nbd.ErrNoMetaContext) {
		t.Fatalf("unrequested context: err = %v, want ErrNoMetaContext", err)
	}
}

// TestBlockStatusOver4GiB asks about 6 GiB: more than one 2 GiB request.
func TestBlockStatusOver4GiB(t *testing.T) {
	uri := testutil.StartNbdkit(t, "memory", "size=6G")
	ctx := ctxT(t, 30*time.Second)
	h, err := nbd.Open(ctx, uri, nbd.Options{MetaContexts: []string{nbd.MetaBaseAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const at = 5<<30 + 12345
	if err := h.Pwrite(ctx, []byte("x"), at); err != nil {
		t.Fatal(err)
	}
	ext, err := h.BlockStatus(ctx, nbd.MetaBaseAllocation, 0, h.Size())
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	var data []nbd.Extent
	for _, e := range ext {
		total += e.Length
		if e.Flags&nbd.StateHole == 0 {
			data = append(data, e)
		}
	}
	if total != 6<<30 {
		t.Fatalf("extents cover %d bytes, want %d", total, int64(6<<30))
	}
	if len(data) != 1 || data[0].Offset > at || data[0].Offset+data[0].Length <= at {
		t.Fatalf("data extents %v do not hold offset %d", data, at)
	}
}

func TestBlockStatusDirtyBitmap(t *testing.T) {
	img := qcow2(t, testSize)
	out, err := runTool(t, "qemu-img", "bitmap", "--add", img, "b0")
	if err != nil {
		t.Fatalf("qemu-img bitmap: %v: %s", err, out)
	}
	uri := startQemuNbd(t, img, "qcow2", "-B", "b0")
	ctx := ctxT(t, 30*time.Second)
	meta := nbd.DirtyBitmapContext("b0")
	h, err := nbd.Open(ctx, uri, nbd.Options{MetaContexts: []string{meta, nbd.MetaBaseAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if !h.CanMetaContext(meta) {
		t.Fatalf("server did not agree to %s", meta)
	}
	if err := h.Pwrite(ctx, random(6, 64<<10), 3<<20); err != nil {
		t.Fatal(err)
	}
	ext, err := h.BlockStatus(ctx, meta, 0, h.Size())
	if err != nil {
		t.Fatal(err)
	}
	var dirty []nbd.Extent
	for _, e := range ext {
		if e.Flags&nbd.StateDirty != 0 {
			dirty = append(dirty, e)
		}
	}
	if len(dirty) != 1 || dirty[0].Offset != 3<<20 || dirty[0].Length != 64<<10 {
		t.Fatalf("dirty extents %v, want [3 MiB, +64 KiB)", dirty)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := testutil.SocketDir(t)
	tests := []struct {
		name    string
		uri     string
		wantErr error
		wantMsg string
	}{
		{"no socket", "nbd+unix:///?socket=" + filepath.Join(dir, "missing.sock"), syscall.ENOENT, "No such file"},
		{"refused tcp", "nbd://127.0.0.1:1/", syscall.ECONNREFUSED, "refused"},
		{"bad uri", "http://example.invalid/", nil, "nbd_aio_connect_uri"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			h, err := nbd.Open(context.Background(), tt.uri, nbd.Options{ConnectTimeout: 5 * time.Second})
			if err == nil {
				h.Close()
				t.Fatal("Open succeeded")
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Open took %s to fail, want fast", d)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want errors.Is %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) || !strings.Contains(err.Error(), "connect to") {
				t.Errorf("err = %q, want it to say %q and name the URI", err, tt.wantMsg)
			}
		})
	}
}

// TestOpenBusyExport: qemu-nbd with --shared=1 already serving a client
// accepts the socket but never starts the handshake. Open must give up at
// the deadline instead of hanging.
func TestOpenBusyExport(t *testing.T) {
	uri := startQemuNbd(t, qcow2(t, testSize), "qcow2", "--shared=1")
	ctx := ctxT(t, 30*time.Second)
	first, err := nbd.Open(ctx, uri, nbd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()

	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		opts nbd.Options
	}{
		{"ctx deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 700*time.Millisecond)
		}, nbd.Options{}},
		{"connect timeout option", func() (context.Context, context.CancelFunc) {
			return context.WithCancel(context.Background())
		}, nbd.Options{ConnectTimeout: 700 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			h, err := nbd.Open(cctx, uri, tc.opts)
			d := time.Since(start)
			if err == nil {
				h.Close()
				t.Fatal("second Open on a --shared=1 export succeeded")
			}
			if !errors.Is(err, nbd.ErrConnectTimeout) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err = %v, want ErrConnectTimeout and DeadlineExceeded", err)
			}
			if d < 600*time.Millisecond || d > 2*time.Second {
				t.Fatalf("Open failed after %s, want about 700ms", d)
			}
			t.Logf("busy export: %v", err)
		})
	}
	// The first connection is unaffected.
	if err := first.Pread(ctx, make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
}

// TestSyncCallCancelled: a read stuck on a slow server returns when ctx
// ends, and the handle is closed so the buffer is safe to reuse.
func TestSyncCallCancelled(t *testing.T) {
	uri := testutil.StartNbdkit(t, "--filter=delay", "memory", "size=16M", "rdelay=5")
	h, err := nbd.Open(ctxT(t, 10*time.Second), uri, nbd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = h.Pread(ctx, make([]byte, 4096), 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("cancelled read returned after %s", d)
	}
	if err := h.Pread(context.Background(), make([]byte, 4096), 0); !errors.Is(err, nbd.ErrClosed) {
		t.Fatalf("after cancel: err = %v, want ErrClosed", err)
	}
}

// TestServerGone: commands in flight when the server dies complete with
// errors and Poll reports the connection's failure.
func TestServerGone(t *testing.T) {
	sock := filepath.Join(testutil.SocketDir(t), "k.sock")
	cmd := execNbdkit(t, sock, "--filter=delay", "memory", "size=16M", "rdelay=3")
	ctx := ctxT(t, 20*time.Second)
	h, err := nbd.Open(ctx, "nbd+unix:///?socket="+sock, nbd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	buf := nbd.NewBuffer(4096)
	defer buf.Free()
	c, err := h.AioPread(buf.Span(0, 4096), 0)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	_ = cmd.Process.Kill()
	var pollErr error
	for h.InFlight() > 0 && pollErr == nil {
		pollErr = nbd.Poll(ctx, h)
	}
	done, ok := h.NextCompleted()
	if !ok || done.Cookie != c || done.Err == nil {
		t.Fatalf("completion = %+v, %v; want cookie %d with an error", done, ok, c)
	}
	if !errors.Is(pollErr, nbd.ErrDisconnected) {
		t.Fatalf("poll: err = %v, want ErrDisconnected", pollErr)
	}
	t.Logf("poll: %v; command: %v", pollErr, done.Err)
}

func equalExtents(a, b []nbd.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
