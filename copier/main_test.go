package copier_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/repository"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// targetFlags are the qemu-nbd flags the repository exports targets with
// (repository.Export, on a file system with O_DIRECT).
var targetFlags = []string{"-f", "qcow2", "-t", "--shared=4", "--cache=none", "--aio=native", "--discard=unmap", "--detect-zeroes=unmap"}

// startQemuNbd serves image with qemu-nbd on a unix socket; args come
// before the image. It is stopped (SIGTERM, then SIGKILL) in t.Cleanup or
// earlier by calling the returned function, which waits until qemu-nbd has
// exited and released the image.
func startQemuNbd(tb testing.TB, image string, args ...string) (uri string, stopFn func()) {
	tb.Helper()
	sock := filepath.Join(testutil.SocketDir(tb), "q.sock")
	stopFn = runQemuNbd(tb, "unix", sock, append(append([]string{"-k", sock}, args...), image))
	return "nbd+unix:///?socket=" + sock, stopFn
}

// startQemuNbdTLS is startQemuNbd on a free loopback TCP port with TLS and
// the pre-shared key in pskDir (PSKFileName inside), as the hub serves
// targets to agents on other hosts. It returns the nbds:// URI.
func startQemuNbdTLS(tb testing.TB, image, pskDir string, args ...string) (uri string, stopFn func()) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	port := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	full := []string{"--bind=127.0.0.1", "--port=" + port,
		"--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + pskDir + ",priority=" + repository.TLSPriority, "--tls-creds=tls0"}
	stopFn = runQemuNbd(tb, "tcp", addr, append(append(full, args...), image))
	return "nbds://" + addr + "/", stopFn
}

// runQemuNbd starts qemu-nbd with args and waits until it accepts on addr.
func runQemuNbd(tb testing.TB, network, addr string, args []string) (stopFn func()) {
	tb.Helper()
	bin := testutil.RequireTool(tb, "qemu-nbd")
	cmd := exec.Command(bin, args...)
	var errBuf bytes.Buffer
	cmd.Stderr = io.MultiWriter(os.Stderr, &errBuf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start qemu-nbd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	var once sync.Once
	stopFn = func() { once.Do(func() { stop(cmd, exited) }) }
	tb.Cleanup(stopFn)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		select {
		case <-exited:
			tb.Fatalf("qemu-nbd %v exited: %s", args, errBuf.String())
		default:
		}
		c, err := net.Dial(network, addr)
		if err == nil {
			c.Close()
			return stopFn
		}
		if time.Now().After(deadline) {
			tb.Fatalf("qemu-nbd on %s not ready: %v", addr, err)
		}
	}
}

func stop(cmd *exec.Cmd, exited chan struct{}) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func qemuImg(tb testing.TB, args ...string) []byte {
	tb.Helper()
	out, err := exec.Command(testutil.RequireTool(tb, "qemu-img"), args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
	return out
}

// newQcow2 creates a QCOW2 of size bytes, backed by backing if not empty.
func newQcow2(tb testing.TB, dir, name string, size int64, backing string) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing != "" {
		args = append(args, "-b", backing, "-F", "qcow2")
	}
	qemuImg(tb, append(args, p, fmt.Sprint(size))...)
	return p
}

// compare runs qemu-img compare (exit 0 when the guest-visible contents
// are equal).
func compare(tb testing.TB, a, b string) {
	tb.Helper()
	cmd := exec.Command(testutil.RequireTool(tb, "qemu-img"), "compare", "-U", a, b)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("qemu-img compare %s %s: %v: %s", a, b, err, out)
	}
}

// actualSize returns the bytes the image occupies on disk.
func actualSize(tb testing.TB, img string) int64 {
	tb.Helper()
	var info struct {
		ActualSize int64 `json:"actual-size"`
	}
	if err := json.Unmarshal(qemuImg(tb, "info", "-U", "--output=json", img), &info); err != nil {
		tb.Fatal(err)
	}
	return info.ActualSize
}

// segment of a test source image.
type segment struct {
	off, n int64
	kind   byte // 'd' random data, 'z' written zeroes, 'h' punched hole
}

// writeSource creates (or updates) a raw image of size bytes with the
// segments applied in order; the rest stays a hole. It returns the number
// of non-zero 64 KiB-block bytes it wrote (for size checks).
func writeSource(tb testing.TB, p string, size int64, seed uint64, segs []segment) {
	tb.Helper()
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 7))
	for _, s := range segs {
		switch s.kind {
		case 'd':
			b := make([]byte, s.n+8)
			for i := int64(0); i < s.n; i += 8 {
				binary.LittleEndian.PutUint64(b[i:], r.Uint64()|1) // never a zero byte run
			}
			if _, err := f.WriteAt(b[:s.n], s.off); err != nil {
				tb.Fatal(err)
			}
		case 'z':
			if _, err := f.WriteAt(make([]byte, s.n), s.off); err != nil {
				tb.Fatal(err)
			}
		case 'h':
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, s.off, s.n); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
}

func copyFile(tb testing.TB, from, to string) {
	tb.Helper()
	out, err := exec.Command("cp", "--sparse=always", from, to).CombinedOutput()
	if err != nil {
		tb.Fatalf("cp: %v: %s", err, out)
	}
}

func ctxT(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}
