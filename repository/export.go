package repository

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Defaults of ExportOptions.
const (
	DefaultShared       = 4
	DefaultStartTimeout = 10 * time.Second
	DefaultStopTimeout  = 10 * time.Second
)

// TLSPriority is the GnuTLS priority string of TCP exports: GnuTLS's
// defaults without ChaCha20-Poly1305, so that AES-GCM is negotiated. With
// the defaults, libnbd and qemu-nbd 7.2 agreed on ChaCha20-Poly1305, which
// this GnuTLS (3.7.9) runs at about 235 MB/s per core, against 3.5 GB/s for
// AES-128-GCM with AES-NI (gnutls-cli --benchmark-ciphers): it made copies
// over TLS 2.5 times slower than over a unix socket. Every client we use
// (libnbd, qemu-img) offers AES-GCM.
const TLSPriority = "NORMAL:-CHACHA20-POLY1305"

// MaxSocketPath keeps a unix socket path inside sun_path (108 bytes on
// Linux, 104 on the BSDs) with room to spare.
const MaxSocketPath = 100

// ExportOptions configure Export. The zero value is a writable export for
// DefaultShared clients on a unix socket under os.TempDir().
type ExportOptions struct {
	// ReadOnly exports with -r. A file can have any number of read-only
	// exports, or one writable export and nothing else.
	ReadOnly bool
	// Shared is the number of clients qemu-nbd serves at once (--shared);
	// further clients wait in the handshake. Default DefaultShared (4).
	Shared int
	// TCPAddr, "host:port", exports over TCP with TLS instead of a unix
	// socket; PSK is then required (ErrInsecure without it): nothing is
	// ever served on the network in clear. Port 0 picks a free port. A
	// port taken by another program, found before qemu-nbd starts or by
	// qemu-nbd failing to bind, fails with ErrAddrInUse: try another port.
	// Default "": a unix socket.
	TCPAddr string
	// PSK is the TLS pre-shared key of a TCP export: qemu-nbd serves with
	// --tls-creds (a tls-creds-psk object reading the key from a private
	// 0700 directory, removed on Close), so the key is never in argv.
	// Clients connect with nbds:// and the same identity and key. Required
	// with TCPAddr; refused without it (a unix socket is reachable on this
	// host only, through its private directory).
	PSK *PSK
	// AdvertiseHost is the host put in the URI of a TCP export, the name
	// or address clients on other hosts reach this one by. Default: the
	// host of TCPAddr.
	AdvertiseHost string
	// SocketDir is where the private (0700) directory of the unix socket,
	// or of a TCP export's TLS key, is made. Default "" means
	// os.TempDir(). The socket path must stay under 100 bytes
	// (ErrSocketPath).
	SocketDir string
	// Owner is the token Reap passes to its keep function, normally the
	// job id of the job using the export. Default: the job id of the
	// exported file.
	Owner string
	// StartTimeout bounds the wait for qemu-nbd to accept connections,
	// within ctx's deadline. Default DefaultStartTimeout (10 s).
	StartTimeout time.Duration
	// StopTimeout is how long Close waits after SIGTERM before SIGKILL.
	// Default DefaultStopTimeout (10 s).
	StopTimeout time.Duration
}

// Export is a qemu-nbd process serving one backup file. Its methods are safe
// for concurrent use. Close it when done: the process outlives the context
// given to Export and is stopped only by Close (or Repo.Close / Reap), or by
// SIGTERM from the kernel when the process that started it dies.
type Export struct {
	repo        *Repo
	path        string
	owner       string
	readOnly    bool
	uri         string
	sockDir     string // private socket directory; "" for TCP
	pskDir      string // private directory of the TLS key; "" for a unix socket
	started     time.Time
	stopTimeout time.Duration
	termRepeat  time.Duration // SIGTERM repeat interval in Close; 0: send once (tests)
	log         zerolog.Logger

	cmd      *exec.Cmd
	output   *tailBuffer
	exited   chan struct{} // closed when the process has been waited for
	waitErr  error         // cmd.Wait's result; read after exited is closed
	stopping atomic.Bool   // Close sent SIGTERM: an exit is expected
	ready    atomic.Bool   // Export returned it: an exit is worth a warning

	closeMu  sync.Mutex
	closed   bool
	closeErr error
}

// Export starts qemu-nbd in the foreground on a backup file of the
// repository and returns once it serves (sends the NBD greeting).
//
// Writable: qemu-nbd -f qcow2 -t --shared=N --cache=none --aio=native
// --discard=unmap --detect-zeroes=unmap: data goes to the disk with
// O_DIRECT, not through the page cache, so a backup neither pays a copy
// into the cache nor leaves gigabytes of dirty pages for the final flush
// and for other processes to wait on (qemu-nbd's CPU per byte is a
// quarter of --cache=writeback's in make bench-copy). On a file system
// without O_DIRECT (tmpfs before Linux 6.6) it falls back to
// --cache=writeback --aio=threads. Read-only: qemu-nbd -r -f qcow2 -t
// --shared=N. A chain point is exported with its backing files read-only.
//
// path must be ROOT/<vm>/<disk>/<job>.qcow2 of this repository
// (ErrNotInRepo) and exist. A second writable export of a file, or a
// read-only export of a file exported writable, fails with ErrBusy. ctx
// bounds the start only. Errors: ErrClosed, ErrInvalidAddr, ErrInsecure,
// ErrInvalidPSK, ErrAddrInUse, ErrSocketPath, ErrExportDied (qemu-nbd
// exited while starting, with its output).
func (r *Repo) Export(ctx context.Context, path string, opts ExportOptions) (*Export, error) {
	e, err := r.export(ctx, path, opts)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", path, err)
	}
	e.log.Info().Int("pid", e.PID()).Str("uri", e.uri).Msg("export started")
	return e, nil
}

func (r *Repo) export(ctx context.Context, path string, opts ExportOptions) (*Export, error) {
	loc, err := r.parsePath(path)
	if err != nil {
		return nil, err
	}
	abs := filepath.Join(r.diskDir(loc.vm, loc.disk), fileName(loc.job))
	st, err := os.Stat(abs)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file: %w", abs, ErrNotInRepo)
	}
	if opts.Shared == 0 {
		opts.Shared = DefaultShared
	}
	if opts.Shared < 0 {
		return nil, fmt.Errorf("shared %d is negative", opts.Shared)
	}
	if opts.Owner == "" {
		opts.Owner = loc.job
	}
	if opts.TCPAddr != "" && opts.PSK == nil {
		return nil, fmt.Errorf("tcp address %s without tls psk: %w", opts.TCPAddr, ErrInsecure)
	}
	if opts.PSK != nil {
		if opts.TCPAddr == "" {
			return nil, fmt.Errorf("tls psk without tcp address: %w", ErrInvalidAddr)
		}
		if err := opts.PSK.Validate(); err != nil {
			return nil, err
		}
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	e := &Export{
		repo: r, path: abs, owner: opts.Owner, readOnly: opts.ReadOnly,
		stopTimeout: opts.StopTimeout, termRepeat: 250 * time.Millisecond, output: &tailBuffer{max: maxStderr}, exited: make(chan struct{}),
	}
	e.log = zerolog.Ctx(ctx).With().Str("path", abs).Str("owner", e.owner).Bool("read_only", e.readOnly).Logger()

	if err := r.register(e); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			r.unregister(e)
		}
	}()

	args := []string{"-f", "qcow2", "-t", "--shared=" + strconv.Itoa(opts.Shared)}
	if opts.ReadOnly {
		args = append(args, "-r")
	} else {
		cache := []string{"--cache=none", "--aio=native"}
		if !directIO(abs) {
			cache = []string{"--cache=writeback", "--aio=threads"}
		}
		args = append(append(args, cache...), "--discard=unmap", "--detect-zeroes=unmap")
	}
	network, addr := "unix", ""
	if opts.TCPAddr != "" {
		host, port, err := tcpEndpoint(opts.TCPAddr)
		if err != nil {
			return nil, err
		}
		network, addr = "tcp", net.JoinHostPort(host, port)
		dir, err := opts.PSK.WriteDir(opts.SocketDir)
		if err != nil {
			return nil, err
		}
		e.pskDir = dir
		defer func() {
			if !ok {
				os.RemoveAll(dir)
			}
		}()
		args = append(args, "--bind="+host, "--port="+port,
			"--object", "tls-creds-psk,id=tls0,endpoint=server,dir="+dir+",priority="+TLSPriority, "--tls-creds=tls0")
		e.uri = "nbds://" + net.JoinHostPort(cmp.Or(opts.AdvertiseHost, host), port) + "/"
	} else {
		dir, err := os.MkdirTemp(opts.SocketDir, "sdnbd-")
		if err != nil {
			return nil, fmt.Errorf("make socket directory: %w", err)
		}
		e.sockDir = dir
		defer func() {
			if !ok {
				os.RemoveAll(dir)
			}
		}()
		addr = filepath.Join(dir, "nbd.sock")
		if len(addr) >= MaxSocketPath {
			return nil, fmt.Errorf("socket %s of %d bytes, limit %d: %w", addr, len(addr), MaxSocketPath, ErrSocketPath)
		}
		args = append(args, "--socket="+addr)
		e.uri = "nbd+unix:///?socket=" + strings.ReplaceAll(url.QueryEscape(addr), "%2F", "/")
	}
	args = append(args, abs)

	// Not CommandContext: the server outlives ctx, which bounds the start.
	e.cmd = exec.Command(qemuNbd, args...)
	e.cmd.Stdout = e.output
	e.cmd.Stderr = e.output
	e.cmd.WaitDelay = 2 * time.Second
	e.cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // a ^C at the terminal goes to us, not to qemu-nbd
		Pdeathsig: syscall.SIGTERM, // if we die, qemu-nbd flushes and exits
	}
	if err := e.cmd.Start(); err != nil {
		return nil, newExecError(e.cmd, err, "")
	}
	e.started = time.Now()
	go e.wait()

	if err := e.waitReady(ctx, network, addr, opts.StartTimeout); err != nil {
		e.kill()
		return nil, err
	}
	ok = true
	e.ready.Store(true)
	return e, nil
}

// tcpEndpoint splits "host:port", choosing a free port for port 0, and
// checks that the port is free (ErrAddrInUse when not): qemu-nbd could
// still lose it to another program before it binds, which waitReady
// reports as ErrAddrInUse too.
func tcpEndpoint(hostport string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(hostport)
	if err != nil {
		return "", "", fmt.Errorf("tcp address %q: %w: %w", hostport, ErrInvalidAddr, err)
	}
	if host == "" {
		return "", "", fmt.Errorf("tcp address %q: empty host: %w", hostport, ErrInvalidAddr)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", "", fmt.Errorf("tcp address %q: port: %w", hostport, ErrInvalidAddr)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.FormatUint(n, 10)))
	if errors.Is(err, syscall.EADDRINUSE) {
		return "", "", fmt.Errorf("tcp address %s: %w: %w", hostport, ErrAddrInUse, err)
	}
	if err != nil {
		return "", "", fmt.Errorf("listen on %s: %w", hostport, err)
	}
	port = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	return host, port, nil
}

func (e *Export) wait() {
	err := e.cmd.Wait()
	e.waitErr = err
	close(e.exited)
	if e.ready.Load() && !e.stopping.Load() {
		e.log.Warn().Int("pid", e.cmd.Process.Pid).AnErr("exit", err).Str("output", e.output.String()).
			Msg("export exited unexpectedly")
	}
}

// waitReady polls the endpoint until qemu-nbd sends the NBD greeting. A
// listening socket is not enough: qemu-nbd listens before it enters its main
// loop, and a SIGTERM in that window is forgotten (the loop's start resets
// the state the signal handler set). The greeting is sent from the main
// loop. The probe connection is then closed; qemu-nbd with -t keeps serving.
func (e *Export) waitReady(ctx context.Context, network, addr string, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		err := probeGreeting(ctx, network, addr)
		if err == nil {
			return nil
		}
		select {
		case <-e.exited:
			out := e.output.String()
			if network == "tcp" && strings.Contains(out, "Address already in use") {
				// Another program bound the port between tcpEndpoint's
				// check and qemu-nbd's bind.
				return fmt.Errorf("%w: %w: %w", ErrAddrInUse, ErrExportDied, newExecError(e.cmd, exitErr(e.waitErr), out))
			}
			return fmt.Errorf("%w: %w", ErrExportDied, newExecError(e.cmd, exitErr(e.waitErr), out))
		case <-ctx.Done():
			return fmt.Errorf("wait for qemu-nbd on %s: %w", addr, ctx.Err())
		case <-timer.C:
			return fmt.Errorf("wait for qemu-nbd on %s: not accepting after %s: %w: %s", addr, timeout, err, e.output.String())
		case <-tick.C:
		}
	}
}

// nbdMagic starts the greeting of every NBD server.
const nbdMagic = "NBDMAGIC"

// probeGreeting connects and reads the first 8 bytes of the NBD greeting.
func probeGreeting(ctx context.Context, network, addr string) error {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, len(nbdMagic))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read nbd greeting: %w", err)
	}
	if string(buf) != nbdMagic {
		return fmt.Errorf("read nbd greeting: got %q", buf)
	}
	return nil
}

// kill stops the process at once and waits for it; used when a start fails.
func (e *Export) kill() {
	e.stopping.Store(true)
	_ = e.cmd.Process.Kill()
	<-e.exited
}

// URI is the NBD URI of the export: nbd+unix:///?socket=PATH or, over
// TCP with TLS, nbds://HOST:PORT/ (HOST the AdvertiseHost; export name "").
// It never holds the key.
func (e *Export) URI() string { return e.uri }

// Path is the absolute path of the exported file.
func (e *Export) Path() string { return e.path }

// Owner is the token given in ExportOptions.Owner (default: the file's job id).
func (e *Export) Owner() string { return e.owner }

// ReadOnly reports whether the export is read-only.
func (e *Export) ReadOnly() bool { return e.readOnly }

// PID is qemu-nbd's process id (it may have exited; see Done).
func (e *Export) PID() int { return e.cmd.Process.Pid }

// Started is when qemu-nbd was started.
func (e *Export) Started() time.Time { return e.started }

// Done is closed when the qemu-nbd process has exited and been reaped.
func (e *Export) Done() <-chan struct{} { return e.exited }

// ExitErr reports how qemu-nbd ended: nil while it runs or when it exited
// cleanly after Close asked it to; an error matching ErrExportDied (with
// its exit status and output) when it exited on its own or was killed by
// someone else. A writable export whose process died before its client's
// final flush completed holds untrusted data.
func (e *Export) ExitErr() error {
	select {
	case <-e.exited:
	default:
		return nil
	}
	if e.stopping.Load() {
		return nil
	}
	return fmt.Errorf("qemu-nbd pid %d for %s: %w: %w", e.PID(), e.path, ErrExportDied,
		newExecError(e.cmd, exitErr(e.waitErr), e.output.String()))
}

func exitErr(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// Close stops qemu-nbd and waits until the process is gone: SIGTERM (on
// which qemu-nbd flushes the image and exits), then SIGKILL after the stop
// timeout or when ctx ends (the error then matches ErrKilled). For a
// writable export it then fsyncs the file. It removes the socket directory
// and drops the export from the Repo's registry.
//
// Close is idempotent and safe to call concurrently: later calls return the
// first call's result. If qemu-nbd had already exited (killed by someone
// else), Close only cleans up and returns nil; see ExitErr for the cause.
// A clean SIGTERM exit with a non-zero status (a failed final flush)
// is returned as an error.
func (e *Export) Close(ctx context.Context) error {
	e.closeMu.Lock()
	defer e.closeMu.Unlock()
	if e.closed {
		return e.closeErr
	}
	e.closed = true
	err := e.stop(ctx)
	for _, dir := range []string{e.sockDir, e.pskDir} {
		if dir == "" {
			continue
		}
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	e.repo.unregister(e)
	if err != nil {
		e.closeErr = fmt.Errorf("close export of %s: %w", e.path, err)
		e.log.Error().Err(err).Int("pid", e.PID()).Msg("export closed with error")
	} else {
		e.log.Info().Int("pid", e.PID()).Dur("uptime", time.Since(e.started)).Msg("export closed")
	}
	return e.closeErr
}

func (e *Export) stop(ctx context.Context) error {
	select {
	case <-e.exited:
		e.log.Warn().Int("pid", e.PID()).AnErr("exit", e.ExitErr()).Msg("export had exited before close")
		return nil
	default:
	}
	e.stopping.Store(true)
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal qemu-nbd pid %d: %w", e.PID(), err)
	}
	timer := time.NewTimer(e.stopTimeout)
	defer timer.Stop()
	// Repeat SIGTERM: harmless once qemu-nbd is terminating, and it covers
	// a signal qemu-nbd could miss before its main loop runs.
	var resendC <-chan time.Time
	if e.termRepeat > 0 {
		resend := time.NewTicker(e.termRepeat)
		defer resend.Stop()
		resendC = resend.C
	}
	var err error
wait:
	for {
		select {
		case <-e.exited:
			if e.waitErr != nil {
				err = newExecError(e.cmd, e.waitErr, e.output.String())
			}
			break wait
		case <-resendC:
			_ = e.cmd.Process.Signal(syscall.SIGTERM)
		case <-timer.C:
			_ = e.cmd.Process.Kill()
			<-e.exited
			err = fmt.Errorf("qemu-nbd pid %d still running %s after SIGTERM: %w", e.PID(), e.stopTimeout, ErrKilled)
			break wait
		case <-ctx.Done():
			_ = e.cmd.Process.Kill()
			<-e.exited
			err = fmt.Errorf("qemu-nbd pid %d: %w: %w", e.PID(), ErrKilled, ctx.Err())
			break wait
		}
	}
	if !e.readOnly {
		if serr := syncPath(e.path); serr != nil {
			err = errors.Join(err, serr)
		}
	}
	return err
}

// register adds e to the registry unless the Repo is closed or the file's
// exports conflict with e.
func (r *Repo) register(e *Export) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	for o := range r.exports {
		if o.path == e.path && (!e.readOnly || !o.readOnly) {
			return fmt.Errorf("%s by qemu-nbd for %s (read-only %t): %w", e.path, o.owner, o.readOnly, ErrBusy)
		}
	}
	r.exports[e] = struct{}{}
	return nil
}

func (r *Repo) unregister(e *Export) {
	r.mu.Lock()
	delete(r.exports, e)
	r.mu.Unlock()
}

// exportOf returns a registered export of path, a writable one if any.
func (r *Repo) exportOf(path string) *Export {
	r.mu.Lock()
	defer r.mu.Unlock()
	var found *Export
	for e := range r.exports {
		if e.path == path && (found == nil || !e.readOnly) {
			found = e
		}
	}
	return found
}

func (r *Repo) exportList() []*Export {
	r.mu.Lock()
	list := make([]*Export, 0, len(r.exports))
	for e := range r.exports {
		list = append(list, e)
	}
	r.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].started.Before(list[j].started) })
	return list
}

// Exports lists the exports started by this Repo and not yet closed,
// oldest first (including ones whose process has exited: see Done).
func (r *Repo) Exports() []*Export { return r.exportList() }

// Reap closes every export whose owner keep rejects, and every export whose
// qemu-nbd has exited, and returns those it closed with the joined errors
// of their Close. keep is called without locks held and may be slow (for
// example a catalog lookup: "is this job still running?"). The hub calls
// Reap when a job ends, when an agent vanishes, and periodically.
func (r *Repo) Reap(ctx context.Context, keep func(owner string) bool) ([]*Export, error) {
	var reaped []*Export
	var errs []error
	for _, e := range r.exportList() {
		dead := false
		select {
		case <-e.exited:
			dead = true
		default:
		}
		if !dead && keep(e.owner) {
			continue
		}
		zerolog.Ctx(ctx).Info().Str("path", e.path).Str("owner", e.owner).Int("pid", e.PID()).
			Bool("exited", dead).Msg("reaping export")
		if err := e.Close(ctx); err != nil {
			errs = append(errs, err)
		}
		reaped = append(reaped, e)
	}
	return reaped, errors.Join(errs...)
}

// directIO reports whether path can be opened for writing with O_DIRECT
// (qemu-nbd --cache=none needs it).
func directIO(path string) bool {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}
