package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The fast path runs for every message: each schema has a fast form, each
// Go type a tree decoder, and every fixture takes the fast path.
func TestFastPathCoversEveryMessage(t *testing.T) {
	all, err := compiled()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Names() {
		if all.fast[name] == nil {
			t.Errorf("%s has no fast form: %v", name, all.noFast[name])
		}
		if decoderFor(reflect.TypeOf(newValue(name)).Elem()) == nil {
			t.Errorf("%s: Go type has no tree decoder", name)
		}
	}
	payloads := map[string][]byte{NameRequested: mutate(t, fullRequest(), nil)}
	for name, ev := range fullEvents() {
		payloads[name] = mutate(t, ev, nil)
	}
	for _, ev := range benchEvents(t) {
		payloads[ev.name+" (bench)"] = ev.data
	}
	for label, data := range payloads {
		name, _, _ := strings.Cut(label, " ")
		out := newValue(name)
		done, err := checkFast(all.fast[name], name, "", data, out)
		if !done || err != nil {
			t.Errorf("%s: fast path done=%v err=%v", label, done, err)
		}
	}
}

// Every field of the library's Schema is known to buildFast: implemented,
// refused, or an annotation. A library upgrade that adds a keyword fails
// here until buildFast handles it.
func TestFastKnowsSchemaFields(t *testing.T) {
	known := []string{
		// structure and annotations
		"DraftVersion", "Location", "ID", "Anchor", "RecursiveAnchor", "DynamicAnchor",
		"Title", "Description", "Default", "Comment", "ReadOnly", "WriteOnly", "Examples", "Deprecated",
		// implemented
		// (Enum and Const of strings, numbers and booleans; AdditionalProperties false)
		"Bool", "Ref", "Types", "Enum", "Const", "If", "Then", "Else", "Format",
		"MaxProperties", "MinProperties", "Required", "Properties", "PatternProperties", "AdditionalProperties",
		"MinItems", "MaxItems", "Items2020", "MinLength", "MaxLength", "Pattern",
		"Maximum", "Minimum",
		// refused (no fast form; TestRefusedKeywordsTakeTheLibrary)
		"Not", "AllOf", "AnyOf", "OneOf", "ExclusiveMaximum", "ExclusiveMinimum",
		"RecursiveRef", "DynamicRef", "PropertyNames", "Dependencies", "DependentRequired", "DependentSchemas",
		"UnevaluatedProperties", "UniqueItems", "Contains", "MinContains", "MaxContains", "Items", "AdditionalItems",
		"PrefixItems", "UnevaluatedItems", "ContentEncoding", "ContentMediaType", "ContentSchema", "MultipleOf", "Extensions",
	}
	for _, f := range reflect.VisibleFields(reflect.TypeFor[jsonschema.Schema]()) {
		if f.IsExported() && !slices.Contains(known, f.Name) {
			t.Errorf("jsonschema.Schema.%s is new: teach buildFast about it", f.Name)
		}
	}
}

// A schema using a keyword the fast path refuses (no message schema uses
// them) has no fast form, and check gives the library's verdict on it.
func TestRefusedKeywordsTakeTheLibrary(t *testing.T) {
	tests := []struct {
		keyword, schema string
		valid, invalid  []string
	}{
		{"not", `{"type":"string","not":{"const":"x"}}`, []string{`"y"`}, []string{`"x"`, `1`}},
		{"allOf", `{"allOf":[{"type":"integer"},{"minimum":2}]}`, []string{`2`, `7`}, []string{`1`, `2.5`, `"2"`}},
		{"anyOf", `{"anyOf":[{"type":"string"},{"type":"integer"}]}`, []string{`"a"`, `3`}, []string{`1.5`, `null`}},
		{"oneOf", `{"oneOf":[{"type":"integer"},{"minimum":5}]}`, []string{`3`, `5.5`}, []string{`6`, `1.5`}},
		{"exclusiveMinimum", `{"type":"number","exclusiveMinimum":0}`, []string{`0.5`, `1e3`}, []string{`0`, `-0.0`, `-1`}},
		{"exclusiveMaximum", `{"type":"number","exclusiveMaximum":10}`, []string{`9.99`, `-1`}, []string{`10`, `1e1`, `11`}},
		{"nested allOf", `{"type":"object","properties":{"n":{"type":"object","properties":{"x":{"allOf":[{"maximum":3}]}}}}}`,
			[]string{`{"n":{"x":3}}`, `{}`}, []string{`{"n":{"x":4}}`}},
		// Values no message schema uses either.
		{"additionalProperties true", `{"type":"object","properties":{"a":{"type":"string"}},"additionalProperties":true}`,
			[]string{`{"a":"x","b":1}`}, []string{`{"a":1}`}},
		{"additionalProperties of type", `{"type":"object","additionalProperties":{"type":"integer"}}`,
			[]string{`{"a":1}`, `{}`}, []string{`{"a":"x"}`, `[]`}},
		{"const value of type <nil>", `{"const":null}`, []string{`null`}, []string{`0`, `"null"`}},
		{"enum value of type <nil>", `{"enum":["a",null]}`, []string{`"a"`, `null`}, []string{`"b"`, `false`}},
	}
	for _, tt := range tests {
		t.Run(tt.keyword, func(t *testing.T) {
			c := jsonschema.NewCompiler()
			c.DefaultDraft(jsonschema.Draft2020)
			doc, err := jsonschema.UnmarshalJSON(strings.NewReader(tt.schema))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.AddResource("test.json", doc); err != nil {
				t.Fatal(err)
			}
			s, err := c.Compile("test.json")
			if err != nil {
				t.Fatal(err)
			}
			r := &registry{byName: map[string]*jsonschema.Schema{}, fast: map[string]*fastSchema{},
				noFast: map[string]error{}, desc: map[string]string{}}
			r.add("test", s)
			if r.fast["test"] != nil {
				t.Fatalf("schema %s has a fast form", tt.schema)
			}
			want := strings.TrimPrefix(tt.keyword, "nested ")
			if err := r.noFast["test"]; err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("noFast = %v, want it to name %s", err, want)
			}
			for _, data := range append(slices.Clone(tt.valid), tt.invalid...) {
				inst, err := jsonschema.UnmarshalJSON(strings.NewReader(data))
				if err != nil {
					t.Fatal(err)
				}
				lib := s.Validate(inst) == nil
				got := r.check("test", "", []byte(data), nil)
				if (got == nil) != lib {
					t.Errorf("%s: check says %v, library valid=%v", data, got, lib)
				}
				if wantValid := slices.Contains(tt.valid, data); lib != wantValid {
					t.Errorf("%s: library valid=%v, test expects %v", data, lib, wantValid)
				}
				var ve *ValidationError
				if got != nil && !errors.As(got, &ve) {
					t.Errorf("%s: error %v is not a *ValidationError", data, got)
				}
			}
		})
	}
}

// newValue returns a pointer to a zero value of the Go type of name.
func newValue(name string) any {
	if name == NameRequested {
		return new(Request)
	}
	if name == NameVerifyRequested {
		return new(VerifyRequest)
	}
	if name == NameForgetRequested {
		return new(ForgetRequest)
	}
	return newEvent(name)
}

// fastVerdict runs the fast path alone: accepted is true when it proves
// data valid for name; out is then what it decoded (nil when the tree
// decoder handed over to encoding/json).
func fastVerdict(t testing.TB, name string, data []byte) (accepted bool, out any) {
	t.Helper()
	all, err := compiled()
	if err != nil {
		t.Fatal(err)
	}
	tr := getTree()
	defer tr.release()
	if !tr.parse(data) || !all.fast[name].accepts(tr, 0) {
		return false, nil
	}
	out = newValue(name)
	if !decodeTree(tr, out) {
		return true, nil
	}
	return true, out
}

// slowVerdict is the slow path's verdict on data: the library's on its
// own parse, and no member name repeated in an object.
func slowVerdict(t testing.TB, name string, data []byte) bool {
	t.Helper()
	all, err := compiled()
	if err != nil {
		t.Fatal(err)
	}
	return checkSlow(all, name, "", data, nil) == nil
}

// compareFast checks the fast path against the library and encoding/json
// on one payload: it must never accept what the library refuses, should
// accept what the library accepts, and must decode what encoding/json
// decodes, or hand over.
func compareFast(t testing.TB, name string, data []byte) {
	t.Helper()
	fast, got := fastVerdict(t, name, data)
	slow := slowVerdict(t, name, data)
	switch {
	case fast && !slow:
		t.Fatalf("%s: fast path accepts what the schema refuses:\n%s", name, data)
	case !fast && slow:
		t.Errorf("%s: fast path hands over a valid payload (slower, not wrong):\n%.400s", name, data)
	}
	if !fast || got == nil {
		return
	}
	want := newValue(name)
	if err := json.Unmarshal(data, want); err != nil {
		t.Fatalf("%s: tree decoder decoded what encoding/json refuses (%v):\n%s", name, err, data)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: tree decoder differs from encoding/json:\n got %+v\nwant %+v\n%s", name, got, want, data)
	}
}

// Payload values the mutations below put everywhere.
var mutationValues = []any{
	"", "x", "A", "é", "a b", "a/b", "..", "a\u0000b", "a\u0085b", "\ufffd", strings.Repeat("x", 300),
	TypeFull, TypeIncremental, TypeAuto, ReasonNoBase, ReasonBaseUsable, "job-6", "-rf", "sendense-job-7",
	testCID, strings.ToUpper(testCID), "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/", testVMUUID, "vm-42",
	"2025-01-02T03:04:05Z", "2025-01-02T03:04:05+02:00", "2025-13-02T03:04:05Z", "2025-01-02 03:04:05Z", "yesterday",
	NameCompleted, NameStarted,
	json.Number("0"), json.Number("-0"), json.Number("1"), json.Number("-1"), json.Number("2"), json.Number("1.5"),
	json.Number("2.0"), json.Number("1e3"), json.Number("1E-2"), json.Number("-0.0"), json.Number("0e5"),
	json.Number("2147483647"), json.Number("2147483648"), json.Number("9223372036854775807"),
	json.Number("9223372036854775808"), json.Number("-9223372036854775808"), json.Number("1e400"),
	true, false, nil, map[string]any{}, []any{}, []any{"x"}, map[string]any{"a": "b"},
}

// mutations returns payloads derived from v: each member or element
// deleted, replaced by every mutation value, an extra member, a member
// name in another case.
func mutations(t testing.TB, v any) [][]byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	emit := func(root any) {
		b, err := json.Marshal(root)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	decode := func() any {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var root any
		if err := d.Decode(&root); err != nil {
			t.Fatal(err)
		}
		return root
	}
	// paths lists every value as a path of keys (string) and indexes (int).
	var paths [][]any
	var walk func(v any, p []any)
	walk = func(v any, p []any) {
		paths = append(paths, slices.Clone(p))
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				walk(c, append(p, k))
			}
		case []any:
			for i, c := range v {
				walk(c, append(p, i))
			}
		}
	}
	walk(decode(), nil)
	// at applies fn to the container holding the value at p.
	at := func(root any, p []any, fn func(parent any, last any)) {
		cur := root
		for _, k := range p[:len(p)-1] {
			switch k := k.(type) {
			case string:
				cur = cur.(map[string]any)[k]
			case int:
				cur = cur.([]any)[k]
			}
		}
		fn(cur, p[len(p)-1])
	}
	out = append(out, b)
	for _, p := range paths {
		if len(p) == 0 {
			for _, val := range mutationValues {
				emit(val)
			}
			continue
		}
		for _, val := range mutationValues {
			root := decode()
			at(root, p, func(parent, last any) {
				switch last := last.(type) {
				case string:
					parent.(map[string]any)[last] = val
				case int:
					parent.([]any)[last] = val
				}
			})
			emit(root)
		}
		if k, ok := p[len(p)-1].(string); ok {
			for _, change := range []func(m map[string]any){
				func(m map[string]any) { delete(m, k) },
				func(m map[string]any) { m[strings.ToUpper(k)] = m[k]; delete(m, k) },
			} {
				root := decode()
				at(root, p, func(parent, _ any) { change(parent.(map[string]any)) })
				emit(root)
			}
		}
		root := decode()
		var target any = root
		at(root, append(slices.Clone(p), ""), func(parent, _ any) { target = parent })
		if m, ok := target.(map[string]any); ok {
			m["extra"] = json.Number("1")
			emit(root)
		}
	}
	return out
}

// The fast path agrees with the library on thousands of payloads derived
// from the fixtures, including every one that breaks a rule, and decodes
// what encoding/json decodes.
func TestFastAgreesWithLibrary(t *testing.T) {
	values := map[string][]any{NameRequested: {fullRequest(), &Request{VM: "pgtest1"}}}
	for name, ev := range fullEvents() {
		values[name] = append(values[name], ev)
	}
	// Full disks, no optional members.
	fullPlan := DiskPlan{Disk: testDisk, BackupType: TypeFull, Reason: ReasonCBTReset, Target: testTarget}
	values[NameStarted] = append(values[NameStarted], &Started{Header: testHeader(NameStarted, "started"),
		Repository: "r", RequestedType: TypeFull, Snapshot: "sendense-j", Disks: []DiskPlan{fullPlan, fullPlan}})
	fullResult := DiskResult{Disk: testDisk, ChangeID: testCID, BackupType: TypeFull, Reason: ReasonNoBase, Target: testTarget}
	values[NameCompleted] = append(values[NameCompleted], &Completed{Header: testHeader(NameCompleted, "completed"),
		Repository: "r", Disks: []DiskResult{fullResult}})
	values[NameFailed] = append(values[NameFailed], &Failed{Header: testHeader(NameFailed, "failed"), Reason: FailCopy, Message: "m"})
	n := 0
	for _, name := range Names() {
		for _, v := range values[name] {
			for _, data := range mutations(t, v) {
				compareFast(t, name, data)
				n++
			}
		}
		// The examples users read.
		b, _ := raw(name)
		var doc struct{ Examples []json.RawMessage }
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		for _, ex := range doc.Examples {
			compareFast(t, name, ex)
		}
	}
	t.Logf("%d payloads", n)
}

// Payloads that differ only in how the JSON is written.
func TestFastJSONSpellings(t *testing.T) {
	changeid := string(mutate(t, fullEvents()[NameChangeID], nil))
	tests := []struct {
		name, subject, data string
		refused             bool // Decode (and the library alone) refuse it
	}{
		{"whitespace everywhere", NameChangeID, " \n\t" + strings.NewReplacer(",", " ,\r\n ", ":", " : ", "{", "{ ", "}", " }").Replace(changeid) + "\n ", true},
		{"escaped job id", NameChangeID, strings.Replace(changeid, `"job_id":"job-7"`, `"job_id":"job\u002d7"`, 1), false},
		{"escaped member name", NameChangeID, strings.Replace(changeid, `"job_id"`, `"job\u005fid"`, 1), false},
		{"escaped time", NameChangeID, strings.Replace(changeid, `"2025-01-02`, `"2025\u002d01-02`, 1), true},
		{"escaped slash in target", NameChangeID, strings.Replace(changeid, `/2000/`, `\/2000\/`, 1), false},
		{"integer written as 2.0", NameChangeID, strings.Replace(changeid, `"attempt":2`, `"attempt":2.0`, 1), true},
		{"integer written as 2e0", NameChangeID, strings.Replace(changeid, `"attempt":2`, `"attempt":2e0`, 1), true},
		{"bytes over int64", NameChangeID, strings.Replace(changeid, `"bytes_read":67108864`, `"bytes_read":9223372036854775808`, 1), true},
		{"duplicate member", NameChangeID, strings.Replace(changeid, `"job_id":"job-7"`, `"job_id":"x/y","job_id":"job-7"`, 1), true},
		{"duplicate member, bad last", NameChangeID, strings.Replace(changeid, `"job_id":"job-7"`, `"job_id":"job-7","job_id":"x/y"`, 1), true},
		{"duplicate member, same value", NameChangeID, strings.Replace(changeid, `"job_id":"job-7"`, `"job_id":"job-7","job_id":"job-7"`, 1), true},
		{"duplicate member, escaped", NameChangeID, strings.Replace(changeid, `"job_id":"job-7"`, `"job_id":"x/y","job\u005fid":"job-7"`, 1), true},
		{"duplicate member in a nested object", NameChangeID, strings.Replace(changeid, `"key":2000`, `"key":1,"key":2000`, 1), true},
		{"duplicate member too deep for the tree", NameRequested, `{"vm":"x","labels":` + strings.Repeat("[", 100) + `{"a":1,"a":2}` + strings.Repeat("]", 100) + `}`, true},
		{"invalid utf-8 in vm name", NameChangeID, strings.Replace(changeid, `pgtest1`, "pg\xfftest1", 1), false},
		{"lone surrogate in vm name", NameChangeID, strings.Replace(changeid, `pgtest1`, `pg\ud800test1`, 1), false},
		{"non-ASCII vm name", NameChangeID, strings.Replace(changeid, `pgtest1`, `pgtest1-é日本`, 1), false},
		{"trailing data", NameChangeID, changeid + "{}", true},
		{"trailing comma", NameChangeID, strings.Replace(changeid, `}}`, `},}`, 1), true},
		{"control character in string", NameChangeID, strings.Replace(changeid, `pgtest1`, "pg\ttest1", 1), true},
		{"leading zero", NameChangeID, strings.Replace(changeid, `"attempt":2`, `"attempt":02`, 1), true},
		{"request with labels", NameRequested, `{"vm":"x","labels":{"a":"1","b.c/d":"2","":"3"}}`, true},
		{"request with good labels", NameRequested, `{"vm":"x","labels":{"a":"1","b.c/d":"2"}}`, false},
		{"request with empty labels", NameRequested, `{"vm":"x","labels":{}}`, false},
		{"request vm with dots", NameRequested, `{"vm":".a.b c."}`, false},
		{"request vm with C1 control", NameRequested, `{"vm":"a\u0085b"}`, true},
		{"deep nesting", NameRequested, `{"vm":"x","labels":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, true},
		{"empty", NameRequested, ``, true},
		{"only space", NameRequested, `  `, true},
		{"bare string", NameRequested, `"x"`, true},
		{"null", NameRequested, `null`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, _, _ := subjectName(tt.subject)
			fast, _ := fastVerdict(t, name, []byte(tt.data))
			if fast && !slowVerdict(t, name, []byte(tt.data)) {
				t.Fatalf("fast path accepts what the schema refuses")
			}
			compareFast(&lenient{T: t}, name, []byte(tt.data))
			// And the public functions answer as the library alone does.
			var slowErr, fastErr error
			all, _ := compiled()
			if name == NameRequested {
				slowErr = checkSlow(all, name, "", []byte(tt.data), new(Request))
				_, fastErr = DecodeRequest([]byte(tt.data))
			} else {
				slowErr = checkSlow(all, name, "", []byte(tt.data), newEvent(name))
				_, fastErr = Decode(tt.subject, []byte(tt.data))
			}
			if (slowErr == nil) != (fastErr == nil) || slowErr != nil && slowErr.Error() != fastErr.Error() {
				t.Errorf("Decode = %v, library alone = %v", fastErr, slowErr)
			}
			if (fastErr != nil) != tt.refused {
				t.Errorf("Decode = %v, want refused %v", fastErr, tt.refused)
			}
		})
	}
}

// lenient reports a fast path that hands over a valid payload as a log
// line: some spellings (repeated members, deep nesting) are left to the
// library on purpose.
type lenient struct{ *testing.T }

func (l *lenient) Errorf(format string, args ...any) { l.Logf("hands over: "+format, args...) }

// The tree parser accepts no text that encoding/json refuses, and reads
// strings and numbers as encoding/json does.
func TestTreeMatchesEncodingJSON(t *testing.T) {
	docs := []string{
		`{}`, `[]`, `""`, `0`, `-0`, `1.5e+3`, `true`, `false`, `null`, ` {"a" : [ 1 , 2 ] } `,
		`{"a":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}`, `"\ud800"`, `"\ud800\u0041"`, `"\udc00\ud800"`, "\"\xff\xfe\"", "\"\xc3\"",
		"\"\xed\xa0\x80\"", `"é日本"`, `{"a":1,"b":{"c":[true,false,null,{"d":""}]}}`,
		`9223372036854775807`, `-9223372036854775808`, `9223372036854775808`, `-9223372036854775809`, `123456789012345678901234567890`,
		// refused by encoding/json
		``, ` `, `{`, `}`, `[`, `{"a"}`, `{"a":}`, `{"a":1,}`, `[1,]`, `[,1]`, `{,}`, `{"a":1 "b":2}`, `{'a':1}`, `{a:1}`,
		`01`, `-`, `-01`, `1.`, `.5`, `1e`, `1e+`, `+1`, `0x1`, `NaN`, `Infinity`, `tru`, `nul`, `truex`, `nulll`,
		`"a`, `"\x"`, `"\u12"`, `"\u12g4"`, "\"a\tb\"", "\"\x00\"", "\"\x1f\"", `{} {}`, `{}x`, "\ufeff{}", "{}\x00",
		`{"a":1}}`, `[1]]`, `"\`, `"\u`, `[` + strings.Repeat(`[`, 100) + strings.Repeat(`]`, 101),
	}
	for _, d := range docs {
		checkTreeDoc(t, []byte(d))
	}
}

func checkTreeDoc(t testing.TB, data []byte) {
	t.Helper()
	tr := getTree()
	defer tr.release()
	if !tr.parse(data) {
		return // the slow path decides
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var want any
	if !json.Valid(data) || dec.Decode(&want) != nil {
		t.Fatalf("tree parses %q, encoding/json refuses it", data)
	}
	if got := treeValue(tr, 0); !reflect.DeepEqual(got, want) {
		t.Fatalf("tree reads %q as %#v, encoding/json as %#v", data, got, want)
	}
	// Integers: the cached value is strconv.ParseInt's.
	for _, nd := range tr.nodes {
		if nd.kind != kindNumber {
			continue
		}
		i, err := strconv.ParseInt(tr.get(nd.val), 10, 64)
		if (err == nil) != nd.isInt || nd.isInt && i != nd.i {
			t.Fatalf("number %s: isInt %v i %d, ParseInt %d %v", tr.get(nd.val), nd.isInt, nd.i, i, err)
		}
	}
}

// treeValue converts node n to the value encoding/json gives with
// UseNumber.
func treeValue(tr *tree, n int32) any {
	nd := &tr.nodes[n]
	switch nd.kind {
	case kindNull:
		return nil
	case kindFalse:
		return false
	case kindTrue:
		return true
	case kindNumber:
		return json.Number(tr.get(nd.val))
	case kindString:
		return tr.get(nd.val)
	case kindArray:
		out := []any{}
		for c := nd.first; c >= 0; c = tr.nodes[c].next {
			out = append(out, treeValue(tr, c))
		}
		return out
	}
	out := map[string]any{}
	for c := nd.first; c >= 0; c = tr.nodes[c].next {
		out[tr.key(c)] = treeValue(tr, c)
	}
	return out
}

// The class matcher answers as Go's regexp for every pattern it takes,
// and refuses patterns where greedy matching could be wrong.
func TestClassSeqMatchesRegexp(t *testing.T) {
	all, err := compiled()
	if err != nil {
		t.Fatal(err)
	}
	patterns := []string{
		`^[a-z]+$`, `^a?b?$`, `^[a-c]{2,4}x[0-9]*$`, `^x{3}(?:ab){2}$`, `^(?:a[0-9]{1,3})?$`, `^$`, `^(?:)$`,
		`^[A-Z][a-z]*-[0-9]+$`, `^.$`, `^[^a]$`, `^(?i)ab$`, `^é$`, `^a|b$`, `^[a-z]*[a-z0-9]$`, `^a*a$`,
		`^[ab]?[bc]$`, `^a{0,2}a?$`, `^(?:ab)*$`, `^(?:a|b){2}$`, `[a-z]+`, `^[a-z]+`, `[a-z]+$`, `^\d{2}\s$`,
		`^a{300}b$`, `^[0-9]{200}x{100}[a-z]?$`,
	}
	seen := map[string]bool{}
	for _, name := range Names() {
		walkSchema(all.byName[name], func(s *jsonschema.Schema) {
			if s.Pattern != nil {
				patterns = append(patterns, s.Pattern.String())
			}
			for re := range s.PatternProperties {
				patterns = append(patterns, re.String())
			}
		})
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, src := range patterns {
		if seen[src] {
			continue
		}
		seen[src] = true
		re := regexp.MustCompile(src)
		cs := newClassSeq(src)
		if cs == nil {
			t.Logf("left to regexp: %s", src)
			continue
		}
		for _, s := range classSeqInputs(rnd, src) {
			if got, want := cs.MatchString(s), re.MatchString(s); got != want {
				t.Errorf("%s on %q: %v, regexp %v", src, s, got, want)
			}
		}
	}
	for _, src := range []string{`^[a-z]*[a-z0-9]$`, `^a*a$`, `^[ab]?[bc]$`, `^a{0,2}a?$`, `[a-z]+`, `^a|b$`, `^é$`, `^(?i)ab$`, `^.$`} {
		if newClassSeq(src) != nil {
			t.Errorf("newClassSeq takes %s", src)
		}
	}
}

// classSeqInputs returns strings near and far from the language of src:
// random strings over the characters the pattern mentions, plus
// neighbours.
func classSeqInputs(rnd *rand.Rand, src string) []string {
	alphabet := []byte("aAzZ09_-./: \x00\x7f")
	for i := 0; i < len(src); i++ {
		alphabet = append(alphabet, src[i])
	}
	alphabet = append(alphabet, "é\xff"...)
	out := []string{"", "a", "x", "0"}
	for range 3000 {
		n := rnd.IntN(60)
		if rnd.IntN(4) == 0 {
			n = rnd.IntN(300)
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rnd.IntN(len(alphabet))]
		}
		out = append(out, string(b))
	}
	// Strings the regexp accepts, then one character changed, dropped or added.
	for _, s := range []string{testCID, strings.ToUpper(testCID), testVMUUID, "job-7", "sendense-job-7", "a", "vm-42",
		"default", "no_base", strings.Repeat("a", 64), strings.Repeat("a", 65), strings.Repeat("a", 128), strings.Repeat("a", 256)} {
		out = append(out, s)
		for range 50 {
			b := []byte(s)
			i := rnd.IntN(len(b) + 1)
			c := alphabet[rnd.IntN(len(alphabet))]
			switch rnd.IntN(3) {
			case 0:
				if i < len(b) {
					b[i] = c
				}
			case 1:
				if i < len(b) {
					b = append(b[:i], b[i+1:]...)
				}
			case 2:
				b = append(b[:i], append([]byte{c}, b[i:]...)...)
			}
			out = append(out, string(b))
		}
	}
	return out
}

// FuzzFastPath feeds arbitrary payloads to every message's fast path and
// checks it against the library and encoding/json.
func FuzzFastPath(f *testing.F) {
	f.Add(uint8(0), []byte(`{"vm":"pgtest1","labels":{"a":"b"}}`))
	for i, name := range Names() {
		b, _ := raw(name)
		var doc struct{ Examples []json.RawMessage }
		_ = json.Unmarshal(b, &doc)
		for _, ex := range doc.Examples {
			f.Add(uint8(i), []byte(ex))
		}
	}
	for i, ev := range []Event{fullEvents()[NameCompleted], fullEvents()[NameStarted], fullEvents()[NameFailed]} {
		b, _ := json.Marshal(ev)
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		name := Names()[int(which)%len(Names())]
		checkTreeDoc(t, data)
		compareFast(&lenient{T: t}, name, data)
	})
}

// FuzzClassSeq compares the class matcher with regexp on arbitrary input
// for every pattern of the schemas.
func FuzzClassSeq(f *testing.F) {
	var matchers []*classSeq
	var res []*regexp.Regexp
	all, _ := compiled()
	for _, name := range Names() {
		walkSchema(all.byName[name], func(s *jsonschema.Schema) {
			if s.Pattern == nil {
				return
			}
			if cs := newClassSeq(s.Pattern.String()); cs != nil {
				matchers = append(matchers, cs)
				res = append(res, regexp.MustCompile(s.Pattern.String()))
			}
		})
	}
	for _, s := range []string{testCID, testVMUUID, "job-7", "", "sendense-x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for i, cs := range matchers {
			if got, want := cs.MatchString(s), res[i].MatchString(s); got != want {
				t.Fatalf("%s on %q: %v, regexp %v", cs, s, got, want)
			}
		}
	})
}

// fastDateTime accepts only what the library's "date-time" accepts, and
// accepts what producers write.
func TestFastDateTime(t *testing.T) {
	var lib func(any) error
	all, err := compiled()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Names() {
		walkSchema(all.byName[name], func(s *jsonschema.Schema) {
			if s.Format != nil && s.Format.Name == "date-time" {
				lib = s.Format.Validate
			}
		})
	}
	if lib == nil {
		t.Fatal("no schema uses format date-time")
	}
	check := func(s string) {
		t.Helper()
		if fastDateTime(s) && lib(s) != nil {
			t.Fatalf("fastDateTime accepts %q, the library refuses it: %v", s, lib(s))
		}
	}
	for _, s := range []string{
		"2025-01-02T03:04:05Z", "2025-01-02T03:04:05.123456789Z", "2025-01-02T03:04:05+01:00", "2024-02-29T23:59:59-23:59",
		"0000-01-01T00:00:00Z", "9999-12-31T23:59:59.1Z", time.Now().UTC().Format(time.RFC3339Nano),
	} {
		check(s)
		if !fastDateTime(s) {
			t.Errorf("fastDateTime refuses %q", s)
		}
	}
	// Every date and time of day in the usual form: the two agree exactly
	// (the library also takes leap seconds, which fastDateTime leaves to it).
	same := func(s string) {
		t.Helper()
		if got, want := fastDateTime(s), lib(s) == nil; got != want {
			t.Fatalf("%q: fastDateTime %v, library %v", s, got, want)
		}
	}
	for _, year := range []int{0, 1600, 1900, 2000, 2023, 2024, 2100, 9999} {
		for month := range 14 {
			for day := range 33 {
				same(fmt.Sprintf("%04d-%02d-%02dT12:00:00Z", year, month, day))
			}
		}
	}
	for hour := range 25 {
		for minute := range 61 {
			for _, zone := range []string{"Z", "+00:00", "-23:59", "+24:00", "+12:60"} {
				same(fmt.Sprintf("2025-06-01T%02d:%02d:%02d%s", hour, minute, minute%60, zone))
			}
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	two := func(hi int) string { return fmt.Sprintf("%02d", r.IntN(hi+1)) }
	for range 300_000 {
		s := pick("2025", "2024", "2000", "1900", "2100", "0000", "9999", "20x5", "+202") + pick("-", "/") +
			two(13) + "-" + two(32) + pick("T", "t", " ") + two(24) + ":" + two(60) + ":" + two(61) +
			pick("", ".", ".5", ".123456789", ".x") + pick("Z", "z", "", "+00:00", "-23:59", "+24:00", "+12:60", "+1:00", "+01:000", "+0a:00", "Z ")
		check(s)
		// Every cut and every single-byte change.
		i := r.IntN(len(s))
		check(s[:i])
		check(s[:i] + string(rune(r.IntN(128))) + s[i+1:])
	}
}

// decodeTree writes every kind it takes as encoding/json does, at the
// right offsets (embedded structs included), or hands over.
func TestDecodeTreeKinds(t *testing.T) {
	type Inner struct {
		S  string  `json:"s"`
		U8 uint8   `json:"u8"`
		F  float32 `json:"f"`
	}
	type all struct {
		Pre int64 `json:"pre"` // so Inner's fields are not at offset 0
		Inner
		B   bool              `json:"b"`
		I   int               `json:"i"`
		I8  int8              `json:"i8"`
		I16 int16             `json:"i16"`
		I32 int32             `json:"i32"`
		I64 int64             `json:"i64"`
		U   uint              `json:"u"`
		U16 uint16            `json:"u16"`
		U32 uint32            `json:"u32"`
		U64 uint64            `json:"u64"`
		F64 float64           `json:"f64"`
		P   *Inner            `json:"p"`
		L   []Inner           `json:"l"`
		M   map[string]int32  `json:"m"`
		T   time.Time         `json:"t"`
		E   []string          `json:"e"`
		N   map[string]string `json:"n"`
	}
	docs := []string{
		`{"pre":7,"s":"a","u8":255,"f":1.5,"b":true,"i":-9223372036854775808,"i8":-128,"i16":32767,"i32":-2147483648,"i64":9223372036854775807,
		  "u":18446744073709551615,"u16":65535,"u32":4294967295,"u64":1,"f64":-2.5e-300,"p":{"s":"x","u8":1,"f":-0},
		  "l":[{"s":"y"},{"u8":2},{}],"m":{"a":1,"b":-2147483648},"t":"2025-01-02T03:04:05.5+01:00","e":[],"n":{}}`,
		`{"b":false,"u8":0,"i8":127,"i16":-32768,"f":3.4028234663852886e38}`,
		`{"u8":256}`, `{"i8":128}`, `{"i8":-129}`, `{"i16":32768}`, `{"i32":2147483648}`, `{"u16":65536}`, `{"u32":4294967296}`,
		`{"u":-1}`, `{"u64":18446744073709551616}`, `{"i64":9223372036854775808}`, `{"f":3.5e38}`, `{"f64":1e400}`,
		`{"i":1.0}`, `{"i":1e2}`, `{"u8":"1"}`, `{"s":1}`, `{"b":"true"}`, `{"p":null}`, `{"l":null}`, `{"l":[1]}`,
		`{"m":{"a":2147483648}}`, `{"t":"nope"}`, `{"S":"case"}`, `{"x":1}`,
	}
	for i, d := range docs {
		tr := getTree()
		if !tr.parse([]byte(d)) {
			t.Fatalf("tree refuses %s", d)
		}
		var got all
		ok := decodeTree(tr, &got)
		tr.release()
		var want all
		err := json.Unmarshal([]byte(d), &want)
		if !ok {
			if i < 2 {
				t.Errorf("%s: decodeTree hands over a document it should decode", d)
			}
			continue // handed over to encoding/json
		}
		if err != nil {
			t.Errorf("%s: decodeTree takes it, encoding/json fails: %v", d, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\ndecodeTree   %+v\nencoding/json %+v", d, got, want)
		}
	}
}
