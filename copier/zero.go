package copier

import "bytes"

// isZero reports whether every byte of b is zero. It reads the whole block
// (design invariant 9: no sampling): b[0] == 0 and b[i] == b[i+1] for every
// i means all bytes equal b[0]. bytes.Equal runs the runtime's vectorised
// memequal, and data blocks stop at their first differing byte.
func isZero(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	return b[0] == 0 && bytes.Equal(b[:len(b)-1], b[1:])
}
