package repository

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/sendense/internal/testutil"
)

// TestCheckBase: a base is usable when its file opens, its whole backing
// chain opens as qcow2 and qemu-img check finds no corruption in it;
// leaked clusters pass.
func TestCheckBase(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, r *Repo, full, inc string) // the base checked is job-inc
		wantErr error                                         // nil: usable
	}{
		{"sound chain", func(*testing.T, *Repo, string, string) {}, nil},
		{"leaked cluster", func(t *testing.T, _ *Repo, _, inc string) { testutil.LeakQcow2Cluster(t, inc) }, nil},
		{"base missing", func(t *testing.T, _ *Repo, _, inc string) { mustRemove(t, inc) }, ErrNoBacking},
		{"base is a directory", func(t *testing.T, _ *Repo, _, inc string) {
			mustRemove(t, inc)
			if err := os.Mkdir(inc, 0o750); err != nil {
				t.Fatal(err)
			}
		}, ErrNoBacking},
		{"header magic broken", func(t *testing.T, _ *Repo, _, inc string) { testutil.BreakQcow2Magic(t, inc) }, ErrBrokenChain},
		{"backing file of the base deleted", func(t *testing.T, _ *Repo, full, _ string) { mustRemove(t, full) }, ErrBrokenChain},
		{"backing file of the base broken", func(t *testing.T, _ *Repo, full, _ string) { testutil.BreakQcow2Magic(t, full) }, ErrBrokenChain},
		{"refcount corrupted", func(t *testing.T, _ *Repo, _, inc string) { testutil.BreakQcow2Refcount(t, inc) }, ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, ctx := newRepo(t)
			full := mustCreate(t, r, ctx, "job-full", "")
			inc := mustCreate(t, r, ctx, "job-inc", "job-full")
			tc.damage(t, r, full, inc)
			err := r.CheckBase(ctx, testVM, 2000, "job-inc")
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("CheckBase: %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("CheckBase: %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), "job-inc") {
				t.Errorf("error %q does not name the base", err)
			}
		})
	}
	t.Run("invalid id", func(t *testing.T) {
		r, ctx := newRepo(t)
		if err := r.CheckBase(ctx, testVM, 2000, "../x"); !errors.Is(err, ErrInvalidID) {
			t.Errorf("CheckBase(../x): %v, want ErrInvalidID", err)
		}
	})
}

// BenchmarkCheckBase checks a 1 GiB base with every cluster's metadata
// allocated (preallocation=metadata: the L2 tables and refcounts a fully
// written disk has; qemu-img info and check read nothing else).
func BenchmarkCheckBase(b *testing.B) {
	testutil.RequireTool(b, "qemu-img")
	r, err := Open(filepath.Join(b.TempDir(), "repo"))
	if err != nil {
		b.Fatal(err)
	}
	path, _ := r.Path(testVM, 2000, "job-base")
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", "-o", "preallocation=metadata", path, "1G").CombinedOutput(); err != nil {
		b.Fatalf("qemu-img create: %v: %s", err, out)
	}
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if err := r.CheckBase(ctx, testVM, 2000, "job-base"); err != nil {
			b.Fatal(err)
		}
	}
}

func mustRemove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}
