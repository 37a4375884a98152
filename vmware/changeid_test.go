package vmware_test

import (
	"errors"
	"testing"

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
		{"52 3c 7c 6d 57 a0 9c 14 5c 25 c3 fe 79 c0 43 d4/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID}, // no '-'
		{"52 3c 7c 6d 57 a0 9c-14-5c 25 c3 fe 79 c0 43 d4/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID}, // two '-'
		{"52 3c 7c 6d 57 a0 9c 1g-5c 25 c3 fe 79 c0 43 d4/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID}, // not hex
		{"52 3c 7c 6d 57 a0 9c-5c 25 c3 fe 79 c0 43 d4 00/1", vmware.ChangeID{}, vmware.ErrInvalidChangeID}, // '-' misplaced
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
