package vmware_test

import (
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/vmware"
)

func TestParseChangeID(t *testing.T) {
	const id = "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4"
	tests := []struct {
		in      string
		want    vmware.ChangeID
		wantErr error
	}{
		{id + "/31", vmware.ChangeID{UUID: id, Seq: 31}, nil},
		{"52 3C 7C 6D 57 A0 9C 14-5C 25 C3 FE 79 C0 43 D4/0", vmware.ChangeID{UUID: id, Seq: 0}, nil},
		{id + "/9223372036854775807", vmware.ChangeID{UUID: id, Seq: 1<<63 - 1}, nil},
		{"*", vmware.ChangeID{}, vmware.ErrInvalidChangeID},
		{"", vmware.ChangeID{}, vmware.ErrInvalidChangeID},
		{id, vmware.ChangeID{}, vmware.ErrInvalidChangeID},
		{id + "/", vmware.ChangeID{}, vmware.ErrInvalidChangeID},
		{id + "/-1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},
		{id + "/+1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},
		{id + "/x", vmware.ChangeID{}, vmware.ErrInvalidChangeID},
		{id + "/-0", vmware.ChangeID{}, vmware.ErrInvalidChangeID},                                           // a sign, even on zero
		{id + "/0000000000000000031", vmware.ChangeID{UUID: id, Seq: 31}, nil},                               // 19 digits
		{id + "/00000000000000000031", vmware.ChangeID{}, vmware.ErrInvalidChangeID},                         // 20 digits
		{id + "/9223372036854775808", vmware.ChangeID{}, vmware.ErrInvalidChangeID},                          // over int64
		{id + "/1\n", vmware.ChangeID{}, vmware.ErrInvalidChangeID},                                          // trailing newline
		{id + " /1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},                                           // space before '/'
		{" " + id + "/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},                                      // leading space
		{strings.Replace(id, "52", "\u0130", 1) + "/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},        // non-ASCII
		{"52  3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID}, // two spaces
		{"52 3c 7c 6d 57 a0 9c 14 5c 25 c3 fe 79 c0 43 d4/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},  // no '-'
		{"52 3c 7c 6d 57 a0 9c-14-5c 25 c3 fe 79 c0 43 d4/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},  // two '-'
		{"52 3c 7c 6d 57 a0 9c 1g-5c 25 c3 fe 79 c0 43 d4/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},  // not hex
		{"52 3c 7c 6d 57 a0 9c-5c 25 c3 fe 79 c0 43 d4 00/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},  // '-' misplaced
		{"523c7c6d57a09c14-5c25c3fe79c043d4/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := vmware.ParseChangeID(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseChangeID error = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("ParseChangeID = %+v, want %+v", got, tt.want)
			}
			if err == nil {
				if again, _ := vmware.ParseChangeID(got.String()); again != got {
					t.Errorf("round trip through String: %+v != %+v", again, got)
				}
			}
		})
	}
}

func TestSameEpoch(t *testing.T) {
	a, _ := vmware.ParseChangeID("52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/3")
	b, _ := vmware.ParseChangeID("52 3C 7C 6D 57 A0 9C 14-5C 25 C3 FE 79 C0 43 D4/9")
	c, _ := vmware.ParseChangeID("52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d5/3")
	if !vmware.SameEpoch(a, b) {
		t.Errorf("same uuid in different case and sequence: not the same epoch")
	}
	if vmware.SameEpoch(a, c) {
		t.Errorf("different uuids: same epoch")
	}
	if vmware.SameEpoch(vmware.ChangeID{}, vmware.ChangeID{}) {
		t.Errorf("two empty ids are the same epoch")
	}
}

// changeIDPattern returns the change_id pattern of the event schemas, read
// from the bundled backup.changeid schema so the test cannot drift from it.
func changeIDPattern(tb testing.TB) *regexp.Regexp {
	tb.Helper()
	doc, err := schemas.Schema(schemas.NameChangeID)
	if err != nil {
		tb.Fatal(err)
	}
	var bundle struct {
		Defs struct {
			Common struct {
				Defs map[string]struct {
					Pattern string `json:"pattern"`
				} `json:"$defs"`
			} `json:"common"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(doc, &bundle); err != nil {
		tb.Fatal(err)
	}
	src := bundle.Defs.Common.Defs["change_id"].Pattern
	if src == "" {
		tb.Fatal("no change_id pattern in the schema")
	}
	return regexp.MustCompile(src)
}

// canonicalUUID is a change id UUID as ParseChangeID returns it.
var canonicalUUID = regexp.MustCompile(`^(?:[0-9a-f]{2} ){7}[0-9a-f]{2}-(?:[0-9a-f]{2} ){7}[0-9a-f]{2}$`)

// FuzzParseChangeID checks that ParseChangeID never panics, returns a
// canonical value that String gives back, and accepts exactly what the
// schemas' change_id pattern accepts, but for sequences over the largest
// int64 (see ParseChangeID).
func FuzzParseChangeID(f *testing.F) {
	const id = "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4"
	for _, s := range []string{
		id + "/31", strings.ToUpper(id) + "/0", id + "/9223372036854775807", id + "/9223372036854775808",
		id + "/0000000000000000031", id + "/-0", id + "/+1", id + "/", id, "*", "", "/1",
		strings.Replace(id, "-", " ", 1) + "/1", strings.Replace(id, " ", "-", 1) + "/1", id + " /1", id + "/1\n",
	} {
		f.Add(s)
	}
	re := changeIDPattern(f)
	f.Fuzz(func(t *testing.T, s string) {
		c, err := vmware.ParseChangeID(s)
		matches := re.MatchString(s)
		if err != nil {
			if !errors.Is(err, vmware.ErrInvalidChangeID) {
				t.Fatalf("ParseChangeID(%q) = %v, want ErrInvalidChangeID", s, err)
			}
			if c != (vmware.ChangeID{}) {
				t.Fatalf("ParseChangeID(%q) = %+v with error %v", s, c, err)
			}
			if matches && !seqOverflows(s) {
				t.Fatalf("the schema pattern accepts %q, ParseChangeID refuses it: %v", s, err)
			}
			return
		}
		if !matches {
			t.Fatalf("ParseChangeID accepts %q (%+v), the schema pattern refuses it", s, c)
		}
		if !canonicalUUID.MatchString(c.UUID) {
			t.Fatalf("ParseChangeID(%q).UUID = %q, not canonical", s, c.UUID)
		}
		if c.Seq < 0 {
			t.Fatalf("ParseChangeID(%q).Seq = %d", s, c.Seq)
		}
		slash := strings.LastIndexByte(s, '/')
		if c.UUID != strings.ToLower(s[:slash]) {
			t.Fatalf("ParseChangeID(%q).UUID = %q, want the input in lowercase", s, c.UUID)
		}
		if want, _ := strconv.ParseInt(s[slash+1:], 10, 64); c.Seq != want {
			t.Fatalf("ParseChangeID(%q).Seq = %d, want %d", s, c.Seq, want)
		}
		again, err := vmware.ParseChangeID(c.String())
		if err != nil || again != c {
			t.Fatalf("ParseChangeID(%q) = %+v; its String %q parses as %+v, %v", s, c, c.String(), again, err)
		}
	})
}

// seqOverflows reports whether the sequence after the last '/' of s is
// all digits and over the largest int64.
func seqOverflows(s string) bool {
	digits := s[strings.LastIndexByte(s, '/')+1:]
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return false
	}
	_, err := strconv.ParseInt(digits, 10, 64)
	return err != nil
}
