package testbed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"

	"golang.org/x/sys/unix"
)

// dataExtents lists the allocated (data) ranges of f below size, using
// SEEK_DATA / SEEK_HOLE. The caller serialises access to f's offset.
func dataExtents(f *os.File, size int64) ([]Extent, error) {
	fd := int(f.Fd())
	var out []Extent
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && data >= size) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("seek data in %s from %d: %w", f.Name(), off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s from %d: %w", f.Name(), data, err)
		}
		if hole > size {
			hole = size
		}
		out = append(out, Extent{Offset: data, Length: hole - data})
		off = hole
	}
	return out, nil
}

// freezeImage copies the first size bytes of src to a new file dst keeping
// holes: only the allocated ranges are copied (copy_file_range), so a mostly
// sparse image copies in the time its data takes. It returns the allocated
// ranges, which are also the frozen image's allocated ranges.
func freezeImage(src *os.File, dst string, size int64) (alloc []Extent, err error) {
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create frozen image %s: %w", dst, err)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close frozen image %s: %w", dst, cerr)
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	if err := out.Truncate(size); err != nil {
		return nil, fmt.Errorf("size frozen image %s: %w", dst, err)
	}
	alloc, err = dataExtents(src, size)
	if err != nil {
		return nil, err
	}
	for _, e := range alloc {
		if err := copyRange(src, out, e.Offset, e.Length); err != nil {
			return nil, fmt.Errorf("copy [%d, +%d) of %s to %s: %w", e.Offset, e.Length, src.Name(), dst, err)
		}
	}
	return alloc, nil
}

// copyRange copies n bytes at off from src to the same offset in dst, with
// copy_file_range where the kernel allows it, else through a buffer.
func copyRange(src, dst *os.File, off, n int64) error {
	roff, woff := off, off
	for n > 0 {
		chunk := min(n, 1<<30)
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(chunk), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				_, err := io.Copy(io.NewOffsetWriter(dst, woff), io.NewSectionReader(src, roff, n))
				return err
			}
			return err
		}
		if c == 0 {
			return io.ErrUnexpectedEOF
		}
		n -= int64(c)
	}
	return nil
}

// randomReader produces a deterministic byte stream from a seed: ChaCha8
// for the data (fast, one call per buffer) and a PCG for offsets and sizes.
type randomReader struct {
	r    *rand.Rand
	data *rand.ChaCha8
}

func newRandom(seed int64) *randomReader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], uint64(seed))
	copy(key[8:], "sendense-testbed-random-data")
	return &randomReader{
		r:    rand.New(rand.NewPCG(uint64(seed), 0x5e4de45e)),
		data: rand.NewChaCha8(key),
	}
}

func (r *randomReader) fill(b []byte) { _, _ = r.data.Read(b) }

// punchHole deallocates [off, off+n) keeping the file size.
func punchHole(f *os.File, off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}
