package testbed_test

import (
	"bytes"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/testbed"
)

// TestSnapshotSharesUntilWrite: a snapshot's frozen image shares the live
// image's inode (no copy) until the next guest write, which gives the live
// image an inode of its own; a reader holding the frozen image open keeps
// reading the frozen bytes, and a later snapshot sees the write.
func TestSnapshotSharesUntilWrite(t *testing.T) {
	tb, c := start(t, testbed.Options{VMs: []testbed.VMSpec{oneVM("vm1", testbed.DiskSpec{CapacityBytes: 8 * mib, FillBytes: 2 * mib})}})
	vm := vmRef(t, tb, "vm1")
	s1 := snapshot(t, c, vm, "s1")
	frozen, err := tb.SnapshotImage(s1, 2000)
	if err != nil {
		t.Fatal(err)
	}
	live := tb.VMs()[0].Disks[0].ImagePath
	if ino(t, frozen) != ino(t, live) {
		t.Fatal("frozen image was copied at the snapshot, want a link to the live image")
	}
	want, err := os.ReadFile(frozen)
	if err != nil {
		t.Fatal(err)
	}
	r, err := os.Open(frozen) // a reader (nbdkit) holding it open
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := tb.Write("vm1", 2000, 0, bytes.Repeat([]byte{0xee}, 4096)); err != nil {
		t.Fatal(err)
	}
	if ino(t, frozen) == ino(t, live) {
		t.Fatal("live image still shares the frozen image's inode after a guest write")
	}
	got := make([]byte, len(want))
	if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("frozen image changed under an open reader: %v", err)
	}
	s2 := snapshot(t, c, vm, "s2")
	frozen2, _ := tb.SnapshotImage(s2, 2000)
	b, err := os.ReadFile(frozen2)
	if err != nil || !bytes.Equal(b[:4096], bytes.Repeat([]byte{0xee}, 4096)) || !bytes.Equal(b[4096:], want[4096:]) {
		t.Fatalf("second snapshot does not hold the write and the rest: %v", err)
	}
}

func ino(t testing.TB, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// BenchmarkSnapshot: snapshot create + remove of a VM with one disk,
// through the SDK, for a 1 GiB and a 16 GiB thin disk holding data; the
// goal is ≤ 50 ms per disk whatever its size. It also reports what the
// first guest write after a snapshot pays to split the live image from the
// frozen one (a sparse copy of the data where the filesystem has no
// reflinks). `make bench-snapshot` prints it.
func BenchmarkSnapshot(b *testing.B) {
	for _, tc := range []struct {
		name       string
		size, fill int64
	}{{"1GiB", gib, 256 * mib}, {"16GiB", 16 * gib, gib}} {
		b.Run(tc.name, func(b *testing.B) {
			tb, c := start(b, testbed.Options{VMs: []testbed.VMSpec{oneVM("vm1", testbed.DiskSpec{CapacityBytes: tc.size, FillBytes: tc.fill})}})
			vm := vmRef(b, tb, "vm1")
			var snap, split time.Duration
			i := 0
			for b.Loop() {
				b.StopTimer()
				// A guest write before each snapshot (outside the timer), so
				// every snapshot freezes a live image of its own.
				t0 := time.Now()
				if err := tb.Write("vm1", 2000, int64(i)*4096, []byte{byte(i)}); err != nil {
					b.Fatal(err)
				}
				if i > 0 {
					split += time.Since(t0)
				}
				b.StartTimer()
				t1 := time.Now()
				s := snapshot(b, c, vm, fmt.Sprintf("s%d", i))
				removeSnapshot(b, c, s)
				snap += time.Since(t1)
				i++
			}
			b.ReportMetric(float64(snap.Microseconds())/1e3/float64(i), "ms/create+remove")
			if i > 1 {
				b.ReportMetric(float64(split.Microseconds())/1e3/float64(i-1), "ms/first-write-split")
			}
			fmt.Printf("snapshot %-5s disk, %s data: create+remove %.1f ms (goal ≤ 50 ms); first guest write after it (split) %.0f ms; %d rounds\n",
				tc.name, humanMiB(tc.fill), float64(snap.Microseconds())/1e3/float64(i), float64(split.Microseconds())/1e3/float64(max(1, i-1)), i)
		})
	}
}

func humanMiB(n int64) string { return fmt.Sprintf("%d MiB", n/mib) }
