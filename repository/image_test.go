package repository

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestRestore(t *testing.T) {
	r, ctx := newRepo(t)
	tmp := t.TempDir()
	a := filepath.Join(tmp, "a.raw")
	b := filepath.Join(tmp, "b.raw")
	base := writeRaw(t, a, 3)
	overlay(t, b, base, 4)
	full := mustCreate(t, r, ctx, "full", "")
	fill(t, a, full)
	inc := mustCreate(t, r, ctx, "inc", "full")
	fill(t, b, inc)

	tests := []struct {
		src, format, want string
	}{
		{full, "raw", a},
		{inc, "raw", b},
		{inc, "qcow2", b},
	}
	for i, tt := range tests {
		dst := filepath.Join(tmp, "restored"+string(rune('0'+i))+"."+tt.format)
		if err := r.Restore(ctx, tt.src, dst, tt.format); err != nil {
			t.Fatal(err)
		}
		mustEqual(t, r, dst, tt.want)
		info, err := r.Info(ctx, dst)
		if err != nil {
			t.Fatal(err)
		}
		if info.Format != tt.format || len(info.Chain) != 1 || info.VirtualSize != testCapacity {
			t.Errorf("restored %s: format %s, chain %d, size %d; want %s, 1, %d",
				dst, info.Format, len(info.Chain), info.VirtualSize, tt.format, testCapacity)
		}
	}
	if err := r.Restore(ctx, inc, filepath.Join(tmp, "x"), "vmdk"); !errors.Is(err, ErrInvalidFormat) {
		t.Errorf("Restore as vmdk = %v, want ErrInvalidFormat", err)
	}
	if err := r.Restore(ctx, filepath.Join(tmp, "missing.qcow2"), filepath.Join(tmp, "y"), "raw"); err == nil {
		t.Error("Restore of a missing file succeeded")
	}
}

func TestCompare(t *testing.T) {
	r, ctx := newRepo(t)
	tmp := t.TempDir()
	a := filepath.Join(tmp, "a.raw")
	b := filepath.Join(tmp, "b.raw")
	base := writeRaw(t, a, 5)
	overlay(t, b, base, 6)
	if eq, err := r.Compare(ctx, a, b); err != nil || eq {
		t.Errorf("Compare of different images = %t, %v; want false, nil", eq, err)
	}
	if eq, err := r.Compare(ctx, a, a); err != nil || !eq {
		t.Errorf("Compare of an image with itself = %t, %v; want true, nil", eq, err)
	}
	_, err := r.Compare(ctx, a, filepath.Join(tmp, "missing"))
	var ee *ExecError
	if !errors.As(err, &ee) || ee.ExitCode != 2 {
		t.Errorf("Compare with a missing file = %v, want ExecError exit status 2", err)
	}
}

func TestCheck(t *testing.T) {
	r, ctx := newRepo(t)
	tmp := t.TempDir()
	a := filepath.Join(tmp, "a.raw")
	writeRaw(t, a, 7)
	good := mustCreate(t, r, ctx, "good", "")
	fill(t, a, good)
	if err := r.Check(ctx, good); err != nil {
		t.Fatalf("Check of a good image = %v", err)
	}

	// Zero the first refcount block: every cluster becomes referenced but
	// unaccounted for, which qemu-img check reports as corruption.
	bad := mustCreate(t, r, ctx, "bad", "")
	fill(t, a, bad)
	f, err := os.OpenFile(bad, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var hdr [56]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		t.Fatal(err)
	}
	var entry [8]byte
	if _, err := f.ReadAt(entry[:], int64(binary.BigEndian.Uint64(hdr[48:56]))); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 65536), int64(binary.BigEndian.Uint64(entry[:]))); err != nil {
		t.Fatal(err)
	}
	f.Close()

	err = r.Check(ctx, bad)
	var ce *CheckError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || ce.Corruptions == 0 || ce.ExitCode != 2 || ce.Output == "" {
		t.Fatalf("Check of a corrupt image = %v, want a CheckError with corruptions", err)
	}
	if errors.Is(err, ErrLeaks) {
		t.Error("corruption matches ErrLeaks")
	}

	if err := r.Check(ctx, a); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Check of a raw file = %v, want ErrCorrupt", err)
	}
	if err := r.Check(ctx, filepath.Join(tmp, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Check of a missing file = %v, want ErrNotExist", err)
	}
}

// TestHeaderChain: the headers say what qemu-img info says of a chain, and
// a chain qemu could not open, or with a file marked corrupt or using a
// feature this package does not know, is refused as broken.
func TestHeaderChain(t *testing.T) {
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "job-full", "")
	raw := filepath.Join(t.TempDir(), "full.raw")
	writeRaw(t, raw, 1)
	fill(t, raw, full)
	mustCreate(t, r, ctx, "job-inc1", "job-full")
	inc2 := mustCreate(t, r, ctx, "job-inc2", "job-inc1")

	want, err := r.Info(ctx, inc2)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.HeaderChain(inc2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Chain) != len(want.Chain) {
		t.Fatalf("header chain of %d files, qemu-img info %d", len(got.Chain), len(want.Chain))
	}
	for i, w := range append([]Image{want.Image}, want.Chain...) {
		g := got.Image
		if i > 0 {
			g = got.Chain[i-1]
		}
		w.BackingFormat = "" // not read from the header
		if g != w {
			t.Errorf("image %d: headers say %+v, qemu-img info %+v", i, g, w)
		}
	}

	// setFeature ORs bits into a copy of the file's incompatible features
	// and returns a func restoring the original.
	setFeature := func(path string, bits byte) func() {
		orig, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b := append([]byte(nil), orig...)
		b[79] |= bits
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := os.WriteFile(path, orig, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	inc1, _ := r.Path(testVM, 2000, "job-inc1")
	for _, tt := range []struct {
		name   string
		damage func() (restore func())
		also   error
	}{
		{"base marked corrupt", func() func() { return setFeature(full, qcow2Corrupt) }, nil},
		{"unknown incompatible feature", func() func() { return setFeature(inc1, 1<<6) }, nil},
		{"external data file", func() func() { return setFeature(inc2, 1<<2) }, nil},
		{"middle missing", func() func() {
			moved := inc1 + ".moved"
			if err := os.Rename(inc1, moved); err != nil {
				t.Fatal(err)
			}
			return func() { os.Rename(moved, inc1) }
		}, fs.ErrNotExist},
		{"base not qcow2", func() func() {
			orig, _ := os.ReadFile(full)
			if err := os.WriteFile(full, make([]byte, 1<<16), 0o600); err != nil {
				t.Fatal(err)
			}
			return func() { os.WriteFile(full, orig, 0o600) }
		}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			restore := tt.damage()
			defer restore()
			_, err := r.HeaderChain(inc2)
			if !errors.Is(err, ErrBrokenChain) {
				t.Errorf("HeaderChain = %v, want ErrBrokenChain", err)
			}
			if tt.also != nil && !errors.Is(err, tt.also) {
				t.Errorf("HeaderChain = %v, want it to match %v too", err, tt.also)
			}
		})
	}
	if _, err := r.HeaderChain(inc2); err != nil {
		t.Errorf("HeaderChain of the restored chain: %v", err)
	}
}
