package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

// replaceNth returns s with the n-th (from 1) occurrence of old replaced
// by repl; the test fails when there is no such occurrence.
func replaceNth(t *testing.T, s, old, repl string, n int) string {
	t.Helper()
	at := -1
	for range n {
		i := strings.Index(s[at+1:], old)
		if i < 0 {
			t.Fatalf("no occurrence %d of %q in %s", n, old, s)
		}
		at += 1 + i
	}
	return s[:at] + repl + s[at+len(old):]
}

// A member name repeated in one object, at any depth, is a schema
// violation naming the object and the name, whichever path decides, in
// Validate, Decode and DecodeRequest alike.
func TestDuplicateKeysRefused(t *testing.T) {
	ev := fullEvents()
	js := func(v any) string { return string(mutate(t, v, nil)) }
	completed := js(ev[NameCompleted])
	twoDisks := ev[NameCompleted].(*Completed)
	twoDisks.Disks = append(twoDisks.Disks, twoDisks.Disks[0])
	twoDisks.Disks[1].Disk.Key = 2001
	labels := `{"vm":"x","labels":{`
	for i := range 20 {
		labels += fmt.Sprintf(`"k%d":"v",`, i)
	}
	labels += `"k0":"again"}}`

	tests := []struct {
		name, subject, data string
		field, key          string // the Problem expected: the object's pointer and the name
	}{
		{"attack: path first", NameRequested, `{"vm":"../../etc","vm":"pgtest1"}`, "", "vm"},
		{"attack: path last", NameRequested, `{"vm":"pgtest1","vm":"../../etc"}`, "", "vm"},
		{"same value twice", NameRequested, `{"vm":"pgtest1","vm":"pgtest1"}`, "", "vm"},
		{"three times", NameRequested, `{"vm":"a","vm":"b","vm":"c"}`, "", "vm"},
		{"escaped repeat", NameRequested, `{"vm":"pgtest1","v\u006d":"pgtest1"}`, "", "vm"},
		{"both escaped", NameRequested, `{"\u0076m":"pgtest1","v\u006D":"pgtest1"}`, "", "vm"},
		{"escaped slash", NameRequested, `{"vm":"x","labels":{"a/b":"1","a\/b":"2"}}`, "/labels", "a/b"},
		{"nested object", NameRequested, `{"vm":"x","labels":{"a":"1","a":"2"}}`, "/labels", "a"},
		{"pointer escapes the path", NameRequested, `{"vm":"x","labels":{"a/~b":{"c":1,"c":1}}}`, "/labels/a~1~0b", "c"},
		{"invalid UTF-8 reads as U+FFFD", NameRequested, "{\"vm\":\"x\",\"labels\":{\"\xff\":\"1\",\"\xfe\":\"2\"}}", "/labels", "\ufffd"},
		{"more members than compared one by one", NameRequested, labels, "/labels", "k0"},
		{"too deep for the tree parser", NameRequested, `{"vm":"x","labels":` + strings.Repeat("[", 100) + `{"a":1,"a":2}` + strings.Repeat("]", 100) + `}`,
			"/labels" + strings.Repeat("/0", 100), "a"},
		{"key of a disk", NameCompleted, replaceNth(t, completed, `"key":2000`, `"key":2000,"key":2001`, 1), "/disks/0/disk", "key"},
		{"member of the second disk", NameCompleted, replaceNth(t, js(twoDisks), `"backing":"job-6"`, `"backing":"job-6","backing":"job-6"`, 2), "/disks/1", "backing"},
		{"header vm", NameCompleted, replaceNth(t, completed, `"moref":"vm-42"`, `"moref":"vm-42","moref":"vm-43"`, 1), "/vm", "moref"},
		{"top of an event", NameChangeID, replaceNth(t, js(ev[NameChangeID]), `"job_id":"job-7"`, `"job_id":"x/y","job_id":"job-7"`, 1), "", "job_id"},
		{"progress on its subject", NameProgress + ".job-7", replaceNth(t, js(ev[NameProgress]), `"seq":12`, `"seq":12,"seq":13`, 1), "", "seq"},
	}
	all, err := compiled()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := []byte(tt.data)
			name, _, _ := subjectName(tt.subject)
			err := Validate(tt.subject, data)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, want a *ValidationError\n%.300s", err, data)
			}
			want := Problem{Field: tt.field, Rule: RuleDuplicateKey, Message: fmt.Sprintf("duplicate key %q", tt.key)}
			n := 0
			for _, p := range ve.Problems {
				if p.Rule == RuleDuplicateKey {
					n++
					if p != want {
						t.Errorf("problem %+v, want %+v", p, want)
					}
				}
			}
			if n != 1 {
				t.Errorf("%d duplicate key problems in %+v, want 1", n, ve.Problems)
			}
			if errors.Is(err, ErrInvalidJSON) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUnknownSubject) {
				t.Errorf("schema violation matches a sentinel: %v", err)
			}
			// Decode and DecodeRequest refuse it with the same error.
			var derr error
			if name == NameRequested {
				var r Request
				r, derr = DecodeRequest(data)
				if !reflect.DeepEqual(r, Request{}) {
					t.Errorf("DecodeRequest returned %+v with its error", r)
				}
			} else {
				var e Event
				e, derr = Decode(tt.subject, data)
				if e != nil {
					t.Errorf("Decode returned %+v with its error", e)
				}
			}
			if derr == nil || derr.Error() != err.Error() {
				t.Errorf("decode = %v, Validate = %v", derr, err)
			}
			// Both paths: the fast path never proves it valid, and the
			// library's path alone gives the same error.
			if ok, _ := fastVerdict(t, name, data); ok {
				t.Errorf("fast path accepts it")
			}
			if serr := checkSlow(all, name, "", data, nil); serr == nil || serr.Error() != err.Error() {
				t.Errorf("slow path = %v, Validate = %v", serr, err)
			}
		})
	}
}

// duplicateKeys finds exactly the repeated names, compared as
// encoding/json reads them, and nothing inside string values.
func TestDuplicateKeysScanner(t *testing.T) {
	dup := func(field, key string) Problem {
		return Problem{Field: field, Rule: RuleDuplicateKey, Message: fmt.Sprintf("duplicate key %q", key)}
	}
	many := func(n int, extra string) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range n {
			fmt.Fprintf(&b, `"k%d":%d,`, i, i)
		}
		b.WriteString(extra + `}`)
		return b.String()
	}
	tests := []struct {
		name string
		data string
		want []Problem
	}{
		{"scalar", `"x"`, nil},
		{"empty object", `{}`, nil},
		{"distinct names", `{"a":1,"b":1}`, nil},
		{"same name in a child", `{"a":{"a":1}}`, nil},
		{"same name in siblings", `[{"a":1},{"a":1}]`, nil},
		{"names differing in case", `{"a":1,"A":1}`, nil},
		{"names differing by a space", `{"a":1,"a ":1}`, nil},
		{"no Unicode normalization", `{"é":1,"e\u0301":1}`, nil},
		{"structure inside strings", `{"a":"\"a\":1,","b":"}{\"b\":[","c":"\\"}`, nil},
		{"strings as values are not names", `{"a":"a","b":["a","a"]}`, nil},
		{"many distinct", many(40, `"last":true`), nil},

		{"top level", `{"a":1,"a":2}`, []Problem{dup("", "a")}},
		{"whitespace", " { \"a\" :\t1 ,\r\n \"a\" : 2 } ", []Problem{dup("", "a")}},
		{"empty name", `{"":1,"":2}`, []Problem{dup("", "")}},
		{"escaped backslash", `{"\\":1,"\u005c":2}`, []Problem{dup("", `\`)}},
		{"escaped quote", `{"\"":1,"\u0022":2}`, []Problem{dup("", `"`)}},
		{"surrogate pair", `{"😀":1,"\ud83d\ude00":2}`, []Problem{dup("", "😀")}},
		{"lone surrogates read alike", `{"\ud800":1,"\udc00":2}`, []Problem{dup("", "\ufffd")}},
		{"every kind of value between", `{"a":[1,-2.5e3,true,false,null,"s",{},[]],"b":{"c":null},"a":{}}`, []Problem{dup("", "a")}},
		{"several levels", `{"a":[1,{"b":[],"b":{}}],"a":null}`, []Problem{dup("", "a"), dup("/a/1", "b")}},
		{"in an array in an array", `[[0,{"x":1,"x":2}]]`, []Problem{dup("/0/1", "x")}},
		{"pointer escapes", `{"a~b/c":{"x":1,"x":2}}`, []Problem{dup("/a~0b~1c", "x")}},
		{"two names", `{"a":1,"b":1,"a":1,"b":1}`, []Problem{dup("", "a"), dup("", "b")}},
		{"three times is one problem", `{"a":1,"a":2,"a":3}`, []Problem{dup("", "a")}},
		{"repeat at the linear limit", many(maxLinearKeys-1, `"k0":0`), []Problem{dup("", "k0")}},
		{"repeat past the linear limit", many(40, `"k3":0`), []Problem{dup("", "k3")}},
		{"repeats on both sides of the limit", many(40, `"k1":0,"k39":0`), []Problem{dup("", "k1"), dup("", "k39")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !json.Valid([]byte(tt.data)) {
				t.Fatalf("test payload is not JSON: %s", tt.data)
			}
			got := duplicateKeys([]byte(tt.data))
			if got != nil {
				got = sortProblems(got)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("duplicateKeys(%s)\n got %+v\nwant %+v", tt.data, got, tt.want)
			}
			if found, _ := tokenDuplicate([]byte(tt.data)); found != (tt.want != nil) {
				t.Errorf("encoding/json's tokens: duplicate %v", found)
			}
		})
	}
}

// tokenDuplicate reports, independently of duplicateKeys, whether data
// has an object with a repeated member name, reading it with
// encoding/json's Decoder.Token (names unescaped as encoding/json does);
// ok is false when data is not JSON.
func tokenDuplicate(data []byte) (dup, ok bool) {
	type frame struct {
		keys    map[string]bool // nil for an array
		wantKey bool
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return dup, len(stack) == 0
		}
		if err != nil {
			return dup, false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if s, isStr := tok.(string); isStr && top != nil && top.keys != nil && top.wantKey {
			dup = dup || top.keys[s]
			top.keys[s] = true
			top.wantKey = false
			continue
		}
		if top != nil && top.keys != nil {
			top.wantKey = true // a value: a name comes next
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, wantKey: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
	}
}
