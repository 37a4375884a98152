package repository

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/sendense/sendense/internal/testutil"
)

// TestExecErrorNoSpace: a program that says its file system is full makes
// an error matching ErrNoSpace; any other failure does not.
func TestExecErrorNoSpace(t *testing.T) {
	for _, tc := range []struct {
		stderr string
		want   bool
	}{
		{"qemu-img: x.qcow2: Could not write refcount table: No space left on device", true},
		{"qemu-img: x.qcow2: Could not resize file: Disk quota exceeded", true},
		{"qemu-img: x.qcow2: Could not open backing file: No such file or directory", false},
	} {
		cmd := exec.Command("qemu-img", "create")
		err := error(newExecError(cmd, errors.New("exit status 1"), tc.stderr))
		if got := errors.Is(err, ErrNoSpace); got != tc.want {
			t.Errorf("%q: errors.Is(ErrNoSpace) = %t, want %t", tc.stderr, got, tc.want)
		}
	}
	if err := withNoSpace(&os.PathError{Op: "open", Path: "x", Err: syscall.ENOSPC}); !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("withNoSpace(ENOSPC) = %v, want it to match ErrNoSpace and ENOSPC", err)
	}
	if err := withNoSpace(os.ErrPermission); errors.Is(err, ErrNoSpace) {
		t.Errorf("withNoSpace(EPERM) matches ErrNoSpace")
	}
}

// TestCreateNoSpace: Create on a full file system fails with ErrNoSpace
// and leaves nothing, neither the file nor a temporary one.
func TestCreateNoSpace(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	root := testutil.Tmpfs(t, 8<<20)
	r, err := Open(filepath.Join(root, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	testutil.FillFS(t, root, 100<<10)
	_, err = r.Create(ctx, testVM, 2000, "job-full", 1<<30, "")
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Create on a full file system: %v, want ErrNoSpace", err)
	}
	files, _ := os.ReadDir(filepath.Join(r.Root(), testVM, "2000"))
	for _, f := range files {
		t.Errorf("left behind: %s", f.Name())
	}
}
