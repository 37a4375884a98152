package nbd

// This file is the only place that calls C. Every wrapper in shim.c captures
// libnbd's thread-local error inside the same C call that failed (see
// shim.h), because a goroutine can move to another OS thread between two cgo
// calls and would then read another thread's error.

/*
#cgo pkg-config: libnbd
#cgo CFLAGS: -O2 -Wall
#cgo noescape sd_create
#cgo nocallback sd_create
#cgo noescape sd_add_meta_context
#cgo nocallback sd_add_meta_context
#cgo noescape sd_set_tls_psk
#cgo nocallback sd_set_tls_psk
#cgo noescape sd_aio_connect_uri
#cgo nocallback sd_aio_connect_uri
#cgo noescape sd_caps_read
#cgo nocallback sd_caps_read
#cgo noescape sd_can_meta_context
#cgo nocallback sd_can_meta_context
#cgo noescape sd_aio_zero
#cgo nocallback sd_aio_zero
#cgo noescape sd_aio_trim
#cgo nocallback sd_aio_trim
#cgo noescape sd_aio_flush
#cgo nocallback sd_aio_flush
#cgo noescape sd_aio_disconnect
#cgo nocallback sd_aio_disconnect
#cgo noescape sd_next_completed
#cgo nocallback sd_next_completed
#cgo noescape sd_command_completed
#cgo nocallback sd_command_completed
#cgo noescape sd_poll
#cgo nocallback sd_poll
#cgo nocallback sd_aio_pread
#cgo nocallback sd_aio_pwrite
#cgo nocallback sd_aio_block_status
#cgo nocallback sd_state
#cgo nocallback sd_in_flight
#cgo nocallback sd_kill
#cgo noescape sd_tune_socket
#cgo nocallback sd_tune_socket
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"syscall"
	"time"
	"unsafe"
)

type cHandle = *C.struct_nbd_handle

// takeErr turns a captured C error into an *Error and frees its message.
// op names the libnbd call, used when libnbd gave no message.
func takeErr(e *C.sd_err, op string) *Error {
	if e.set == 0 {
		return &Error{Op: op, Msg: op + ": unknown error"}
	}
	err := &Error{Op: op, Errno: syscall.Errno(e.err)}
	if e.msg != nil {
		err.Msg = C.GoString(e.msg)
		C.free(unsafe.Pointer(e.msg))
		e.msg = nil
	} else {
		err.Msg = op + ": " + err.Errno.Error()
	}
	e.set = 0
	return err
}

func cCreate() (cHandle, error) {
	var e C.sd_err
	h := C.sd_create(&e)
	if h == nil {
		return nil, takeErr(&e, "nbd_create")
	}
	return h, nil
}

func cClose(h cHandle) { C.nbd_close(h) }

func cAddMetaContext(h cHandle, name string) error {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var e C.sd_err
	if C.sd_add_meta_context(h, cs, &e) == -1 {
		return takeErr(&e, "nbd_add_meta_context")
	}
	return nil
}

func cSetTLSPSK(h cHandle, username, file string) error {
	cu, cf := C.CString(username), C.CString(file)
	defer C.free(unsafe.Pointer(cu))
	defer C.free(unsafe.Pointer(cf))
	var e C.sd_err
	if C.sd_set_tls_psk(h, cu, cf, &e) == -1 {
		return takeErr(&e, "nbd_set_tls_psk_file")
	}
	return nil
}

func cAioConnectURI(h cHandle, uri string) error {
	cs := C.CString(uri)
	defer C.free(unsafe.Pointer(cs))
	var e C.sd_err
	if C.sd_aio_connect_uri(h, cs, &e) == -1 {
		return takeErr(&e, "nbd_aio_connect_uri")
	}
	return nil
}

type connState int

const (
	stateConnecting connState = C.SD_CONNECTING
	stateReady      connState = C.SD_READY
	stateDead       connState = C.SD_DEAD
	stateClosed     connState = C.SD_CLOSED
)

func cState(h cHandle) connState { return connState(C.sd_state(h)) }

func cConnectionState(h cHandle) string {
	s := C.nbd_connection_state(h)
	if s == nil {
		return "unknown"
	}
	return C.GoString(s)
}

func cCaps(h cHandle) (Caps, error) {
	var c C.sd_caps
	var e C.sd_err
	if C.sd_caps_read(h, &c, &e) == -1 {
		return Caps{}, takeErr(&e, "nbd_get_size")
	}
	return Caps{
		Size:           int64(c.size),
		ReadOnly:       c.read_only != 0,
		Flush:          c.can_flush != 0,
		FUA:            c.can_fua != 0,
		Trim:           c.can_trim != 0,
		Zero:           c.can_zero != 0,
		FastZero:       c.can_fast_zero != 0,
		MultiConn:      c.can_multi_conn != 0,
		Cache:          c.can_cache != 0,
		DF:             c.can_df != 0,
		BlockMinimum:   int64(c.block_min),
		BlockPreferred: int64(c.block_pref),
		BlockMaximum:   int64(c.block_max),
	}, nil
}

func cCanMetaContext(h cHandle, name string) (bool, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var e C.sd_err
	r := C.sd_can_meta_context(h, cs, &e)
	if r == -1 {
		return false, takeErr(&e, "nbd_can_meta_context")
	}
	return r == 1, nil
}

// cAioPread and cAioPwrite take p, which is C memory or pinned Go memory
// that stays valid until the command has been retired. Their error goes
// through e, C memory owned by the Handle, because these C functions retain
// p and so cannot be marked noescape.
func cAioPread(h cHandle, e *C.sd_err, p unsafe.Pointer, n int, off int64) (Cookie, error) {
	c := C.sd_aio_pread(h, p, C.size_t(n), C.uint64_t(off), e)
	if c == -1 {
		return 0, takeErr(e, "nbd_aio_pread")
	}
	return Cookie(c), nil
}

func cAioPwrite(h cHandle, e *C.sd_err, p unsafe.Pointer, n int, off int64, flags Flags) (Cookie, error) {
	c := C.sd_aio_pwrite(h, p, C.size_t(n), C.uint64_t(off), C.uint32_t(flags), e)
	if c == -1 {
		return 0, takeErr(e, "nbd_aio_pwrite")
	}
	return Cookie(c), nil
}

func cAioZero(h cHandle, n, off int64, flags Flags) (Cookie, error) {
	var e C.sd_err
	c := C.sd_aio_zero(h, C.uint64_t(n), C.uint64_t(off), C.uint32_t(flags), &e)
	if c == -1 {
		return 0, takeErr(&e, "nbd_aio_zero")
	}
	return Cookie(c), nil
}

func cAioTrim(h cHandle, n, off int64, flags Flags) (Cookie, error) {
	var e C.sd_err
	c := C.sd_aio_trim(h, C.uint64_t(n), C.uint64_t(off), C.uint32_t(flags), &e)
	if c == -1 {
		return 0, takeErr(&e, "nbd_aio_trim")
	}
	return Cookie(c), nil
}

func cAioFlush(h cHandle) (Cookie, error) {
	var e C.sd_err
	c := C.sd_aio_flush(h, &e)
	if c == -1 {
		return 0, takeErr(&e, "nbd_aio_flush")
	}
	return Cookie(c), nil
}

func cAioDisconnect(h cHandle) error {
	var e C.sd_err
	if C.sd_aio_disconnect(h, &e) == -1 {
		return takeErr(&e, "nbd_aio_disconnect")
	}
	return nil
}

// cNextCompleted retires the next completed command, if any.
func cNextCompleted(h cHandle) (Cookie, error, bool) {
	var e C.sd_err
	var cookie C.int64_t
	switch C.sd_next_completed(h, &cookie, &e) {
	case 1:
		return Cookie(cookie), nil, true
	case 2:
		return Cookie(cookie), takeErr(&e, "nbd_aio_command_completed"), true
	}
	return 0, nil, false
}

// cCommandCompleted: 1 done, 0 in flight, -1 failed (error returned).
func cCommandCompleted(h cHandle, c Cookie) (int, error) {
	var e C.sd_err
	r := C.sd_command_completed(h, C.int64_t(c), &e)
	if r == -1 {
		return -1, takeErr(&e, "nbd_aio_command_completed")
	}
	return int(r), nil
}

func cInFlight(h cHandle) int { return int(C.sd_in_flight(h)) }

func cKill(h cHandle) { C.sd_kill(h) }

func cTuneSocket(h cHandle) { C.sd_tune_socket(h) }

const maxPoll = 16 // SD_MAX_POLL in shim.c

// cPoll waits up to d for any handle to be ready and notifies libnbd.
// It returns the number of handles notified (0 on timeout or EINTR), or
// the index of the failed handle and its error.
func cPoll(hs []cHandle, d time.Duration) (int, int, error) {
	var arr [maxPoll]cHandle
	n := copy(arr[:], hs)
	ms := int(d / time.Millisecond)
	if ms < 0 {
		ms = 0
	}
	var e C.sd_err
	var bad C.int
	r := C.sd_poll(&arr[0], C.int(n), C.int(ms), &bad, &e)
	switch {
	case r == -1:
		return 0, int(bad), takeErr(&e, "nbd_aio_notify")
	case r == -2:
		return 0, -1, takeErr(&e, "poll")
	}
	return int(r), -1, nil
}

// extents is a C-allocated collector for one aio block status command.
type extents struct{ x *C.sd_extents }

func newExtents(meta string) extents {
	cs := C.CString(meta)
	defer C.free(unsafe.Pointer(cs))
	x := C.sd_extents_new(cs)
	if x == nil {
		panic("nbd: out of memory allocating block status collector")
	}
	return extents{x}
}

func (x extents) free() { C.sd_extents_free(x.x) }

// pairs returns the offset of the first extent and the (length, flags)
// pairs received for the wanted context.
func (x extents) pairs() (int64, []uint32, bool, bool) {
	if x.x.n == 0 {
		return int64(x.x.offset), nil, x.x.seen != 0, x.x.oom != 0
	}
	s := unsafe.Slice((*uint32)(unsafe.Pointer(x.x.ents)), int(x.x.n))
	return int64(x.x.offset), s, x.x.seen != 0, x.x.oom != 0
}

func cAioBlockStatus(h cHandle, e *C.sd_err, n, off int64, x extents) (Cookie, error) {
	c := C.sd_aio_block_status(h, C.uint64_t(n), C.uint64_t(off), x.x, e)
	if c == -1 {
		return 0, takeErr(e, "nbd_aio_block_status")
	}
	return Cookie(c), nil
}

// cErrBuf allocates the per-handle error buffer used by calls that retain a
// pointer argument.
func cErrBuf() *C.sd_err {
	e := (*C.sd_err)(C.calloc(1, C.size_t(unsafe.Sizeof(C.sd_err{}))))
	if e == nil {
		panic("nbd: out of C memory")
	}
	return e
}

type errBuf = *C.sd_err

func cFreeErrBuf(e errBuf) { C.free(unsafe.Pointer(e)) }

// Command flags (LIBNBD_CMD_FLAG_*).
const (
	cFlagFUA      = C.LIBNBD_CMD_FLAG_FUA
	cFlagNoHole   = C.LIBNBD_CMD_FLAG_NO_HOLE
	cFlagFastZero = C.LIBNBD_CMD_FLAG_FAST_ZERO
)
