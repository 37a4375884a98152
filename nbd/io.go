package nbd

import (
	"context"
	"fmt"
	"runtime"
	"unsafe"
)

// maxIO bounds one read or write command (qemu-nbd advertises 32 MiB, and
// libnbd 1.14 refuses buffers over 64 MiB).
const maxIO = 32 << 20

// maxZero bounds one zero or trim command (32-bit lengths in libnbd 1.14).
const maxZero = 1 << 30

// wait waits for c; if ctx ends first the connection is closed so the
// command cannot touch its buffer any more, and ctx.Err() is returned.
func (h *Handle) wait(ctx context.Context, c Cookie) error {
	for {
		r, err := cCommandCompleted(h.h, c)
		switch r {
		case 1:
			return nil
		case -1:
			return err
		}
		if err := ctx.Err(); err != nil {
			h.abandon(err)
			return err
		}
		if _, _, err := cPoll([]cHandle{h.h}, pollSlice); err != nil {
			// A dead connection has retired c with an error. If c is
			// somehow still in flight, close: its buffer is about to be
			// released.
			if r, _ := cCommandCompleted(h.h, c); r == 0 {
				h.abandon(err)
			}
			return err
		}
	}
}

func (h *Handle) maxIO() int {
	if m := h.caps.BlockMaximum; m > 0 && m < maxIO {
		return int(m)
	}
	return maxIO
}

// Pread reads len(p) bytes at off into p. See the package documentation for
// what happens when ctx ends.
func (h *Handle) Pread(ctx context.Context, p []byte, off int64) error {
	return h.syncIO(ctx, p, off, false)
}

// Pwrite writes p at off.
func (h *Handle) Pwrite(ctx context.Context, p []byte, off int64) error {
	if err := h.writable(); err != nil {
		return err
	}
	return h.syncIO(ctx, p, off, true)
}

func (h *Handle) syncIO(ctx context.Context, p []byte, off int64, write bool) error {
	op := "read"
	if write {
		op = "write"
	}
	if len(p) == 0 {
		return h.usable()
	}
	// libnbd keeps the pointer after the cgo call returns, so the memory
	// must be pinned until the command is retired (Pin is a no-op for C
	// memory from a Buffer).
	var pin runtime.Pinner
	pin.Pin(&p[0])
	defer pin.Unpin()
	base := unsafe.Pointer(&p[0])
	for done := 0; done < len(p); {
		if err := h.usable(); err != nil {
			return err
		}
		n := min(len(p)-done, h.maxIO())
		ptr := unsafe.Add(base, done)
		var c Cookie
		var err error
		if write {
			c, err = cAioPwrite(h.h, h.e, ptr, n, off+int64(done), 0)
		} else {
			c, err = cAioPread(h.h, h.e, ptr, n, off+int64(done))
		}
		if err == nil {
			err = h.wait(ctx, c)
		}
		if err != nil {
			return fmt.Errorf("%s %d bytes at offset %d on %s: %w", op, n, off+int64(done), h.uri, err)
		}
		done += n
	}
	return nil
}

// Zero writes zeroes over [off, off+length). flags may include FlagNoHole
// (keep the range allocated), FlagFastZero and FlagFUA. Returns
// ErrUnsupported when the server cannot zero.
func (h *Handle) Zero(ctx context.Context, length, off int64, flags Flags) error {
	if err := h.writable(); err != nil {
		return err
	}
	if !h.caps.Zero {
		return fmt.Errorf("zero %d bytes at offset %d on %s: %w", length, off, h.uri, ErrUnsupported)
	}
	return h.ranged(ctx, "zero", length, off, func(n, o int64) (Cookie, error) { return cAioZero(h.h, n, o, flags) })
}

// Trim discards [off, off+length). Returns ErrUnsupported when the server
// cannot trim.
func (h *Handle) Trim(ctx context.Context, length, off int64) error {
	if err := h.writable(); err != nil {
		return err
	}
	if !h.caps.Trim {
		return fmt.Errorf("trim %d bytes at offset %d on %s: %w", length, off, h.uri, ErrUnsupported)
	}
	return h.ranged(ctx, "trim", length, off, func(n, o int64) (Cookie, error) { return cAioTrim(h.h, n, o, 0) })
}

func (h *Handle) ranged(ctx context.Context, op string, length, off int64, start func(n, o int64) (Cookie, error)) error {
	for done := int64(0); done < length; {
		if err := h.usable(); err != nil {
			return err
		}
		n := min(length-done, maxZero)
		c, err := start(n, off+done)
		if err == nil {
			err = h.wait(ctx, c)
		}
		if err != nil {
			return fmt.Errorf("%s %d bytes at offset %d on %s: %w", op, n, off+done, h.uri, err)
		}
		done += n
	}
	return nil
}

// Flush asks the server to persist every completed write. Returns
// ErrUnsupported when the server cannot flush.
func (h *Handle) Flush(ctx context.Context) error {
	if err := h.usable(); err != nil {
		return err
	}
	if !h.caps.Flush {
		return fmt.Errorf("flush %s: %w", h.uri, ErrUnsupported)
	}
	c, err := cAioFlush(h.h)
	if err == nil {
		err = h.wait(ctx, c)
	}
	if err != nil {
		return fmt.Errorf("flush %s: %w", h.uri, err)
	}
	return nil
}
