package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// RequireTool returns the path of the named program. When it is missing the
// test is skipped, or failed when CI=true.
func RequireTool(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("%s is required with CI=true but not found: %v (run make deps)", name, err)
	}
	tb.Skipf("%s not installed (run make deps): %v", name, err)
	return ""
}

// Tmpfs mounts a tmpfs of size bytes on a new directory (what `mount -t
// tmpfs -o size=N tmpfs DIR` does, without running mount) and returns the
// directory; cleanup unmounts it. A test that cannot mount (not root, no
// CAP_SYS_ADMIN in a container) is skipped, or failed when CI=true. Close
// whatever holds files open in it first: cleanups run last-in first-out,
// so register those after calling Tmpfs.
func Tmpfs(tb testing.TB, size int64) string {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size="+strconv.FormatInt(size, 10)); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("mount a tmpfs on %s is required with CI=true (run the tests as root): %v", dir, err)
		}
		tb.Skipf("cannot mount a tmpfs (uid %d): %v", os.Getuid(), err)
	}
	tb.Cleanup(func() {
		err := syscall.Unmount(dir, 0)
		for i := 0; errors.Is(err, syscall.EBUSY) && i < 50; i++ {
			time.Sleep(100 * time.Millisecond) // a child closing its files
			err = syscall.Unmount(dir, 0)
		}
		if err != nil {
			tb.Errorf("unmount tmpfs %s: %v", dir, err)
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

// SocketDir returns a short private directory for unix sockets. t.TempDir()
// paths can exceed the 108-byte sun_path limit, so this lives under /tmp.
func SocketDir(tb testing.TB) string {
	tb.Helper()
	d, err := os.MkdirTemp("", "sdt")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// WaitSocket waits until a unix socket accepts connections.
func WaitSocket(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("socket %s not ready after %s: %w", path, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// StartNbdkit runs nbdkit in the foreground on a unix socket in a private
// directory with the given plugin arguments (for example "file", "file=x.img"
// or "memory", "size=1G") and returns the nbd+unix URI. The process is killed
// and waited for in t.Cleanup.
func StartNbdkit(tb testing.TB, args ...string) string {
	tb.Helper()
	bin := RequireTool(tb, "nbdkit")
	sock := filepath.Join(SocketDir(tb), "nbdkit.sock")
	full := append([]string{"--foreground", "--exit-with-parent", "--unix", sock}, args...)
	cmd := exec.CommandContext(context.Background(), bin, full...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start nbdkit %v: %v", args, err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	if err := WaitSocket(sock, 10*time.Second); err != nil {
		tb.Fatal(err)
	}
	return "nbd+unix:///?socket=" + sock
}

// NATSCLI returns the path of the nats CLI: from PATH, else bin/nats at the
// module's root, where `make deps` installs it. When it is missing the test
// is skipped, or failed when CI=true.
func NATSCLI(tb testing.TB) string {
	tb.Helper()
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	dir, err := os.Getwd()
	for err == nil {
		if _, serr := os.Stat(filepath.Join(dir, "go.mod")); serr == nil {
			p := filepath.Join(dir, "bin", "nats")
			if _, serr := os.Stat(p); serr == nil {
				return p
			}
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return RequireTool(tb, "nats")
}

// FillFS writes a file into dir's file system until only about free bytes
// are left (0: until it refuses a write), and returns the file's path:
// remove it to give the space back.
func FillFS(tb testing.TB, dir string, free int64) string {
	tb.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n := int64(st.Bavail)*st.Bsize - free; n > 0; n -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(int64(len(buf)), n)]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break // full already
			}
			tb.Fatal(err)
		}
	}
	return path
}
