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
//
// It accepts exactly the strings that the change_id pattern of the event
// schemas (schemas/json/common.json) accepts: 16 hex bytes in either case,
// separated by single spaces with a '-' after the eighth, a '/', and 1 to
// 19 decimal digits. The one exception is a sequence over the largest
// int64 (19 digits allow up to 9999999999999999999), which the pattern
// cannot exclude and ParseChangeID refuses. The UUID is returned in
// lowercase; a sequence written with leading zeros reads as its value, so
// String may be shorter than the input.
func ParseChangeID(s string) (ChangeID, error) {
	slash := strings.LastIndexByte(s, '/')
	if slash < 0 {
		return ChangeID{}, fmt.Errorf("parse change id %q: %w: no '/seq' part", s, ErrInvalidChangeID)
	}
	digits := s[slash+1:]
	if len(digits) == 0 || len(digits) > maxSeqDigits || strings.IndexFunc(digits, notDigit) >= 0 {
		return ChangeID{}, fmt.Errorf("parse change id %q: %w: sequence is not 1 to %d digits", s, ErrInvalidChangeID, maxSeqDigits)
	}
	seq, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		return ChangeID{}, fmt.Errorf("parse change id %q: %w: sequence out of range", s, ErrInvalidChangeID)
	}
	uuid := s[:slash]
	if len(uuid) != uuidLen {
		return ChangeID{}, fmt.Errorf("parse change id %q: %w: uuid of %d bytes, want %d (16 hex bytes)", s, ErrInvalidChangeID, len(uuid), uuidLen)
	}
	b := make([]byte, uuidLen)
	for i := 0; i < uuidLen; i++ {
		c := uuid[i]
		switch {
		case i%3 < 2:
			if 'A' <= c && c <= 'F' {
				c += 'a' - 'A'
			}
			if !isHex(c) {
				return ChangeID{}, fmt.Errorf("parse change id %q: %w: %q at %d is not a hex digit", s, ErrInvalidChangeID, uuid[i], i)
			}
		case i == uuidDash:
			if c != '-' {
				return ChangeID{}, fmt.Errorf("parse change id %q: %w: want '-' after the eighth byte", s, ErrInvalidChangeID)
			}
		case c != ' ':
			return ChangeID{}, fmt.Errorf("parse change id %q: %w: want ' ' between bytes, got %q at %d", s, ErrInvalidChangeID, c, i)
		}
		b[i] = c
	}
	return ChangeID{UUID: string(b), Seq: seq}, nil
}

const (
	// uuidLen is the length of a change id's UUID: 16 hex pairs and 15
	// separators; uuidDash is the index of its '-'.
	uuidLen  = 16*2 + 15
	uuidDash = 8*3 - 1
	// maxSeqDigits is the most digits of a sequence, as in the schema's
	// pattern (the digits of the largest int64).
	maxSeqDigits = 19
)

func notDigit(r rune) bool { return r < '0' || r > '9' }

// SameEpoch reports whether two change ids come from the same change tracking
// epoch (same UUID). After a CBT reset the UUID differs and an incremental
// from the old id is impossible.
func SameEpoch(a, b ChangeID) bool { return a.UUID != "" && a.UUID == b.UUID }

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f')
}
