package copier_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/sendense/sendense/copier"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/nbd"
	"github.com/sendense/sendense/repository"
)

const (
	benchSize = 4 << 30
	benchUnit = 1 << 20
)

// BenchmarkCopyVsNbdcopy compares a full copy by Copy with nbdcopy --flush
// and with the local no-NBD limit (qemu-img convert of the raw source into
// a QCOW2, then fsync) on a deterministic 4 GiB source (about 40% random
// data in 1 MiB extents, 10% written zeroes, the rest holes) served by
// nbdkit, into fresh QCOW2 targets served by qemu-nbd with the
// repository's flags. Copy also runs to a target on loopback TCP with
// TLS-PSK (the hub serving agents on other hosts) and with digests
// (Options.Digests, the cost of a manifest); then a 1% incremental into a
// QCOW2 backed by the full.
//
// Every timed run starts from the same page-cache state (settle: sync, drop
// caches as root, source read back in: warm source, cold clean target) and
// pays its own writeback (each ends with a flush or fsync). Rounds rotate
// the contenders' order. Each contender's median and spread (min–max) are
// printed, with the CPU time per GB of the client (Copy, nbdcopy or
// qemu-img), nbdkit and qemu-nbd, and the CPU time other processes took
// meanwhile (on a shared host the main cause of spread).
// SENDENSE_BENCH_ROUNDS sets the rounds (default 5).
//
//	go test ./copier -run '^$' -bench BenchmarkCopyVsNbdcopy -benchtime 1x -timeout 30m -v
func BenchmarkCopyVsNbdcopy(b *testing.B) {
	nbdcopy := testutil.RequireTool(b, "nbdcopy")
	qemuImgBin := testutil.RequireTool(b, "qemu-img")
	rounds := 5
	if s := os.Getenv("SENDENSE_BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("SENDENSE_BENCH_ROUNDS=%q: want a positive integer", s)
		}
		rounds = n
	}
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	units := makeBenchSource(b, src)
	srcURI := testutil.StartNbdkit(b, "file", "file="+src)
	ctx := context.Background()
	ext, err := copier.AllocatedExtents(ctx, srcURI)
	if err != nil {
		b.Fatal(err)
	}
	var extBytes int64
	for _, e := range ext {
		extBytes += e.Length
	}
	// No b.SetBytes: the timed loop holds every contender's copies and the
	// target setup, so its MB/s would mean nothing. The per-contender
	// rates are reported as metrics below.
	b.ReportAllocs()

	psk, err := repository.NewPSK()
	if err != nil {
		b.Fatal(err)
	}
	pskDir, err := psk.WriteDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	tls := &nbd.TLS{PSKFile: filepath.Join(pskDir, repository.PSKFileName), Username: psk.Identity}

	oursR, theirsR, limitR := &runs{name: "ours"}, &runs{name: "nbdcopy"}, &runs{name: "limit (qemu-img convert + fsync)"}
	tlsR, hashR := &runs{name: "ours over tcp+tls"}, &runs{name: "ours with digests"}
	var convertT []time.Duration
	dropped := true
	// timed settles the page cache (warm is what run reads), then times
	// run and the CPU it took.
	warm := ext
	timed := func(r *runs, run func()) {
		dropped = settle(b, src, warm) && dropped
		before := sampleCPU(b)
		start := time.Now()
		run()
		d := time.Since(start)
		r.add(d, cpuBetween(before, sampleCPU(b)))
	}
	// toTarget runs copy into a fresh QCOW2 served by qemu-nbd on a unix
	// socket (or TCP with TLS) and returns the image.
	toTarget := func(r *runs, name string, overTLS bool, copy func(uri string)) string {
		img := newQcow2(b, dir, name, benchSize, "")
		var uri string
		var stop func()
		if overTLS {
			uri, stop = startQemuNbdTLS(b, img, pskDir, targetFlags...)
		} else {
			uri, stop = startQemuNbd(b, img, targetFlags...)
		}
		timed(r, func() { copy(uri) })
		stop()
		return img
	}
	var oursSize, theirsSize, limitSize int64
	var base string
	for b.Loop() {
		for r := 0; r < rounds; r++ {
			ours := func() {
				img := toTarget(oursR, fmt.Sprintf("ours%d.qcow2", r), false, func(uri string) {
					if _, err := copier.Copy(ctx, srcURI, uri, ext, copier.Options{}); err != nil {
						b.Fatal(err)
					}
				})
				oursSize = actualSize(b, img)
				if base != "" {
					os.Remove(base)
				}
				base = img
			}
			theirs := func() {
				img := toTarget(theirsR, fmt.Sprintf("nbdcopy%d.qcow2", r), false, func(uri string) {
					if out, err := exec.Command(nbdcopy, "--flush", srcURI, uri).CombinedOutput(); err != nil {
						b.Fatalf("nbdcopy: %v: %s", err, out)
					}
				})
				theirsSize = actualSize(b, img)
				os.Remove(img)
			}
			limit := func() {
				img := filepath.Join(dir, fmt.Sprintf("limit%d.qcow2", r))
				timed(limitR, func() {
					start := time.Now()
					if out, err := exec.Command(qemuImgBin, "convert", "-f", "raw", "-O", "qcow2", src, img).CombinedOutput(); err != nil {
						b.Fatalf("qemu-img convert: %v: %s", err, out)
					}
					convertT = append(convertT, time.Since(start))
					fsyncFile(b, img)
				})
				limitSize = actualSize(b, img)
				os.Remove(img)
			}
			overTLS := func() {
				img := toTarget(tlsR, fmt.Sprintf("tls%d.qcow2", r), true, func(uri string) {
					if _, err := copier.Copy(ctx, srcURI, uri, ext, copier.Options{TargetTLS: tls}); err != nil {
						b.Fatal(err)
					}
				})
				os.Remove(img)
			}
			hashed := func() {
				img := toTarget(hashR, fmt.Sprintf("hashed%d.qcow2", r), false, func(uri string) {
					res, err := copier.Copy(ctx, srcURI, uri, ext, copier.Options{Digests: true})
					if err != nil {
						b.Fatal(err)
					}
					if len(res.Digests) == 0 {
						b.Fatal("no digests")
					}
				})
				os.Remove(img)
			}
			order := []func(){ours, theirs, limit, overTLS, hashed}
			for i := range order {
				order[(i+r)%len(order)]()
			}
			b.Logf("round %d (in brackets: CPU-s of other processes during the run): ours %s, nbdcopy %s, limit %s, ours over tcp+tls %s, ours with digests %s",
				r+1, oursR.lastLine(), theirsR.lastLine(), limitR.lastLine(), tlsR.lastLine(), hashR.lastLine())
		}
	}
	b.StopTimer()

	// 1% incremental: rewrite 1% of the 1 MiB units with new random data
	// and copy only those, into overlays backed by our last full copy.
	changed := changeBenchSource(b, src, units)
	changedBytes := int64(len(changed)) * benchUnit
	warm = changed // half of them were holes, outside ext
	incR := &runs{name: "incremental"}
	var incSize int64
	var inc string
	for r := 0; r < rounds; r++ {
		if inc != "" {
			os.Remove(inc)
		}
		inc = newQcow2(b, dir, fmt.Sprintf("inc%d.qcow2", r), benchSize, filepath.Base(base))
		uri, stop := startQemuNbd(b, inc, targetFlags...)
		timed(incR, func() {
			if _, err := copier.Copy(ctx, srcURI, uri, changed, copier.Options{Incremental: true}); err != nil {
				b.Fatal(err)
			}
		})
		stop()
		incSize = actualSize(b, inc)
	}
	compare(b, src, inc) // the chain equals the changed source

	ot, tt, mt, it, lt, ht := oursR.median(), theirsR.median(), limitR.median(), incR.median(), tlsR.median(), hashR.median()
	hashRatio := ht.Seconds() / ot.Seconds()
	rate := func(d time.Duration) float64 { return float64(extBytes) / d.Seconds() / 1e6 }
	unixRate, tlsRate := rate(ot), rate(lt)
	tlsRatio := tlsRate / unixRate
	rss := testutil.PeakRSS(b, os.Getpid())
	ratio := ot.Seconds() / tt.Seconds()
	ofLimit := mt.Seconds() / ot.Seconds()
	incFrac := it.Seconds() / ot.Seconds()
	incLimit := changedBytes*11/10 + 2<<20
	goal := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT MET"
	}
	cache := "sync, page cache dropped and the source's extents read back in"
	if !dropped {
		cache = "sync and the source's extents read in (page cache NOT dropped: not root)"
	}
	lines := []string{
		fmt.Sprintf("source: %d MiB virtual, %d MiB allocated in %d extents; %d rounds, order rotated; before every run: %s", benchSize>>20, extBytes>>20, len(ext), rounds, cache),
		fmt.Sprintf("full copy time, median (min–max): ours %s, nbdcopy %s, local limit %s (qemu-img convert median %s, then fsync)",
			oursR.spread(), theirsR.spread(), limitR.spread(), median(convertT).Round(time.Millisecond)),
		fmt.Sprintf("full copy throughput (median): ours %.0f MB/s, nbdcopy %.0f MB/s, local limit %.0f MB/s", unixRate, rate(tt), rate(mt)),
		fmt.Sprintf("ratio ours/nbdcopy %.3f (goal <= 0.60: %s); ours at %.0f%% of the local limit's speed (limit/ours time; goal >= 50%%: %s)",
			ratio, goal(ratio <= 0.6), ofLimit*100, goal(ofLimit >= 0.5)),
		"cpu, median per run: " + oursR.cpuLine(extBytes),
		"cpu, median per run: " + theirsR.cpuLine(extBytes),
		"cpu, median per run: " + limitR.cpuLine(extBytes),
		"cpu, median per run: " + tlsR.cpuLine(extBytes),
		"cpu, median per run: " + hashR.cpuLine(extBytes),
		fmt.Sprintf("full copy over tcp+tls-psk (loopback): %s, %.0f MB/s, ratio tls/unix %.1f%% (goal >= 80%%: %s)", tlsR.spread(), tlsRate, tlsRatio*100, goal(tlsRatio >= 0.8)),
		fmt.Sprintf("full copy with digests (manifest, SHA-256 per 1 MiB chunk): %s, ratio with/without %.3f", hashR.spread(), hashRatio),
		fmt.Sprintf("full actual size: ours %d bytes (%.1f MiB), nbdcopy %d bytes (%.1f MiB), qemu-img convert %.1f MiB (goal ours <= nbdcopy: %s)",
			oursSize, mib(oursSize), theirsSize, mib(theirsSize), mib(limitSize), goal(oursSize <= theirsSize)),
		fmt.Sprintf("incremental 1%%: %d MiB changed, time %s = %.2f%% of full (goal <= 5%%: %s)", changedBytes>>20, incR.spread(), incFrac*100, goal(incFrac <= 0.05)),
		fmt.Sprintf("incremental actual size: %d bytes (%.1f MiB) for %d changed (%.3fx; goal <= 1.1x + 2 MiB = %.1f MiB: %s)", incSize, mib(incSize), changedBytes, float64(incSize)/float64(changedBytes), mib(incLimit), goal(incSize <= incLimit)),
		fmt.Sprintf("peak RSS of the test process (VmHWM, whole process incl. source generation): %.1f MiB (goal <= 64 MiB: %s)", mib(rss), goal(rss <= 64<<20)),
	}
	for _, l := range lines {
		fmt.Println("bench-copy:", l)
	}
	b.ReportMetric(unixRate, "ours-MB/s")
	b.ReportMetric(rate(tt), "nbdcopy-MB/s")
	b.ReportMetric(rate(mt), "limit-MB/s")
	b.ReportMetric(ratio, "ours/nbdcopy")
	b.ReportMetric(ofLimit*100, "ours%limit")
	b.ReportMetric(tlsRate, "tls-MB/s")
	b.ReportMetric(hashRatio, "digests/plain")
	b.ReportMetric(tlsRatio*100, "tls%unix")
	b.ReportMetric(incFrac*100, "inc%full")
	b.ReportMetric(mib(rss), "peakRSS-MiB")
}

// fsyncFile writes a file's dirty pages to disk and waits.
func fsyncFile(tb testing.TB, p string) {
	tb.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		tb.Fatalf("fsync %s: %v", p, err)
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// makeBenchSource writes the deterministic source and returns each 1 MiB
// unit's kind ('d', 'z' or 'h').
func makeBenchSource(tb testing.TB, p string) []byte {
	tb.Helper()
	f, err := os.Create(p)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(benchSize); err != nil {
		tb.Fatal(err)
	}
	r := rand.New(rand.NewPCG(42, 4242))
	kinds := make([]byte, benchSize/benchUnit)
	buf := make([]byte, benchUnit)
	zero := make([]byte, benchUnit)
	for i := range kinds {
		switch x := r.IntN(100); {
		case x < 40:
			kinds[i] = 'd'
			fillRandom(r, buf)
			if _, err := f.WriteAt(buf, int64(i)*benchUnit); err != nil {
				tb.Fatal(err)
			}
		case x < 50:
			kinds[i] = 'z'
			if _, err := f.WriteAt(zero, int64(i)*benchUnit); err != nil {
				tb.Fatal(err)
			}
		default:
			kinds[i] = 'h'
		}
	}
	return kinds
}

// changeBenchSource rewrites 1% of the units (any kind) with new random
// data and returns them as sorted extents.
func changeBenchSource(tb testing.TB, p string, kinds []byte) []copier.Extent {
	tb.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	r := rand.New(rand.NewPCG(43, 4343))
	n := (len(kinds) + 99) / 100
	picked := r.Perm(len(kinds))[:n]
	slices.Sort(picked)
	buf := make([]byte, benchUnit)
	out := make([]copier.Extent, 0, n)
	for _, i := range picked {
		fillRandom(r, buf)
		if _, err := f.WriteAt(buf, int64(i)*benchUnit); err != nil {
			tb.Fatal(err)
		}
		kinds[i] = 'd'
		out = append(out, copier.Extent{Offset: int64(i) * benchUnit, Length: benchUnit})
	}
	return out
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
}
