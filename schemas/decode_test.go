package schemas

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// FuzzDecodeRequest feeds arbitrary payloads to DecodeRequest, what an
// agent does with every request it is sent. It must not panic; it refuses
// with a *ValidationError, ErrInvalidJSON or ErrTooLarge (or, for a payload
// that validates but that Go cannot hold, such as a version written 1.0,
// with the decode error Validate cannot give); it accepts no payload with a
// repeated member name, as an encoding/json reading of the tokens tells;
// and what it accepts marshals to a payload that validates and decodes to
// the same request. The seeds in testdata/fuzz/FuzzDecodeRequest run with
// every go test.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"vm":"pgtest1"}`,
		`{"vm":"../../etc","vm":"pgtest1"}`,
		`{"vm":"pgtest1","v\u006d":"../../etc"}`,
		`{"vm":"x","labels":{"a":"1","a":"2"}}`,
		`{"vm":"x","schema":{"name":"backup.requested","version":1,"version":1}}`,
		`{"vm":"x","schema":{"name":"backup.requested","version":1.0}}`,
		`{"vm":"x","labels":{}}`,
		`{"vm":"x","labels":[[[{"a":1,"a":2}]]]}`,
		`{"vm":"x","requested_by":""}`,
		`{"vm":`,
		`{"vm":"a"} {"vm":"b"}`,
		"{\"vm\":\"pg\xfftest1\"}",
	} {
		f.Add([]byte(s))
	}
	b, _ := raw(NameRequested)
	var doc struct{ Examples []json.RawMessage }
	_ = json.Unmarshal(b, &doc)
	for _, ex := range doc.Examples {
		f.Add([]byte(ex))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRequest(data)
		if err != nil {
			checkRefusal(t, data, err)
			return
		}
		if dup, ok := tokenDuplicate(data); dup || !ok {
			t.Fatalf("DecodeRequest accepts %q: repeated member name %v, encoding/json reads it %v", data, dup, ok)
		}
		if err := Validate(NameRequested, data); err != nil {
			t.Fatalf("DecodeRequest accepts %q, Validate refuses it: %v", data, err)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal %+v: %v", r, err)
		}
		if err := Validate(NameRequested, out); err != nil {
			t.Fatalf("DecodeRequest(%q) = %+v, which marshals to %s that Validate refuses: %v", data, r, out, err)
		}
		again, err := DecodeRequest(out)
		if err != nil {
			t.Fatalf("DecodeRequest(%q) = %+v, which marshals to %s that DecodeRequest refuses: %v", data, r, out, err)
		}
		if !sameRequest(r, again) {
			t.Fatalf("DecodeRequest(%q) = %+v, through %s: %+v", data, r, out, again)
		}
	})
}

// checkRefusal checks an error of DecodeRequest(data).
func checkRefusal(t *testing.T, data []byte, err error) {
	t.Helper()
	var ve *ValidationError
	switch {
	case errors.As(err, &ve):
		if ve.Schema != NameRequested || len(ve.Problems) == 0 {
			t.Fatalf("DecodeRequest(%q): %#v", data, ve)
		}
		if !reflect.DeepEqual(ve.Problems, sortProblems(slices.Clone(ve.Problems))) {
			t.Fatalf("DecodeRequest(%q): problems not sorted, or repeated: %+v", data, ve.Problems)
		}
		named := slices.ContainsFunc(ve.Problems, func(p Problem) bool { return p.Rule == RuleDuplicateKey })
		if dup, _ := tokenDuplicate(data); dup != named {
			t.Fatalf("DecodeRequest(%q) = %v; encoding/json's tokens show a repeated member name: %v", data, err, dup)
		}
		if errors.Is(err, ErrInvalidJSON) || errors.Is(err, ErrTooLarge) {
			t.Fatalf("DecodeRequest(%q): schema violation matches a sentinel: %v", data, err)
		}
	case errors.Is(err, ErrTooLarge):
		if len(data) <= MaxMessageBytes {
			t.Fatalf("DecodeRequest of %d bytes: %v", len(data), err)
		}
	case errors.Is(err, ErrInvalidJSON):
		if json.Valid(data) {
			t.Fatalf("DecodeRequest(%q) = %v, encoding/json takes it", data, err)
		}
	default:
		// Only a payload that validates but that Go cannot hold (see
		// TestDecodeIntegerWrittenAsFloat).
		if verr := Validate(NameRequested, data); verr != nil || !strings.HasPrefix(err.Error(), "decode "+NameRequested+": ") {
			t.Fatalf("DecodeRequest(%q) = %v (Validate: %v), want a *ValidationError, ErrInvalidJSON or ErrTooLarge", data, err, verr)
		}
	}
}

// sameRequest reports whether a and b are the same request; labels {} and
// no labels are the same (omitempty drops an empty map).
func sameRequest(a, b Request) bool {
	if len(a.Labels) == 0 && len(b.Labels) == 0 {
		a.Labels, b.Labels = nil, nil
	}
	return reflect.DeepEqual(a, b)
}
