package bustest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

const serverModule = "github.com/nats-io/nats-server/v2"

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// NatsServerBinary returns the path of a nats-server binary built from the
// module version this test binary links. It is built once per test
// process and cached across runs in os.UserCacheDir()/sendense-test.
func NatsServerBinary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() { buildBin, buildErr = buildNatsServer() })
	if buildErr != nil {
		tb.Fatalf("build nats-server: %v", buildErr)
	}
	return buildBin
}

func buildNatsServer() (string, error) {
	version := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == serverModule {
				version = d.Version
				if d.Replace != nil {
					version = "" // a local replacement has no stable identity
				}
			}
		}
	}
	if version == "" {
		version = moduleVersion() // a test binary that does not link the server
	}
	var dir string
	if version != "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		dir = filepath.Join(base, "sendense-test")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
	} else {
		d, err := os.MkdirTemp("", "sendense-nats-server")
		if err != nil {
			return "", err
		}
		dir = d
		version = "dev"
	}
	bin := filepath.Join(dir, fmt.Sprintf("nats-server-%s-%s-%s", version, runtime.GOOS, runtime.GOARCH))
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && version != "dev" {
		return bin, nil
	}
	// Several test binaries may build at once: build to a private name,
	// then rename, which is atomic.
	tmp := fmt.Sprintf("%s.tmp%d", bin, os.Getpid())
	cmd := exec.Command(goCommand(), "build", "-o", tmp, serverModule)
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("go build %s: %w\n%s", serverModule, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return bin, nil
}

// moduleVersion is the version of the nats-server module that the main
// module requires (go list -m, run in the test's package directory), or ""
// when it is replaced or go cannot tell.
func moduleVersion() string {
	out, err := exec.Command(goCommand(), "list", "-m", "-f", "{{.Version}} {{if .Replace}}replaced{{end}}", serverModule).Output()
	if err != nil {
		return ""
	}
	v, replaced, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	if replaced != "" || !strings.HasPrefix(v, "v") {
		return ""
	}
	return v
}

func goCommand() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "go" // not found: running it says so
}

// External runs nats-server as a separate process (`-js -sd <tmp> -p
// <random>` on 127.0.0.1, every write synced like the embedded server),
// connects to it, and stops it in cleanup. Its log goes to the test log.
func External(tb testing.TB) *Server {
	tb.Helper()
	bin := NatsServerBinary(tb)
	log := Logger(tb)
	dir := tb.TempDir()
	p := startExternal(tb, bin, dir, -1, log)
	s := &Server{Kind: "external", URL: p.url, DataDir: dir}
	s.restart = func(tb testing.TB) {
		tb.Helper()
		p.kill()
		p = startExternal(tb, bin, dir, p.port, log)
	}
	s.Conn, s.JS = connect(tb, log, s.URL)
	return s
}

type externalProc struct {
	cmd  *exec.Cmd
	url  string
	port int
	once sync.Once
	done chan struct{}
}

func startExternal(tb testing.TB, bin, dataDir string, port int, log zerolog.Logger) *externalProc {
	tb.Helper()
	// The config file only adds what has no flag: sync every write, like
	// the embedded server, so a kill after a PubAck loses nothing.
	return startExternalConf(tb, bin, dataDir, port, "jetstream {\n  sync_interval: always\n}\n", log)
}

// startExternalConf runs nats-server with the configuration text conf.
func startExternalConf(tb testing.TB, bin, dataDir string, port int, confText string, log zerolog.Logger) *externalProc {
	tb.Helper()
	portsDir := tb.TempDir()
	conf := writeConf(tb, portsDir, confText)
	return runNatsServer(tb, nil, bin, portsDir, "nats-server-external", log,
		"-c", conf,
		"-n", "sendense-external",
		"-a", "127.0.0.1", "-p", strconv.Itoa(port),
		"-js", "-sd", dataDir)
}

// runNatsServer runs bin with args and --ports_file_dir portsDir (a
// fresh directory), its output logged with component, and returns once
// it has written its ports file. Stopped in cleanup. prefix, if any, is
// a command that execs bin in place (for example ip netns exec NS), so
// signals still reach the server.
func runNatsServer(tb testing.TB, prefix []string, bin, portsDir, component string, log zerolog.Logger, args ...string) *externalProc {
	tb.Helper()
	argv := append(append(append([]string{}, prefix...), bin), append(args, "--ports_file_dir", portsDir)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	cmd.Stdout = pw
	slog := log.With().Str("component", component).Logger()
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			slog.Info().Str("nats_log", sc.Text()).Msg("nats server")
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	if err := cmd.Start(); err != nil {
		pw.Close()
		<-logDone
		tb.Fatalf("start %s: %v", bin, err)
	}
	p := &externalProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		pw.Close()
		<-logDone
		close(p.done)
	}()
	tb.Cleanup(p.stop)

	deadline := time.Now().Add(30 * time.Second)
	for p.url == "" {
		select {
		case <-p.done:
			tb.Fatalf("nats-server exited at start: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("nats-server did not write its ports file in 30s")
		}
		time.Sleep(20 * time.Millisecond)
		p.url, p.port = readPorts(portsDir)
	}
	return p
}

// readPorts parses the first client URL of the ports file nats-server
// writes (<exe>_<pid>.ports); "" until it is complete.
func readPorts(dir string) (string, int) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.ports"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var ports struct {
			Nats []string `json:"nats"`
		}
		if json.Unmarshal(data, &ports) != nil || len(ports.Nats) == 0 {
			continue
		}
		u := ports.Nats[0]
		i := strings.LastIndex(u, ":")
		port, err := strconv.Atoi(u[i+1:])
		if err != nil {
			continue
		}
		return u, port
	}
	return "", 0
}

// stop asks the server to shut down (SIGTERM), kills it after 10 s.
func (p *externalProc) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// kill crashes the server (SIGKILL) and waits for it.
func (p *externalProc) kill() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
}
