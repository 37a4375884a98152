package copier

import (
	"testing"
)

func TestIsZero(t *testing.T) {
	block := func(n int, set ...int) []byte {
		b := make([]byte, n)
		for _, i := range set {
			b[i] = 1
		}
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want bool
	}{
		{"empty", nil, true},
		{"one zero byte", block(1), true},
		{"one non-zero byte", block(1, 0), false},
		{"64 KiB zero", block(64 << 10), true},
		{"first byte set", block(64<<10, 0), false},
		{"last byte set", block(64<<10, 64<<10-1), false},
		{"middle byte set", block(64<<10, 12345), false},
		{"odd length, last set", block(4097, 4096), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isZero(tt.b); got != tt.want {
				t.Fatalf("isZero = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestIsZeroEveryByte proves no byte of a block is skipped (no sampling).
func TestIsZeroEveryByte(t *testing.T) {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = 0x80
		if isZero(b) {
			t.Fatalf("byte %d set but block reported zero", i)
		}
		b[i] = 0
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name    string
		in      []Extent
		want    []Extent
		wantErr bool
	}{
		{"empty", nil, []Extent{}, false},
		{"sorted", []Extent{{0, 10}, {20, 5}}, []Extent{{0, 10}, {20, 5}}, false},
		{"unsorted overlapping touching", []Extent{{50, 10}, {0, 10}, {5, 10}, {15, 5}, {60, 0}}, []Extent{{0, 20}, {50, 10}}, false},
		{"contained", []Extent{{0, 100}, {10, 5}}, []Extent{{0, 100}}, false},
		{"last byte", []Extent{{99, 1}}, []Extent{{99, 1}}, false},
		{"past end", []Extent{{99, 2}}, nil, true},
		{"starts past end", []Extent{{101, 0}}, nil, true},
		{"negative", []Extent{{-1, 1}}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := normalize(tt.in, 100)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestWorkChunks(t *testing.T) {
	w := &work{ext: []Extent{{100, 250}, {1000, 10}, {1024, 200}}, chunk: 128}
	var got []Extent
	for {
		off, n, ok := w.next()
		if !ok {
			break
		}
		got = append(got, Extent{off, n})
	}
	want := []Extent{{100, 28}, {128, 128}, {256, 94}, {1000, 10}, {1024, 128}, {1152, 72}}
	if len(got) != len(want) {
		t.Fatalf("chunks %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("chunks %v, want %v", got, want)
		}
	}
}
