package copier

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/nbd"
)

// Defaults for Options.
const (
	DefaultChunkSize    = 4 << 20
	DefaultZeroBlock    = 64 << 10
	DefaultInFlight     = 8
	DefaultRetries      = 3
	DefaultConnections  = 4
	DefaultStallTimeout = 2 * time.Minute
)

// extraConnectTimeout bounds opening each additional (multi-conn)
// connection: if the server's connection limit is reached the copy goes on
// with the connections it has instead of waiting the full ConnectTimeout.
const extraConnectTimeout = 3 * time.Second

// Options configure Copy. The zero value gives the defaults.
type Options struct {
	// ChunkSize is the largest read request; reads never cross a multiple
	// of ChunkSize and are clipped to the extents. Default 4 MiB: with
	// fewer, smaller requests qemu-nbd spends about twice the CPU per byte
	// (QCOW2 allocation and one O_DIRECT write per request). Must be a
	// multiple of ZeroBlock.
	ChunkSize int64

	// ZeroBlock is the unit of zero detection, aligned to multiples of
	// itself on the disk (the QCOW2 cluster size). Every block is read in
	// full and proven zero byte by byte (design invariant 9). Default
	// 64 KiB.
	ZeroBlock int64

	// InFlight is the number of chunk reads in flight for the whole copy,
	// shared evenly among the connections (each gets at least 2): with
	// one source and one target connection that is InFlight requests in
	// flight on each. It is also the number of chunk buffers, so buffer
	// memory is about InFlight × ChunkSize (32 MiB by default). Default 8.
	InFlight int

	// Incremental false: the target is fresh (reads as zeroes), so zero
	// blocks are skipped. true: zero blocks are written as zeroes (without
	// NO_HOLE) so they hide the backing file's data.
	Incremental bool

	// Retries is how many times a failed request is retried (with a short
	// backoff) before Copy fails with a *RequestError naming its offset.
	// Default 3; negative means no retries.
	Retries int

	// Connections is the most connections opened to each server. More than
	// one is used only when both the source and the target advertise
	// multi-conn; it must not exceed what the servers accept (qemu-nbd
	// --shared). If an extra connection cannot be opened within 3 s the
	// copy proceeds with fewer. Default 4.
	Connections int

	// ConnectTimeout bounds each connection's handshake when ctx has no
	// deadline. Default nbd.DefaultConnectTimeout (10 s).
	ConnectTimeout time.Duration

	// TargetTLS connects to the target with TLS and a pre-shared key
	// (every connection); dstURI must then be nbds://. The psk file must
	// exist until Copy returns. Default nil: as dstURI says.
	TargetTLS *nbd.TLS

	// StallTimeout fails the copy with ErrStalled when requests are in
	// flight and none completes for this long. Default 2 minutes.
	StallTimeout time.Duration

	// Progress, if not nil, counts the copy's bytes as it runs (see
	// Progress); the caller reads it when it likes. Default nil.
	Progress *Progress

	// Digests makes the copy hash what it reads for a manifest
	// (manifest.ChunkSize chunks, 1 MiB): every extent is widened to whole
	// manifest chunks (the last one clipped to the disk), each is read,
	// written and hashed whole, and Result.Digests holds the SHA-256 of
	// every manifest chunk read. The hash runs in the lane that proves the
	// read's zero blocks, after its writes are issued. ChunkSize must then
	// be a multiple of manifest.ChunkSize (the default is), and a server
	// whose largest request is smaller than manifest.ChunkSize fails the
	// copy with ErrBadOptions. Default false.
	Digests bool

	// Log receives the copier's log lines. The zero value logs nothing.
	Log zerolog.Logger
}

// Result sums up a copy. BytesRead were read from the source, BytesWritten
// were written to the target as data, BytesZero were proven zero (skipped
// on a full copy, written as zeroes on an incremental).
//
// With Options.Digests, Digests holds the digest of every chunk read, by
// chunk index (ascending); chunks not read are not listed.
type Result struct {
	BytesRead, BytesWritten, BytesZero int64
	Duration                           time.Duration
	Digests                            []manifest.Entry
}

func (o Options) withDefaults() (Options, error) {
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.ZeroBlock == 0 {
		o.ZeroBlock = DefaultZeroBlock
	}
	if o.InFlight == 0 {
		o.InFlight = DefaultInFlight
	}
	if o.Retries == 0 {
		o.Retries = DefaultRetries
	}
	if o.Retries < 0 {
		o.Retries = 0
	}
	if o.Connections == 0 {
		o.Connections = DefaultConnections
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = nbd.DefaultConnectTimeout
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	switch {
	case o.ZeroBlock < 512 || o.ChunkSize < o.ZeroBlock || o.ChunkSize%o.ZeroBlock != 0:
		return o, fmt.Errorf("chunk size %d and zero block %d: %w: chunk must be a multiple of the zero block (at least 512)", o.ChunkSize, o.ZeroBlock, ErrBadOptions)
	case o.ChunkSize > 32<<20:
		return o, fmt.Errorf("chunk size %d: %w: at most 32 MiB", o.ChunkSize, ErrBadOptions)
	case o.InFlight < 1 || o.Connections < 1 || o.Connections > 16:
		return o, fmt.Errorf("in flight %d, connections %d: %w", o.InFlight, o.Connections, ErrBadOptions)
	case o.Digests && o.ChunkSize%manifest.ChunkSize != 0:
		return o, fmt.Errorf("chunk size %d: %w: digests need chunks of a multiple of %d", o.ChunkSize, ErrBadOptions, manifest.ChunkSize)
	}
	return o, nil
}

// stats are shared by the lanes of one copy.
type stats struct {
	done, read, written, zero atomic.Int64
}

// Copy copies the extents of the NBD export srcURI to the same offsets of
// the NBD export dstURI and flushes the target.
//
// It connects to both (within ConnectTimeout, or ctx's deadline), checks
// that the target is writable and at least as large as the source
// (ErrTargetTooSmall), and that the extents lie within the source
// (ErrBadExtents; they are sorted and merged). It then reads chunks with
// InFlight reads in flight (shared among the connections), proves every
// ZeroBlock zero or not, writes data blocks, skips zero blocks on a full
// copy and writes them as zeroes on an incremental, and finally flushes
// the target.
//
// A failed request is retried Retries times, then Copy returns a
// *RequestError with its offset and cause. When ctx ends Copy returns
// promptly with an error matching ctx.Err(); nothing started by Copy
// (goroutines, connections, C buffers) outlives the call. The Result is
// filled in on failure too.
func Copy(ctx context.Context, srcURI, dstURI string, extents []Extent, opts Options) (Result, error) {
	start := time.Now()
	var st stats
	result := func() Result {
		return Result{BytesRead: st.read.Load(), BytesWritten: st.written.Load(), BytesZero: st.zero.Load(), Duration: time.Since(start)}
	}
	o, err := opts.withDefaults()
	if err != nil {
		return result(), err
	}
	log := o.Log.With().Str("source", srcURI).Str("target", dstURI).Logger()
	nopts := nbd.Options{ConnectTimeout: o.ConnectTimeout}

	src, err := nbd.Open(ctx, srcURI, nopts)
	if err != nil {
		return result(), fmt.Errorf("open source: %w", err)
	}
	dst, err := nbd.Open(ctx, dstURI, nbd.Options{ConnectTimeout: o.ConnectTimeout, TLS: o.TargetTLS})
	if err != nil {
		src.Close()
		return result(), fmt.Errorf("open target: %w", err)
	}
	var lanes []*lane
	defer func() {
		// Connections first: after Close libnbd no longer touches the
		// buffers of commands that were still in flight.
		for _, l := range lanes {
			l.close()
		}
	}()
	lanes = append(lanes, newLane(0, src, dst, &o, &st, log))

	switch {
	case dst.ReadOnly():
		return result(), fmt.Errorf("target %s: %w", dstURI, nbd.ErrReadOnly)
	case dst.Size() < src.Size():
		return result(), fmt.Errorf("target %s has %d bytes, source %s has %d: %w", dstURI, dst.Size(), srcURI, src.Size(), ErrTargetTooSmall)
	}
	exts, err := normalize(extents, src.Size())
	if err != nil {
		return result(), fmt.Errorf("copy %s to %s: %w", srcURI, dstURI, err)
	}
	if o.Digests {
		// A manifest chunk's digest is of the whole chunk: read it all,
		// even where the extent covers a part.
		exts = widen(exts, manifest.ChunkSize, src.Size())
	}
	var total int64
	for _, e := range exts {
		total += e.Length
	}

	// Requests never exceed what either server accepts.
	for _, m := range []int64{src.Caps().BlockMaximum, dst.Caps().BlockMaximum} {
		if m > 0 && m < o.ChunkSize {
			unit := o.ZeroBlock
			if o.Digests {
				if m < manifest.ChunkSize {
					return result(), fmt.Errorf("copy %s to %s: a server's largest request is %d bytes: %w: digests need reads of %d", srcURI, dstURI, m, ErrBadOptions, manifest.ChunkSize)
				}
				unit = manifest.ChunkSize
			}
			o.ChunkSize = max(unit, m/unit*unit)
		}
	}

	conns := 1
	if src.CanMultiConn() && dst.CanMultiConn() {
		conns = int(min(int64(o.Connections), max(1, total/o.ChunkSize)))
	}
	for i := 1; i < conns; i++ {
		l, err := openLane(ctx, i, srcURI, dstURI, &o, &st, log)
		if err != nil {
			if ctx.Err() != nil {
				return result(), fmt.Errorf("copy %s to %s: %w", srcURI, dstURI, ctx.Err())
			}
			log.Warn().Err(err).Int("connections", i).Msg("extra connection not opened, continuing with fewer")
			break
		}
		lanes = append(lanes, l)
	}
	perLane := max(2, (o.InFlight+len(lanes)-1)/len(lanes))
	for _, l := range lanes {
		l.inflight = perLane
	}
	log.Debug().Int64("bytes_total", total).Int("extents", len(exts)).Int("connections", len(lanes)).Int("in_flight_per_connection", perLane).
		Bool("incremental", o.Incremental).Msg("copy started")

	w := &work{ext: exts, chunk: o.ChunkSize}
	g, gctx := errgroup.WithContext(ctx)
	for _, l := range lanes {
		l.w = w
		g.Go(func() error { return l.run(gctx) })
	}
	if o.Progress != nil {
		o.Progress.start(&st.done, total)
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return result(), fmt.Errorf("copy %s to %s: %w", srcURI, dstURI, err)
	}

	if dst.CanFlush() {
		// With several connections, multi-conn guarantees that a flush on
		// one covers the writes completed on all of them.
		fstart := time.Now()
		if err := dst.Flush(ctx); err != nil {
			return result(), fmt.Errorf("flush target %s: %w", dstURI, err)
		}
		log.Debug().Dur("flush_duration", time.Since(fstart)).Msg("target flushed")
	} else {
		log.Warn().Msg("target cannot flush, data may not be persistent")
	}
	shutdownAll(lanes, log)
	res := result()
	if o.Digests {
		res.Digests = collectDigests(lanes)
	}
	log.Debug().Int64("bytes_read", res.BytesRead).Int64("bytes_written", res.BytesWritten).
		Int64("bytes_zero", res.BytesZero).Dur("duration", res.Duration).Msg("copy finished")
	return res, nil
}

// shutdownAll ends the NBD sessions politely (NBD_CMD_DISC) so servers do
// not log a broken connection; failures only matter to the log.
func shutdownAll(lanes []*lane, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, l := range lanes {
		for _, h := range []*nbd.Handle{l.src, l.dst} {
			if err := h.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				log.Debug().Err(err).Str("uri", h.URI()).Msg("nbd disconnect")
			}
		}
	}
}

func openLane(ctx context.Context, id int, srcURI, dstURI string, o *Options, st *stats, log zerolog.Logger) (*lane, error) {
	cctx, cancel := context.WithTimeout(ctx, min(o.ConnectTimeout, extraConnectTimeout))
	defer cancel()
	src, err := nbd.Open(cctx, srcURI, nbd.Options{})
	if err != nil {
		return nil, fmt.Errorf("open source connection %d: %w", id+1, err)
	}
	dst, err := nbd.Open(cctx, dstURI, nbd.Options{TLS: o.TargetTLS})
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("open target connection %d: %w", id+1, err)
	}
	return newLane(id, src, dst, o, st, log), nil
}

// collectDigests merges the lanes' digests in chunk order.
func collectDigests(lanes []*lane) []manifest.Entry {
	var n int
	for _, l := range lanes {
		n += len(l.digests)
	}
	out := make([]manifest.Entry, 0, n)
	for _, l := range lanes {
		out = append(out, l.digests...)
	}
	slices.SortFunc(out, func(a, b manifest.Entry) int { return cmp.Compare(a.Index, b.Index) })
	return out
}
