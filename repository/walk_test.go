package repository

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// TestDisks lists the disk directories and nothing else.
func TestDisks(t *testing.T) {
	r, ctx := newRepo(t)
	const vm2 = "5012abcd-0000-4000-8000-000000000002"
	for _, d := range []Disk{{testVM, 2001}, {vm2, 2000}, {testVM, 2000}} {
		if _, err := r.Create(ctx, d.VMUUID, d.Key, "job-1", testCapacity, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Not disks: a key that is not canonical, a file, a hidden vm, a file
	// at the vm level.
	for _, dir := range []string{filepath.Join(testVM, "02000"), filepath.Join(testVM, "x"), ".hidden/2000"} {
		if err := os.MkdirAll(filepath.Join(r.Root(), dir), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(testVM, "2002"), "stray"} {
		if err := os.WriteFile(filepath.Join(r.Root(), f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := r.Disks()
	if err != nil {
		t.Fatal(err)
	}
	want := []Disk{{testVM, 2000}, {testVM, 2001}, {vm2, 2000}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Disks = %v, want %v", got, want)
	}
}

// TestTemps lists the temporary files a crashed Create leaves and removes
// them one by one; backup files are neither listed nor removable so.
func TestTemps(t *testing.T) {
	r, ctx := newRepo(t)
	path := mustCreate(t, r, ctx, "job-a", "")
	dir := filepath.Dir(path)
	tmp := filepath.Join(dir, tempPrefix("job-b")+"123.tmp")
	if err := os.WriteFile(tmp, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(tmp, old, old); err != nil {
		t.Fatal(err)
	}
	// A manifest write that crashed (package manifest's temporary name).
	mtmp := filepath.Join(dir, ".job-f"+ManifestExt+".456.tmp")
	if err := os.WriteFile(mtmp, make([]byte, 512), 0o600); err != nil {
		t.Fatal(err)
	}
	// Not temporary files of a job.
	for _, name := range []string{".job-c.qcow2.tmp", ".-x.qcow2.1.tmp", "job-d.qcow2.1.tmp", ".job-e.x.qcow2.1.tmp", ".job-g.manifest.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	temps, err := r.Temps(testVM, 2000)
	if err != nil {
		t.Fatal(err)
	}
	if len(temps) != 2 || temps[0].JobID != "job-b" || temps[0].Path != tmp || temps[0].Size != 4096 || !temps[0].ModTime.Equal(old) ||
		temps[1].JobID != "job-f" || temps[1].Path != mtmp {
		t.Fatalf("Temps = %+v, want %s of job job-b and %s of job job-f", temps, tmp, mtmp)
	}
	if err := r.RemoveTemp(mtmp); err != nil {
		t.Fatal(err)
	}
	if err := r.RemoveTemp(path); !errors.Is(err, ErrNotInRepo) {
		t.Errorf("RemoveTemp of a backup file: %v, want ErrNotInRepo", err)
	}
	if err := r.RemoveTemp(filepath.Join(dir, ".job-c.qcow2.tmp")); !errors.Is(err, ErrNotInRepo) {
		t.Errorf("RemoveTemp of a file not named as a temporary file: %v, want ErrNotInRepo", err)
	}
	if err := r.RemoveTemp(tmp); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still there: %v", tmp, err)
	}
	if err := r.RemoveTemp(tmp); err != nil {
		t.Errorf("second RemoveTemp: %v, want nil", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("backup file: %v", err)
	}
	if temps, err := r.Temps(testVM, 2001); err != nil || temps != nil {
		t.Errorf("Temps of a disk without directory = %v, %v", temps, err)
	}
}

// TestFile describes one backup file as List does.
func TestFile(t *testing.T) {
	r, ctx := newRepo(t)
	mustCreate(t, r, ctx, "job-a", "")
	mustCreate(t, r, ctx, "job-b", "job-a")
	list, err := r.List(testVM, 2000)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range list {
		got, err := r.File(testVM, 2000, want.JobID)
		if err != nil || got != want {
			t.Errorf("File(%s) = %+v, %v, want %+v", want.JobID, got, err, want)
		}
	}
	if _, err := r.File(testVM, 2000, "job-none"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("File of a missing job: %v, want fs.ErrNotExist", err)
	}
	if _, err := r.File(testVM, 2000, "../x"); !errors.Is(err, ErrInvalidID) {
		t.Errorf("File(../x): %v, want ErrInvalidID", err)
	}
}
