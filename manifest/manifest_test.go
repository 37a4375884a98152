package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, capacity := range []int64{0, 512, ChunkSize, ChunkSize + 512, 10*ChunkSize - 4096} {
		m := New(capacity)
		if got, want := int64(len(m.Digests)), Chunks(capacity, ChunkSize); got != want {
			t.Fatalf("capacity %d: %d digests, want %d", capacity, got, want)
		}
		for i := range m.Digests {
			buf := bytes.Repeat([]byte{byte(i + 1)}, int(m.ChunkLen(int64(i))))
			if err := m.Set(int64(i), Sum(buf)); err != nil {
				t.Fatal(err)
			}
		}
		path := filepath.Join(t.TempDir(), "job-1"+Ext)
		sum, err := Write(path, m)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := os.ReadFile(path)
		if sum != Sum(raw) {
			t.Fatalf("Write returned %s, the file's sum is %s", sum, Sum(raw))
		}
		got, gotSum, err := Read(path)
		if err != nil {
			t.Fatal(err)
		}
		if gotSum != sum {
			t.Fatalf("Read sum %s, Write sum %s", gotSum, sum)
		}
		if i, differ := got.FirstMismatch(m); differ {
			t.Fatalf("capacity %d: read back differs at chunk %d", capacity, i)
		}
		if entries, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*")); len(entries) != 0 {
			t.Fatalf("temporary files left: %v", entries)
		}
	}
}

func TestLastChunkShort(t *testing.T) {
	m := New(2*ChunkSize + 4096)
	if m.ChunkLen(2) != 4096 || m.ChunkLen(1) != ChunkSize {
		t.Fatalf("chunk lengths %d, %d", m.ChunkLen(1), m.ChunkLen(2))
	}
	if m.Digests[2] != Sum(make([]byte, 4096)) || m.Digests[0] != Sum(make([]byte, ChunkSize)) {
		t.Fatal("zero digests wrong")
	}
}

func TestFirstMismatch(t *testing.T) {
	a, b := New(4*ChunkSize), New(4*ChunkSize)
	if _, differ := a.FirstMismatch(b); differ {
		t.Fatal("equal manifests differ")
	}
	_ = b.Set(2, Sum([]byte("x")))
	_ = b.Set(3, Sum([]byte("y")))
	if i, differ := a.FirstMismatch(b); !differ || i != 2 {
		t.Fatalf("mismatch at %d (%v), want 2", i, differ)
	}
	if _, differ := a.FirstMismatch(New(5 * ChunkSize)); !differ {
		t.Fatal("manifests of different capacities are equal")
	}
	if err := a.Set(4, Digest{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Set beyond the disk: %v", err)
	}
}

func TestParseBad(t *testing.T) {
	good, _ := New(3 * ChunkSize).MarshalBinary()
	version := bytes.Clone(good)
	version[11] = 9
	count := bytes.Clone(good)
	count[31] = 4
	chunk := bytes.Clone(good)
	chunk[12], chunk[13], chunk[14], chunk[15] = 0, 0, 0, 1
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrBadMagic},
		{"bad magic", append([]byte("QFI\xfb0000"), good[8:]...), ErrBadMagic},
		{"header cut", good[:20], ErrCorrupt},
		{"short", good[:len(good)-1], ErrCorrupt},
		{"long", append(bytes.Clone(good), 0), ErrCorrupt},
		{"version", version, ErrVersion},
		{"count disagrees with capacity", count, ErrCorrupt},
		{"tiny chunk", chunk, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse(tt.b); !errors.Is(err, tt.want) {
				t.Fatalf("Parse: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := Read(filepath.Join(dir, "none"+Ext)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	p := filepath.Join(dir, "short"+Ext)
	good, _ := New(ChunkSize).MarshalBinary()
	_ = os.WriteFile(p, good[:40], 0o600)
	_, _, err := Read(p)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short file: %v", err)
	}
	t.Log(err)
}

func TestEntryJSON(t *testing.T) {
	e := Entry{Index: 7, Digest: Sum([]byte("abc"))}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"i":7,"d":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}`
	if string(b) != want {
		t.Fatalf("got %s", b)
	}
	var back Entry
	if err := json.Unmarshal(b, &back); err != nil || back != e {
		t.Fatalf("round trip %v %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"i":1,"d":"zz"}`), &back); err == nil {
		t.Fatal("bad digest accepted")
	}
}

func TestHashFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.raw")
	b := make([]byte, 3*ChunkSize+1024)
	copy(b[ChunkSize+7:], "data")
	b[len(b)-1] = 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := HashFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := New(int64(len(b)))
	for i := range want.Digests {
		off := want.Offset(int64(i))
		want.Digests[i] = Sum(b[off : off+want.ChunkLen(int64(i))])
	}
	if i, differ := m.FirstMismatch(want); differ {
		t.Fatalf("differs at chunk %d", i)
	}
}
