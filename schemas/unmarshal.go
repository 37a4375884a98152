package schemas

import (
	"encoding"
	"encoding/json"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// decodeFn stores node n of t into the value at p, whose type the
// function was built for, and reports whether it could do so exactly as
// encoding/json.Unmarshal would. false leaves the value partly written;
// the caller zeroes it and runs encoding/json.
//
// The functions write through unsafe pointers at offsets that reflect
// gave when they were built (a field's Offset, a slice element's Size),
// instead of going through reflect.Value for every member: the catalog
// decodes every event, and reflect's checks were a fifth of Decode.
type decodeFn func(t *tree, n int32, p unsafe.Pointer) bool

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
	v := reflect.ValueOf(out)
	fn := decoderFor(v.Type().Elem())
	return fn != nil && fn(t, 0, v.UnsafePointer())
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
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			nd := &t.nodes[n]
			if nd.kind == kindNull {
				return false
			}
			return reflect.NewAt(typ, p).Interface().(json.Unmarshaler).UnmarshalJSON(t.data[nd.start:nd.end]) == nil
		}
	}
	if ptr.Implements(textUnmarshalerType) || typ == jsonNumberType {
		return nil
	}
	switch typ.Kind() {
	case reflect.String:
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			nd := &t.nodes[n]
			if nd.kind != kindString {
				return false
			}
			*(*string)(p) = t.get(nd.val)
			return true
		}
	case reflect.Bool:
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			switch t.nodes[n].kind {
			case kindTrue:
				*(*bool)(p) = true
			case kindFalse:
				*(*bool)(p) = false
			default:
				return false
			}
			return true
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		set := setInt(typ)
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			nd := &t.nodes[n]
			// Not an int64 as strconv.ParseInt reads it, or out of the
			// type's range: encoding/json fails; let it say so.
			return nd.kind == kindNumber && nd.isInt && set(p, nd.i)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		set := setUint(typ)
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			nd := &t.nodes[n]
			if nd.kind != kindNumber {
				return false
			}
			u, err := strconv.ParseUint(t.get(nd.val), 10, 64)
			return err == nil && set(p, u)
		}
	case reflect.Float32, reflect.Float64:
		bits := typ.Bits()
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			nd := &t.nodes[n]
			if nd.kind != kindNumber {
				return false
			}
			f, err := strconv.ParseFloat(t.get(nd.val), bits)
			if err != nil {
				return false
			}
			if bits == 32 {
				if math.Abs(f) > math.MaxFloat32 {
					return false
				}
				*(*float32)(p) = float32(f)
			} else {
				*(*float64)(p) = f
			}
			return true
		}
	case reflect.Pointer:
		elemType := typ.Elem()
		elem := buildDecoder(elemType, building)
		if elem == nil {
			return nil
		}
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			if t.nodes[n].kind == kindNull {
				return false
			}
			q := reflect.New(elemType).UnsafePointer()
			if !elem(t, n, q) {
				return false
			}
			*(*unsafe.Pointer)(p) = q
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
		size := typ.Elem().Size()
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			nd := &t.nodes[n]
			if nd.kind != kindArray {
				return false
			}
			// Like encoding/json, an empty array is an empty, non-nil slice.
			s := reflect.MakeSlice(typ, int(nd.n), int(nd.n))
			base := s.UnsafePointer()
			i := uintptr(0)
			for c := nd.first; c >= 0; c = t.nodes[c].next {
				if !elem(t, c, unsafe.Add(base, i*size)) {
					return false
				}
				i++
			}
			reflect.NewAt(typ, p).Elem().Set(s)
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
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			nd := &t.nodes[n]
			if nd.kind != kindObject {
				return false
			}
			m := reflect.MakeMapWithSize(typ, int(nd.n))
			for c := nd.first; c >= 0; c = t.nodes[c].next {
				ev := reflect.New(typ.Elem())
				if !elem(t, c, ev.UnsafePointer()) {
					return false
				}
				m.SetMapIndex(reflect.ValueOf(t.key(c)).Convert(kt), ev.Elem())
			}
			reflect.NewAt(typ, p).Elem().Set(m)
			return true
		}
	case reflect.Struct:
		var fields []structField
		if !collectFields(typ, 0, &fields, building) {
			return nil
		}
		return func(t *tree, n int32, p unsafe.Pointer) bool {
			nd := &t.nodes[n]
			if nd.kind != kindObject {
				return false
			}
			cursor := 0
			for c := nd.first; c >= 0; c = t.nodes[c].next {
				// A name that is not exactly a field's (encoding/json would
				// also try it case-insensitively, or skip it) goes the slow way.
				f := findField(fields, t.key(c), &cursor)
				if f == nil || !f.decode(t, c, unsafe.Add(p, f.offset)) {
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
	offset uintptr // from the start of the outermost struct (embedded structs add up)
	decode decodeFn
}

// setInt returns a function that stores v at p as an integer of kind typ,
// or reports false when v is out of its range.
func setInt(typ reflect.Type) func(p unsafe.Pointer, v int64) bool {
	bits := typ.Bits()
	fits := func(v int64) bool { return bits == 64 || v >= -1<<(bits-1) && v < 1<<(bits-1) }
	switch bits {
	case 8:
		return func(p unsafe.Pointer, v int64) bool { *(*int8)(p) = int8(v); return fits(v) }
	case 16:
		return func(p unsafe.Pointer, v int64) bool { *(*int16)(p) = int16(v); return fits(v) }
	case 32:
		return func(p unsafe.Pointer, v int64) bool { *(*int32)(p) = int32(v); return fits(v) }
	}
	return func(p unsafe.Pointer, v int64) bool { *(*int64)(p) = v; return true }
}

// setUint is setInt for unsigned kinds.
func setUint(typ reflect.Type) func(p unsafe.Pointer, v uint64) bool {
	bits := typ.Bits()
	fits := func(v uint64) bool { return bits == 64 || v < 1<<bits }
	switch bits {
	case 8:
		return func(p unsafe.Pointer, v uint64) bool { *(*uint8)(p) = uint8(v); return fits(v) }
	case 16:
		return func(p unsafe.Pointer, v uint64) bool { *(*uint16)(p) = uint16(v); return fits(v) }
	case 32:
		return func(p unsafe.Pointer, v uint64) bool { *(*uint32)(p) = uint32(v); return fits(v) }
	}
	return func(p unsafe.Pointer, v uint64) bool { *(*uint64)(p) = v; return true }
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
func collectFields(typ reflect.Type, base uintptr, out *[]structField, building map[reflect.Type]bool) bool {
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		off := base + f.Offset
		if f.Anonymous {
			if f.Type.Kind() == reflect.Pointer || !f.IsExported() && name != "" {
				return false
			}
			if name == "" && f.Type.Kind() == reflect.Struct {
				if !collectFields(f.Type, off, out, building) {
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
		*out = append(*out, structField{name: name, offset: off, decode: dec})
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
