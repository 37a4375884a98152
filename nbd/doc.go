// Package nbd is a thin cgo binding to libnbd 1.14 (Debian libnbd-dev), the
// NBD client library. It owns NBD client connections: connecting by URI with
// a deadline, the export's size and capabilities, synchronous reads, writes,
// zeroes, trims, flushes and block status, and the asynchronous (aio) calls
// with completions collected by polling the connection's socket.
//
// It must never know about backups, VMware, QCOW2 or the bus, never pass a Go
// pointer to libnbd as user_data or for longer than a call without pinning
// it, and never open a connection without a deadline.
//
// # Basics
//
// Open connects and finishes the handshake before the context's deadline, or
// before Options.ConnectTimeout (default 10 s) when the context has none:
//
//	h, err := nbd.Open(ctx, "nbd+unix:///?socket=/run/x.sock", nbd.Options{
//		MetaContexts: []string{nbd.MetaBaseAllocation},
//	})
//	if err != nil { ... }
//	defer h.Close()
//	size := h.Size()
//	err = h.Pread(ctx, buf, 0)
//
// Synchronous calls (Pread, Pwrite, Zero, Trim, Flush, BlockStatus) take a
// context. They run as aio commands and wait on the socket, so a stalled
// server cannot hold them past the context. If the context ends while the
// command is in flight the connection is closed (the only way to be sure
// libnbd no longer touches the buffer) and later calls return ErrClosed.
//
// The aio calls take a Span of a Buffer (NewBuffer: memory outside the Go
// heap), return a Cookie, and complete asynchronously. Drive them with Poll
// and collect results with NextCompleted:
//
//	buf := nbd.NewBuffer(1 << 20)
//	defer buf.Free() // only after Close, or after every command completed
//	c, err := h.AioPread(buf.Span(0, 1<<20), off)
//	for h.InFlight() > 0 {
//		if err := nbd.Poll(ctx, h); err != nil { ... }
//		for {
//			done, ok := h.NextCompleted()
//			if !ok { break }
//			... done.Cookie, done.Err ...
//		}
//	}
//
// PollTimeout is Poll with a time limit, for loops that also watch timers.
//
// Read buffers are not zeroed before a read (libnbd's pread_initialize is
// off): after a failed read their contents are undefined.
//
// A connection over a unix socket gets a 4 MiB send buffer (the kernel
// doubles it; without CAP_NET_ADMIN it is capped by net.core.wmem_max), so
// that a large write leaves in a few send calls instead of one per 208 KiB
// the default allows, each waking the server. TCP keeps the kernel's
// autotuning.
//
// Block status requests at most 2 GiB per command (libnbd 1.14 has only
// 32-bit lengths) and loops, so any range can be asked.
//
// # TLS
//
// Options.TLS connects with TLS and a pre-shared key (the only TLS the
// repository's exports serve): the URI is nbds://host:port/, libnbd
// requires TLS, and reads the key from a psk file during the handshake.
// The file is the caller's: write it private (0600) and remove it once
// Open returned. A plain nbd:// URI with Options.TLS is refused
// (ErrTLSURI) rather than sent in clear; a failed handshake matches ErrTLS.
//
// # Caveats
//
// A Handle is not safe for concurrent use: use it from one goroutine at a
// time, and never call Close while another call on it runs. Different
// handles are independent and may be used from different goroutines. Open
// more than one connection to a server only when CanMultiConn reports true,
// and never more than the server allows: a qemu-nbd started without
// --shared=N accepts only one client, and a second Open waits for the
// deadline and fails with ErrConnectTimeout.
//
// Buffers given to aio calls must stay allocated until their command is
// retired through NextCompleted or the handle is closed; free them after
// Close if commands may still be in flight.
//
// libnbd 1.14 lacks nbd_block_status_64, extended headers,
// nbd_opt_set_meta_context, nbd_poll2 and the statistics calls; this package
// does not use them. Meta contexts must be chosen before Open.
package nbd
