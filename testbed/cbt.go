package testbed

import (
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
)

// newTrackingUUID returns a random CBT tracking UUID in VMware's change id
// format: "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4".
func newTrackingUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	var s strings.Builder
	for i, x := range b {
		switch {
		case i == 8:
			s.WriteByte('-')
		case i > 0:
			s.WriteByte(' ')
		}
		fmt.Fprintf(&s, "%02x", x)
	}
	return s.String()
}

func formatChangeID(tracking string, seq int64) string {
	return tracking + "/" + strconv.FormatInt(seq, 10)
}

// parseChangeID splits a change id into its tracking UUID and sequence, or
// reports false when it is not one (what vSphere answers with
// InvalidArgument). Kept separate from package vmware on purpose: the
// simulator must not share the client's parser, or a bug in it would be
// invisible to the tests.
func parseChangeID(s string) (tracking string, seq int64, ok bool) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return "", 0, false
	}
	seq, err := strconv.ParseInt(s[i+1:], 10, 64)
	if err != nil || seq < 0 {
		return "", 0, false
	}
	tracking = strings.ToLower(s[:i])
	if len(tracking) != 16*3-1 {
		return "", 0, false
	}
	for j := 0; j < len(tracking); j++ {
		c := tracking[j]
		switch {
		case j%3 == 2 && j == 23:
			if c != '-' {
				return "", 0, false
			}
		case j%3 == 2:
			if c != ' ' {
				return "", 0, false
			}
		case ('0' <= c && c <= '9') || ('a' <= c && c <= 'f'):
		default:
			return "", 0, false
		}
	}
	return tracking, seq, true
}

// point is one disk frozen by one snapshot: the change id the snapshot
// stamped, the frozen image, and what was allocated in it.
type point struct {
	changeID  string
	tracking  string
	seq       int64
	path      string
	layer     string // datastore path of the layer ("[ds] vm/disk-00000n.vmdk")
	capacity  int64
	allocated []Extent
}

// changedSince returns what was written to the disk from change id seq from
// up to point p (writes made while the sequence was in [from, p.seq)),
// widened to the tracking block size and clipped to p's capacity. The
// caller holds the testbed lock.
func (d *disk) changedSince(from int64, p *point, block int64) []Extent {
	var all []Extent
	for epoch, set := range d.writes {
		if epoch >= from && epoch < p.seq {
			all = append(all, set.ext...)
		}
	}
	return alignClip(all, block, p.capacity)
}

// recordWrite notes a guest write for CBT. The caller holds the testbed lock.
func (d *disk) recordWrite(off, n int64) {
	set := d.writes[d.seq]
	if set == nil {
		set = &rangeSet{}
		d.writes[d.seq] = set
	}
	set.add(off, n)
}
