package bustest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TmpFS mounts a tmpfs of size bytes on a new directory in tb.TempDir()
// and returns the directory: a small file system a test can fill up. It
// is unmounted in cleanup, also when the test fails; start servers on it
// after TmpFS, so that their cleanups (which close their files) run
// first. Mounting needs root (CAP_SYS_ADMIN): without it, or when the
// mount fails, the test is skipped, except when CI=true, where it fails.
func TmpFS(tb testing.TB, size int64) string {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		tb.Fatalf("make tmpfs mount point: %v", err)
	}
	if os.Geteuid() != 0 {
		skipOrFail(tb, "mount a tmpfs: needs root")
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		skipOrFail(tb, fmt.Sprintf("mount a tmpfs of %d bytes on %s: %v", size, dir, err))
	}
	tb.Cleanup(func() {
		err := unix.Unmount(dir, 0)
		if errors.Is(err, unix.EBUSY) {
			// Something still has a file open: detach now, the kernel
			// frees it when the last file is closed.
			err = unix.Unmount(dir, unix.MNT_DETACH)
		}
		if err != nil {
			tb.Errorf("unmount tmpfs %s: %v", dir, err)
		}
	})
	return dir
}

// skipOrFail skips the test, or fails it when CI=true: a green CI run
// must not hide a missing privilege.
func skipOrFail(tb testing.TB, why string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("%s (CI=true: not skipped)", why)
	}
	tb.Skip(why)
}
