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
	// Connections is how many connections read at once, each with one
	// chunk in flight and hashing it in its own goroutine. The export
	// must accept that many clients (qemu-nbd --shared). Default 4.
	Connections int
	// ConnectTimeout bounds each handshake when ctx has no deadline.
	// Default nbd.DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// TLS connects with a pre-shared key. Default nil.
	TLS *nbd.TLS
}

// Hash reads the whole NBD export at uri in manifest.ChunkSize chunks and
// returns its manifest: the SHA-256 of every chunk, the last one short when
// the size is not a multiple. Every chunk is read in full; a chunk proven
// zero byte by byte (as the copier proves zero blocks) gets
// manifest.ZeroDigest without hashing. Reads are spread over Connections
// connections. A failed read fails Hash with a *RequestError naming the
// offset.
func Hash(ctx context.Context, uri string, opts HashOptions) (*manifest.Manifest, error) {
	if opts.Connections <= 0 {
		opts.Connections = DefaultConnections
	}
	nopts := nbd.Options{ConnectTimeout: opts.ConnectTimeout, TLS: opts.TLS}
	first, err := nbd.Open(ctx, uri, nopts)
	if err != nil {
		return nil, fmt.Errorf("hash %s: open: %w", uri, err)
	}
	m := manifest.New(first.Size())
	hs := []*nbd.Handle{first}
	defer func() {
		for _, h := range hs {
			h.Close()
		}
	}()
	n := int64(len(m.Digests))
	for i := 1; i < opts.Connections && int64(i) < n; i++ {
		h, err := nbd.Open(ctx, uri, nopts)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("hash %s: %w", uri, ctx.Err())
			}
			break // fewer connections: the server's limit
		}
		hs = append(hs, h)
	}
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for _, h := range hs {
		g.Go(func() error {
			buf := make([]byte, manifest.ChunkSize)
			for {
				i := next.Add(1) - 1
				if i >= n {
					return nil
				}
				off, l := m.Offset(i), m.ChunkLen(i)
				b := buf[:l]
				if err := h.Pread(gctx, b, off); err != nil {
					if errors.Is(err, nbd.ErrDisconnected) {
						err = fmt.Errorf("%w: %w", ErrConnectionLost, err)
					}
					return &RequestError{Op: "read", URI: uri, Offset: off, Length: l, Attempts: 1, Err: err}
				}
				if isZero(b) {
					m.Digests[i] = manifest.ZeroDigest(l)
				} else {
					m.Digests[i] = manifest.Sum(b)
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("hash %s: %w", uri, err)
	}
	return m, nil
}
