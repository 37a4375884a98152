// Package copier copies byte ranges of a disk from one NBD export to another:
// the changed extents of a VMware snapshot (served by nbdkit) into a QCOW2
// file (served by qemu-nbd). It owns chunking, zero detection, pipelining,
// retries, the final flush and progress counting.
//
// It must never decide full vs incremental (the agent does, invariant 3),
// never sample when proving a block zero (invariant 9), never publish events,
// sample or render progress (it only counts bytes in Options.Progress; the
// agent samples that, computes the rate and publishes), and never open more
// connections than the servers allow.
//
// # Basics
//
//	var prog copier.Progress // read prog.BytesDone() from any goroutine
//	res, err := copier.Copy(ctx, srcURI, dstURI, extents, copier.Options{
//		Incremental: true,
//		Progress:    &prog,
//		Log:         log,
//	})
//
// Copy reads each extent in chunks of ChunkSize (4 MiB), aligned to
// multiples of ChunkSize and clipped to the extents, with InFlight (8)
// reads in flight, shared among the connections. Each chunk is checked in ZeroBlock
// (64 KiB, the QCOW2 cluster size) blocks aligned on the disk; each block is
// read in full and is zero only if every byte is. Runs of data blocks are
// written; runs of zero blocks are skipped on a full copy into a fresh
// target, and written as zeroes without NO_HOLE on an incremental so that
// the QCOW2 overlay hides its backing file there. The target is flushed at
// the end; Copy returns only after the flush.
//
// When both servers advertise multi-conn, Copy opens up to Connections (4)
// connection pairs, each driven by its own goroutine; otherwise it uses one
// source and one target connection. Chunk buffers are outside the Go heap
// (nbd.NewBuffer), allocated once per copy and unmapped when it returns:
// about InFlight × ChunkSize bytes (32 MiB by default).
//
// With Options.Digests the copy also records a manifest's digests (package
// manifest): each extent is widened to whole 1 MiB manifest chunks (the
// last one clipped to the disk), so every manifest chunk it touches is
// read, proven zero or not, written and hashed whole; Result.Digests holds
// each one's SHA-256. A read holds up to ChunkSize / 1 MiB of them. The lane that scans a chunk hashes it after issuing its writes,
// so hashing runs on every connection's goroutine, never as a serial pass.
//
// AllocatedExtents lists an export's allocated extents (base:allocation),
// the extents of a full copy when no changed-block list exists.
//
// # Caveats
//
// A full copy assumes the target reads as zeroes (a fresh QCOW2); use
// Incremental for a target with a backing file or old contents.
//
// Failed requests are retried Retries (3) times with a short backoff, then
// Copy fails with a *RequestError carrying the operation, offset, length and
// cause. A connection that breaks fails the copy at once
// (ErrConnectionLost): the caller retries the whole disk.
//
// Cancelling ctx makes Copy return within a few tens of milliseconds; the
// connections are closed before the buffers are freed, and no goroutine is
// left behind.
package copier
