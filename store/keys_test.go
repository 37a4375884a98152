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

// TestEventKey: an event key reads back whole, for agents holding 0x00 and
// any sequence, and a job's keys sort by (event id, type, agent,
// sequence), so one identity's keys are adjacent.
func TestEventKey(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, agent := range []string{"", "node1", "a\x00b", "\x00", "\xff\xff"} {
		for _, seq := range []uint64{0, 1, 255, 256, 1 << 40, ^uint64(0), rng.Uint64()} {
			k := eventKey("j\x001", "j.1.started.0.0", 1, agent, seq)
			job, id, code, a, s, ok := splitEventKey(k)
			if !ok || job != "j\x001" || id != "j.1.started.0.0" || code != 1 || a != agent || s != seq {
				t.Errorf("splitEventKey(eventKey(%q, %d)) = %q %q %d %q %d %v", agent, seq, job, id, code, a, s, ok)
			}
			if _, _, _, _, _, ok := splitEventKey(k[:len(k)-1]); ok {
				t.Errorf("a key cut short reads as whole: %x", k[:len(k)-1])
			}
		}
	}
	keys := [][]byte{
		eventKey("j", "j.1.started.0.0", 1, "", 7),
		eventKey("j", "j.1.started.0.0", 1, "node1", 3),
		eventKey("j", "j.1.started.0.0", 1, "node1", 1<<40),
		eventKey("j", "j.1.started.0.0", 1, "node2", 2),
	}
	for i := 1; i < len(keys); i++ {
		if bytes.Compare(keys[i-1], keys[i]) >= 0 {
			t.Errorf("key %d does not sort before key %d", i-1, i)
		}
	}
}
