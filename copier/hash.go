package copier

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/nbd"
)

// HashOptions configure Hash. The zero value gives the defaults.
type HashOptions struct {
	// Connections is how many connections read at once, each driven by
	// its own goroutine that hashes the chunks it read. The export must
	// accept that many clients (qemu-nbd --shared). Default 4.
	Connections int
	// InFlight is the number of chunk reads in flight per connection (and
	// of 1 MiB buffers per connection). Default 4.
	InFlight int
	// ConnectTimeout bounds each handshake when ctx has no deadline.
	// Default nbd.DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// TLS connects with a pre-shared key. Default nil.
	TLS *nbd.TLS
}

// Hash reads the whole NBD export at uri in manifest.ChunkSize chunks and
// returns its manifest: the SHA-256 of every chunk, the last one short when
// the size is not a multiple.
//
// A chunk the server reports as reading zeroes (base:allocation
// StateZero over the whole chunk) gets manifest.ZeroDigest without being
// read: the server then guarantees that reading it returns zeroes, so the
// digest is the same as reading it would give (qemu-nbd answers for the
// whole backing chain). Every other chunk is read in full; one proven
// zero byte by byte gets ZeroDigest without hashing. Reads are spread over
// Connections connections with InFlight reads in flight on each. A failed
// read fails Hash with a *RequestError naming the offset.
func Hash(ctx context.Context, uri string, opts HashOptions) (*manifest.Manifest, error) {
	if opts.Connections <= 0 {
		opts.Connections = DefaultConnections
	}
	if opts.InFlight <= 0 {
		opts.InFlight = 4
	}
	first, err := nbd.Open(ctx, uri, nbd.Options{ConnectTimeout: opts.ConnectTimeout, TLS: opts.TLS, MetaContexts: []string{nbd.MetaBaseAllocation}})
	if err != nil {
		return nil, fmt.Errorf("hash %s: open: %w", uri, err)
	}
	hs := []*nbd.Handle{first}
	var bufs []*nbd.Buffer
	defer func() {
		for _, h := range hs {
			h.Close() // before the buffers: libnbd may still hold them
		}
		for _, b := range bufs {
			b.Free()
		}
	}()
	m := manifest.New(first.Size())
	n := int64(len(m.Digests))
	zero, err := zeroChunks(ctx, first, m)
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", uri, err)
	}
	for i := 1; i < opts.Connections && int64(i) < n; i++ {
		h, err := nbd.Open(ctx, uri, nbd.Options{ConnectTimeout: opts.ConnectTimeout, TLS: opts.TLS})
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("hash %s: %w", uri, ctx.Err())
			}
			break // fewer connections: the server's limit
		}
		hs = append(hs, h)
	}
	var next atomic.Int64
	// take returns the next chunk to read, skipping those known zero.
	take := func() (int64, bool) {
		for {
			i := next.Add(1) - 1
			if i >= n {
				return 0, false
			}
			if !zero[i] {
				return i, true
			}
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, h := range hs {
		slots := make([]*nbd.Buffer, opts.InFlight)
		for k := range slots {
			slots[k] = nbd.NewBuffer(manifest.ChunkSize)
			bufs = append(bufs, slots[k])
		}
		g.Go(func() error { return hashLane(gctx, h, uri, m, slots, take) })
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("hash %s: %w", uri, err)
	}
	return m, nil
}

// zeroChunks marks the chunks the server reports as reading zeroes over
// their whole length (every chunk false when it cannot say).
func zeroChunks(ctx context.Context, h *nbd.Handle, m *manifest.Manifest) ([]bool, error) {
	zero := make([]bool, len(m.Digests))
	if !h.CanMetaContext(nbd.MetaBaseAllocation) || m.Capacity == 0 {
		return zero, nil
	}
	exts, err := h.BlockStatus(ctx, nbd.MetaBaseAllocation, 0, m.Capacity)
	if err != nil {
		return nil, err
	}
	for _, e := range exts {
		if e.Flags&nbd.StateZero == 0 {
			continue
		}
		// Chunks wholly inside the extent (the last chunk ends at the
		// capacity).
		for i := (e.Offset + m.ChunkSize - 1) / m.ChunkSize; i < int64(len(zero)); i++ {
			if m.Offset(i)+m.ChunkLen(i) > e.Offset+e.Length {
				break
			}
			zero[i] = true
		}
	}
	return zero, nil
}

// hashLane keeps len(slots) reads in flight on h and hashes each chunk as
// its read completes, until take has no chunk left.
func hashLane(ctx context.Context, h *nbd.Handle, uri string, m *manifest.Manifest, slots []*nbd.Buffer, take func() (int64, bool)) error {
	type read struct {
		slot  int
		index int64
	}
	inflight := map[nbd.Cookie]read{}
	free := make([]int, 0, len(slots))
	for k := range slots {
		free = append(free, k)
	}
	exhausted := false
	for {
		for !exhausted && len(free) > 0 {
			i, ok := take()
			if !ok {
				exhausted = true
				break
			}
			k := free[len(free)-1]
			free = free[:len(free)-1]
			c, err := h.AioPread(slots[k].Span(0, int(m.ChunkLen(i))), m.Offset(i))
			if err != nil {
				return &RequestError{Op: "read", URI: uri, Offset: m.Offset(i), Length: m.ChunkLen(i), Attempts: 1, Err: err}
			}
			inflight[c] = read{slot: k, index: i}
		}
		if len(inflight) == 0 {
			return nil
		}
		if err := nbd.Poll(ctx, h); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, nbd.ErrDisconnected) {
				err = fmt.Errorf("%w: %w", ErrConnectionLost, err)
			}
			return err
		}
		for {
			done, ok := h.NextCompleted()
			if !ok {
				break
			}
			r, mine := inflight[done.Cookie]
			if !mine {
				continue
			}
			delete(inflight, done.Cookie)
			if done.Err != nil {
				return &RequestError{Op: "read", URI: uri, Offset: m.Offset(r.index), Length: m.ChunkLen(r.index), Attempts: 1, Err: done.Err}
			}
			b := slots[r.slot].Bytes()[:m.ChunkLen(r.index)]
			if isZero(b) {
				m.Digests[r.index] = manifest.ZeroDigest(int64(len(b)))
			} else {
				m.Digests[r.index] = manifest.Sum(b)
			}
			free = append(free, r.slot)
		}
	}
}
