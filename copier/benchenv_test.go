package copier_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/copier"
)

// This file holds what the copy benchmark needs to make its figures
// comparable: the same page-cache state before every timed run, and the
// CPU time each process spent during it.

// settle puts the page cache into the same state before every timed run:
// everything written so far is on disk (sync: the source just generated,
// earlier targets, the discards of deleted ones), the page cache is dropped
// (when /proc/sys/vm/drop_caches is writable, i.e. as root), and the
// source's allocated extents are read back in. Every contender so starts
// with a warm source and a cold, clean target, and pays its own writeback
// only (each ends with a flush or fsync). It reports whether caches were
// dropped.
func settle(tb testing.TB, src string, ext []copier.Extent) bool {
	tb.Helper()
	syscall.Sync()
	dropped := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0) == nil
	f, err := os.Open(src)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20) // small: peak RSS is one of the figures
	for _, e := range ext {
		for off := e.Offset; off < e.End(); {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := f.ReadAt(buf[:n], off); err != nil {
				tb.Fatalf("warm source %s at %d: %v", src, off, err)
			}
			off += n
		}
	}
	return dropped
}

// cpuTimes is a sample of CPU time: the whole machine's busy time, and the
// time of this process, of its reaped children, and of each live child
// (nbdkit, qemu-nbd) by command name.
type cpuTimes struct {
	busy, self, reaped time.Duration
	live               map[string]time.Duration
}

// jiffy is USER_HZ, the unit of /proc's CPU times (100 on every Linux
// architecture Go supports).
const jiffy = 10 * time.Millisecond

func sampleCPU(tb testing.TB) cpuTimes {
	tb.Helper()
	c := cpuTimes{live: map[string]time.Duration{}}
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		tb.Fatal(err)
	}
	line, _, _ := bytes.Cut(stat, []byte("\n"))
	f := strings.Fields(string(line)) // cpu user nice system idle iowait irq softirq steal ...
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest times are already in user
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		c.busy += time.Duration(n) * jiffy
	}
	self := os.Getpid()
	u, s, cu, cs, _, ok := procStat(self)
	if !ok {
		tb.Fatal("read /proc/self/stat")
	}
	c.self, c.reaped = u+s, cu+cs
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == self {
			continue
		}
		u, s, _, _, ppid, ok := procStat(pid)
		if !ok || ppid != self {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(d, "comm"))
		c.live[strings.TrimSpace(string(comm))] += u + s
	}
	return c
}

// procStat reads utime, stime, cutime, cstime and the parent of pid.
func procStat(pid int) (u, s, cu, cs time.Duration, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, 0, 0, false
	}
	// The command name is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, 0, 0, false
	}
	f := strings.Fields(string(b[i+1:])) // state ppid ... utime(12) stime cutime cstime
	if len(f) < 15 {
		return 0, 0, 0, 0, 0, false
	}
	n := func(k int) time.Duration { v, _ := strconv.ParseInt(f[k], 10, 64); return time.Duration(v) * jiffy }
	ppid, _ = strconv.Atoi(f[1])
	return n(11), n(12), n(13), n(14), ppid, true
}

// cpuUse is the CPU time spent between two samples: by the client (this
// process, or the child tool it ran and reaped), by nbdkit and qemu-nbd
// (live children), and by everything else on the machine.
type cpuUse struct{ client, nbdkit, qemuNbd, others time.Duration }

func (c cpuUse) total() time.Duration { return c.client + c.nbdkit + c.qemuNbd }

func cpuBetween(a, b cpuTimes) cpuUse {
	u := cpuUse{
		client:  b.self - a.self + b.reaped - a.reaped,
		nbdkit:  b.live["nbdkit"] - a.live["nbdkit"],
		qemuNbd: b.live["qemu-nbd"] - a.live["qemu-nbd"],
	}
	u.others = max(0, b.busy-a.busy-u.total())
	return u
}

// runs collects one contender's timed runs.
type runs struct {
	name string
	t    []time.Duration
	cpu  []cpuUse
}

func (r *runs) add(d time.Duration, c cpuUse) {
	r.t = append(r.t, d)
	r.cpu = append(r.cpu, c)
}

// lastLine is the last run's time and the other processes' CPU time
// meanwhile.
func (r *runs) lastLine() string {
	return fmt.Sprintf("%s [%.1f]", r.t[len(r.t)-1].Round(time.Millisecond), r.cpu[len(r.cpu)-1].others.Seconds())
}

func (r *runs) median() time.Duration { return median(r.t) }

// spread is "median (min–max)".
func (r *runs) spread() string {
	return fmt.Sprintf("%s (%s–%s)", r.median().Round(time.Millisecond), slices.Min(r.t).Round(time.Millisecond), slices.Max(r.t).Round(time.Millisecond))
}

// cpuMedian is the median of each CPU figure over the runs.
func (r *runs) cpuMedian() cpuUse {
	pick := func(f func(cpuUse) time.Duration) time.Duration {
		ds := make([]time.Duration, len(r.cpu))
		for i, c := range r.cpu {
			ds[i] = f(c)
		}
		return median(ds)
	}
	return cpuUse{
		client:  pick(func(c cpuUse) time.Duration { return c.client }),
		nbdkit:  pick(func(c cpuUse) time.Duration { return c.nbdkit }),
		qemuNbd: pick(func(c cpuUse) time.Duration { return c.qemuNbd }),
		others:  pick(func(c cpuUse) time.Duration { return c.others }),
	}
}

// cpuLine describes the median CPU use per GB of data copied.
func (r *runs) cpuLine(bytes int64) string {
	c := r.cpuMedian()
	gb := float64(bytes) / 1e9
	per := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()/gb) }
	return fmt.Sprintf("%s: client %s, nbdkit %s, qemu-nbd %s, total %s CPU-s/GB; other processes %.1f CPU-s during the run",
		r.name, per(c.client), per(c.nbdkit), per(c.qemuNbd), per(c.total()), c.others.Seconds())
}
