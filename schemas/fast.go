package schemas

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"reflect"
	"slices"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// fastSchema is a compiled jsonschema.Schema re-read for the fast path:
// it decides, on a parsed tree, whether a payload is valid, without the
// library's per-value allocations, number conversions through fmt and
// big.Rat, and map-based instance.
//
// It only ever proves validity. A payload it does not accept goes to the
// library (the slow path), which decides again and names every problem;
// so a fast-path mistake can cost time but never lets a bad payload in,
// as long as every keyword below means exactly what it means in
// jsonschema v6 (validator.go). Schemas using any keyword it does not
// implement get no fastSchema at all (see buildFast); a test lists the
// library's Schema fields so a new one cannot slip by unnoticed.
type fastSchema struct {
	src *jsonschema.Schema

	isBool  bool // boolean schema: boolVal is the whole verdict
	boolVal bool

	types  uint8     // typeBit set; 0: any type
	konst  fastConst // const, when hasCon
	hasCon bool
	enum   []fastConst // enum, when hasEn
	hasEn  bool
	format func(any) error
	// dateTime: format is the library's "date-time"; fastDateTime accepts
	// the usual spellings without it.
	dateTime bool

	ref              *fastSchema
	ifS, thenS, elsS *fastSchema

	// object
	minProps, maxProps int // -1: none
	props              propList
	reqMask            uint64   // bit i: props.names[i] is required
	reqOther           []string // required names not covered by reqMask
	patProps           []patProp
	noAddl             bool // additionalProperties: false

	// array
	minItems, maxItems int
	items              *fastSchema

	// string
	minLen, maxLen int
	pattern        jsonschema.Regexp

	// number
	minimum, maximum *bound
}

type patProp struct {
	re jsonschema.Regexp
	s  *fastSchema
}

const (
	bitNull uint8 = 1 << iota
	bitBoolean
	bitNumber
	bitInteger
	bitString
	bitArray
	bitObject
)

var typeBits = map[string]uint8{
	"null": bitNull, "boolean": bitBoolean, "number": bitNumber, "integer": bitInteger,
	"string": bitString, "array": bitArray, "object": bitObject,
}

// bound is a minimum or maximum; i is set when the bound is an integer
// that fits an int64.
type bound struct {
	rat   *big.Rat
	i     int64
	isInt bool
}

// buildFast returns the fast form of s, or an error naming the first
// keyword it does not implement.
func buildFast(s *jsonschema.Schema) (*fastSchema, error) {
	b := &fastBuilder{seen: map[*jsonschema.Schema]*fastSchema{}}
	f, err := b.build(s)
	if err != nil {
		return nil, err
	}
	for _, g := range b.seen {
		g.skipRefs()
	}
	return resolveRef(f), nil
}

// onlyRef reports whether f is a $ref and nothing else that validates
// ("description" and the like are not kept): then f.ref decides alone.
func (f *fastSchema) onlyRef() bool {
	if f == nil || f.ref == nil {
		return false
	}
	g := *f
	g.src, g.ref = nil, nil
	return reflect.DeepEqual(g, fastSchema{minProps: -1, maxProps: -1, minItems: -1, maxItems: -1, minLen: -1, maxLen: -1})
}

// resolveRef follows f through schemas that are only a $ref (a bounded
// number of hops: a loop of them is left for valid's depth limit).
func resolveRef(f *fastSchema) *fastSchema {
	for range 32 {
		if !f.onlyRef() {
			break
		}
		f = f.ref
	}
	return f
}

// skipRefs points f's subschemas past schemas that are only a $ref, so
// valid does not take a call per hop: in the message schemas most
// properties are a $ref to a definition of common.json.
func (f *fastSchema) skipRefs() {
	for _, p := range []**fastSchema{&f.ref, &f.ifS, &f.thenS, &f.elsS, &f.items} {
		*p = resolveRef(*p)
	}
	for i := range f.props.subs {
		f.props.subs[i] = resolveRef(f.props.subs[i])
	}
	for i := range f.patProps {
		f.patProps[i].s = resolveRef(f.patProps[i].s)
	}
}

type fastBuilder struct {
	seen map[*jsonschema.Schema]*fastSchema
}

func (b *fastBuilder) build(s *jsonschema.Schema) (*fastSchema, error) {
	if s == nil {
		return nil, nil
	}
	if f, ok := b.seen[s]; ok {
		return f, nil
	}
	f := &fastSchema{src: s, minProps: -1, maxProps: -1, minItems: -1, maxItems: -1, minLen: -1, maxLen: -1}
	b.seen[s] = f
	if s.Bool != nil {
		f.isBool, f.boolVal = true, *s.Bool
		return f, nil
	}
	unsupported := func(kw string) error { return fmt.Errorf("%s: %s", s.Location, kw) }
	switch {
	case s.DraftVersion < 2020:
		return nil, unsupported(fmt.Sprintf("draft %d", s.DraftVersion))
	case s.RecursiveRef != nil:
		return nil, unsupported("$recursiveRef")
	case s.DynamicRef != nil:
		return nil, unsupported("$dynamicRef")
	case s.PropertyNames != nil:
		return nil, unsupported("propertyNames")
	case len(s.Dependencies) > 0:
		return nil, unsupported("dependencies")
	case len(s.DependentRequired) > 0:
		return nil, unsupported("dependentRequired")
	case len(s.DependentSchemas) > 0:
		return nil, unsupported("dependentSchemas")
	case s.UnevaluatedProperties != nil:
		return nil, unsupported("unevaluatedProperties")
	case s.UnevaluatedItems != nil:
		return nil, unsupported("unevaluatedItems")
	case s.UniqueItems:
		return nil, unsupported("uniqueItems")
	case s.Contains != nil || s.MinContains != nil || s.MaxContains != nil:
		return nil, unsupported("contains")
	case s.Items != nil || s.AdditionalItems != nil:
		return nil, unsupported("items (before draft 2020)")
	case len(s.PrefixItems) > 0:
		return nil, unsupported("prefixItems")
	case s.ContentEncoding != nil || s.ContentMediaType != nil || s.ContentSchema != nil:
		return nil, unsupported("content*")
	case s.MultipleOf != nil:
		return nil, unsupported("multipleOf")
	// No message schema combines subschemas or uses exclusive bounds, so
	// the fast path does not carry code for them: the library decides.
	case s.Not != nil:
		return nil, unsupported("not")
	case len(s.AllOf) > 0:
		return nil, unsupported("allOf")
	case len(s.AnyOf) > 0:
		return nil, unsupported("anyOf")
	case len(s.OneOf) > 0:
		return nil, unsupported("oneOf")
	case s.ExclusiveMinimum != nil:
		return nil, unsupported("exclusiveMinimum")
	case s.ExclusiveMaximum != nil:
		return nil, unsupported("exclusiveMaximum")
	case len(s.Extensions) > 0:
		return nil, unsupported("extension")
	}

	if s.Types != nil {
		for _, name := range s.Types.ToStrings() {
			bit, ok := typeBits[name]
			if !ok {
				return nil, unsupported("type " + name)
			}
			f.types |= bit
		}
	}
	if s.Const != nil {
		c, err := fastValue(*s.Const)
		if err != nil {
			return nil, unsupported("const " + err.Error())
		}
		f.konst, f.hasCon = c, true
	}
	if s.Enum != nil {
		f.hasEn = true
		for _, v := range s.Enum.Values {
			c, err := fastValue(v)
			if err != nil {
				return nil, unsupported("enum " + err.Error())
			}
			f.enum = append(f.enum, c)
		}
	}
	if s.Format != nil {
		f.format = s.Format.Validate
		f.dateTime = s.Format.Name == "date-time"
	}

	var err error
	sub := func(dst **fastSchema, s *jsonschema.Schema) {
		if err == nil {
			*dst, err = b.build(s)
		}
	}
	sub(&f.ref, s.Ref)
	sub(&f.ifS, s.If)
	sub(&f.thenS, s.Then)
	sub(&f.elsS, s.Else)
	sub(&f.items, s.Items2020)

	f.minProps, f.maxProps = intOr(s.MinProperties), intOr(s.MaxProperties)
	// Properties in the order payloads usually have them (the required
	// ones as listed, then the rest by name), so lookups mostly hit first.
	for _, name := range s.Required {
		if ps, ok := s.Properties[name]; ok && !slices.Contains(f.props.names, name) {
			var pf *fastSchema
			sub(&pf, ps)
			f.props.add(name, pf)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.Properties)) {
		if !slices.Contains(f.props.names, name) {
			var pf *fastSchema
			sub(&pf, s.Properties[name])
			f.props.add(name, pf)
		}
	}
	for _, name := range s.Required {
		if i := slices.Index(f.props.names, name); i >= 0 && i < 64 {
			f.reqMask |= 1 << i
		} else {
			f.reqOther = append(f.reqOther, name)
		}
	}
	for re, ps := range s.PatternProperties {
		var pf *fastSchema
		sub(&pf, ps)
		f.patProps = append(f.patProps, patProp{re: fastPattern(re), s: pf})
	}
	// additionalProperties: the message schemas only say false.
	switch a := s.AdditionalProperties.(type) {
	case nil:
	case bool:
		if a {
			return nil, unsupported("additionalProperties true")
		}
		f.noAddl = true
	default:
		return nil, unsupported(fmt.Sprintf("additionalProperties of type %T", a))
	}
	if err != nil {
		return nil, err
	}

	f.minItems, f.maxItems = intOr(s.MinItems), intOr(s.MaxItems)
	f.minLen, f.maxLen = intOr(s.MinLength), intOr(s.MaxLength)
	f.pattern = fastPattern(s.Pattern)
	f.minimum, f.maximum = newBound(s.Minimum), newBound(s.Maximum)
	return f, nil
}

func intOr(p *int) int {
	if p == nil {
		return -1
	}
	return *p
}

func newBound(r *big.Rat) *bound {
	if r == nil {
		return nil
	}
	b := &bound{rat: r}
	if r.IsInt() && r.Num().IsInt64() {
		b.i, b.isInt = r.Num().Int64(), true
	}
	return b
}

// fastConst is a const or enum value: a string, a number or a boolean
// (the message schemas name nothing else; null gets no fast form).
type fastConst struct {
	kind nodeKind // kindString, kindNumber, kindTrue or kindFalse
	str  string   // the string, or the number's literal
	num  *big.Rat // the number
}

// fastValue converts a const or enum value of a compiled schema.
func fastValue(v any) (fastConst, error) {
	switch v := v.(type) {
	case string:
		return fastConst{kind: kindString, str: v}, nil
	case json.Number:
		r, ok := new(big.Rat).SetString(v.String())
		if !ok {
			return fastConst{}, fmt.Errorf("number %s", v)
		}
		return fastConst{kind: kindNumber, str: v.String(), num: r}, nil
	case bool:
		if v {
			return fastConst{kind: kindTrue}, nil
		}
		return fastConst{kind: kindFalse}, nil
	}
	return fastConst{}, fmt.Errorf("value of type %T", v)
}

// equals mirrors the library's equals for a const or enum value.
func (c *fastConst) equals(t *tree, nd *node) bool {
	switch {
	case nd.kind != c.kind:
		return false
	case c.kind == kindString:
		return t.get(nd.val) == c.str
	case c.kind != kindNumber:
		return true // the same boolean
	}
	if t.get(nd.val) == c.str {
		return true
	}
	r, ok := ratOf(t.get(nd.val))
	if !ok {
		t.unknown = true
		return false
	}
	return r.Cmp(c.num) == 0
}

// maxSchemaDepth bounds schema recursion on one payload (a $ref loop that
// consumes no input); beyond it the payload takes the slow path, which
// reports the loop.
const maxSchemaDepth = 256

// accepts reports whether the fast path proves node n of t valid
// against f; false means the library must decide.
func (f *fastSchema) accepts(t *tree, n int32) bool {
	t.unknown = false
	return f.valid(t, n, 0) && !t.unknown
}

// valid reports whether node n of t is valid against f. Every answer is
// exact both ways (so if may use it), unless it sets t.unknown:
// then the verdict means nothing and accepts refuses.
func (f *fastSchema) valid(t *tree, n int32, depth int) bool {
	if f.isBool {
		return f.boolVal
	}
	if depth > maxSchemaDepth {
		t.unknown = true
		return false
	}
	nd := &t.nodes[n]

	if f.types != 0 && !f.typeOK(t, nd) {
		return false
	}
	if f.hasCon && !f.konst.equals(t, nd) {
		return false
	}
	if f.hasEn && !slices.ContainsFunc(f.enum, func(c fastConst) bool { return c.equals(t, nd) }) {
		return false
	}
	if f.format != nil {
		// Formats only judge strings; leave anything else to the library.
		if nd.kind != kindString {
			t.unknown = true
			return false
		}
		if !(f.dateTime && fastDateTime(t.get(nd.val))) && f.format(t.get(nd.val)) != nil {
			return false
		}
	}
	if f.ref != nil && !f.ref.valid(t, n, depth+1) {
		return false
	}

	switch nd.kind {
	case kindObject:
		if !f.objectValid(t, n, depth) {
			return false
		}
	case kindArray:
		if f.minItems >= 0 && int(nd.n) < f.minItems || f.maxItems >= 0 && int(nd.n) > f.maxItems {
			return false
		}
		if f.items != nil {
			for c := nd.first; c >= 0; c = t.nodes[c].next {
				if !f.items.valid(t, c, depth+1) {
					return false
				}
			}
		}
	case kindString:
		if f.minLen >= 0 || f.maxLen >= 0 {
			l := utf8.RuneCountInString(t.get(nd.val))
			if f.minLen >= 0 && l < f.minLen || f.maxLen >= 0 && l > f.maxLen {
				return false
			}
		}
		if f.pattern != nil && !f.pattern.MatchString(t.get(nd.val)) {
			return false
		}
	case kindNumber:
		if !f.numberValid(t, nd) {
			return false
		}
	}

	if f.ifS != nil {
		if f.ifS.valid(t, n, depth+1) {
			if f.thenS != nil && !f.thenS.valid(t, n, depth+1) {
				return false
			}
		} else if f.elsS != nil && !f.elsS.valid(t, n, depth+1) {
			return false
		}
	}
	return true
}

func (f *fastSchema) typeOK(t *tree, nd *node) bool {
	var bit uint8
	switch nd.kind {
	case kindNull:
		bit = bitNull
	case kindFalse, kindTrue:
		bit = bitBoolean
	case kindNumber:
		if f.types&bitNumber != 0 {
			return true
		}
		if f.types&bitInteger == 0 {
			return false
		}
		isInt, known := integral(t, nd)
		if !known {
			t.unknown = true
		}
		return known && isInt
	case kindString:
		bit = bitString
	case kindArray:
		bit = bitArray
	case kindObject:
		bit = bitObject
	}
	return f.types&bit != 0
}

func (f *fastSchema) objectValid(t *tree, n int32, depth int) bool {
	nd := &t.nodes[n]
	if f.minProps >= 0 && int(nd.n) < f.minProps || f.maxProps >= 0 && int(nd.n) > f.maxProps {
		return false
	}
	for _, name := range f.reqOther {
		if t.member(n, name) < 0 {
			return false
		}
	}
	var seen uint64
	cursor := 0
	for c := nd.first; c >= 0; c = t.nodes[c].next {
		key := t.key(c)
		evaluated := false
		if i := f.props.find(key, &cursor); i >= 0 {
			evaluated = true
			if i < 64 {
				seen |= 1 << i
			}
			if !f.props.subs[i].valid(t, c, depth+1) {
				return false
			}
		}
		for _, pp := range f.patProps {
			if pp.re.MatchString(key) {
				evaluated = true
				if !pp.s.valid(t, c, depth+1) {
					return false
				}
			}
		}
		if !evaluated && f.noAddl {
			return false
		}
	}
	return seen&f.reqMask == f.reqMask
}

// propList maps property names to subschemas, searched from a cursor.
type propList struct {
	names []string
	subs  []*fastSchema
}

func (l *propList) add(name string, s *fastSchema) {
	l.names = append(l.names, name)
	l.subs = append(l.subs, s)
}

// find returns the index of name or -1. It starts at *cursor, wraps
// around, and leaves *cursor after a hit: members that come in list
// order are found in one comparison each.
func (l *propList) find(name string, cursor *int) int {
	n := len(l.names)
	for k, i := 0, *cursor; k < n; k++ {
		if i >= n {
			i = 0
		}
		if l.names[i] == name {
			*cursor = i + 1
			return i
		}
		i++
	}
	return -1
}

func (f *fastSchema) numberValid(t *tree, nd *node) bool {
	// cmp compares nd with b and says whether want holds for the result.
	cmp := func(b *bound, want func(int) bool) bool {
		c, ok := compare(t, nd, b)
		if !ok {
			t.unknown = true
			return false
		}
		return want(c)
	}
	return (f.minimum == nil || cmp(f.minimum, func(c int) bool { return c >= 0 })) &&
		(f.maximum == nil || cmp(f.maximum, func(c int) bool { return c <= 0 }))
}

// plainInt reports whether lit (a JSON number) is written without fraction
// or exponent.
func plainInt(lit string) bool {
	for i := 0; i < len(lit); i++ {
		if c := lit[i]; c == '.' || c == 'e' || c == 'E' {
			return false
		}
	}
	return true
}

// ratOf converts a JSON number literal to a big.Rat as the library does.
// It refuses (ok false) literals whose exponent has more than 4 digits:
// big.Rat takes very long over them, and the slow path decides those.
func ratOf(lit string) (*big.Rat, bool) {
	for i := 0; i < len(lit); i++ {
		if c := lit[i]; c == 'e' || c == 'E' {
			exp := lit[i+1:]
			if len(exp) > 0 && (exp[0] == '+' || exp[0] == '-') {
				exp = exp[1:]
			}
			if len(exp) > 4 {
				return nil, false
			}
			break
		}
	}
	return new(big.Rat).SetString(lit)
}

// integral reports whether the number nd is an integer (2.0 and 1e3 are,
// as in the library); known is false when it could not tell.
func integral(t *tree, nd *node) (isInt, known bool) {
	if nd.isInt || plainInt(t.get(nd.val)) {
		return true, true
	}
	r, ok := ratOf(t.get(nd.val))
	if !ok {
		return false, false
	}
	return r.IsInt(), true
}

// compare compares the number nd with b: -1, 0 or +1; ok is false when
// it could not tell.
func compare(t *tree, nd *node, b *bound) (int, bool) {
	lit := t.get(nd.val)
	if b.isInt {
		switch {
		case nd.isInt:
			return cmp.Compare(nd.i, b.i), true
		case b.i == 0:
			return sign(lit), true
		}
	}
	r, ok := ratOf(lit)
	if !ok {
		return 0, false
	}
	return r.Cmp(b.rat), true
}

// sign returns the sign of the JSON number lit: 0 when every digit of its
// mantissa is zero (whatever the exponent), else -1 or +1.
func sign(lit string) int {
	neg := len(lit) > 0 && lit[0] == '-'
	for i := 0; i < len(lit); i++ {
		c := lit[i]
		if c == 'e' || c == 'E' {
			break
		}
		if '1' <= c && c <= '9' {
			if neg {
				return -1
			}
			return 1
		}
	}
	return 0
}

// fastDateTime reports whether s is an RFC 3339 date-time in the form
// producers write, YYYY-MM-DDTHH:MM:SS[.fraction] then Z or ±hh:mm, with
// every field in range. It only ever proves validity: false (a leap
// second, a lower-case t, anything unusual) leaves the verdict to the
// library's "date-time", which it agrees with on everything it accepts.
func fastDateTime(s string) bool {
	if len(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return false
	}
	num := func(i, n int) (int, bool) {
		v := 0
		for _, c := range []byte(s[i : i+n]) {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	year, ok1 := num(0, 4)
	month, ok2 := num(5, 2)
	day, ok3 := num(8, 2)
	hour, ok4 := num(11, 2)
	minute, ok5 := num(14, 2)
	sec, ok6 := num(17, 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) ||
		month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return false
	}
	rest := s[19:]
	if rest[0] == '.' {
		i := 1
		for i < len(rest) && '0' <= rest[i] && rest[i] <= '9' {
			i++
		}
		if i == 1 {
			return false
		}
		rest = rest[i:]
	}
	if rest == "Z" {
		return true
	}
	if len(rest) != 6 || rest[0] != '+' && rest[0] != '-' || rest[3] != ':' {
		return false
	}
	zh, ok1 := num(len(s)-5, 2)
	zm, ok2 := num(len(s)-2, 2)
	return ok1 && ok2 && zh <= 23 && zm <= 59
}

// daysIn is the number of days of month (1-12) in year, Gregorian.
func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
