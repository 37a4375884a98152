package schemas

import (
	"regexp"
	"regexp/syntax"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// classSeq matches an anchored pattern made only of ASCII character
// classes, each repeated a bounded or unbounded number of times, e.g. the
// UUID pattern ^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-...$, optionally wrapped as a
// whole in (?:...)?. It gives the same answers as Go's regexp (the engine
// jsonschema compiles patterns with), about ten times faster, and only
// exists for patterns where matching each class greedily is the only way
// a match can succeed: every class that may repeat a varying number of
// times is disjoint from every class that may come right after it (see
// newClassSeq). Other patterns keep the regexp.
type classSeq struct {
	src      string // the pattern, for String
	items    []classItem
	optional bool // the whole pattern is (?:...)?: "" also matches
	// head is the class of each of the first len(head) bytes: the leading
	// items that repeat a fixed number of times (all of a UUID), written
	// out per position so MatchString checks them in one loop; rest is
	// the index of the first item after them.
	head []*classItem
	rest int
}

// classItem is one ASCII character class repeated min..max times
// (max -1: unbounded).
type classItem struct {
	set      [2]uint64 // bit c set: byte c (< 128) is in the class
	min, max int
}

func (it *classItem) has(c byte) bool {
	return c < 128 && it.set[c>>6]&(1<<(c&63)) != 0
}

// maxClassItems bounds the items of one classSeq (repeats of groups are
// written out), maxHead the positions written out in classSeq.head.
const (
	maxClassItems = 512
	maxHead       = 256
)

// fastPattern returns a classSeq for a pattern compiled by Go's regexp when
// it can, else the pattern as it is.
func fastPattern(re jsonschema.Regexp) jsonschema.Regexp {
	if _, ok := re.(*regexp.Regexp); !ok {
		return re
	}
	if cs := newClassSeq(re.String()); cs != nil {
		return cs
	}
	return re
}

// newClassSeq compiles src the way regexp.Compile parses it (Perl syntax)
// and returns nil unless it has the shape classSeq handles.
func newClassSeq(src string) *classSeq {
	re, err := syntax.Parse(src, syntax.Perl)
	if err != nil || re.Op != syntax.OpConcat || len(re.Sub) < 2 {
		return nil
	}
	first, last := re.Sub[0], re.Sub[len(re.Sub)-1]
	if first.Op != syntax.OpBeginText || last.Op != syntax.OpEndText {
		return nil
	}
	body := re.Sub[1 : len(re.Sub)-1]
	cs := &classSeq{src: src}
	if len(body) == 1 && body[0].Op == syntax.OpQuest && !single(body[0].Sub[0]) {
		cs.optional = true
		body = body[0].Sub
	}
	for _, sub := range body {
		if !cs.add(sub) {
			return nil
		}
	}
	// Greedy is exact when a class that varies in length shares no
	// character with what may follow it: the classes up to and including
	// the next one that must occur at least once (or the end of the text).
	for i, it := range cs.items {
		if it.min == it.max {
			continue
		}
		for _, next := range cs.items[i+1:] {
			if it.set[0]&next.set[0] != 0 || it.set[1]&next.set[1] != 0 {
				return nil
			}
			if next.min > 0 {
				break
			}
		}
	}
	for cs.rest < len(cs.items) && cs.items[cs.rest].min == cs.items[cs.rest].max && len(cs.head)+cs.items[cs.rest].min <= maxHead {
		for range cs.items[cs.rest].min {
			cs.head = append(cs.head, &cs.items[cs.rest])
		}
		cs.rest++
	}
	return cs
}

// add appends the items of re and reports whether re has the shape.
func (cs *classSeq) add(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpEmptyMatch:
		return true
	case syntax.OpConcat:
		for _, sub := range re.Sub {
			if !cs.add(sub) {
				return false
			}
		}
		return true
	case syntax.OpCapture:
		return cs.add(re.Sub[0])
	case syntax.OpLiteral, syntax.OpCharClass:
		if re.Op == syntax.OpLiteral && len(re.Rune) > 1 {
			for _, r := range re.Rune {
				lit := &syntax.Regexp{Op: syntax.OpLiteral, Flags: re.Flags, Rune: []rune{r}}
				if !cs.add(lit) {
					return false
				}
			}
			return true
		}
		return cs.repeat(re, 1, 1)
	case syntax.OpStar:
		return cs.repeat(re.Sub[0], 0, -1)
	case syntax.OpPlus:
		return cs.repeat(re.Sub[0], 1, -1)
	case syntax.OpQuest:
		return cs.repeat(re.Sub[0], 0, 1)
	case syntax.OpRepeat:
		if single(re.Sub[0]) {
			return cs.repeat(re.Sub[0], re.Min, re.Max)
		}
		if re.Min != re.Max {
			return false
		}
		for range re.Min {
			if !cs.add(re.Sub[0]) {
				return false
			}
		}
		return true
	}
	return false
}

// single reports whether re matches exactly one character from a set.
func single(re *syntax.Regexp) bool {
	return re.Op == syntax.OpCharClass || re.Op == syntax.OpLiteral && len(re.Rune) == 1
}

// repeat appends the class of re (a single character) repeated min..max.
func (cs *classSeq) repeat(re *syntax.Regexp, min, max int) bool {
	if !single(re) || len(cs.items) == maxClassItems {
		return false
	}
	it := classItem{min: min, max: max}
	if re.Op == syntax.OpLiteral {
		if re.Flags&syntax.FoldCase != 0 || re.Rune[0] >= 128 {
			return false
		}
		c := byte(re.Rune[0])
		it.set[c>>6] |= 1 << (c & 63)
	} else {
		for i := 0; i+1 < len(re.Rune); i += 2 {
			lo, hi := re.Rune[i], re.Rune[i+1]
			if lo < 0 || hi >= 128 || lo > hi {
				return false
			}
			for c := byte(lo); ; c++ {
				it.set[c>>6] |= 1 << (c & 63)
				if rune(c) == hi {
					break
				}
			}
		}
	}
	cs.items = append(cs.items, it)
	return true
}

// MatchString reports whether s matches the pattern, as regexp does.
func (cs *classSeq) MatchString(s string) bool {
	if cs.optional && s == "" {
		return true
	}
	if len(s) < len(cs.head) {
		return false
	}
	for i, it := range cs.head {
		if !it.has(s[i]) {
			return false
		}
	}
	pos := len(cs.head)
	for i := cs.rest; i < len(cs.items); i++ {
		it := &cs.items[i]
		n := 0
		for pos+n < len(s) && n != it.max && it.has(s[pos+n]) {
			n++
		}
		if n < it.min {
			return false
		}
		pos += n
	}
	return pos == len(s)
}

// String returns the pattern's source.
func (cs *classSeq) String() string { return cs.src }
