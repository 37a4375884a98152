package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// Format constants.
const (
	// Magic starts every manifest file.
	Magic = "SDNSMNFT"
	// Version is the format version this build writes and reads.
	Version = 1
	// ChunkSize is the size of a chunk: 1 MiB. The copier's reads
	// (copier.DefaultChunkSize) are whole multiples of it, so every chunk
	// is hashed from one read of the backup.
	ChunkSize = 1 << 20
	// HeaderSize is the length of the header before the digests.
	HeaderSize = 32
	// Ext is the manifest's file extension: <job-id>.manifest next to
	// <job-id>.qcow2.
	Ext = ".manifest"
)

// Errors of Parse and Read.
var (
	// ErrBadMagic: the bytes are no manifest.
	ErrBadMagic = errors.New("not a manifest (bad magic)")
	// ErrVersion: a manifest of a version this build does not read.
	ErrVersion = errors.New("unsupported manifest version")
	// ErrCorrupt: the header's sizes disagree, or the file is shorter or
	// longer than its header says.
	ErrCorrupt = errors.New("corrupt manifest")
)

// Digest is a SHA-256 digest. It marshals as 64 lowercase hex digits.
type Digest [sha256.Size]byte

// Sum returns the SHA-256 of b.
func Sum(b []byte) Digest { return sha256.Sum256(b) }

// String returns the digest as lowercase hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText implements encoding.TextMarshaler (hex).
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (64 hex digits).
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) != 2*len(d) {
		return fmt.Errorf("digest %q: want %d hex digits", b, 2*len(d))
	}
	if _, err := hex.Decode(d[:], b); err != nil {
		return fmt.Errorf("digest %q: %w", b, err)
	}
	return nil
}

// ParseDigest parses 64 hex digits.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	err := d.UnmarshalText([]byte(s))
	return d, err
}

var zeroDigests sync.Map // int64 length -> Digest

// ZeroDigest returns the digest of n zero bytes (cached per length).
func ZeroDigest(n int64) Digest {
	if d, ok := zeroDigests.Load(n); ok {
		return d.(Digest)
	}
	d := Sum(make([]byte, n))
	zeroDigests.Store(n, d)
	return d
}

// Entry is one chunk's digest: what the copier reports and the agent sends
// to the hub.
type Entry struct {
	Index  int64  `json:"i"`
	Digest Digest `json:"d"`
}

// Manifest is the digests of every chunk of a disk at one point.
type Manifest struct {
	ChunkSize int64
	Capacity  int64
	Digests   []Digest
}

// New returns the manifest of a disk of capacity bytes whose every chunk
// is zero, with ChunkSize chunks.
func New(capacity int64) *Manifest { return NewChunked(capacity, ChunkSize) }

// NewChunked is New with another chunk size (tests and benchmarks).
func NewChunked(capacity, chunkSize int64) *Manifest {
	m := &Manifest{ChunkSize: chunkSize, Capacity: capacity, Digests: make([]Digest, Chunks(capacity, chunkSize))}
	for i := range m.Digests {
		m.Digests[i] = ZeroDigest(m.ChunkLen(int64(i)))
	}
	return m
}

// Chunks is the number of chunks of a disk: ceil(capacity / chunkSize).
func Chunks(capacity, chunkSize int64) int64 {
	if capacity <= 0 || chunkSize <= 0 {
		return 0
	}
	return (capacity + chunkSize - 1) / chunkSize
}

// ChunkLen is the length of chunk i (the last one may be short).
func (m *Manifest) ChunkLen(i int64) int64 {
	return min(m.ChunkSize, m.Capacity-i*m.ChunkSize)
}

// Offset is the disk offset of chunk i.
func (m *Manifest) Offset(i int64) int64 { return i * m.ChunkSize }

// Set records chunk i's digest. It fails for an index outside the disk.
func (m *Manifest) Set(i int64, d Digest) error {
	if i < 0 || i >= int64(len(m.Digests)) {
		return fmt.Errorf("chunk %d of a %d-byte disk (%d chunks): %w", i, m.Capacity, len(m.Digests), ErrCorrupt)
	}
	m.Digests[i] = d
	return nil
}

// Clone returns a deep copy.
func (m *Manifest) Clone() *Manifest {
	c := *m
	c.Digests = append([]Digest(nil), m.Digests...)
	return &c
}

// FirstMismatch returns the index of the first chunk whose digest differs
// between m and o, and ok false when they are equal. Manifests of another
// chunk size or capacity differ at chunk 0.
func (m *Manifest) FirstMismatch(o *Manifest) (index int64, differ bool) {
	if m.ChunkSize != o.ChunkSize || m.Capacity != o.Capacity || len(m.Digests) != len(o.Digests) {
		return 0, true
	}
	for i := range m.Digests {
		if m.Digests[i] != o.Digests[i] {
			return int64(i), true
		}
	}
	return 0, false
}

// MarshalBinary encodes the manifest in the file format.
func (m *Manifest) MarshalBinary() ([]byte, error) {
	if err := m.check(int64(len(m.Digests))); err != nil {
		return nil, err
	}
	b := make([]byte, HeaderSize, HeaderSize+len(m.Digests)*sha256.Size)
	copy(b, Magic)
	binary.BigEndian.PutUint32(b[8:], Version)
	binary.BigEndian.PutUint32(b[12:], uint32(m.ChunkSize))
	binary.BigEndian.PutUint64(b[16:], uint64(m.Capacity))
	binary.BigEndian.PutUint64(b[24:], uint64(len(m.Digests)))
	for _, d := range m.Digests {
		b = append(b, d[:]...)
	}
	return b, nil
}

func (m *Manifest) check(n int64) error {
	switch {
	case m.ChunkSize < 512 || m.ChunkSize > 1<<30:
		return fmt.Errorf("chunk size %d: %w", m.ChunkSize, ErrCorrupt)
	case m.Capacity < 0:
		return fmt.Errorf("capacity %d: %w", m.Capacity, ErrCorrupt)
	case n != Chunks(m.Capacity, m.ChunkSize):
		return fmt.Errorf("%d digests for %d bytes in chunks of %d (want %d): %w", n, m.Capacity, m.ChunkSize, Chunks(m.Capacity, m.ChunkSize), ErrCorrupt)
	}
	return nil
}

// Parse decodes a manifest file's bytes.
func Parse(b []byte) (*Manifest, error) {
	if len(b) < len(Magic) || string(b[:len(Magic)]) != Magic {
		return nil, ErrBadMagic
	}
	if len(b) < HeaderSize {
		return nil, fmt.Errorf("%d bytes, shorter than the %d-byte header: %w", len(b), HeaderSize, ErrCorrupt)
	}
	if v := binary.BigEndian.Uint32(b[8:]); v != Version {
		return nil, fmt.Errorf("version %d, this build reads %d: %w", v, Version, ErrVersion)
	}
	m := &Manifest{ChunkSize: int64(binary.BigEndian.Uint32(b[12:])), Capacity: int64(binary.BigEndian.Uint64(b[16:]))}
	n := binary.BigEndian.Uint64(b[24:])
	if n > 1<<40 {
		return nil, fmt.Errorf("%d digests: %w", n, ErrCorrupt)
	}
	if err := m.check(int64(n)); err != nil {
		return nil, err
	}
	if want := HeaderSize + int64(n)*sha256.Size; int64(len(b)) != want {
		return nil, fmt.Errorf("%d bytes, the header says %d: %w", len(b), want, ErrCorrupt)
	}
	m.Digests = make([]Digest, n)
	for i := range m.Digests {
		copy(m.Digests[i][:], b[HeaderSize+i*sha256.Size:])
	}
	return m, nil
}

// Read reads and parses the manifest at path, and returns the SHA-256 of
// the file's bytes too (what backup.completed carries). A missing file is
// an error matching fs.ErrNotExist.
func Read(path string) (*Manifest, Digest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, Digest{}, fmt.Errorf("read manifest %s: %w", path, err)
	}
	m, err := Parse(b)
	if err != nil {
		return nil, Digest{}, fmt.Errorf("read manifest %s: %w", path, err)
	}
	return m, Sum(b), nil
}

// Write writes m to path atomically (a synced temporary file renamed over
// path, then the directory synced) with mode 0640, and returns the SHA-256
// of the bytes written.
func Write(path string, m *Manifest) (Digest, error) {
	b, err := m.MarshalBinary()
	if err != nil {
		return Digest{}, fmt.Errorf("write manifest %s: %w", path, err)
	}
	if err := writeAtomic(path, b); err != nil {
		return Digest{}, fmt.Errorf("write manifest %s: %w", path, err)
	}
	return Sum(b), nil
}

func writeAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone after the rename; removes a failed write
	if err := f.Chmod(0o640); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Remove removes the manifest at path; a missing one is no error.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove manifest %s: %w", path, err)
	}
	return nil
}

// HashFile returns the manifest of the bytes of the raw file at path (its
// size is the capacity), read in ChunkSize chunks. A chunk of zeroes gets
// ZeroDigest without hashing.
func HashFile(path string) (*Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", path, err)
	}
	m := New(st.Size())
	buf := make([]byte, ChunkSize)
	for i := range m.Digests {
		b := buf[:m.ChunkLen(int64(i))]
		if _, err := f.ReadAt(b, m.Offset(int64(i))); err != nil {
			return nil, fmt.Errorf("hash %s at offset %d: %w", path, m.Offset(int64(i)), err)
		}
		if isZero(b) {
			m.Digests[i] = ZeroDigest(int64(len(b)))
		} else {
			m.Digests[i] = Sum(b)
		}
	}
	return m, nil
}

// isZero reports whether every byte of b is zero, reading all of it.
func isZero(b []byte) bool {
	return len(b) == 0 || b[0] == 0 && bytes.Equal(b[:len(b)-1], b[1:])
}
