package copier_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/copier"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/nbd"
)

const (
	KiB = int64(1) << 10
	MiB = int64(1) << 20
)

func testLog(t *testing.T) zerolog.Logger { return zerolog.New(zerolog.NewTestWriter(t)) }

// v1 is a 40 MiB disk with data, written zero runs, holes, a zero block
// inside data, a 4 KiB zero run inside a data block, and data ending in the
// middle of a block.
const v1Size = 40 * MiB

var v1 = []segment{
	{0, 1 * MiB, 'd'},
	{1 * MiB, 2 * MiB, 'z'},
	{8 * MiB, 100 * KiB, 'd'},
	{8*MiB + 100*KiB, 924 * KiB, 'z'},
	{12 * MiB, 2 * MiB, 'd'},
	{13 * MiB, 64 * KiB, 'z'},
	{16 * MiB, 256 * KiB, 'd'},
	{16*MiB + 68*KiB, 4 * KiB, 'z'},
	{20 * MiB, 10 * MiB, 'd'},
	{39 * MiB, 1 * MiB, 'd'},
}

// v1NonZero is the bytes of v1's non-zero 64 KiB blocks: 1 MiB + 128 KiB
// (the 100 KiB run) + 2 MiB - 64 KiB + 256 KiB + 10 MiB + 1 MiB.
const v1NonZero = 1*MiB + 128*KiB + 2*MiB - 64*KiB + 256*KiB + 10*MiB + 1*MiB

// v1Zero is v1's allocated bytes proven zero.
const v1Zero = 2*MiB + (924*KiB - 28*KiB) + 64*KiB

func TestCopyFullThenIncremental(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t, 60*time.Second)
	src := filepath.Join(dir, "src.raw")
	writeSource(t, src, v1Size, 1, v1)
	v1Copy := filepath.Join(dir, "v1.raw")
	copyFile(t, src, v1Copy)

	// Full copy of the allocated extents into a fresh QCOW2.
	srcURI := testutil.StartNbdkit(t, "file", "file="+src)
	ext, err := copier.AllocatedExtents(ctx, srcURI)
	if err != nil {
		t.Fatal(err)
	}
	full := newQcow2(t, dir, "full.qcow2", v1Size, "")
	fullURI, stopFull := startQemuNbd(t, full, targetFlags...)
	var prog copier.Progress
	seen := watchProgress(&prog, nil)
	res, err := copier.Copy(ctx, srcURI, fullURI, ext, copier.Options{
		Log:      testLog(t),
		Progress: &prog,
	})
	progress := seen()
	if err != nil {
		t.Fatal(err)
	}
	stopFull() // as the repository closes the export: the next backup opens it as backing file
	compare(t, src, full)
	if res.BytesWritten != v1NonZero || res.BytesZero != v1Zero {
		t.Errorf("written %d zero %d, want %d and %d", res.BytesWritten, res.BytesZero, v1NonZero, v1Zero)
	}
	if a := actualSize(t, full); a < v1NonZero || a > v1NonZero+1*MiB {
		t.Errorf("full actual size %d, want about the %d bytes of non-zero data", a, v1NonZero)
	}
	checkProgress(t, progress, &prog, ext)

	// Guest writes: data overwritten with zeroes, new data in a hole,
	// data punched out, a partial block rewritten, the last byte changed.
	v2 := []segment{
		{0, 512 * KiB, 'z'},
		{4 * MiB, 1 * MiB, 'd'},
		{20 * MiB, 2 * MiB, 'h'},
		{12*MiB + 10*KiB, 3 * KiB, 'd'},
		{v1Size - 1, 1, 'd'},
	}
	writeSource(t, src, v1Size, 2, v2)
	changed := make([]copier.Extent, len(v2))
	for i, s := range v2 {
		changed[i] = copier.Extent{Offset: s.off, Length: s.n}
	}
	srcURI2 := testutil.StartNbdkit(t, "file", "file="+src)
	inc := newQcow2(t, dir, "inc.qcow2", v1Size, "full.qcow2")
	incURI, stopInc := startQemuNbd(t, inc, targetFlags...)
	res, err = copier.Copy(ctx, srcURI2, incURI, changed, copier.Options{
		Incremental: true,
		Log:         testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	stopInc()
	compare(t, src, inc)
	compare(t, v1Copy, full) // the base is untouched
	if a := actualSize(t, inc); a > 2*MiB+512*KiB {
		t.Errorf("incremental actual size %d for %d changed bytes", a, 1*MiB+512*KiB+2*MiB)
	}
	t.Logf("incremental: %+v", res)
}

// progressSample is what a reader of a copier.Progress saw at one time.
type progressSample struct{ BytesDone, BytesTotal int64 }

// watchProgress reads p as a progress sampler would, from another
// goroutine, every millisecond; when a sample has bytes done it calls
// onDone (if not nil) once. The func it returns stops it and returns the
// samples, the first one taken before the copy started.
func watchProgress(p *copier.Progress, onDone func()) func() []progressSample {
	stop, ended := make(chan struct{}), make(chan struct{})
	var out []progressSample
	out = append(out, progressSample{p.BytesDone(), p.BytesTotal()})
	go func() {
		defer close(ended)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			s := progressSample{p.BytesDone(), p.BytesTotal()}
			out = append(out, s)
			if s.BytesDone > 0 && onDone != nil {
				onDone()
				onDone = nil
			}
		}
	}()
	return func() []progressSample {
		close(stop)
		<-ended
		return append(out, progressSample{p.BytesDone(), p.BytesTotal()})
	}
}

// checkProgress checks what a reader saw of a copy of exts: nothing at
// first, never fewer bytes, and at the end all of the extents' bytes.
func checkProgress(t *testing.T, ps []progressSample, p *copier.Progress, exts []copier.Extent) {
	t.Helper()
	if ps[0] != (progressSample{}) {
		t.Errorf("progress before the copy %+v, want zero", ps[0])
	}
	var total int64
	for _, e := range exts {
		total += e.Length
	}
	last := ps[len(ps)-1]
	if last.BytesDone != total || last.BytesTotal != total || p.BytesDone() != total {
		t.Errorf("last progress %+v, want all %d bytes done", last, total)
	}
	for i := 1; i < len(ps); i++ {
		if ps[i].BytesDone < ps[i-1].BytesDone {
			t.Errorf("progress went backwards: %+v then %+v", ps[i-1], ps[i])
		}
	}
}

func TestCopyEdges(t *testing.T) {
	const odd = 10*MiB + 12345 // not a multiple of the chunk, block or sector
	tests := []struct {
		name    string
		size    int64
		segs    []segment
		extents func(size int64) []copier.Extent
		opts    copier.Options
	}{
		{"odd capacity, whole disk", odd, []segment{{0, odd, 'd'}},
			func(s int64) []copier.Extent { return []copier.Extent{{0, s}} }, copier.Options{}},
		{"extent at the last byte", odd, []segment{{odd - 1, 1, 'd'}},
			func(s int64) []copier.Extent { return []copier.Extent{{s - 1, 1}} }, copier.Options{}},
		{"unsorted overlapping extents, small chunks", 8 * MiB, []segment{{0, 8 * MiB, 'd'}},
			func(s int64) []copier.Extent {
				return []copier.Extent{{5 * MiB, 3 * MiB}, {0, 2 * MiB}, {1 * MiB, 5 * MiB}, {7 * MiB, 0}}
			}, copier.Options{ChunkSize: 128 * KiB, InFlight: 3, Connections: 1}},
		{"no extents", 8 * MiB, nil,
			func(s int64) []copier.Extent { return nil }, copier.Options{}},
		{"one connection", 8 * MiB, []segment{{0, 3 * MiB, 'd'}, {5 * MiB, 1 * MiB, 'd'}},
			func(s int64) []copier.Extent { return []copier.Extent{{0, s}} }, copier.Options{Connections: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx := ctxT(t, 60*time.Second)
			src := filepath.Join(dir, "src.raw")
			writeSource(t, src, tt.size, 3, tt.segs)
			dst := newQcow2(t, dir, "dst.qcow2", tt.size, "")
			tt.opts.Log = testLog(t)
			dstURI, stopDst := startQemuNbd(t, dst, targetFlags...)
			res, err := copier.Copy(ctx, testutil.StartNbdkit(t, "file", "file="+src), dstURI, tt.extents(tt.size), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			stopDst()
			compare(t, src, dst)
			t.Logf("%+v", res)
		})
	}
}

func TestCopyRefused(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	writeSource(t, src, 16*MiB, 4, []segment{{0, 1 * MiB, 'd'}})
	srcURI := testutil.StartNbdkit(t, "file", "file="+src)
	dstURI, _ := startQemuNbd(t, newQcow2(t, dir, "dst.qcow2", 16*MiB, ""), targetFlags...)
	smallURI, _ := startQemuNbd(t, newQcow2(t, dir, "small.qcow2", 8*MiB, ""), targetFlags...)
	busy, _ := startQemuNbd(t, newQcow2(t, dir, "busy.qcow2", 16*MiB, ""), "-f", "qcow2", "-t", "--shared=1")
	holder, err := nbd.Open(ctxT(t, 10*time.Second), busy, nbd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	missing := "nbd+unix:///?socket=" + filepath.Join(testutil.SocketDir(t), "none.sock")
	whole := []copier.Extent{{0, 16 * MiB}}

	tests := []struct {
		name     string
		src, dst string
		extents  []copier.Extent
		wantErr  error
		wantText string
		within   time.Duration
	}{
		{"source unreachable", missing, dstURI, whole, syscall.ENOENT, "open source", time.Second},
		{"target unreachable", srcURI, missing, whole, syscall.ENOENT, "open target", time.Second},
		{"target busy", srcURI, busy, whole, nbd.ErrConnectTimeout, "open target", 2 * time.Second},
		{"target too small", srcURI, smallURI, whole, copier.ErrTargetTooSmall, "8388608", time.Second},
		{"extent beyond source", srcURI, dstURI, []copier.Extent{{15 * MiB, 2 * MiB}}, copier.ErrBadExtents, "beyond", time.Second},
		{"negative extent", srcURI, dstURI, []copier.Extent{{-1, 2}}, copier.ErrBadExtents, "negative", time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := copier.Copy(context.Background(), tt.src, tt.dst, tt.extents, copier.Options{
				ConnectTimeout: 700 * time.Millisecond,
				Log:            testLog(t),
			})
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tt.wantErr, tt.wantText)
			}
			if d := time.Since(start); d > tt.within {
				t.Fatalf("failed after %s, want within %s", d, tt.within)
			}
			t.Logf("%v", err)
		})
	}
	if n := nbd.LiveBuffers(); n != 0 {
		t.Fatalf("%d nbd buffers not freed", n)
	}
}

// TestCopyCancel cancels a copy from a slow source: Copy returns promptly
// with context.Canceled, frees its buffers and (TestMain) leaks no
// goroutine.
func TestCopyCancel(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	writeSource(t, src, 32*MiB, 5, []segment{{0, 32 * MiB, 'd'}})
	// 32 chunks, two at a time, 200 ms each: about 3 s if not cancelled.
	srcURI := testutil.StartNbdkit(t, "--filter=delay", "file", "file="+src, "rdelay=200ms")
	dstURI, _ := startQemuNbd(t, newQcow2(t, dir, "dst.qcow2", 32*MiB, ""), targetFlags...)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelled time.Time
	var done int64
	var prog copier.Progress
	// Cancel mid-copy: after some chunks are written.
	seen := watchProgress(&prog, func() {
		done = prog.BytesDone()
		cancelled = time.Now()
		cancel()
	})
	res, err := copier.Copy(ctx, srcURI, dstURI, []copier.Extent{{0, 32 * MiB}}, copier.Options{
		ChunkSize:   1 * MiB,
		InFlight:    2,
		Connections: 1,
		Log:         testLog(t),
		Progress:    &prog,
	})
	seen()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(cancelled); d > 500*time.Millisecond {
		t.Fatalf("Copy returned %s after cancel", d)
	}
	if done <= 0 || done >= 32*MiB || res.BytesRead >= 32*MiB {
		t.Fatalf("cancelled after %d bytes done, %d read: not mid-copy", done, res.BytesRead)
	}
	if n := nbd.LiveBuffers(); n != 0 {
		t.Fatalf("%d nbd buffers not freed", n)
	}
}

func TestCopyRetries(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	writeSource(t, src, 8*MiB, 6, []segment{{0, 8 * MiB, 'd'}})
	whole := []copier.Extent{{0, 8 * MiB}}

	t.Run("flaky source recovers", func(t *testing.T) {
		srcURI := testutil.StartNbdkit(t, "--filter=error", "file", "file="+src, "error-pread=EIO", "error-pread-rate=30%")
		dst := newQcow2(t, t.TempDir(), "dst.qcow2", 8*MiB, "")
		dstURI, stopDst := startQemuNbd(t, dst, targetFlags...)
		_, err := copier.Copy(ctxT(t, 30*time.Second), srcURI, dstURI, whole,
			copier.Options{Retries: 20, Log: testLog(t)})
		if err != nil {
			t.Fatal(err)
		}
		stopDst()
		compare(t, src, dst)
	})
	t.Run("source always fails", func(t *testing.T) {
		srcURI := testutil.StartNbdkit(t, "--filter=error", "file", "file="+src, "error-pread=EIO", "error-pread-rate=100%")
		dstURI, _ := startQemuNbd(t, newQcow2(t, t.TempDir(), "dst.qcow2", 8*MiB, ""), targetFlags...)
		_, err := copier.Copy(ctxT(t, 30*time.Second), srcURI, dstURI, whole,
			copier.Options{Retries: 2, Log: testLog(t)})
		var re *copier.RequestError
		if !errors.As(err, &re) || re.Op != "read" || re.Attempts != 3 || !errors.Is(err, syscall.EIO) {
			t.Fatalf("err = %v, want a read RequestError after 3 attempts with EIO", err)
		}
		if re.Offset < 0 || re.Offset >= 8*MiB || re.Length != copier.DefaultChunkSize {
			t.Fatalf("failed request at %d+%d", re.Offset, re.Length)
		}
		t.Logf("%v", err)
	})
	t.Run("target always fails", func(t *testing.T) {
		srcURI := testutil.StartNbdkit(t, "file", "file="+src)
		dstURI := testutil.StartNbdkit(t, "--filter=error", "memory", "size=8M", "error-pwrite=ENOSPC", "error-pwrite-rate=100%")
		_, err := copier.Copy(ctxT(t, 30*time.Second), srcURI, dstURI, whole, copier.Options{Retries: 1, Log: testLog(t)})
		var re *copier.RequestError
		if !errors.As(err, &re) || re.Op != "write" || re.Attempts != 2 || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("err = %v, want a write RequestError after 2 attempts with ENOSPC", err)
		}
	})
	if n := nbd.LiveBuffers(); n != 0 {
		t.Fatalf("%d nbd buffers not freed", n)
	}
}

// TestCopyConnectionLimit: a target that allows fewer connections than
// Options.Connections still gets the copy, over the connections it took.
func TestCopyConnectionLimit(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	writeSource(t, src, 16*MiB, 7, []segment{{0, 16 * MiB, 'd'}})
	dst := newQcow2(t, dir, "dst.qcow2", 16*MiB, "")
	dstURI, stopDst := startQemuNbd(t, dst, "-f", "qcow2", "-t", "--shared=2")
	_, err := copier.Copy(ctxT(t, 30*time.Second), testutil.StartNbdkit(t, "file", "file="+src), dstURI,
		[]copier.Extent{{0, 16 * MiB}}, copier.Options{Connections: 4, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	stopDst()
	compare(t, src, dst)
}

// TestCopyStalled: a source that stops answering fails the copy with
// ErrStalled instead of hanging.
func TestCopyStalled(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	writeSource(t, src, 4*MiB, 8, []segment{{0, 4 * MiB, 'd'}})
	srcURI := testutil.StartNbdkit(t, "--filter=delay", "file", "file="+src, "rdelay=10")
	dstURI, _ := startQemuNbd(t, newQcow2(t, dir, "dst.qcow2", 4*MiB, ""), targetFlags...)
	start := time.Now()
	_, err := copier.Copy(ctxT(t, 30*time.Second), srcURI, dstURI, []copier.Extent{{0, 4 * MiB}},
		copier.Options{StallTimeout: 300 * time.Millisecond, Log: testLog(t)})
	if !errors.Is(err, copier.ErrStalled) {
		t.Fatalf("err = %v, want ErrStalled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stall detected after %s", d)
	}
}

// TestCopyTargetLost: the target going away mid-copy fails the copy with
// ErrConnectionLost naming the target.
func TestCopyTargetLost(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	writeSource(t, src, 16*MiB, 9, []segment{{0, 16 * MiB, 'd'}})
	srcURI := testutil.StartNbdkit(t, "--filter=delay", "file", "file="+src, "rdelay=100ms")
	dstURI, stopDst := startQemuNbd(t, newQcow2(t, dir, "dst.qcow2", 16*MiB, ""), targetFlags...)
	var prog copier.Progress
	seen := watchProgress(&prog, stopDst)
	_, err := copier.Copy(ctxT(t, 30*time.Second), srcURI, dstURI, []copier.Extent{{0, 16 * MiB}}, copier.Options{
		InFlight: 2, Connections: 1, Log: testLog(t), Progress: &prog,
	})
	seen()
	// Depending on timing the loss is seen by a request in flight (a
	// RequestError with its offset) or by the poll (no request to blame).
	var re *copier.RequestError
	if !errors.Is(err, copier.ErrConnectionLost) || !strings.Contains(err.Error(), dstURI) ||
		(errors.As(err, &re) && re.Offset%MiB != 0) {
		t.Fatalf("err = %v, want ErrConnectionLost naming the target", err)
	}
	t.Logf("%v", err)
	if n := nbd.LiveBuffers(); n != 0 {
		t.Fatalf("%d nbd buffers not freed", n)
	}
}
