package copier

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/sendense/sendense/nbd"
)

// Extent is a byte range of the disk to copy.
type Extent struct{ Offset, Length int64 }

// End returns the offset just past the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// normalize checks extents against the source size, sorts them, drops empty
// ones and merges overlapping or touching ones. It does not modify the
// caller's slice.
func normalize(in []Extent, size int64) ([]Extent, error) {
	out := make([]Extent, 0, len(in))
	for _, e := range in {
		if e.Offset < 0 || e.Length < 0 {
			return nil, fmt.Errorf("extent [%d,+%d): %w: negative offset or length", e.Offset, e.Length, ErrBadExtents)
		}
		if e.Offset > size || e.Length > size-e.Offset {
			return nil, fmt.Errorf("extent [%d,+%d) ends beyond the source's %d bytes: %w", e.Offset, e.Length, size, ErrBadExtents)
		}
		if e.Length > 0 {
			out = append(out, e)
		}
	}
	if !slices.IsSortedFunc(out, cmpExtent) {
		slices.SortFunc(out, cmpExtent)
	}
	merged := out[:0]
	for _, e := range out {
		if k := len(merged) - 1; k >= 0 && e.Offset <= merged[k].End() {
			merged[k].Length = max(merged[k].End(), e.End()) - merged[k].Offset
			continue
		}
		merged = append(merged, e)
	}
	return merged, nil
}

// widen extends normalized extents to whole chunks (multiples of chunk,
// the last one clipped to size) and merges those that then touch.
func widen(in []Extent, chunk, size int64) []Extent {
	out := make([]Extent, 0, len(in))
	for _, e := range in {
		lo := e.Offset / chunk * chunk
		hi := min((e.End()+chunk-1)/chunk*chunk, size)
		if k := len(out) - 1; k >= 0 && lo <= out[k].End() {
			out[k].Length = max(out[k].End(), hi) - out[k].Offset
			continue
		}
		out = append(out, Extent{lo, hi - lo})
	}
	return out
}

func cmpExtent(a, b Extent) int {
	switch {
	case a.Offset < b.Offset:
		return -1
	case a.Offset > b.Offset:
		return 1
	}
	return 0
}

// work hands out chunks of the extents to the lanes: at most chunk bytes,
// never crossing a multiple of chunk (so chunks and zero blocks line up
// with the target's clusters), clipped to the extents. Safe for concurrent
// use.
type work struct {
	mu    sync.Mutex
	ext   []Extent
	i     int
	pos   int64
	chunk int64
}

func (w *work) next() (off, n int64, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.i < len(w.ext) {
		e := w.ext[w.i]
		w.pos = max(w.pos, e.Offset)
		if w.pos >= e.End() {
			w.i++
			continue
		}
		end := min((w.pos/w.chunk+1)*w.chunk, e.End())
		off, n = w.pos, end-w.pos
		w.pos = end
		return off, n, true
	}
	return 0, 0, false
}

// AllocatedExtents returns the allocated extents of the NBD export at uri,
// from base:allocation block status: everything that is not a hole. A
// server without base:allocation yields the whole export as one extent.
// It connects with nbd.DefaultConnectTimeout unless ctx has a deadline.
func AllocatedExtents(ctx context.Context, uri string) ([]Extent, error) {
	h, err := nbd.Open(ctx, uri, nbd.Options{MetaContexts: []string{nbd.MetaBaseAllocation}})
	if err != nil {
		return nil, fmt.Errorf("open %s for allocation map: %w", uri, err)
	}
	defer h.Close()
	size := h.Size()
	if size == 0 {
		return nil, nil
	}
	if !h.CanMetaContext(nbd.MetaBaseAllocation) {
		return []Extent{{0, size}}, nil
	}
	bs, err := h.BlockStatus(ctx, nbd.MetaBaseAllocation, 0, size)
	if err != nil {
		return nil, fmt.Errorf("allocation map of %s: %w", uri, err)
	}
	var out []Extent
	for _, b := range bs {
		if b.Flags&nbd.StateHole != 0 {
			continue
		}
		if k := len(out) - 1; k >= 0 && out[k].End() == b.Offset {
			out[k].Length += b.Length
			continue
		}
		out = append(out, Extent{b.Offset, b.Length})
	}
	return out, nil
}
