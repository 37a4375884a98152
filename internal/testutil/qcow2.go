package testutil

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"testing"
)

// Damage to a qcow2 file made by qemu-img create (version 3, 16-bit
// refcounts), for tests of what notices it. Each helper fails the test if
// the file is not such a qcow2.

// BreakQcow2Magic overwrites the "QFI\xfb" magic: the file no longer probes
// as qcow2 (qemu-img info calls it raw), and opening it as qcow2 fails.
func BreakQcow2Magic(tb testing.TB, path string) {
	tb.Helper()
	f := openQcow2(tb, path)
	defer closeFile(tb, f)
	if _, err := f.WriteAt([]byte("XXXX"), 0); err != nil {
		tb.Fatal(err)
	}
}

// BreakQcow2Refcount sets the refcount of cluster 0 (the header) to 0:
// qemu-img info still reads the image, qemu-img check reports one
// corruption ("ERROR cluster 0 refcount=0 reference=1", exit status 2).
func BreakQcow2Refcount(tb testing.TB, path string) {
	tb.Helper()
	f := openQcow2(tb, path)
	defer closeFile(tb, f)
	block, _ := refcountBlock(tb, f)
	if _, err := f.WriteAt([]byte{0, 0}, block); err != nil {
		tb.Fatal(err)
	}
}

// LeakQcow2Cluster appends a cluster to the file and gives it refcount 1
// with nothing referencing it: qemu-img check reports one leaked cluster
// and no corruption (exit status 3).
func LeakQcow2Cluster(tb testing.TB, path string) {
	tb.Helper()
	f := openQcow2(tb, path)
	defer closeFile(tb, f)
	block, clusterBits := refcountBlock(tb, f)
	st, err := f.Stat()
	if err != nil {
		tb.Fatal(err)
	}
	n := (st.Size() + 1<<clusterBits - 1) >> clusterBits
	if n >= 1<<(clusterBits-1) {
		tb.Fatalf("%s: %d clusters, more than the first refcount block covers", path, n)
	}
	if err := f.Truncate((n + 1) << clusterBits); err != nil {
		tb.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0, 1}, block+2*n); err != nil {
		tb.Fatal(err)
	}
}

func openQcow2(tb testing.TB, path string) *os.File {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil || string(magic[:]) != "QFI\xfb" {
		f.Close()
		tb.Fatalf("%s is not a qcow2 file (%v)", path, err)
	}
	return f
}

func closeFile(tb testing.TB, f *os.File) {
	tb.Helper()
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

// refcountBlock returns the offset of the first refcount block and the
// cluster bits, checking the refcounts are 16 bits wide.
func refcountBlock(tb testing.TB, f *os.File) (int64, uint32) {
	tb.Helper()
	var hdr [104]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		tb.Fatal(err)
	}
	version := binary.BigEndian.Uint32(hdr[4:8])
	clusterBits := binary.BigEndian.Uint32(hdr[20:24])
	table := int64(binary.BigEndian.Uint64(hdr[48:56]))
	if version < 3 || binary.BigEndian.Uint32(hdr[96:100]) != 4 {
		tb.Fatalf("%s: qcow2 version %d with refcount order %d, want version 3 with 16-bit refcounts", f.Name(), version, binary.BigEndian.Uint32(hdr[96:100]))
	}
	var entry [8]byte
	if _, err := f.ReadAt(entry[:], table); err != nil {
		tb.Fatal(err)
	}
	block := int64(binary.BigEndian.Uint64(entry[:]))
	if block == 0 {
		tb.Fatalf("%s: no first refcount block", f.Name())
	}
	return block, clusterBits
}

// FlipQcow2DataByte inverts one byte of guest data stored in the qcow2 file
// itself (not in its backing chain): the byte skip bytes into the first
// data extent of the top image of at least skip+1 bytes, found with
// `qemu-img map --output=json` (depth 0, data true, its host offset). It
// returns the byte's guest offset. Metadata is untouched, so qemu-img check
// still passes: only reading the data can notice.
func FlipQcow2DataByte(tb testing.TB, path string, skip int64) int64 {
	tb.Helper()
	out, err := exec.Command("qemu-img", "map", "--output=json", "-U", path).Output()
	if err != nil {
		tb.Fatalf("qemu-img map %s: %v", path, err)
	}
	var exts []struct {
		Start  int64  `json:"start"`
		Length int64  `json:"length"`
		Depth  int    `json:"depth"`
		Data   bool   `json:"data"`
		Offset *int64 `json:"offset"`
	}
	if err := json.Unmarshal(out, &exts); err != nil {
		tb.Fatalf("qemu-img map %s: %v", path, err)
	}
	for _, e := range exts {
		if e.Depth != 0 || !e.Data || e.Offset == nil || e.Length <= skip {
			continue
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			tb.Fatal(err)
		}
		defer closeFile(tb, f)
		b := []byte{0}
		host := *e.Offset + skip
		if _, err := f.ReadAt(b, host); err != nil {
			tb.Fatal(err)
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, host); err != nil {
			tb.Fatal(err)
		}
		return e.Start + skip
	}
	tb.Fatalf("%s: no data extent of its own longer than %d bytes", path, skip)
	return 0
}
