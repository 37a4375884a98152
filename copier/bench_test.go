package copier_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
// on a deterministic 4 GiB source (about 40% random data in 1 MiB extents,
// 10% written zeroes, the rest holes) served by nbdkit, into fresh QCOW2
// targets served by qemu-nbd with the repository's flags, on a unix socket
// (the single-host hub) and on loopback TCP with TLS-PSK (the hub serving
// agents on other hosts), and once more with digests (Options.Digests, the cost of
// a manifest); then a 1% incremental into a QCOW2 backed by the
// full. Rounds rotate the order; medians are reported. SENDENSE_BENCH_ROUNDS sets the rounds (default 5).
//
//	go test ./copier -run '^$' -bench BenchmarkCopyVsNbdcopy -benchtime 1x -timeout 30m -v
func BenchmarkCopyVsNbdcopy(b *testing.B) {
	nbdcopy := testutil.RequireTool(b, "nbdcopy")
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
	// No b.SetBytes: the timed loop holds both tools' copies and the
	// target setup, so its MB/s would mean nothing. The per-tool rates are
	// reported as metrics below.
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

	var oursT, theirsT, tlsT, hashT []time.Duration
	var oursSize, theirsSize int64
	var base string
	for b.Loop() {
		for r := 0; r < rounds; r++ {
			ours := func() {
				img := newQcow2(b, dir, fmt.Sprintf("ours%d.qcow2", r), benchSize, "")
				uri, stop := startQemuNbd(b, img, targetFlags...)
				settle()
				start := time.Now()
				if _, err := copier.Copy(ctx, srcURI, uri, ext, copier.Options{}); err != nil {
					b.Fatal(err)
				}
				oursT = append(oursT, time.Since(start))
				stop()
				oursSize = actualSize(b, img)
				if base != "" {
					os.Remove(base)
				}
				base = img
			}
			theirs := func() {
				img := newQcow2(b, dir, fmt.Sprintf("nbdcopy%d.qcow2", r), benchSize, "")
				uri, stop := startQemuNbd(b, img, targetFlags...)
				settle()
				start := time.Now()
				if out, err := exec.Command(nbdcopy, "--flush", srcURI, uri).CombinedOutput(); err != nil {
					b.Fatalf("nbdcopy: %v: %s", err, out)
				}
				theirsT = append(theirsT, time.Since(start))
				stop()
				theirsSize = actualSize(b, img)
				os.Remove(img)
			}
			overTLS := func() {
				img := newQcow2(b, dir, fmt.Sprintf("tls%d.qcow2", r), benchSize, "")
				uri, stop := startQemuNbdTLS(b, img, pskDir, targetFlags...)
				settle()
				start := time.Now()
				if _, err := copier.Copy(ctx, srcURI, uri, ext, copier.Options{TargetTLS: tls}); err != nil {
					b.Fatal(err)
				}
				tlsT = append(tlsT, time.Since(start))
				stop()
				os.Remove(img)
			}
			hashed := func() {
				img := newQcow2(b, dir, fmt.Sprintf("hashed%d.qcow2", r), benchSize, "")
				uri, stop := startQemuNbd(b, img, targetFlags...)
				settle()
				start := time.Now()
				res, err := copier.Copy(ctx, srcURI, uri, ext, copier.Options{Digests: true})
				if err != nil {
					b.Fatal(err)
				}
				hashT = append(hashT, time.Since(start))
				stop()
				if len(res.Digests) == 0 {
					b.Fatal("no digests")
				}
				os.Remove(img)
			}
			order := []func(){ours, theirs, overTLS, hashed}
			for i := range order {
				order[(i+r)%len(order)]()
			}
			b.Logf("round %d: ours %s, nbdcopy %s, ours over tcp+tls %s, ours with digests %s", r+1, oursT[len(oursT)-1].Round(time.Millisecond),
				theirsT[len(theirsT)-1].Round(time.Millisecond), tlsT[len(tlsT)-1].Round(time.Millisecond), hashT[len(hashT)-1].Round(time.Millisecond))
		}
	}
	b.StopTimer()

	// 1% incremental: rewrite 1% of the 1 MiB units with new random data
	// and copy only those, into overlays backed by our last full copy.
	changed := changeBenchSource(b, src, units)
	changedBytes := int64(len(changed)) * benchUnit
	var incT []time.Duration
	var incSize int64
	var inc string
	for r := 0; r < rounds; r++ {
		if inc != "" {
			os.Remove(inc)
		}
		inc = newQcow2(b, dir, fmt.Sprintf("inc%d.qcow2", r), benchSize, filepath.Base(base))
		uri, stop := startQemuNbd(b, inc, targetFlags...)
		settle()
		start := time.Now()
		if _, err := copier.Copy(ctx, srcURI, uri, changed, copier.Options{Incremental: true}); err != nil {
			b.Fatal(err)
		}
		incT = append(incT, time.Since(start))
		stop()
		incSize = actualSize(b, inc)
	}
	compare(b, src, inc) // the chain equals the changed source

	ot, tt, it, lt, ht := median(oursT), median(theirsT), median(incT), median(tlsT), median(hashT)
	hashRatio := ht.Seconds() / ot.Seconds()
	unixRate, tlsRate := float64(extBytes)/ot.Seconds()/1e6, float64(extBytes)/lt.Seconds()/1e6
	tlsRatio := tlsRate / unixRate
	rss := peakRSS(b)
	ratio := ot.Seconds() / tt.Seconds()
	incFrac := it.Seconds() / ot.Seconds()
	incLimit := changedBytes*11/10 + 2<<20
	goal := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT MET"
	}
	lines := []string{
		fmt.Sprintf("source: %d MiB virtual, %d MiB allocated in %d extents; %d rounds (median)", benchSize>>20, extBytes>>20, len(ext), rounds),
		fmt.Sprintf("full copy time: ours %s, nbdcopy %s, ratio ours/nbdcopy %.3f (goal <= 1.00: %s)", ot.Round(time.Millisecond), tt.Round(time.Millisecond), ratio, goal(ratio <= 1.0)),
		fmt.Sprintf("full copy throughput: unix socket %.0f MB/s, tcp+tls-psk (loopback) %.0f MB/s, ratio tls/unix %.1f%% (goal >= 80%%: %s)", unixRate, tlsRate, tlsRatio*100, goal(tlsRatio >= 0.8)),
		fmt.Sprintf("full copy with digests (manifest, SHA-256 per 1 MiB chunk): %s, ratio with/without %.3f", ht.Round(time.Millisecond), hashRatio),
		fmt.Sprintf("full actual size: ours %d bytes (%.1f MiB), nbdcopy %d bytes (%.1f MiB) (goal ours <= nbdcopy: %s)", oursSize, mib(oursSize), theirsSize, mib(theirsSize), goal(oursSize <= theirsSize)),
		fmt.Sprintf("incremental 1%%: %d MiB changed, time %s = %.2f%% of full (goal <= 5%%: %s)", changedBytes>>20, it.Round(time.Millisecond), incFrac*100, goal(incFrac <= 0.05)),
		fmt.Sprintf("incremental actual size: %d bytes (%.1f MiB) for %d changed (%.3fx; goal <= 1.1x + 2 MiB = %.1f MiB: %s)", incSize, mib(incSize), changedBytes, float64(incSize)/float64(changedBytes), mib(incLimit), goal(incSize <= incLimit)),
		fmt.Sprintf("peak RSS of the test process (VmHWM, whole process incl. source generation): %.1f MiB (goal <= 64 MiB: %s)", mib(rss), goal(rss <= 64<<20)),
	}
	for _, l := range lines {
		fmt.Println("bench-copy:", l)
	}
	b.ReportMetric(unixRate, "ours-MB/s")
	b.ReportMetric(float64(extBytes)/tt.Seconds()/1e6, "nbdcopy-MB/s")
	b.ReportMetric(ratio, "ours/nbdcopy")
	b.ReportMetric(tlsRate, "tls-MB/s")
	b.ReportMetric(hashRatio, "digests/plain")
	b.ReportMetric(tlsRatio*100, "tls%unix")
	b.ReportMetric(incFrac*100, "inc%full")
	b.ReportMetric(mib(rss), "peakRSS-MiB")
}

// settle writes back dirty pages (the source just generated, images just
// deleted on a discard-mounted file system) so that every timed run starts
// from the same state instead of paying for the previous one.
func settle() { syscall.Sync() }

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

// peakRSS reads VmHWM, the process's peak resident set size. It cannot be
// reset, so it covers everything the test process did.
func peakRSS(tb testing.TB) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("VmHWM not found in /proc/self/status")
	return 0
}
