package repository

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCreateChain(t *testing.T) {
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "job-full", "")
	inc1 := mustCreate(t, r, ctx, "job-inc1", "job-full")
	inc2 := mustCreate(t, r, ctx, "job-inc2", "job-inc1")

	want := filepath.Join(r.Root(), testVM, "2000", "job-inc2.qcow2")
	if inc2 != want {
		t.Errorf("path %s, want %s", inc2, want)
	}
	if p, _ := r.Path(testVM, 2000, "job-inc2"); p != inc2 {
		t.Errorf("Path = %s, want %s", p, inc2)
	}

	info, err := r.Info(ctx, inc2)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Chain) != 3 {
		t.Fatalf("chain of %d images, want 3: %+v", len(info.Chain), info.Chain)
	}
	wantChain := []struct{ path, backing, backingPath string }{
		{inc2, "job-inc1.qcow2", inc1},
		{inc1, "job-full.qcow2", full},
		{full, "", ""},
	}
	for i, w := range wantChain {
		img := info.Chain[i]
		if img.Path != w.path || img.BackingFile != w.backing || img.BackingPath != w.backingPath {
			t.Errorf("chain[%d] = %s backing %q (%s), want %s backing %q (%s)",
				i, img.Path, img.BackingFile, img.BackingPath, w.path, w.backing, w.backingPath)
		}
		if img.Format != "qcow2" || img.VirtualSize != testCapacity {
			t.Errorf("chain[%d] format %s size %d, want qcow2 %d", i, img.Format, img.VirtualSize, testCapacity)
		}
		if w.backing != "" && img.BackingFormat != "qcow2" {
			t.Errorf("chain[%d] backing format %q, want qcow2", i, img.BackingFormat)
		}
	}
	if info.Path != inc2 || info.ActualSize <= 0 {
		t.Errorf("info top = %+v", info.Image)
	}

	files, err := r.List(testVM, 2000)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range files {
		got = append(got, f.JobID+"<"+f.BackingJobID)
	}
	if strings.Join(got, " ") != "job-full< job-inc1<job-full job-inc2<job-inc1" {
		t.Errorf("List = %v", got)
	}
	if files, err := r.List(testVM, 2001); err != nil || len(files) != 0 {
		t.Errorf("List of a disk without backups = %v, %v", files, err)
	}

	if _, err := r.Create(ctx, testVM, 2000, "job-inc1", testCapacity, "job-full"); !errors.Is(err, ErrExists) {
		t.Errorf("Create of an existing file = %v, want ErrExists", err)
	}
	if err := r.Check(ctx, inc2); err != nil {
		t.Errorf("Check = %v", err)
	}
}

func TestCreateErrorsLeaveNoFile(t *testing.T) {
	r, ctx := newRepo(t)
	mustCreate(t, r, ctx, "base", "")
	tests := []struct {
		name     string
		job      string
		capacity int64
		backing  string
		wantErr  error
	}{
		{"missing backing", "inc", testCapacity, "nope", ErrNoBacking},
		{"capacity differs from backing", "inc", testCapacity + 512, "base", ErrCapacityMismatch},
		{"zero capacity", "f", 0, "", ErrInvalidCapacity},
		{"negative capacity", "f", -512, "", ErrInvalidCapacity},
		{"capacity not sector aligned", "f", 1000, "", ErrInvalidCapacity},
		{"backing is itself", "self", testCapacity, "self", ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.Create(ctx, testVM, 2000, tt.job, tt.capacity, tt.backing)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Create = %v, want %v", err, tt.wantErr)
			}
			t.Logf("error: %v", err)
			entries, _ := os.ReadDir(filepath.Join(r.Root(), testVM, "2000"))
			if len(entries) != 1 || entries[0].Name() != "base.qcow2" {
				var names []string
				for _, e := range entries {
					names = append(names, e.Name())
				}
				t.Errorf("disk directory holds %v, want only base.qcow2", names)
			}
		})
	}

	// A backing file that is not a qcow2: qemu-img's error is returned with
	// its stderr, and no file is left.
	bad, _ := r.Path(testVM, 2000, "garbage")
	if err := os.WriteFile(bad, []byte("not an image"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := r.Create(ctx, testVM, 2000, "inc", testCapacity, "garbage")
	if !errors.Is(err, ErrNoBacking) {
		t.Errorf("Create on a raw backing = %v, want ErrNoBacking", err)
	}
	if p, _ := r.Path(testVM, 2000, "inc"); fileExists(p) {
		t.Errorf("%s left behind", p)
	}

	// A FIFO or a directory in a backing file's place is refused without
	// blocking on the FIFO's open.
	fifo, _ := r.Path(testVM, 2000, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	dir, _ := r.Path(testVM, 2000, "dir")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, backing := range []string{"fifo", "dir"} {
		if _, err := r.Create(ctx, testVM, 2000, "inc", testCapacity, backing); !errors.Is(err, ErrNoBacking) {
			t.Errorf("Create on a %s as backing = %v, want ErrNoBacking", backing, err)
		}
	}
}

func TestCreateFailureCarriesStderr(t *testing.T) {
	r, ctx := newRepo(t)
	// A huge capacity qemu-img refuses.
	_, err := r.Create(ctx, testVM, 2000, "huge", 1<<62, "")
	var ee *ExecError
	if !errors.As(err, &ee) || ee.ExitCode != 1 || ee.Stderr == "" {
		t.Fatalf("Create = %v, want an ExecError with exit status 1 and stderr", err)
	}
	if !strings.Contains(err.Error(), "qemu-img create -f qcow2 ") || !strings.Contains(err.Error(), "exit status 1: ") {
		t.Errorf("error %q lacks the command line or exit status", err)
	}
	entries, _ := os.ReadDir(filepath.Join(r.Root(), testVM, "2000"))
	if len(entries) != 0 {
		t.Errorf("%d files left behind", len(entries))
	}
}

func TestCreateRemovesStaleTemp(t *testing.T) {
	r, ctx := newRepo(t)
	dir := filepath.Join(r.Root(), testVM, "2000")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, ".j1.qcow2.123.tmp")
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if files, err := r.List(testVM, 2000); err != nil || len(files) != 0 {
		t.Errorf("List = %v, %v; want the temp file ignored", files, err)
	}
	mustCreate(t, r, ctx, "j1", "")
	if fileExists(stale) {
		t.Error("stale temp file survived Create")
	}
}

func TestRemove(t *testing.T) {
	r, ctx := newRepo(t)
	full := mustCreate(t, r, ctx, "full", "")
	inc := mustCreate(t, r, ctx, "inc", "full")
	other := mustCreate(t, r, ctx, "other", "")

	if err := r.Remove(testVM, 2000, "full"); !errors.Is(err, ErrIsBacking) {
		t.Fatalf("Remove of a backing file = %v, want ErrIsBacking", err)
	}
	if !fileExists(full) {
		t.Fatal("backing file removed")
	}
	if err := r.Remove(testVM, 2000, "inc"); err != nil {
		t.Fatal(err)
	}
	if fileExists(inc) {
		t.Error("inc still there")
	}
	if err := r.Remove(testVM, 2000, "inc"); err != nil {
		t.Errorf("second Remove = %v, want nil", err)
	}
	if err := r.Remove(testVM, 2000, "full"); err != nil {
		t.Errorf("Remove of a file no longer backing anything = %v", err)
	}
	if !fileExists(other) {
		t.Error("Remove touched another file")
	}
}

func TestOpenRejectsFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(f); err == nil {
		t.Error("Open of a file succeeded")
	}
	if _, err := Open(""); err == nil {
		t.Error("Open of \"\" succeeded")
	}
}

// TestMoveRepository: backing files are relative, so a moved repository's
// chains still read the same data.
func TestMoveRepository(t *testing.T) {
	r, ctx := newRepo(t)
	tmp := t.TempDir()
	a := filepath.Join(tmp, "a.raw")
	b := filepath.Join(tmp, "b.raw")
	base := writeRaw(t, a, 1)
	overlay(t, b, base, 2)

	full := mustCreate(t, r, ctx, "full", "")
	fill(t, a, full)
	inc := mustCreate(t, r, ctx, "inc", "full")
	fill(t, b, inc)
	mustEqual(t, r, inc, b)

	moved := filepath.Join(tmp, "moved")
	if err := os.Rename(r.Root(), moved); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(moved)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close(context.Background())
	inc2, _ := r2.Path(testVM, 2000, "inc")
	full2, _ := r2.Path(testVM, 2000, "full")
	info, err := r2.Info(ctx, inc2)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Chain) != 2 || info.Chain[1].Path != full2 || info.BackingFile != "full.qcow2" {
		t.Fatalf("chain after move: %+v", info.Chain)
	}
	mustEqual(t, r2, inc2, b)
	mustEqual(t, r2, full2, a)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
