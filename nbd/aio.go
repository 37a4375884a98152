package nbd

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Cookie identifies an aio command on its handle.
type Cookie int64

// Flags modify a command.
type Flags uint32

const (
	// FlagFUA asks the server to persist the write before replying.
	FlagFUA Flags = cFlagFUA
	// FlagNoHole asks Zero to allocate the range instead of punching a
	// hole. Without it the server may deallocate (and a QCOW2 target
	// records zero clusters, hiding its backing file).
	FlagNoHole Flags = cFlagNoHole
	// FlagFastZero asks Zero to fail rather than fall back to writing.
	FlagFastZero Flags = cFlagFastZero
)

var liveBuffers atomic.Int64

// Buffer is memory outside the Go heap (an anonymous mmap), safe to hand to
// aio calls: the garbage collector never moves or frees it. It must be
// freed with Free, and only once no command using it is in flight (or
// after the handle was closed). Free returns the memory to the kernel at
// once (malloc would keep multi-MiB blocks in its heap after the first
// free, so the process's resident size would grow copy after copy). A
// Buffer is not safe for concurrent Free.
type Buffer struct {
	p unsafe.Pointer
	n int
}

// NewBuffer allocates n bytes, page-aligned. The contents are undefined.
// It panics when n is not positive or the memory cannot be mapped.
func NewBuffer(n int) *Buffer {
	if n <= 0 {
		panic("nbd: NewBuffer size must be positive")
	}
	m, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		panic(fmt.Sprintf("nbd: map %d bytes for a buffer: %v", n, err))
	}
	liveBuffers.Add(1)
	return &Buffer{p: unsafe.Pointer(unsafe.SliceData(m)), n: n}
}

// Len returns the size of the buffer.
func (b *Buffer) Len() int { return b.n }

// Bytes returns the buffer's memory as a slice (nil after Free). The slice
// must not be used after Free.
func (b *Buffer) Bytes() []byte {
	if b.p == nil {
		return nil
	}
	return unsafe.Slice((*byte)(b.p), b.n)
}

// Span returns the bytes [i, j) of the buffer for an aio call.
func (b *Buffer) Span(i, j int) Span {
	if b.p == nil || i < 0 || j > b.n || i >= j {
		panic(fmt.Sprintf("nbd: span [%d,%d) out of buffer of %d bytes", i, j, b.n))
	}
	return Span{p: unsafe.Add(b.p, i), n: j - i}
}

// Free releases the memory. It is idempotent.
func (b *Buffer) Free() {
	if b.p != nil {
		if err := syscall.Munmap(unsafe.Slice((*byte)(b.p), b.n)); err != nil {
			panic(fmt.Sprintf("nbd: unmap a buffer of %d bytes: %v", b.n, err))
		}
		b.p = nil
		liveBuffers.Add(-1)
	}
}

// LiveBuffers returns how many Buffers are allocated and not yet freed in
// the process; tests use it to prove that nothing leaks.
func LiveBuffers() int64 { return liveBuffers.Load() }

// Span is a range of a Buffer. It does not own memory.
type Span struct {
	p unsafe.Pointer
	n int
}

// Len returns the length of the span.
func (s Span) Len() int { return s.n }

// Completion is the result of one retired aio command.
type Completion struct {
	Cookie Cookie
	Err    error // nil on success; an *Error from the server or libnbd
}

// AioPread starts reading len(s) bytes at off into s.
func (h *Handle) AioPread(s Span, off int64) (Cookie, error) {
	if err := h.usable(); err != nil {
		return 0, err
	}
	c, err := cAioPread(h.h, h.e, s.p, s.n, off)
	if err != nil {
		return 0, fmt.Errorf("read %d bytes at offset %d from %s: %w", s.n, off, h.uri, h.classify(err))
	}
	return c, nil
}

// AioPwrite starts writing s at off. flags may be 0 or FlagFUA.
func (h *Handle) AioPwrite(s Span, off int64, flags Flags) (Cookie, error) {
	if err := h.writable(); err != nil {
		return 0, err
	}
	c, err := cAioPwrite(h.h, h.e, s.p, s.n, off, flags)
	if err != nil {
		return 0, fmt.Errorf("write %d bytes at offset %d to %s: %w", s.n, off, h.uri, h.classify(err))
	}
	return c, nil
}

// AioZero starts writing zeroes over [off, off+length). Without
// FlagNoHole the server may deallocate the range. Returns ErrUnsupported
// when the server cannot zero.
func (h *Handle) AioZero(length, off int64, flags Flags) (Cookie, error) {
	if err := h.writable(); err != nil {
		return 0, err
	}
	if !h.caps.Zero {
		return 0, fmt.Errorf("zero %d bytes at offset %d on %s: %w", length, off, h.uri, ErrUnsupported)
	}
	c, err := cAioZero(h.h, length, off, flags)
	if err != nil {
		return 0, fmt.Errorf("zero %d bytes at offset %d on %s: %w", length, off, h.uri, h.classify(err))
	}
	return c, nil
}

// AioTrim starts discarding [off, off+length). Returns ErrUnsupported when
// the server cannot trim.
func (h *Handle) AioTrim(length, off int64) (Cookie, error) {
	if err := h.writable(); err != nil {
		return 0, err
	}
	if !h.caps.Trim {
		return 0, fmt.Errorf("trim %d bytes at offset %d on %s: %w", length, off, h.uri, ErrUnsupported)
	}
	c, err := cAioTrim(h.h, length, off, 0)
	if err != nil {
		return 0, fmt.Errorf("trim %d bytes at offset %d on %s: %w", length, off, h.uri, h.classify(err))
	}
	return c, nil
}

// AioFlush starts a flush. Returns ErrUnsupported when the server cannot
// flush.
func (h *Handle) AioFlush() (Cookie, error) {
	if err := h.usable(); err != nil {
		return 0, err
	}
	if !h.caps.Flush {
		return 0, fmt.Errorf("flush %s: %w", h.uri, ErrUnsupported)
	}
	c, err := cAioFlush(h.h)
	if err != nil {
		return 0, fmt.Errorf("flush %s: %w", h.uri, h.classify(err))
	}
	return c, nil
}

// NextCompleted retires and returns the next completed command, without
// blocking. ok is false when no command is waiting to be retired.
func (h *Handle) NextCompleted() (done Completion, ok bool) {
	if h.h == nil {
		return Completion{}, false
	}
	c, err, ok := cNextCompleted(h.h)
	if !ok {
		return Completion{}, false
	}
	return Completion{Cookie: c, Err: err}, true
}

// InFlight returns the number of commands issued and not yet retired.
func (h *Handle) InFlight() int {
	if h.h == nil {
		return 0
	}
	return cInFlight(h.h)
}

// Poll waits until at least one of the handles has made progress on its
// commands (socket readable or writable as libnbd wants) and lets libnbd
// process it, then returns; completed commands are then available from
// NextCompleted. It returns at once when none of the handles has a command
// in flight. It returns ctx.Err() when ctx ends first (commands stay in
// flight), and an error naming the handle when a connection fails or the
// server closes it (ErrDisconnected): libnbd then retires that handle's
// commands with errors, collected as usual with NextCompleted. At most 16
// handles.
//
// poll(2) interrupted by a signal (Go's preemption signals do that) is
// retried.
func Poll(ctx context.Context, hs ...*Handle) error {
	_, err := PollTimeout(ctx, -1, hs...)
	return err
}

// PollTimeout is Poll that also returns after d without progress, with
// progressed false. A negative d waits without limit.
func PollTimeout(ctx context.Context, d time.Duration, hs ...*Handle) (progressed bool, err error) {
	if len(hs) > maxPoll {
		return false, fmt.Errorf("poll %d handles: at most %d", len(hs), maxPoll)
	}
	var arr [maxPoll]cHandle
	var upBefore [maxPoll]bool
	ch := arr[:0]
	busy := false
	for i, h := range hs {
		if h.h == nil {
			ch = append(ch, nil)
			continue
		}
		ch = append(ch, h.h)
		upBefore[i] = cState(h.h) == stateReady
		if cInFlight(h.h) > 0 {
			busy = true
		}
	}
	if !busy {
		return false, nil
	}
	var deadline time.Time
	if d >= 0 {
		deadline = time.Now().Add(d)
	}
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		slice := pollSlice
		if d >= 0 {
			left := time.Until(deadline)
			if left <= 0 {
				return false, nil
			}
			slice = min(slice, left)
		}
		n, bad, err := cPoll(ch, slice)
		if err != nil {
			if bad >= 0 {
				return false, fmt.Errorf("connection to %s: %w", hs[bad].uri, err)
			}
			return false, err
		}
		if n > 0 {
			for i, c := range ch {
				if c == nil || !upBefore[i] {
					continue
				}
				if st := cState(c); st == stateClosed || st == stateDead {
					return true, fmt.Errorf("connection to %s: %w (%s)", hs[i].uri, ErrDisconnected, cConnectionState(c))
				}
			}
			return true, nil
		}
	}
}

// Await waits until the command c has completed and retires it. When ctx
// ends first it returns ctx.Err() and leaves the command in flight.
func (h *Handle) Await(ctx context.Context, c Cookie) error {
	for {
		if err := h.usable(); err != nil {
			return err
		}
		r, err := cCommandCompleted(h.h, c)
		switch r {
		case 1:
			return nil
		case -1:
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, _, err := cPoll([]cHandle{h.h}, pollSlice); err != nil {
			// The handle died: libnbd retired c with an error; retire it
			// and report the cause.
			_, _ = cCommandCompleted(h.h, c)
			return fmt.Errorf("connection to %s: %w", h.uri, err)
		}
	}
}

func (h *Handle) writable() error {
	if err := h.usable(); err != nil {
		return err
	}
	if h.caps.ReadOnly {
		return fmt.Errorf("write to %s: %w", h.uri, ErrReadOnly)
	}
	return nil
}

// classify marks an error from starting a command on a connection that is
// no longer up with ErrDisconnected.
func (h *Handle) classify(err error) error {
	if st := cState(h.h); st == stateClosed || st == stateDead {
		return fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	return err
}
