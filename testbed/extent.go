package testbed

import (
	"sort"

	"github.com/sendense/sendense/vmware"
)

// Extent is a byte range of a disk: the same type the vmware client
// reports changed areas in.
type Extent = vmware.Extent

// merge sorts extents and merges overlapping and touching ones, in place.
func merge(in []Extent) []Extent {
	if len(in) == 0 {
		return nil
	}
	return vmware.MergeExtents(in)
}

// alignClip widens each extent to block boundaries, clips it to capacity,
// and merges the result.
func alignClip(in []Extent, block, capacity int64) []Extent {
	out := make([]Extent, 0, len(in))
	for _, e := range in {
		start := e.Offset / block * block
		end := (e.End() + block - 1) / block * block
		if end > capacity {
			end = capacity
		}
		if start < end {
			out = append(out, Extent{Offset: start, Length: end - start})
		}
	}
	return merge(out)
}

// rangeSet is a set of byte ranges kept sorted and merged.
type rangeSet struct{ ext []Extent }

func (r *rangeSet) add(off, n int64) {
	if n <= 0 {
		return
	}
	e := Extent{Offset: off, Length: n}
	// Find the first extent that ends at or after off: everything before it
	// is untouched.
	i := sort.Search(len(r.ext), func(i int) bool { return r.ext[i].End() >= off })
	j := i
	for j < len(r.ext) && r.ext[j].Offset <= e.End() {
		if r.ext[j].Offset < e.Offset {
			e.Length += e.Offset - r.ext[j].Offset
			e.Offset = r.ext[j].Offset
		}
		if r.ext[j].End() > e.End() {
			e.Length = r.ext[j].End() - e.Offset
		}
		j++
	}
	r.ext = append(r.ext[:i], append([]Extent{e}, r.ext[j:]...)...)
}

// page returns the part of sorted, merged ext that a QueryChangedDiskAreas
// reply starting at start carries: at most max areas, and the length of the
// range those areas describe (to the end of the last area when the reply is
// cut short, else to capacity).
func page(ext []Extent, start, capacity int64, max int) (areas []Extent, length int64) {
	i := sort.Search(len(ext), func(i int) bool { return ext[i].End() > start })
	for ; i < len(ext) && len(areas) < max; i++ {
		e := ext[i]
		if e.Offset < start {
			e = Extent{Offset: start, Length: e.End() - start}
		}
		areas = append(areas, e)
	}
	if i < len(ext) {
		return areas, areas[len(areas)-1].End() - start
	}
	return areas, capacity - start
}
