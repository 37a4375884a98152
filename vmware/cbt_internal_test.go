package vmware

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/vmware/govmomi/vim25/soap"

	"github.com/vmware/govmomi/vim25/types"
)

// fakeQuery replays canned replies and counts calls.
type fakeQuery struct {
	replies map[int64]*types.DiskChangeInfo
	calls   int
}

func (f *fakeQuery) query(_ context.Context, start int64) (*types.DiskChangeInfo, error) {
	f.calls++
	if f.calls > 100 {
		panic("pager loops")
	}
	r, ok := f.replies[start]
	if !ok {
		return nil, errors.New("unexpected start offset")
	}
	return r, nil
}

func areas(pairs ...int64) []types.DiskChangeExtent {
	var out []types.DiskChangeExtent
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, types.DiskChangeExtent{Start: pairs[i], Length: pairs[i+1]})
	}
	return out
}

func TestPageChangedAreas(t *testing.T) {
	const capacity = 1000
	tests := []struct {
		name      string
		replies   map[int64]*types.DiskChangeInfo
		want      []Extent
		wantCalls int
		wantErr   error
	}{
		{
			name: "one reply covers the disk",
			replies: map[int64]*types.DiskChangeInfo{
				0: {StartOffset: 0, Length: capacity, ChangedArea: areas(10, 10, 500, 100)},
			},
			want:      []Extent{{10, 10}, {500, 100}},
			wantCalls: 1,
		},
		{
			name: "pages merge touching areas and stop at capacity",
			replies: map[int64]*types.DiskChangeInfo{
				0:   {StartOffset: 0, Length: 300, ChangedArea: areas(0, 100, 200, 100)},
				300: {StartOffset: 300, Length: 500, ChangedArea: areas(300, 50, 700, 100)},
				800: {StartOffset: 800, Length: 400, ChangedArea: areas(990, 10)}, // reply runs past capacity: fine
			},
			want:      []Extent{{0, 100}, {200, 150}, {700, 100}, {990, 10}},
			wantCalls: 3,
		},
		{
			name: "empty disk",
			replies: map[int64]*types.DiskChangeInfo{
				0: {StartOffset: 0, Length: capacity},
			},
			wantCalls: 1,
		},
		{
			name: "reply that does not advance",
			replies: map[int64]*types.DiskChangeInfo{
				0:   {StartOffset: 0, Length: 200, ChangedArea: areas(0, 10)},
				200: {StartOffset: 200, Length: 0},
			},
			wantErr: ErrBadChangeInfo,
		},
		{
			name: "reply that goes backwards",
			replies: map[int64]*types.DiskChangeInfo{
				0:   {StartOffset: 0, Length: 200},
				200: {StartOffset: 100, Length: 50},
			},
			wantErr: ErrBadChangeInfo,
		},
		{
			name: "reply that skips ahead leaves a gap",
			replies: map[int64]*types.DiskChangeInfo{
				0: {StartOffset: 10, Length: 990},
			},
			wantErr: ErrBadChangeInfo,
		},
		{
			name: "area past the end of the disk",
			replies: map[int64]*types.DiskChangeInfo{
				0: {StartOffset: 0, Length: capacity, ChangedArea: areas(900, 200)},
			},
			wantErr: ErrBadChangeInfo,
		},
		{
			name: "empty area",
			replies: map[int64]*types.DiskChangeInfo{
				0: {StartOffset: 0, Length: capacity, ChangedArea: areas(10, 0)},
			},
			wantErr: ErrBadChangeInfo,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeQuery{replies: tt.replies}
			got, err := pageChangedAreas(context.Background(), capacity, f.query)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("extents = %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("extents = %v, want %v", got, tt.want)
				}
			}
			if f.calls != tt.wantCalls {
				t.Errorf("calls = %d, want %d", f.calls, tt.wantCalls)
			}
		})
	}
}

func TestPageChangedAreasCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := &fakeQuery{replies: map[int64]*types.DiskChangeInfo{0: {StartOffset: 0, Length: 10}}}
	if _, err := pageChangedAreas(ctx, 100, f.query); !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
}

func TestChangeIDRejectedClassification(t *testing.T) {
	tests := []struct {
		name     string
		fault    types.BaseMethodFault
		changeID string
		want     bool
	}{
		{"file fault on an id", &types.FileFault{File: "x.vmdk"}, "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/3", true},
		{"file not found is a file fault", &types.FileNotFound{}, "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/3", true},
		{"file fault on a full query", &types.FileFault{}, FullChangeID, false},
		{"invalid change id argument", &types.InvalidArgument{InvalidProperty: "changeId"}, "junk", true},
		{"invalid start offset", &types.InvalidArgument{InvalidProperty: "startOffset"}, "junk", false},
		{"not found", &types.ManagedObjectNotFound{}, "junk", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// As the SOAP client decodes it: a fault value inside a soap fault.
			err := soapFaultError(tt.fault)
			if got := changeIDRejected(err, tt.changeID); got != tt.want {
				t.Errorf("changeIDRejected = %v, want %v", got, tt.want)
			}
		})
	}
}

func soapFaultError(f types.BaseMethodFault) error {
	sf := &soap.Fault{Code: "ServerFaultCode", String: "fault"}
	// The SOAP decoder yields fault values, not pointers.
	sf.Detail.Fault = reflect.ValueOf(f).Elem().Interface()
	return soap.WrapSoapFault(sf)
}
