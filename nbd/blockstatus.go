package nbd

import (
	"context"
	"fmt"
)

// Meta contexts for BlockStatus.
const (
	// MetaBaseAllocation describes allocation: flags StateHole and
	// StateZero.
	MetaBaseAllocation = "base:allocation"
	// MetaDirtyBitmapPrefix, followed by a bitmap name, is qemu's dirty
	// bitmap context (qemu-nbd -B NAME): flag StateDirty.
	MetaDirtyBitmapPrefix = "qemu:dirty-bitmap:"
)

// Extent flags.
const (
	StateHole  uint32 = 1 // base:allocation: not allocated
	StateZero  uint32 = 2 // base:allocation: reads as zeroes
	StateDirty uint32 = 1 // qemu:dirty-bitmap: changed
)

// maxBlockStatus bounds one block status command: libnbd 1.14 has 32-bit
// lengths only (no nbd_block_status_64).
const maxBlockStatus = 1 << 31

// DirtyBitmapContext returns the meta context name of qemu's dirty bitmap
// called name.
func DirtyBitmapContext(name string) string { return MetaDirtyBitmapPrefix + name }

// Extent is a range with the flags the server reported for it.
type Extent struct {
	Offset, Length int64
	Flags          uint32
}

// BlockStatus returns the extents of [off, off+length) for meta context
// meta, which must have been requested in Options.MetaContexts
// (ErrNoMetaContext otherwise). It asks in ranges of at most 2 GiB and
// loops; adjacent extents with equal flags are merged, and the result
// covers exactly [off, off+length).
func (h *Handle) BlockStatus(ctx context.Context, meta string, off, length int64) ([]Extent, error) {
	if err := h.usable(); err != nil {
		return nil, err
	}
	if !h.metas[meta] {
		return nil, fmt.Errorf("block status %s on %s: %w", meta, h.uri, ErrNoMetaContext)
	}
	if off < 0 || length < 0 || off+length > h.caps.Size {
		return nil, fmt.Errorf("block status [%d,+%d) on %s of %d bytes: out of range", off, length, h.uri, h.caps.Size)
	}
	var out []Extent
	end := off + length
	for cur := off; cur < end; {
		n := min(end-cur, maxBlockStatus)
		next, err := h.blockStatusOnce(ctx, meta, cur, n, &out)
		if err != nil {
			return nil, fmt.Errorf("block status %s [%d,+%d) on %s: %w", meta, cur, n, h.uri, err)
		}
		cur = next
	}
	return out, nil
}

// blockStatusOnce asks for [cur, cur+n) and appends the reply's extents,
// clipped to the range; it returns where the reply ended.
func (h *Handle) blockStatusOnce(ctx context.Context, meta string, cur, n int64, out *[]Extent) (int64, error) {
	if err := h.usable(); err != nil {
		return 0, err
	}
	x := newExtents(meta)
	c, err := cAioBlockStatus(h.h, h.e, n, cur, x)
	if err != nil {
		x.free()
		return 0, err
	}
	if err := h.wait(ctx, c); err != nil {
		// On ctx end wait closed the handle, so the callback cannot run
		// any more and x can go.
		x.free()
		return 0, err
	}
	defer x.free()
	start, pairs, seen, oom := x.pairs()
	if oom {
		return 0, fmt.Errorf("out of memory collecting extents")
	}
	if !seen || len(pairs) < 2 {
		return 0, fmt.Errorf("server sent no extents for %s", meta)
	}
	pos := start
	end := cur + n
	for i := 0; i+1 < len(pairs) && pos < end; i += 2 {
		l, f := int64(pairs[i]), pairs[i+1]
		lo, hi := max(pos, cur), min(pos+l, end)
		pos += l
		if hi <= lo {
			continue
		}
		if k := len(*out); k > 0 && (*out)[k-1].Flags == f && (*out)[k-1].Offset+(*out)[k-1].Length == lo {
			(*out)[k-1].Length += hi - lo
			continue
		}
		*out = append(*out, Extent{Offset: lo, Length: hi - lo, Flags: f})
	}
	pos = min(pos, end)
	if pos <= cur {
		return 0, fmt.Errorf("server reply for %s did not advance past offset %d", meta, cur)
	}
	return pos, nil
}
