package nbd_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sendense/sendense/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startQemuNbd serves image (format fmtName) with qemu-nbd on a unix socket
// and returns its URI. extra are added before the image (for example
// "--shared=1" or "-B", "b0"). It is stopped in t.Cleanup.
func startQemuNbd(t *testing.T, image, fmtName string, extra ...string) string {
	t.Helper()
	bin := testutil.RequireTool(t, "qemu-nbd")
	sock := filepath.Join(testutil.SocketDir(t), "q.sock")
	args := append([]string{"-f", fmtName, "-t", "-k", sock}, extra...)
	args = append(args, image)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu-nbd: %v", err)
	}
	t.Cleanup(func() { stop(cmd) })
	if err := testutil.WaitSocket(sock, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return "nbd+unix:///?socket=" + sock
}

func stop(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// qcow2 creates a qcow2 image of size bytes in a temp dir.
func qcow2(t *testing.T, size int64) string {
	t.Helper()
	bin := testutil.RequireTool(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	out, err := exec.Command(bin, "create", "-q", "-f", "qcow2", p, fmt.Sprint(size)).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	return p
}

// startNbdkitTCP runs nbdkit on a free loopback TCP port and returns an
// nbd:// URI.
func startNbdkitTCP(t *testing.T, args ...string) string {
	t.Helper()
	bin := testutil.RequireTool(t, "nbdkit")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	full := append([]string{"--foreground", "--exit-with-parent", "-i", "127.0.0.1", "-p", fmt.Sprint(port)}, args...)
	cmd := exec.Command(bin, full...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nbdkit: %v", err)
	}
	t.Cleanup(func() { stop(cmd) })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdkit on %s not ready: %v", addr, err)
		}
	}
	return "nbd://" + addr + "/"
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func runTool(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	return exec.Command(testutil.RequireTool(t, name), args...).CombinedOutput()
}

// execNbdkit starts nbdkit on sock and returns the process (stopped in
// cleanup) so a test can kill it early.
func execNbdkit(t *testing.T, sock string, args ...string) *exec.Cmd {
	t.Helper()
	full := append([]string{"--foreground", "--exit-with-parent", "--unix", sock}, args...)
	cmd := exec.Command(testutil.RequireTool(t, "nbdkit"), full...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(cmd) })
	if err := testutil.WaitSocket(sock, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return cmd
}
