package vmware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/vim25/types"
)

// Sources opens read-only NBD sources for disks of a snapshot. The
// production implementation is VDDKSources (nbdkit's VDDK plugin talking to
// ESXi); tests and the demo use LocalSources (nbdkit over a local image).
// Implementations are safe for concurrent use; every returned Source must be
// closed.
type Sources interface {
	Open(ctx context.Context, req SourceRequest) (*Source, error)
}

// SourceRequest names one disk at one snapshot.
type SourceRequest struct {
	VM       types.ManagedObjectReference // the VM, "vm-123"
	Snapshot types.ManagedObjectReference // the snapshot, "snapshot-45"
	Disk     Disk                         // from SnapshotDisks: Key and FileName are used
}

// sun_path is 108 bytes including the terminating NUL.
const maxSocketPath = 107

// sourceStopTimeout is how long Close waits after SIGTERM before SIGKILL when
// the caller's context has no deadline.
const sourceStopTimeout = 5 * time.Second

// Source is one nbdkit process serving one disk read-only on a unix socket
// in a private directory. Close stops it and removes the directory.
type Source struct {
	cmd  *exec.Cmd
	dir  string
	sock string
	uri  string
	log  zerolog.Logger

	done    chan struct{} // closed when the process has exited
	waitErr error
	stderr  *tailBuffer

	closeOnce sync.Once
	closeErr  error
}

// URI is the NBD URI of the export, nbd+unix:///?socket=PATH.
func (s *Source) URI() string { return s.uri }

// Socket is the unix socket path.
func (s *Source) Socket() string { return s.sock }

// PID is the nbdkit process id (for logs and tests).
func (s *Source) PID() int { return s.cmd.Process.Pid }

// Close stops nbdkit: SIGTERM, wait until it is gone, SIGKILL when ctx ends
// (or after 5 s when ctx has no deadline), then removes the socket
// directory. It is safe to call more than once.
func (s *Source) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		ctx, cancel := withDefaultTimeout(ctx, sourceStopTimeout)
		defer cancel()
		select {
		case <-s.done:
		default:
			_ = s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-ctx.Done():
				_ = s.cmd.Process.Kill()
				<-s.done
				s.log.Warn().Str("socket", s.sock).Msg("nbdkit killed after sigterm timeout")
			}
		}
		if err := os.RemoveAll(s.dir); err != nil {
			s.closeErr = fmt.Errorf("remove source socket dir %s: %w", s.dir, err)
		}
		s.log.Debug().Str("socket", s.sock).Msg("nbd source stopped")
	})
	return s.closeErr
}

// LocalSource serves imagePath (a raw image) read-only with
// `nbdkit --readonly --foreground --exit-with-parent --unix SOCK file file=PATH`
// on a socket in a new private directory under sockDir, and waits until the
// socket accepts connections.
func LocalSource(ctx context.Context, imagePath string, sockDir string, log zerolog.Logger) (*Source, error) {
	if _, err := os.Stat(imagePath); err != nil {
		return nil, fmt.Errorf("open local source %s: %w", imagePath, err)
	}
	return startSource(ctx, sockDir, log, func(sock string) ([]string, error) {
		return LocalCommand(imagePath, sock), nil
	})
}

// LocalCommand is the nbdkit command line LocalSource runs.
func LocalCommand(imagePath, socket string) []string {
	return append(baseArgs(socket), "file", "file="+imagePath)
}

func baseArgs(socket string) []string {
	return []string{"nbdkit", "--readonly", "--foreground", "--exit-with-parent", "--unix", socket}
}

// RelaySource serves the NBD export at uri read-only on a private unix
// socket through nbdkit's nbd plugin, which reads it with libnbd: over TLS
// (nbds://) with the pre-shared key of identity in the private file pskFile,
// whose path (never the key) is in argv. It is how qemu-img reads a remote
// restore export: QEMU 7.2's own NBD client stalls on TLS (docs/design.md
// "Restore over TLS") while libnbd keeps its requests in flight. nbdkit
// connects to uri when a client opens the socket, so a wrong address or key
// fails that client's handshake, not RelaySource.
func RelaySource(ctx context.Context, uri, pskFile, identity, sockDir string, log zerolog.Logger) (*Source, error) {
	return startSource(ctx, sockDir, log, func(sock string) ([]string, error) {
		return RelayCommand(uri, pskFile, identity, sock), nil
	})
}

// RelayCommand is the nbdkit command line RelaySource runs.
func RelayCommand(uri, pskFile, identity, socket string) []string {
	return append(baseArgs(socket), "nbd", "uri="+uri, "tls=require", "tls-username="+identity, "tls-psk="+pskFile)
}

// LocalSources opens local images, for the testbed and the demo. Image maps
// a snapshot and a disk key to the frozen image of that disk (the testbed's
// SnapshotImage).
type LocalSources struct {
	Image     func(snap types.ManagedObjectReference, diskKey int32) (string, error)
	SocketDir string // parent of the private socket directories; default os.TempDir()
	Log       zerolog.Logger
}

// Open implements Sources.
func (l *LocalSources) Open(ctx context.Context, req SourceRequest) (*Source, error) {
	path, err := l.Image(req.Snapshot, req.Disk.Key)
	if err != nil {
		return nil, fmt.Errorf("open source for disk %d of vm %s at snapshot %s: %w", req.Disk.Key, req.VM.Value, req.Snapshot.Value, err)
	}
	return LocalSource(ctx, path, l.SocketDir, l.Log)
}

// startSource makes a private socket directory, runs the command built for
// its socket, and waits for the socket.
func startSource(ctx context.Context, sockDir string, log zerolog.Logger, build func(sock string) ([]string, error)) (*Source, error) {
	if sockDir == "" {
		sockDir = os.TempDir()
	}
	dir, err := os.MkdirTemp(sockDir, "nbdsrc")
	if err != nil {
		return nil, fmt.Errorf("make source socket dir in %s: %w", sockDir, err)
	}
	sock := filepath.Join(dir, "nbdkit.sock")
	if len(sock) > maxSocketPath {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("start nbd source: %w: socket path %s is longer than %d bytes", ErrInvalidOptions, sock, maxSocketPath)
	}
	argv, err := build(sock)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	bin, err := exec.LookPath(argv[0])
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("start nbd source: %w: %w", ErrSourceStart, err)
	}
	s := &Source{
		dir:    dir,
		sock:   sock,
		uri:    "nbd+unix:///?socket=" + sock,
		log:    log,
		done:   make(chan struct{}),
		stderr: &tailBuffer{max: 8 << 10},
	}
	// Not CommandContext: the source outlives the start-up context and is
	// stopped by Close (and by --exit-with-parent if this process dies).
	s.cmd = exec.Command(bin, argv[1:]...)
	s.cmd.Stdout = s.stderr
	s.cmd.Stderr = s.stderr
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("start nbd source: %w: %w", ErrSourceStart, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	if err := waitSocket(ctx, sock, s.done); err != nil {
		_ = s.Close(context.Background())
		return nil, fmt.Errorf("start nbd source: %w: %w (nbdkit said: %s)", ErrSourceStart, err, bytes.TrimSpace(s.stderr.Bytes()))
	}
	log.Debug().Str("socket", sock).Int("pid", s.cmd.Process.Pid).Msg("nbd source started")
	return s, nil
}

// waitSocket polls until the socket accepts a connection, the process exits,
// or ctx ends (default 30 s).
func waitSocket(ctx context.Context, sock string, exited <-chan struct{}) error {
	ctx, cancel := withDefaultTimeout(ctx, 30*time.Second)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", sock)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("nbdkit exited before its socket was ready")
		case <-ctx.Done():
			return fmt.Errorf("socket %s not ready: %w", sock, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.b...)
}
