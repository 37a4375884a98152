package schemas

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// RuleDuplicateKey is the Rule of a Problem for a member name that appears
// more than once in the same JSON object. JSON Schema has no such keyword:
// a schema validator, like encoding/json, keeps one of the values and never
// sees the other, so a payload such as {"vm":"../../etc","vm":"pgtest1"}
// could be checked with one value and read with another. Every payload
// with a repeated name is refused, whatever its values.
const RuleDuplicateKey = "duplicateKey"

// maxLinearKeys is the number of member names of one object that
// duplicateKeys compares one by one; past it, it builds a map.
const maxLinearKeys = 16

// duplicateKeys returns a Problem for each member name that appears more
// than once in the same object of data, at any depth: Field is the JSON
// pointer of the object, e.g. "/disks/0/disk", and Message names the key,
// e.g. `duplicate key "key"`. Names are compared as encoding/json reads
// them (after unescaping, with invalid UTF-8 as U+FFFD), so "v\u006d"
// repeats "vm". A name repeated n times gives n-1 equal problems (the
// caller sorts and compacts).
//
// data must be one well-formed JSON value with optional surrounding
// whitespace, as the library's parse has already established; nesting is
// then bounded by encoding/json's own depth limit. It is the slow path's
// check: the fast path's tree parser refuses such payloads itself (see
// tree.object) and leaves them to the slow path, so both name the problem
// the same way.
func duplicateKeys(data []byte) []Problem {
	d := dupScanner{data: data, src: string(data), path: make([]string, 0, 8), keys: make([]string, 0, 32)}
	d.value()
	return d.out
}

// dupScanner walks a well-formed JSON value for duplicateKeys.
type dupScanner struct {
	data []byte
	src  string // a copy of data: names are substrings of it
	pos  int
	path []string // pointer tokens of the value being scanned
	keys []string // names of the open objects, innermost last
	out  []Problem
}

func (d *dupScanner) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *dupScanner) value() {
	d.skipSpace()
	if d.pos >= len(d.data) {
		return
	}
	switch d.data[d.pos] {
	case '{':
		d.object()
	case '[':
		d.array()
	case '"':
		d.skipString()
	default: // number, true, false, null
		for d.pos < len(d.data) {
			switch d.data[d.pos] {
			case ',', ']', '}', ' ', '\t', '\n', '\r':
				return
			}
			d.pos++
		}
	}
}

func (d *dupScanner) object() {
	d.pos++
	base := len(d.keys)
	var seen map[string]bool // built once the object has maxLinearKeys names
	for {
		d.skipSpace()
		if d.pos >= len(d.data) || d.data[d.pos] == '}' {
			d.pos++
			d.keys = d.keys[:base]
			return
		}
		if d.data[d.pos] == ',' {
			d.pos++
			continue
		}
		key := d.readString()
		dup := false
		switch {
		case seen != nil:
			dup = seen[key]
			seen[key] = true
		default:
			for _, k := range d.keys[base:] {
				if k == key {
					dup = true
					break
				}
			}
			if len(d.keys)-base+1 >= maxLinearKeys {
				seen = make(map[string]bool, 2*maxLinearKeys)
				for _, k := range d.keys[base:] {
					seen[k] = true
				}
				seen[key] = true
			}
		}
		if dup {
			d.out = append(d.out, Problem{
				Field:   pointer(d.path),
				Rule:    RuleDuplicateKey,
				Message: fmt.Sprintf("duplicate key %q", key),
			})
		}
		d.keys = append(d.keys, key)
		d.skipSpace()
		d.pos++ // ':'
		d.path = append(d.path, key)
		d.value()
		d.path = d.path[:len(d.path)-1]
	}
}

func (d *dupScanner) array() {
	d.pos++
	for i := 0; ; i++ {
		d.skipSpace()
		if d.pos >= len(d.data) || d.data[d.pos] == ']' {
			d.pos++
			return
		}
		if d.data[d.pos] == ',' {
			d.pos++
			d.skipSpace()
		}
		d.path = append(d.path, strconv.Itoa(i))
		d.value()
		d.path = d.path[:len(d.path)-1]
	}
}

// skipString moves past the string at d.pos.
func (d *dupScanner) skipString() { d.stringEnd() }

// stringEnd moves past the string at d.pos and returns the index of its
// closing quote, and whether it has escapes or non-ASCII bytes.
func (d *dupScanner) stringEnd() (end int, escaped, ascii bool) {
	ascii = true
	for i := d.pos + 1; i < len(d.data); {
		switch c := d.data[i]; {
		case c == '"':
			d.pos = i + 1
			return i, escaped, ascii
		case c == '\\':
			escaped = true
			i += 2
		case c >= utf8.RuneSelf:
			ascii = false
			i++
		default:
			i++
		}
	}
	d.pos = len(d.data)
	return len(d.data), escaped, ascii
}

// readString moves past the string at d.pos and returns its value as
// encoding/json reads it: the text itself when it has no escapes and is
// valid UTF-8, else what json.Unmarshal gives (as tree.string does).
func (d *dupScanner) readString() string {
	start := d.pos
	end, escaped, ascii := d.stringEnd()
	if end >= len(d.data) {
		return d.src[start:] // unreachable for a well-formed payload
	}
	if !escaped && (ascii || utf8.ValidString(d.src[start+1:end])) {
		return d.src[start+1 : end]
	}
	var s string
	if err := json.Unmarshal(d.data[start:end+1], &s); err != nil {
		return d.src[start:end] // unreachable for a well-formed payload
	}
	return s
}
