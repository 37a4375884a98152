package copier_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sendense/sendense/copier"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/manifest"
)

// sourceManifest is the manifest of a raw file: the SHA-256 of each of its
// 1 MiB chunks, hashed here independently of the copier.
func sourceManifest(t *testing.T, path string) *manifest.Manifest {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := manifest.New(int64(len(b)))
	for i := range m.Digests {
		off := m.Offset(int64(i))
		m.Digests[i] = manifest.Sum(b[off : off+m.ChunkLen(int64(i))])
	}
	return m
}

// TestCopyDigests: a full copy of the allocated extents and an incremental
// of extents that cover parts of chunks report the SHA-256 of every whole
// chunk they touch; the full's digests with zero digests elsewhere, and
// the base's manifest with the incremental's chunks replaced, equal the
// source's manifest at each point. Both targets stay byte-identical to the
// source (the widened reads are written whole).
func TestCopyDigests(t *testing.T) {
	const size = v1Size + 12345 // the last chunk is short
	dir := t.TempDir()
	ctx := ctxT(t, 60*time.Second)
	src := filepath.Join(dir, "src.raw")
	writeSource(t, src, size-12345, 1, v1)
	if err := os.Truncate(src, size&^511); err != nil {
		t.Fatal(err)
	}
	writeSource(t, src, size&^511, 1, []segment{{v1Size + 1000, 3000, 'd'}})
	want := sourceManifest(t, src)

	srcURI := testutil.StartNbdkit(t, "file", "file="+src)
	ext, err := copier.AllocatedExtents(ctx, srcURI)
	if err != nil {
		t.Fatal(err)
	}
	full := newQcow2(t, dir, "full.qcow2", size&^511, "")
	fullURI, stopFull := startQemuNbd(t, full, targetFlags...)
	res, err := copier.Copy(ctx, srcURI, fullURI, ext, copier.Options{Digests: true, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	stopFull()
	compare(t, src, full)
	got := manifest.New(size &^ 511)
	for _, e := range res.Digests {
		if err := got.Set(e.Index, e.Digest); err != nil {
			t.Fatal(err)
		}
	}
	if i, differ := got.FirstMismatch(want); differ {
		t.Fatalf("full: manifest differs from the source's at chunk %d", i)
	}
	if res.BytesZero == 0 {
		t.Fatal("no zero block proven: zero detection is off")
	}

	// Extents covering parts of chunks: each touched chunk is read whole.
	v2 := []segment{{4*MiB + 10*KiB, 3 * KiB, 'd'}, {20*MiB + 1023*KiB, 2 * KiB, 'd'}, {(size &^ 511) - 1, 1, 'd'}}
	writeSource(t, src, size&^511, 2, v2)
	var changed []copier.Extent
	for _, s := range v2 {
		changed = append(changed, copier.Extent{Offset: s.off, Length: s.n})
	}
	want2 := sourceManifest(t, src)
	inc := newQcow2(t, dir, "inc.qcow2", size&^511, "full.qcow2")
	incURI, stopInc := startQemuNbd(t, inc, targetFlags...)
	res, err = copier.Copy(ctx, testutil.StartNbdkit(t, "file", "file="+src), incURI, changed, copier.Options{Incremental: true, Digests: true, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	stopInc()
	compare(t, src, inc)
	var idx []int64
	for _, e := range res.Digests {
		idx = append(idx, e.Index)
		if err := got.Set(e.Index, e.Digest); err != nil {
			t.Fatal(err)
		}
	}
	last := manifest.Chunks(size&^511, manifest.ChunkSize) - 1
	if len(idx) != 4 || idx[0] != 4 || idx[1] != 20 || idx[2] != 21 || idx[3] != last {
		t.Fatalf("incremental hashed chunks %v, want [4 20 21 %d]", idx, last)
	}
	if res.BytesRead != 3*MiB+(size&^511)-last*MiB {
		t.Errorf("incremental read %d bytes, want 3 whole chunks and the short last one", res.BytesRead)
	}
	if i, differ := got.FirstMismatch(want2); differ {
		t.Fatalf("incremental: manifest differs from the source's at chunk %d", i)
	}
}

func TestCopyDigestsOptions(t *testing.T) {
	// Reads must hold whole manifest chunks.
	for _, chunk := range []int64{128 * KiB, 3 * MiB / 2} {
		_, err := copier.Copy(ctxT(t, 10*time.Second), "nbd+unix:///?socket=/nonexistent", "nbd+unix:///?socket=/nonexistent", nil,
			copier.Options{Digests: true, ChunkSize: chunk})
		if !errors.Is(err, copier.ErrBadOptions) {
			t.Fatalf("digests with chunks of %d bytes: %v, want ErrBadOptions", chunk, err)
		}
	}
	if copier.DefaultChunkSize%manifest.ChunkSize != 0 {
		t.Fatalf("copier chunk %d is not a multiple of the manifest chunk %d", copier.DefaultChunkSize, manifest.ChunkSize)
	}
}

// TestHash: Hash of an export equals the manifest of its bytes, read
// through a qcow2 chain (qemu-nbd, read-only) and from a raw file (nbdkit).
func TestHash(t *testing.T) {
	const size = 9*MiB + 4096
	dir := t.TempDir()
	ctx := ctxT(t, 60*time.Second)
	src := filepath.Join(dir, "src.raw")
	writeSource(t, src, size, 5, []segment{{0, 1 * MiB, 'd'}, {3*MiB + 5, 100, 'd'}, {size - 10, 10, 'd'}})
	want := sourceManifest(t, src)
	got, err := copier.Hash(ctx, testutil.StartNbdkit(t, "file", "file="+src), copier.HashOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if i, differ := got.FirstMismatch(want); differ {
		t.Fatalf("raw export differs at chunk %d", i)
	}
	img := filepath.Join(dir, "img.qcow2")
	qemuImg(t, "convert", "-f", "raw", "-O", "qcow2", src, img)
	uri, stop := startQemuNbd(t, img, "-r", "--shared=4")
	defer stop()
	got, err = copier.Hash(ctx, uri, copier.HashOptions{Connections: 3})
	if err != nil {
		t.Fatal(err)
	}
	if i, differ := got.FirstMismatch(want); differ {
		t.Fatalf("qcow2 export differs at chunk %d", i)
	}
}
