package testutil

import (
	"bytes"
	"math/rand"
	"os"
	"sync"
	"testing"
)

// WriteRawImage writes a raw disk image of size bytes to path and returns
// its bytes: seeded random data in about a third of the 64 KiB blocks,
// zeros elsewhere, and data in the last 512 bytes.
func WriteRawImage(tb testing.TB, path string, size int, seed int64) []byte {
	tb.Helper()
	rng := rand.New(rand.NewSource(seed))
	buf := make([]byte, size)
	for off := 0; off+65536 <= len(buf); off += 65536 {
		if rng.Intn(3) == 0 {
			rng.Read(buf[off : off+65536])
		}
	}
	rng.Read(buf[len(buf)-512:])
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		tb.Fatal(err)
	}
	return buf
}

// Buffer is a bytes.Buffer safe for concurrent writers, for collecting a
// process's or a logger's output in a test.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
