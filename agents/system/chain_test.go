package system

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/testbed"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30

	// edgeCapacity is edgevm's disk: past 4 GiB, a multiple of 1 KiB (the
	// testbed) and of 512 (qcow2), but not of the 64 KiB CBT block, the
	// 64 KiB cluster or the 1 MiB chunk, so the last block is 3 KiB long.
	edgeCapacity = 4*gib + 4*mib + 3*kib
	edgeDisk     = int32(2000)
)

// guestOp is one simulated guest write.
type guestOp struct {
	kind     string // "data", "zeros" or "hole"
	off, n   int64
	overData bool // the range must hold non-zero data before the op
}

// edgeSetup is written before the full: data under each spot the rounds
// later overwrite with zeros or punch, at 1, 2 and 4 GiB and at the end.
var edgeSetup = []guestOp{
	{kind: "data", off: 1 * gib, n: 2 * mib},
	{kind: "data", off: 2*gib - mib, n: 2 * mib},
	{kind: "data", off: 4*gib - mib, n: 2 * mib},
	{kind: "data", off: edgeCapacity - 2*mib, n: 2 * mib},
}

// edgeRounds are the guest writes before each incremental: zeros and holes
// over data of the full and of earlier incrementals, writes straddling
// 2 GiB and 4 GiB (aligned and not), into an earlier round's hole, a single
// byte, and a write ending at the disk's last byte.
var edgeRounds = [][]guestOp{{
	{kind: "zeros", off: 1*gib + 100000, n: 300000, overData: true},
	{kind: "hole", off: 2*gib - 512*kib, n: mib, overData: true},
	{kind: "data", off: 2*gib - 12345, n: 30000},
	{kind: "data", off: 4*gib - 70001, n: 140000},
	{kind: "data", off: 3*gib + 12345, n: 1},
	{kind: "data", off: edgeCapacity - 5000, n: 5000},
}, {
	{kind: "zeros", off: 4*gib - 50000, n: 60000, overData: true},      // round 1's 4 GiB write
	{kind: "hole", off: 4*gib - 256*kib, n: 512 * kib, overData: true}, // the full's data across 4 GiB
	{kind: "zeros", off: 1*gib + mib, n: 64 * kib, overData: true},     // the full's data, cluster-aligned
	{kind: "data", off: 2*gib - 400000, n: 100000},                     // into round 1's hole
	{kind: "data", off: 2*gib - 1, n: 2},
	{kind: "data", off: 4*gib - 3, n: 7},
	{kind: "data", off: edgeCapacity - 1, n: 1},
}, {
	{kind: "zeros", off: 1 * gib, n: 64 * kib, overData: true}, // only the full holds this data
	{kind: "zeros", off: 2*gib - 12345, n: 4096, overData: true},
	{kind: "hole", off: edgeCapacity - 100000, n: 100000, overData: true}, // ends at the last byte
	{kind: "data", off: edgeCapacity - 1536, n: 1536},
	{kind: "data", off: 2*gib - 2*mib, n: 4 * mib},
	{kind: "data", off: 4*gib - mib - 512, n: 2*mib + 1024},
}}

// TestThreeIncrementals: a full and three incrementals of a disk just over
// 4 GiB, after guest writes of every kind. Each incremental is from the
// previous backup's change id and backs onto the previous backup's file;
// reads only the changed areas; and at the end every chain point, read
// through its chain, equals the disk as its snapshot froze it (and not as
// the next snapshot did). CBT replies are paged (more areas than one reply
// carries, across 4 GiB) and the last CBT block and cluster are partial.
func TestThreeIncrementals(t *testing.T) {
	t.Parallel()
	const vm = "edgevm"
	h := startHarness(t, func(c *Config) {
		for _, spec := range smallVMs() {
			if spec.Name == vm {
				c.SimVMs = []testbed.VMSpec{spec}
			}
		}
	})
	tb := h.sys.Testbed
	live := tb.VMs()[0].Disks[0].ImagePath

	h.guestWrites(vm, live, edgeSetup, 1)
	// Many small writes 256 KiB apart around 4 GiB: more areas than one
	// QueryChangedDiskAreas reply carries (64), so the full pages too.
	for i := int64(0); i < 80; i++ {
		h.guestWrites(vm, live, []guestOp{{kind: "data", off: 4*gib - 16*mib + i*256*kib + 8*kib, n: 4 * kib}}, 1000+i)
	}
	full := h.completed(h.request(vm, schemas.TypeFull, ""))
	points := []*schemas.Completed{full}
	fd := diskOf(t, full, edgeDisk)
	if fd.BackupType != schemas.TypeFull || fd.Disk.CapacityBytes != edgeCapacity {
		t.Fatalf("first backup: %s of %d bytes, want a full of %d", fd.BackupType, fd.Disk.CapacityBytes, edgeCapacity)
	}
	if n := plannedExtents(t, h.logs.String(), full.JobID); n <= testbed.DefaultMaxChangedAreas {
		t.Errorf("full planned %d extents, want more than one CBT reply's %d (paging)", n, testbed.DefaultMaxChangedAreas)
	}

	for r, ops := range edgeRounds {
		seed := int64(100 * (r + 1))
		var changed []testbed.Extent
		changed = append(changed, h.guestWrites(vm, live, ops, seed)...)
		random, err := tb.WriteRandom(vm, edgeDisk, float64(2*mib)/float64(edgeCapacity), seed)
		if err != nil {
			t.Fatal(err)
		}
		changed = append(changed, random...)
		// Paging of an incremental's changed areas across 4 GiB.
		for i := int64(0); i < 70; i++ {
			off := 4*gib - 16*mib + i*256*kib + int64(r+1)*64*kib
			changed = append(changed, h.guestWrites(vm, live, []guestOp{{kind: "data", off: off, n: 4 * kib}}, seed+i+1)...)
		}

		prev := points[len(points)-1]
		pd := diskOf(t, prev, edgeDisk)
		inc := h.completed(h.request(vm, schemas.TypeAuto, ""))
		points = append(points, inc)
		d := diskOf(t, inc, edgeDisk)

		if d.BackupType != schemas.TypeIncremental || d.Reason != schemas.ReasonBaseUsable {
			t.Errorf("round %d: backup is %s (%s), want incremental (%s)", r+1, d.BackupType, d.Reason, schemas.ReasonBaseUsable)
		}
		if d.BaseChangeID != pd.ChangeID {
			t.Errorf("round %d: incremental from change id %q, want the previous backup's %q", r+1, d.BaseChangeID, pd.ChangeID)
		}
		if want, err := tb.ChangeIDAt(vm, "sendense-"+inc.JobID, edgeDisk); err != nil || d.ChangeID != want || d.ChangeID == pd.ChangeID {
			t.Errorf("round %d: change id %q, want the snapshot's %q (%v), new", r+1, d.ChangeID, want, err)
		}
		if d.Backing != prev.JobID {
			t.Errorf("round %d: backing job %q, want the previous backup %q", r+1, d.Backing, prev.JobID)
		}
		chain := h.chain(h.targetPath(d))
		if len(chain) != r+2 {
			t.Errorf("round %d: backing chain has %d files, want %d: %+v", r+1, len(chain), r+2, chain)
		} else {
			if chain[0].BackingFilename != filepath.Base(pd.Target) || chain[0].FullBackingFilename != h.targetPath(pd) {
				t.Errorf("round %d: backing file %q (%q), want the previous backup's %s (relative)", r+1,
					chain[0].BackingFilename, chain[0].FullBackingFilename, pd.Target)
			}
			for i, info := range chain { // newest first, down to the full
				if want := h.targetPath(diskOf(t, points[len(points)-1-i], edgeDisk)); info.Filename != want {
					t.Errorf("round %d: chain[%d] is %s, want %s", r+1, i, info.Filename, want)
				}
			}
		}
		if n := plannedExtents(t, h.logs.String(), inc.JobID); n <= testbed.DefaultMaxChangedAreas {
			t.Errorf("round %d: planned %d extents, want more than one CBT reply's %d (paging)", r+1, n, testbed.DefaultMaxChangedAreas)
		}
		// Only the changed areas were read: at least every byte the guest
		// wrote, at most those bytes widened to the manifest's 1 MiB
		// chunks (a chunk that changed is read whole for its digest).
		raw := unionBytes(changed, 1, edgeCapacity)
		widened := unionBytes(changed, testbed.DefaultBlockSize, edgeCapacity)
		chunks := unionBytes(changed, manifest.ChunkSize, edgeCapacity)
		if d.BytesRead < raw || d.BytesRead > chunks || d.BytesRead > edgeCapacity/100 {
			t.Errorf("round %d: read %d bytes, want between the %d bytes written and %d (widened to 1 MiB chunks)",
				r+1, d.BytesRead, raw, chunks)
		}
		t.Logf("round %d: %d bytes written by the guest (%d widened), %d read, %d written, actual size %d",
			r+1, raw, widened, d.BytesRead, d.BytesWritten, d.ActualSizeBytes)
	}

	// Every chain point read through its chain is its snapshot, and not the
	// next one: each round changed what the disk holds.
	for i, p := range points {
		d := diskOf(t, p, edgeDisk)
		if vs := virtualSize(t, h.targetPath(d)); vs != edgeCapacity {
			t.Errorf("point %d: virtual size %d, want %d", i, vs, edgeCapacity)
		}
		h.sameData(h.frozen(vm, p.JobID, edgeDisk), h.targetPath(d))
		if i+1 < len(points) {
			h.differentData(h.frozen(vm, points[i+1].JobID, edgeDisk), h.targetPath(d))
		}
	}

	// The catalog holds the same chain, oldest first.
	links, err := h.cat.Chain(context.Background(), full.VM.UUID, edgeDisk, "default")
	if err != nil || len(links) != len(points) {
		t.Fatalf("catalog chain %+v %v, want %d links", links, err, len(points))
	}
	for i, l := range links {
		d := diskOf(t, points[i], edgeDisk)
		wantBacking := ""
		if i > 0 {
			wantBacking = points[i-1].JobID
		}
		if l.JobID != points[i].JobID || l.ChangeID != d.ChangeID || l.Backing != wantBacking || l.CapacityBytes != edgeCapacity {
			t.Errorf("catalog link %d: %+v, want job %s change id %s backing %q", i, l, points[i].JobID, d.ChangeID, wantBacking)
		}
		if i > 0 {
			j := h.job(points[i].JobID, backup.StatusCompleted)
			if len(j.Disks) != 1 || j.Disks[0].BaseChangeID != links[i-1].ChangeID {
				t.Errorf("catalog job %s: disks %+v, want base change id %s", j.ID, j.Disks, links[i-1].ChangeID)
			}
		}
	}
	if snaps := h.snapshots(vm); len(snaps) != 0 {
		t.Errorf("snapshots left: %v", snaps)
	}
}

// guestWrites applies ops to disk edgeDisk of vm in order (data is seeded
// from seed) and returns the ranges written. An op marked overData must
// land on non-zero data of the live image.
func (h *harness) guestWrites(vm, live string, ops []guestOp, seed int64) []testbed.Extent {
	h.t.Helper()
	tb := h.sys.Testbed
	var out []testbed.Extent
	for i, op := range ops {
		if op.overData && !hasData(h.t, live, op.off, op.n) {
			h.t.Fatalf("op %d %s [%d, +%d): no data there to overwrite", i, op.kind, op.off, op.n)
		}
		var err error
		switch op.kind {
		case "data":
			err = tb.Write(vm, edgeDisk, op.off, pattern(seed+int64(i), op.n))
		case "zeros":
			err = tb.WriteZeros(vm, edgeDisk, op.off, op.n)
		case "hole":
			err = tb.PunchHole(vm, edgeDisk, op.off, op.n)
		default:
			err = errors.New("unknown op kind " + op.kind)
		}
		if err != nil {
			h.t.Fatalf("guest %s [%d, +%d): %v", op.kind, op.off, op.n, err)
		}
		out = append(out, testbed.Extent{Offset: op.off, Length: op.n})
	}
	return out
}

// differentData: the backup read through its chain differs from raw.
func (h *harness) differentData(raw, qcow string) {
	h.t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, qcow).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		h.t.Errorf("qemu-img compare %s %s: %v, want a difference (exit 1)\n%s", raw, qcow, err, out)
	}
}

// pattern is n seeded random bytes with no zero byte, so every written byte
// differs from a hole.
func pattern(seed, n int64) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], uint64(seed))
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	for i := range b {
		if b[i] == 0 {
			b[i] = 0xa5
		}
	}
	return b
}

// hasData reports whether [off, off+n) of the image holds a non-zero byte.
func hasData(t *testing.T, path string, off, n int64) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read [%d, +%d) of %s: %v", off, n, path, err)
	}
	for _, x := range b {
		if x != 0 {
			return true
		}
	}
	return false
}

// unionBytes is the size of the union of ext, each widened to multiples of
// block and clipped to capacity.
func unionBytes(ext []testbed.Extent, block, capacity int64) int64 {
	type span struct{ start, end int64 }
	var spans []span
	for _, e := range ext {
		s, end := e.Offset/block*block, min((e.End()+block-1)/block*block, capacity)
		if s < end {
			spans = append(spans, span{s, end})
		}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	var total, reach int64
	for _, s := range spans {
		s.start = max(s.start, reach)
		if s.end > s.start {
			total += s.end - s.start
			reach = s.end
		}
	}
	return total
}

// plannedExtents is the extent count the agent logged when it planned the
// job's disk (after paging the CBT replies and merging).
func plannedExtents(t *testing.T, logs, jobID string) int {
	t.Helper()
	for _, l := range strings.Split(logs, "\n") {
		if !strings.Contains(l, `"message":"disk planned"`) || !strings.Contains(l, `"job_id":"`+jobID+`"`) {
			continue
		}
		var line struct {
			Extents int `json:"extents"`
		}
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("log line %s: %v", l, err)
		}
		return line.Extents
	}
	t.Fatalf("no 'disk planned' log line for job %s", jobID)
	return 0
}

func virtualSize(t *testing.T, path string) int64 {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "--output=json", "-U", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	return info.VirtualSize
}

func diskOf(t *testing.T, c *schemas.Completed, key int32) schemas.DiskResult {
	t.Helper()
	for _, d := range c.Disks {
		if d.Disk.Key == key {
			return d
		}
	}
	t.Fatalf("job %s has no disk %d: %+v", c.JobID, key, c.Disks)
	return schemas.DiskResult{}
}
