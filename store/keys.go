package store

import (
	"encoding/binary"
	"time"
)

// Keys of the flat buckets (job_events, links) are tuples of strings,
// times and type codes, encoded so that byte order is tuple order and one
// tuple's encoding is never a prefix of another's with a different first
// part. A cursor then reads one job's events, or one VM's backups in a
// repository, as one key range.

// appendPart appends s as one tuple part: every 0x00 byte of s becomes
// 0x00 0xff and the part ends with 0x00 0x01. Inside a part a 0x00 is
// always followed by 0xff or 0x01, so the first 0x00 0x01 ends it; and
// since 0x01 < 0xff and a terminator sorts below any byte of a longer
// string, byte order of the encodings is byte order of the strings.
func appendPart(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			b = append(b, 0, 0xff)
			continue
		}
		b = append(b, s[i])
	}
	return append(b, 0, 1)
}

// prefixEnd returns the smallest key greater than every key that starts
// with p, or nil when there is none (p is all 0xff bytes).
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

const timeKeyLen = 12

// appendTime appends t so that byte order is time order: seconds since
// 1970 with the sign bit flipped (8 bytes), then nanoseconds (4 bytes).
func appendTime(b []byte, t time.Time) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(t.Unix())^(1<<63))
	return binary.BigEndian.AppendUint32(b, uint32(t.Nanosecond()))
}

// timeKey is appendTime on a fresh slice with room for a job id.
func timeKey(t time.Time) []byte {
	return appendTime(make([]byte, 0, timeKeyLen+64), t)
}

// decodeDiskKey reads a version 1 chain bucket name: a VMware device key,
// 4 bytes big-endian with the sign bit flipped.
func decodeDiskKey(b []byte) int32 {
	if len(b) != 4 {
		return 0
	}
	return int32(binary.BigEndian.Uint32(b) ^ (1 << 31))
}

// cutPart decodes the tuple part at the start of b (see appendPart) and
// returns it and the bytes after it; ok is false when b does not start
// with a whole part.
func cutPart(b []byte) (part string, rest []byte, ok bool) {
	var s []byte
	start := 0
	for i := 0; i+1 < len(b); i++ {
		if b[i] != 0 {
			continue
		}
		switch b[i+1] {
		case 1:
			return string(append(s, b[start:i]...)), b[i+2:], true
		case 0xff:
			s = append(append(s, b[start:i]...), 0)
			start = i + 2
			i++
		default:
			return "", nil, false
		}
	}
	return "", nil, false
}
