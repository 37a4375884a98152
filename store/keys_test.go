package store

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestKeyParts: a tuple part reads back whole, byte order of encodings is
// byte order of the strings, and one tuple never prefixes another with a
// different first part, also for strings holding 0x00, 0x01 and 0xff.
func TestKeyParts(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte{0, 1, 2, 'a', 'b', 0xfe, 0xff}
	str := func() string {
		b := make([]byte, rng.IntN(5))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	for range 20000 {
		a, b, tail := str(), str(), str()
		ea := appendPart(nil, a)
		got, rest, ok := cutPart(append(ea[:len(ea):len(ea)], tail...))
		if !ok || got != a || string(rest) != tail {
			t.Fatalf("cutPart(part(%q)+%q) = %q, %q, %v", a, tail, got, rest, ok)
		}
		eb := appendPart(nil, b)
		if c, want := bytes.Compare(ea, eb), strings.Compare(a, b); c != want {
			t.Fatalf("order of %q and %q: encodings %d, strings %d", a, b, c, want)
		}
		if a != b && bytes.HasPrefix(append(eb, tail...), ea) {
			t.Fatalf("part(%q) prefixes part(%q)+%q", a, b, tail)
		}
	}
	if end := prefixEnd([]byte{'a', 0xff}); !bytes.Equal(end, []byte{'b'}) {
		t.Errorf("prefixEnd(a 0xff) = %q, want b", end)
	}
	if end := prefixEnd([]byte{0xff, 0xff}); end != nil {
		t.Errorf("prefixEnd(0xff 0xff) = %q, want nil", end)
	}
}
