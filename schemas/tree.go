package schemas

import (
	"encoding/json"
	"math"
	"sync"
	"unicode/utf8"
)

// tree is a payload parsed once for the fast path (see fastSchema): every
// JSON value is a node in one slice, strings are substrings of one copy of
// the payload, and no map is built. Nodes hold no pointers (a string is
// an offset and length into that copy), so filling and clearing them
// costs the garbage collector nothing. It is pooled; a tree is used by one
// goroutine at a time.
//
// The parser accepts exactly the JSON that encoding/json accepts, or less:
// anything it refuses (and any object with a repeated member name or more
// than maxMembers members) makes the caller take the slow path, which
// parses with encoding/json and reports the error (a repeated name is one:
// see RuleDuplicateKey).
type tree struct {
	data  []byte // the payload, owned by the caller; read only during the call
	src   string // a copy of data; node strings point into it
	pos   int
	nodes []node
	unq   []string // strings that needed unescaping (see span)

	unknown bool // set by fastSchema.valid when it cannot tell
}

type nodeKind uint8

const (
	kindNull nodeKind = iota
	kindFalse
	kindTrue
	kindNumber
	kindString
	kindArray
	kindObject
)

// node is one JSON value. Children of an array or object are linked
// through first and next, in document order.
type node struct {
	i          int64 // a number's value when isInt
	start, end int32 // the value's bytes, data[start:end]
	val        span  // string value (unescaped as encoding/json does) or number literal
	key        span  // member name, for a member of an object
	first      int32 // first child, -1 if none
	next       int32 // next sibling, -1 if none
	n          int32 // number of children
	kind       nodeKind
	isInt      bool // a number written without fraction or exponent that fits an int64
}

// span is a string of a tree: src[off:off+n], or, when off is negative,
// unq[-off-1] (a string that had escapes or invalid UTF-8).
type span struct{ off, n int32 }

// get returns the string s stands for.
func (t *tree) get(s span) string {
	if s.off < 0 {
		return t.unq[-s.off-1]
	}
	return t.src[s.off : s.off+s.n]
}

// same reports whether a and b stand for the same string.
func (t *tree) same(a, b span) bool {
	if a.off >= 0 && b.off >= 0 && a.n != b.n {
		return false
	}
	return t.get(a) == t.get(b)
}

// str returns the string value or number literal of node n.
func (t *tree) str(n int32) string { return t.get(t.nodes[n].val) }

// key returns the member name of node n.
func (t *tree) key(n int32) string { return t.get(t.nodes[n].key) }

const (
	// maxDepth bounds nesting; deeper payloads take the slow path. No
	// message schema accepts more than a few levels.
	maxDepth = 64
	// maxMembers bounds the members of one object (no schema allows more
	// than 32), which keeps the repeated-name check cheap.
	maxMembers = 64
)

var trees = sync.Pool{New: func() any { return &tree{nodes: make([]node, 0, 128)} }}

func getTree() *tree { return trees.Get().(*tree) }

// release returns t to the pool without keeping the payload alive; the
// node and string slices of an unusually large payload are dropped, not
// kept.
func (t *tree) release() {
	if cap(t.nodes) > 4096 {
		t.nodes = make([]node, 0, 128)
	} else {
		t.nodes = t.nodes[:0]
	}
	if cap(t.unq) > 4096 {
		t.unq = nil
	} else {
		clear(t.unq)
		t.unq = t.unq[:0]
	}
	t.data, t.src, t.pos = nil, "", 0
	trees.Put(t)
}

// parse parses data as one JSON value with optional surrounding whitespace
// and reports whether it could; root is node 0.
func (t *tree) parse(data []byte) bool {
	t.data, t.src, t.pos = data, string(data), 0
	t.skipSpace()
	if _, ok := t.value(0); !ok {
		return false
	}
	t.skipSpace()
	return t.pos == len(t.data)
}

func (t *tree) skipSpace() {
	for t.pos < len(t.data) {
		switch t.data[t.pos] {
		case ' ', '\t', '\n', '\r':
			t.pos++
		default:
			return
		}
	}
}

func (t *tree) value(depth int) (int32, bool) {
	if t.pos >= len(t.data) || depth > maxDepth {
		return -1, false
	}
	idx := int32(len(t.nodes))
	t.nodes = append(t.nodes, node{start: int32(t.pos), first: -1, next: -1})
	ok := false
	switch c := t.data[t.pos]; c {
	case '{':
		ok = t.object(idx, depth)
	case '[':
		ok = t.array(idx, depth)
	case '"':
		var s span
		s, ok = t.string()
		t.nodes[idx].kind, t.nodes[idx].val = kindString, s
	case 't':
		ok = t.literal("true")
		t.nodes[idx].kind = kindTrue
	case 'f':
		ok = t.literal("false")
		t.nodes[idx].kind = kindFalse
	case 'n':
		ok = t.literal("null")
		t.nodes[idx].kind = kindNull
	default:
		start := t.pos
		nd := &t.nodes[idx]
		ok = t.number(nd)
		nd.kind, nd.val = kindNumber, span{int32(start), int32(t.pos - start)}
	}
	t.nodes[idx].end = int32(t.pos)
	return idx, ok
}

func (t *tree) literal(lit string) bool {
	if len(t.data)-t.pos < len(lit) || string(t.data[t.pos:t.pos+len(lit)]) != lit {
		return false
	}
	t.pos += len(lit)
	return true
}

func (t *tree) object(idx int32, depth int) bool {
	t.nodes[idx].kind = kindObject
	t.pos++
	t.skipSpace()
	if t.pos < len(t.data) && t.data[t.pos] == '}' {
		t.pos++
		return true
	}
	last := int32(-1)
	for {
		if t.pos >= len(t.data) || t.data[t.pos] != '"' || t.nodes[idx].n == maxMembers {
			return false
		}
		key, ok := t.string()
		if !ok {
			return false
		}
		for c := t.nodes[idx].first; c >= 0; c = t.nodes[c].next {
			if t.same(t.nodes[c].key, key) {
				return false // a schema violation: the slow path names it (duplicateKeys)
			}
		}
		t.skipSpace()
		if t.pos >= len(t.data) || t.data[t.pos] != ':' {
			return false
		}
		t.pos++
		t.skipSpace()
		c, ok := t.value(depth + 1)
		if !ok {
			return false
		}
		t.nodes[c].key = key
		t.link(idx, last, c)
		last = c
		t.skipSpace()
		if t.pos >= len(t.data) {
			return false
		}
		switch t.data[t.pos] {
		case ',':
			t.pos++
			t.skipSpace()
		case '}':
			t.pos++
			return true
		default:
			return false
		}
	}
}

func (t *tree) array(idx int32, depth int) bool {
	t.nodes[idx].kind = kindArray
	t.pos++
	t.skipSpace()
	if t.pos < len(t.data) && t.data[t.pos] == ']' {
		t.pos++
		return true
	}
	last := int32(-1)
	for {
		c, ok := t.value(depth + 1)
		if !ok {
			return false
		}
		t.link(idx, last, c)
		last = c
		t.skipSpace()
		if t.pos >= len(t.data) {
			return false
		}
		switch t.data[t.pos] {
		case ',':
			t.pos++
			t.skipSpace()
		case ']':
			t.pos++
			return true
		default:
			return false
		}
	}
}

// link appends child c after last (-1: first child) of parent.
func (t *tree) link(parent, last, c int32) {
	if last < 0 {
		t.nodes[parent].first = c
	} else {
		t.nodes[last].next = c
	}
	t.nodes[parent].n++
}

// string scans a JSON string at t.pos and returns its value. A string
// without escapes in valid UTF-8 is a substring of t.src; anything else is
// unquoted by encoding/json itself, so both paths see the same value
// (invalid UTF-8 and lone surrogates become U+FFFD), and kept in t.unq.
func (t *tree) string() (span, bool) {
	d := t.data
	start := t.pos + 1
	escaped, ascii := false, true
	for i := start; i < len(d); {
		for i < len(d) && plainByte[d[i]] {
			i++
		}
		if i == len(d) {
			break
		}
		switch c := d[i]; {
		case c == '"':
			t.pos = i + 1
			if !escaped && (ascii || utf8.ValidString(t.src[start:i])) {
				return span{int32(start), int32(i - start)}, true
			}
			var s string
			if err := json.Unmarshal(d[start-1:i+1], &s); err != nil {
				return span{}, false
			}
			t.unq = append(t.unq, s)
			return span{-int32(len(t.unq)), 0}, true
		case c == '\\':
			escaped = true
			if i+1 >= len(d) {
				return span{}, false
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(d) || !isHex(d[i+2]) || !isHex(d[i+3]) || !isHex(d[i+4]) || !isHex(d[i+5]) {
					return span{}, false
				}
				i += 6
			default:
				return span{}, false
			}
		case c < 0x20:
			return span{}, false
		case c >= utf8.RuneSelf:
			ascii = false
			i++
		default:
			i++
		}
	}
	return span{}, false
}

// plainByte marks the bytes a JSON string holds as they are: printable
// ASCII other than '"' and '\\'.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// number scans a JSON number (RFC 8259 grammar) at t.pos and sets nd.i
// and nd.isInt for an integer written without fraction or exponent that
// fits an int64 (the value strconv.ParseInt gives).
func (t *tree) number(nd *node) bool {
	d, i := t.data, t.pos
	neg := i < len(d) && d[i] == '-'
	if neg {
		i++
	}
	// Accumulate as a negative number: its range includes math.MinInt64.
	var v int64
	fits := true
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && '1' <= d[i] && d[i] <= '9':
		for ; i < len(d) && isDigit(d[i]); i++ {
			digit := int64(d[i] - '0')
			if v < (math.MinInt64+digit)/10 {
				fits = false
			}
			v = v*10 - digit
		}
	default:
		return false
	}
	nd.isInt = false
	if i == len(d) || d[i] != '.' && d[i] != 'e' && d[i] != 'E' {
		if !neg {
			fits = fits && v != math.MinInt64
			v = -v
		}
		nd.i, nd.isInt = v, fits
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || !isDigit(d[i]) {
			return false
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || !isDigit(d[i]) {
			return false
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	t.pos = i
	return true
}

// member returns the child of object node o named key, or -1.
func (t *tree) member(o int32, key string) int32 {
	for c := t.nodes[o].first; c >= 0; c = t.nodes[c].next {
		if t.key(c) == key {
			return c
		}
	}
	return -1
}
