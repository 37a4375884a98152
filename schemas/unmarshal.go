package schemas

import (
	"encoding"
	"encoding/json"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// decodeFn stores node n of t into v (settable) and reports whether it
// could do so exactly as encoding/json.Unmarshal would. false leaves v
// partly written; the caller zeroes it and runs encoding/json.
type decodeFn func(t *tree, n int32, v reflect.Value) bool

// decoders caches a decodeFn per Go type; a nil decodeFn means the type
// uses something this file does not mirror (the caller then always uses
// encoding/json for it).
var decoders sync.Map // reflect.Type -> decodeFn

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	jsonNumberType      = reflect.TypeFor[json.Number]()
)

// decodeTree stores the tree's root into *out (out is a non-nil pointer
// to a zero value) as encoding/json.Unmarshal would, and reports whether
// it could.
func decodeTree(t *tree, out any) bool {
	v := reflect.ValueOf(out).Elem()
	fn := decoderFor(v.Type())
	return fn != nil && fn(t, 0, v)
}

func decoderFor(typ reflect.Type) decodeFn {
	if fn, ok := decoders.Load(typ); ok {
		return fn.(decodeFn)
	}
	fn := buildDecoder(typ, map[reflect.Type]bool{})
	decoders.Store(typ, fn)
	return fn
}

// buildDecoder returns the decodeFn of typ, or nil. building holds the
// types being built, so a recursive type gives nil rather than a loop.
func buildDecoder(typ reflect.Type, building map[reflect.Type]bool) decodeFn {
	if building[typ] {
		return nil
	}
	building[typ] = true
	defer delete(building, typ)

	ptr := reflect.PointerTo(typ)
	if ptr.Implements(jsonUnmarshalerType) {
		// encoding/json hands the value's bytes, as written, to UnmarshalJSON.
		return func(t *tree, n int32, v reflect.Value) bool {
			nd := &t.nodes[n]
			if nd.kind == kindNull {
				return false
			}
			return v.Addr().Interface().(json.Unmarshaler).UnmarshalJSON(t.data[nd.start:nd.end]) == nil
		}
	}
	if ptr.Implements(textUnmarshalerType) || typ == jsonNumberType {
		return nil
	}
	switch typ.Kind() {
	case reflect.String:
		return func(t *tree, n int32, v reflect.Value) bool {
			nd := &t.nodes[n]
			if nd.kind != kindString {
				return false
			}
			v.SetString(t.get(nd.val))
			return true
		}
	case reflect.Bool:
		return func(t *tree, n int32, v reflect.Value) bool {
			switch t.nodes[n].kind {
			case kindTrue:
				v.SetBool(true)
			case kindFalse:
				v.SetBool(false)
			default:
				return false
			}
			return true
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return func(t *tree, n int32, v reflect.Value) bool {
			nd := &t.nodes[n]
			if nd.kind != kindNumber || !nd.isInt || v.OverflowInt(nd.i) {
				// Not an int64 as strconv.ParseInt reads it: encoding/json
				// fails; let it say so.
				return false
			}
			v.SetInt(nd.i)
			return true
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return func(t *tree, n int32, v reflect.Value) bool {
			nd := &t.nodes[n]
			if nd.kind != kindNumber {
				return false
			}
			u, err := strconv.ParseUint(t.get(nd.val), 10, 64)
			if err != nil || v.OverflowUint(u) {
				return false
			}
			v.SetUint(u)
			return true
		}
	case reflect.Float32, reflect.Float64:
		bits := typ.Bits()
		return func(t *tree, n int32, v reflect.Value) bool {
			nd := &t.nodes[n]
			if nd.kind != kindNumber {
				return false
			}
			f, err := strconv.ParseFloat(t.get(nd.val), bits)
			if err != nil || v.OverflowFloat(f) {
				return false
			}
			v.SetFloat(f)
			return true
		}
	case reflect.Pointer:
		elem := buildDecoder(typ.Elem(), building)
		if elem == nil {
			return nil
		}
		return func(t *tree, n int32, v reflect.Value) bool {
			if t.nodes[n].kind == kindNull {
				return false
			}
			p := reflect.New(typ.Elem())
			if !elem(t, n, p.Elem()) {
				return false
			}
			v.Set(p)
			return true
		}
	case reflect.Slice:
		if typ.Elem().Kind() == reflect.Uint8 {
			return nil // base64 in encoding/json
		}
		elem := buildDecoder(typ.Elem(), building)
		if elem == nil {
			return nil
		}
		return func(t *tree, n int32, v reflect.Value) bool {
			nd := &t.nodes[n]
			if nd.kind != kindArray {
				return false
			}
			// Like encoding/json, an empty array is an empty, non-nil slice.
			s := reflect.MakeSlice(typ, int(nd.n), int(nd.n))
			i := 0
			for c := nd.first; c >= 0; c = t.nodes[c].next {
				if !elem(t, c, s.Index(i)) {
					return false
				}
				i++
			}
			v.Set(s)
			return true
		}
	case reflect.Map:
		kt := typ.Key()
		if kt.Kind() != reflect.String || reflect.PointerTo(kt).Implements(textUnmarshalerType) {
			return nil
		}
		elem := buildDecoder(typ.Elem(), building)
		if elem == nil {
			return nil
		}
		return func(t *tree, n int32, v reflect.Value) bool {
			nd := &t.nodes[n]
			if nd.kind != kindObject {
				return false
			}
			m := reflect.MakeMapWithSize(typ, int(nd.n))
			for c := nd.first; c >= 0; c = t.nodes[c].next {
				ev := reflect.New(typ.Elem()).Elem()
				if !elem(t, c, ev) {
					return false
				}
				m.SetMapIndex(reflect.ValueOf(t.key(c)).Convert(kt), ev)
			}
			v.Set(m)
			return true
		}
	case reflect.Struct:
		var fields []structField
		if !collectFields(typ, nil, &fields, building) {
			return nil
		}
		return func(t *tree, n int32, v reflect.Value) bool {
			nd := &t.nodes[n]
			if nd.kind != kindObject {
				return false
			}
			cursor := 0
			for c := nd.first; c >= 0; c = t.nodes[c].next {
				// A name that is not exactly a field's (encoding/json would
				// also try it case-insensitively, or skip it) goes the slow way.
				f := findField(fields, t.key(c), &cursor)
				if f == nil || !f.decode(t, c, v.FieldByIndex(f.index)) {
					return false
				}
			}
			return true
		}
	}
	return nil
}

type structField struct {
	name   string
	index  []int
	decode decodeFn
}

// findField returns the field called name, or nil. Like propList.find it
// searches from *cursor: payloads written by encoding/json list fields in
// declaration order.
func findField(fields []structField, name string, cursor *int) *structField {
	n := len(fields)
	for k, i := 0, *cursor; k < n; k++ {
		if i >= n {
			i = 0
		}
		if fields[i].name == name {
			*cursor = i + 1
			return &fields[i]
		}
		i++
	}
	return nil
}

// collectFields adds the JSON members of struct typ to out, flattening
// untagged embedded structs like encoding/json. It reports false for what
// it does not mirror: embedded pointers, the ",string" option, unusual
// names, and any name two fields claim (encoding/json's dominance rules).
func collectFields(typ reflect.Type, index []int, out *[]structField, building map[reflect.Type]bool) bool {
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		idx := append(append([]int(nil), index...), i)
		if f.Anonymous {
			if f.Type.Kind() == reflect.Pointer || !f.IsExported() && name != "" {
				return false
			}
			if name == "" && f.Type.Kind() == reflect.Struct {
				if !collectFields(f.Type, idx, out, building) {
					return false
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		for _, o := range strings.Split(opts, ",") {
			if o == "string" {
				return false
			}
		}
		if name == "" {
			name = f.Name
		}
		if !plainName(name) {
			return false
		}
		if slices.ContainsFunc(*out, func(f structField) bool { return f.name == name }) {
			return false
		}
		dec := buildDecoder(f.Type, building)
		if dec == nil {
			return false
		}
		*out = append(*out, structField{name: name, index: idx, decode: dec})
	}
	return true
}

// plainName reports whether name is made of letters, digits, '_', '-' and
// '.', which encoding/json takes as written.
func plainName(name string) bool {
	for _, c := range name {
		if !(c == '_' || c == '-' || c == '.' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return name != ""
}
