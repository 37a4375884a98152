package testbed

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestRangeSet(t *testing.T) {
	tests := []struct {
		name string
		adds [][2]int64
		want []Extent
	}{
		{"disjoint out of order", [][2]int64{{100, 10}, {0, 10}, {50, 10}}, []Extent{{Offset: 0, Length: 10}, {Offset: 50, Length: 10}, {Offset: 100, Length: 10}}},
		{"touching merge", [][2]int64{{0, 10}, {10, 10}}, []Extent{{Offset: 0, Length: 20}}},
		{"overlap several", [][2]int64{{0, 10}, {20, 10}, {40, 10}, {5, 40}}, []Extent{{Offset: 0, Length: 50}}},
		{"inside", [][2]int64{{0, 100}, {10, 10}}, []Extent{{Offset: 0, Length: 100}}},
		{"extend left", [][2]int64{{50, 10}, {40, 15}}, []Extent{{Offset: 40, Length: 20}}},
		{"empty ignored", [][2]int64{{5, 0}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r rangeSet
			for _, a := range tt.adds {
				r.add(a[0], a[1])
			}
			if !reflect.DeepEqual(r.ext, tt.want) {
				t.Fatalf("ranges = %v, want %v", r.ext, tt.want)
			}
		})
	}
}

func TestAlignClipAndPage(t *testing.T) {
	got := alignClip([]Extent{{Offset: 100, Length: 10}, {Offset: 4096*3 - 1, Length: 2}, {Offset: 10000, Length: 10}}, 4096, 10005)
	want := []Extent{{Offset: 0, Length: 4096}, {Offset: 4096 * 2, Length: 10005 - 4096*2}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("alignClip = %v, want %v", got, want)
	}

	ext := []Extent{{Offset: 0, Length: 10}, {Offset: 20, Length: 10}, {Offset: 40, Length: 10}, {Offset: 60, Length: 10}}
	areas, length := page(ext, 0, 100, 2)
	if !reflect.DeepEqual(areas, ext[:2]) || length != 30 {
		t.Fatalf("first page = %v len %d", areas, length)
	}
	areas, length = page(ext, 45, 100, 2)
	if !reflect.DeepEqual(areas, []Extent{{Offset: 45, Length: 5}, {Offset: 60, Length: 10}}) || length != 55 {
		t.Fatalf("page from 45 = %v len %d", areas, length)
	}
	areas, length = page(ext, 80, 100, 2)
	if len(areas) != 0 || length != 20 {
		t.Fatalf("page from 80 = %v len %d", areas, length)
	}
}

func TestParseChangeIDTestbed(t *testing.T) {
	u := newTrackingUUID()
	if tr, seq, ok := parseChangeID(formatChangeID(u, 7)); !ok || tr != u || seq != 7 {
		t.Fatalf("round trip of %q: %q %d %v", u, tr, seq, ok)
	}
	for _, bad := range []string{"*", "", u, u + "/", u + "/-1", "zz" + u[2:] + "/1", u[:23] + " " + u[24:] + "/1"} {
		if _, _, ok := parseChangeID(bad); ok {
			t.Errorf("parseChangeID(%q) accepted", bad)
		}
	}
}

// sparseImage makes a size-byte sparse file with data at the given offsets.
func sparseImage(t testing.TB, size int64, data map[int64][]byte) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "live.img"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, b := range data {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestFreezeImageKeepsHoles(t *testing.T) {
	const size = 9 << 30 // past 4 GiB and not written at the end
	blob := bytes.Repeat([]byte{0xab}, 1<<20)
	zeros := make([]byte, 1<<20) // explicit zeros: allocated
	src := sparseImage(t, size, map[int64][]byte{0: blob, 5 << 30: zeros, size - (1 << 20): blob})

	dst := filepath.Join(t.TempDir(), "frozen.img")
	alloc, err := freezeImage(src, dst, size)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{Offset: 0, Length: 1 << 20}, {Offset: 5 << 30, Length: 1 << 20}, {Offset: size - (1 << 20), Length: 1 << 20}}
	if !reflect.DeepEqual(alloc, want) {
		t.Fatalf("allocated = %v, want %v", alloc, want)
	}
	out, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	got, err := dataExtents(out, size)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("frozen image allocated = %v (%v), want %v", got, err, want)
	}
	st, _ := out.Stat()
	if st.Size() != size {
		t.Errorf("frozen size %d, want %d", st.Size(), size)
	}
	buf := make([]byte, 1<<20)
	if _, err := out.ReadAt(buf, size-(1<<20)); err != nil || !bytes.Equal(buf, blob) {
		t.Errorf("data at the end not copied: %v", err)
	}
	// The frozen image does not follow later writes to the live one.
	if _, err := src.WriteAt(blob, 1<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := out.ReadAt(buf, 1<<30); err != nil || !bytes.Equal(buf, zeros) {
		t.Errorf("frozen image changed with the live image: %v", err)
	}
}

// BenchmarkFreezeImage freezes an 8 GiB thin disk holding 64 MiB of data in
// 1 MiB extents: the cost must follow the data, not the capacity.
func BenchmarkFreezeImage(b *testing.B) {
	const size, data = 8 << 30, 64 << 20
	blob := bytes.Repeat([]byte{0x5a}, 1<<20)
	extents := map[int64][]byte{}
	for i := int64(0); i < data>>20; i++ {
		extents[i*(size/(data>>20))] = blob
	}
	src := sparseImage(b, size, extents)
	dir := b.TempDir()
	b.SetBytes(data)
	b.ReportAllocs()
	for b.Loop() {
		dst := filepath.Join(dir, "frozen.img")
		if _, err := freezeImage(src, dst, size); err != nil {
			b.Fatal(err)
		}
		if err := os.Remove(dst); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFreezeLink is the testbed's own part of a snapshot of a 16 GiB
// thin disk holding 1 GiB in 1 MiB extents (the SDK round trips aside):
// a hard link and a walk of the extent map, whatever the data.
func BenchmarkFreezeLink(b *testing.B) {
	const size, data = 16 << 30, 1 << 30
	blob := bytes.Repeat([]byte{0x5a}, 1<<20)
	extents := map[int64][]byte{}
	for i := int64(0); i < data>>20; i++ {
		extents[i*(size/(data>>20))] = blob
	}
	src := sparseImage(b, size, extents)
	d := &disk{path: src.Name(), f: src, capacity: size}
	dir := b.TempDir()
	for b.Loop() {
		dst := filepath.Join(dir, "frozen.img")
		alloc, err := freezeLink(d, dst, size)
		if err != nil || len(alloc) != data>>20 {
			b.Fatalf("freeze: %d extents, %v", len(alloc), err)
		}
		if err := os.Remove(dst); err != nil {
			b.Fatal(err)
		}
	}
}
