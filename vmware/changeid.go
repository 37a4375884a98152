package vmware

import (
	"fmt"
	"strconv"
	"strings"
)

// FullChangeID is the change id that asks QueryChangedDiskAreas for every
// allocated area of the disk: what a full backup copies.
const FullChangeID = "*"

// ChangeID is a parsed VMware CBT change id such as
// "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/31": a tracking UUID (16
// bytes, written as hex pairs separated by spaces with a '-' after the eighth)
// and a sequence number. The UUID changes when change tracking is reset; the
// sequence grows with every snapshot.
type ChangeID struct {
	UUID string // canonical: lowercase, "xx xx xx xx xx xx xx xx-xx xx xx xx xx xx xx xx"
	Seq  int64
}

// String formats the change id the way vCenter does.
func (c ChangeID) String() string { return c.UUID + "/" + strconv.FormatInt(c.Seq, 10) }

// ParseChangeID parses a VMware change id. "*" and anything malformed return
// ErrInvalidChangeID.
func ParseChangeID(s string) (ChangeID, error) {
	slash := strings.LastIndexByte(s, '/')
	if slash < 0 {
		return ChangeID{}, fmt.Errorf("parse change id %q: %w: no '/seq' part", s, ErrInvalidChangeID)
	}
	seq, err := strconv.ParseInt(s[slash+1:], 10, 64)
	if err != nil || seq < 0 || strings.HasPrefix(s[slash+1:], "+") {
		return ChangeID{}, fmt.Errorf("parse change id %q: %w: bad sequence", s, ErrInvalidChangeID)
	}
	id := strings.ToLower(s[:slash])
	halves := strings.Split(id, "-")
	if len(halves) != 2 {
		return ChangeID{}, fmt.Errorf("parse change id %q: %w: want one '-' in the uuid", s, ErrInvalidChangeID)
	}
	for _, h := range halves {
		pairs := strings.Split(h, " ")
		if len(pairs) != 8 {
			return ChangeID{}, fmt.Errorf("parse change id %q: %w: want 8 bytes on each side of '-'", s, ErrInvalidChangeID)
		}
		for _, p := range pairs {
			if len(p) != 2 || !isHex(p[0]) || !isHex(p[1]) {
				return ChangeID{}, fmt.Errorf("parse change id %q: %w: %q is not a hex byte", s, ErrInvalidChangeID, p)
			}
		}
	}
	return ChangeID{UUID: id, Seq: seq}, nil
}

// SameEpoch reports whether two change ids come from the same change tracking
// epoch (same UUID). After a CBT reset the UUID differs and an incremental
// from the old id is impossible.
func SameEpoch(a, b ChangeID) bool { return a.UUID != "" && a.UUID == b.UUID }

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f')
}
