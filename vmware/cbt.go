package vmware

import (
	"context"
	"fmt"
	"sort"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// Extent is a byte range of a disk.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// End is the first byte after the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// ChangedAreas returns the areas of disk diskKey that changed between
// changeID and the snapshot snap, or, with changeID FullChangeID ("*"),
// every allocated area of the disk at that snapshot. It pages
// QueryChangedDiskAreas by startOffset until capacity (the disk's capacity
// at that snapshot, from SnapshotDisks) and returns sorted, merged extents.
//
// Guards: each reply must start at or before the offset asked for and end
// after it; a reply that does not advance, or that names areas outside the
// disk, is ErrBadChangeInfo instead of a hang or a wrong copy. A change id
// vCenter refuses (unknown, from before a CBT reset, malformed) is
// ErrChangeIDRejected: the disk needs a full backup.
func (c *Client) ChangedAreas(ctx context.Context, vm *VM, snap types.ManagedObjectReference, diskKey int32, changeID string, capacity int64) ([]Extent, error) {
	if changeID == "" {
		return nil, fmt.Errorf("query changed areas of disk %d of vm %s: %w: empty change id (use %q for a full)",
			diskKey, vm.Ref.Value, ErrChangeIDRejected, FullChangeID)
	}
	query := func(ctx context.Context, start int64) (*types.DiskChangeInfo, error) {
		ctx, cancel := withDefaultTimeout(ctx, DefaultCallTimeout)
		defer cancel()
		s := snap
		req := types.QueryChangedDiskAreas{
			This:        vm.Ref,
			Snapshot:    &s,
			DeviceKey:   diskKey,
			StartOffset: start,
			ChangeId:    changeID,
		}
		res, err := methods.QueryChangedDiskAreas(ctx, c.gc.Client, &req)
		if err != nil {
			if changeIDRejected(err, changeID) {
				return nil, fmt.Errorf("%w: %w", ErrChangeIDRejected, err)
			}
			return nil, classify(err)
		}
		return &res.Returnval, nil
	}
	ext, err := pageChangedAreas(ctx, capacity, query)
	if err != nil {
		return nil, fmt.Errorf("query changed areas of disk %d of vm %s at snapshot %s since %q: %w",
			diskKey, vm.Ref.Value, snap.Value, changeID, err)
	}
	var total int64
	for _, e := range ext {
		total += e.Length
	}
	c.log.Debug().Str("moref", vm.Ref.Value).Int32("disk_key", diskKey).Str("change_id", changeID).
		Int("extents", len(ext)).Int64("bytes", total).Msg("changed areas read")
	return ext, nil
}

// changeIDRejected classifies a QueryChangedDiskAreas fault. vSphere answers
// an unknown or reset change id with a FileFault ("Error caused by file …")
// and a malformed one with InvalidArgument naming changeId.
func changeIDRejected(err error, changeID string) bool {
	switch f := vimFault(err).(type) {
	case types.BaseFileFault:
		return changeID != FullChangeID
	case *types.InvalidArgument:
		return f.InvalidProperty == "changeId"
	}
	return false
}

// pageChangedAreas is the paging loop, separate from the SOAP call so its
// guards can be tested with a fake.
func pageChangedAreas(ctx context.Context, capacity int64, query func(context.Context, int64) (*types.DiskChangeInfo, error)) ([]Extent, error) {
	if capacity <= 0 {
		return nil, fmt.Errorf("%w: capacity %d", ErrBadChangeInfo, capacity)
	}
	var out []Extent
	for start := int64(0); start < capacity; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		info, err := query(ctx, start)
		if err != nil {
			return nil, fmt.Errorf("at offset %d: %w", start, err)
		}
		if info == nil {
			return nil, fmt.Errorf("%w: empty reply at offset %d", ErrBadChangeInfo, start)
		}
		if info.StartOffset > start || info.StartOffset < 0 || info.Length < 0 {
			return nil, fmt.Errorf("%w: asked from offset %d, reply covers [%d, +%d)", ErrBadChangeInfo, start, info.StartOffset, info.Length)
		}
		next := info.StartOffset + info.Length
		if next <= start || next < info.StartOffset { // no progress, or overflow
			return nil, fmt.Errorf("%w: reply from offset %d does not advance (start %d, length %d)", ErrBadChangeInfo, start, info.StartOffset, info.Length)
		}
		for _, a := range info.ChangedArea {
			end := a.Start + a.Length
			if a.Start < 0 || a.Length <= 0 || end < a.Start || end > capacity {
				return nil, fmt.Errorf("%w: area [%d, +%d) outside disk of %d bytes", ErrBadChangeInfo, a.Start, a.Length, capacity)
			}
			out = append(out, Extent{Offset: a.Start, Length: a.Length})
		}
		start = next
	}
	return MergeExtents(out), nil
}

// MergeExtents sorts extents and merges overlapping and touching ones, in
// place. The simulated vCenter (testbed) uses it for the areas it reports.
func MergeExtents(in []Extent) []Extent {
	if len(in) == 0 {
		return in
	}
	sort.Slice(in, func(i, j int) bool { return in[i].Offset < in[j].Offset })
	out := in[:1]
	for _, e := range in[1:] {
		last := &out[len(out)-1]
		if e.Offset <= last.End() {
			if e.End() > last.End() {
				last.Length = e.End() - last.Offset
			}
			continue
		}
		out = append(out, e)
	}
	return out
}
