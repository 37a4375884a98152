package repository

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Programs run by the package, looked up on PATH when run.
const (
	qemuImg = "qemu-img"
	qemuNbd = "qemu-nbd"
)

// maxStderr bounds how much of a program's stderr an error carries.
const maxStderr = 4096

// run runs a program without a shell and returns its stdout. A failure is an
// *ExecError carrying the exit code and the (trimmed) stderr. Cancelling ctx
// kills the program.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout bytes.Buffer
	stderr := &tailBuffer{max: maxStderr}
	cmd.Stdout = &stdout
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = errors.Join(err, ctxErr)
		}
		return stdout.Bytes(), newExecError(cmd, err, stderr.String())
	}
	return stdout.Bytes(), nil
}

func newExecError(cmd *exec.Cmd, err error, stderr string) *ExecError {
	code := -1
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	args := append([]string{cmd.Args[0]}, cmd.Args[1:]...)
	return &ExecError{Args: args, ExitCode: code, Stderr: strings.TrimSpace(stderr), Err: err, NoSpace: saysNoSpace(stderr)}
}

// tailBuffer is an io.Writer keeping the last max bytes written, safe for
// concurrent use (os/exec copies stdout and stderr from two goroutines).
type tailBuffer struct {
	mu   sync.Mutex
	max  int
	buf  []byte
	lost bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.lost = true
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.lost {
		return "..." + string(b.buf)
	}
	return string(b.buf)
}
