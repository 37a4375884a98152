package testbed

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Copy-on-write of the live images
//
// A snapshot freezes a disk in O(1): the frozen image is a hard link to
// the live image (one inode, two names), and the allocated ranges are
// listed (SEEK_DATA/SEEK_HOLE, a walk of the extent map, no data read).
// The live image is split from its frozen layers only when the guest
// next changes it: before a Write, WriteZeros, PunchHole, WriteRandom or
// Resize on a live image whose inode has other names, split gives the
// live name an inode of its own — a reflink clone (FICLONE) where the
// filesystem has them, in O(1), else a sparse copy of the allocated ranges
// (copy_file_range) — renamed over the live name. The frozen names keep
// the old inode, so a reader that has a frozen image open (nbdkit, a
// /folder Range read) never sees a guest write. Removing a snapshot is
// O(1) as well: there is nothing to merge back, the frozen layer is only a
// name (kept until Close, for SnapshotImage). Jobs without guest writes in
// between, the common case of scale tests, never copy a byte; the first
// guest write after a snapshot pays the copy on filesystems without
// reflinks (ext4), outside any backup job.

// split gives d's live image an inode of its own when a frozen layer
// shares it. Caller holds tb.mu.
func (tb *Testbed) split(d *disk) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(d.f.Fd()), &st); err != nil {
		return fmt.Errorf("stat live image %s: %w", d.path, err)
	}
	if st.Nlink <= 1 {
		return nil
	}
	start := time.Now()
	tmp := d.path + ".split"
	_ = os.Remove(tmp) // a leftover of a crash mid-split
	how, err := cloneImage(d.f, tmp, d.capacity)
	if err != nil {
		return fmt.Errorf("split live image %s from its frozen layers: %w", d.path, err)
	}
	nf, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err == nil {
		if err = os.Rename(tmp, d.path); err != nil {
			_ = nf.Close()
		}
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("split live image %s from its frozen layers: %w", d.path, err)
	}
	_ = d.f.Close()
	d.f = nf
	tb.log.Debug().Int32("disk_key", d.key).Str("image", d.path).Str("method", how).
		Dur("took", time.Since(start)).Msg("live image split from its frozen layers")
	return nil
}

// cloneImage makes dst a copy of src's first size bytes: a reflink clone
// where the filesystem can, else a sparse copy. It returns "reflink" or
// "copy".
func cloneImage(src *os.File, dst string, size int64) (string, error) {
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", dst, err)
	}
	cerr := unix.IoctlFileClone(int(out.Fd()), int(src.Fd()))
	if err := out.Close(); err != nil && cerr == nil {
		_ = os.Remove(dst)
		return "", fmt.Errorf("close %s: %w", dst, err)
	}
	if cerr == nil {
		if err := os.Truncate(dst, size); err != nil {
			_ = os.Remove(dst)
			return "", fmt.Errorf("size %s: %w", dst, err)
		}
		return "reflink", nil
	}
	if !errors.Is(cerr, unix.EOPNOTSUPP) && !errors.Is(cerr, unix.EXDEV) && !errors.Is(cerr, unix.EINVAL) &&
		!errors.Is(cerr, unix.ENOTTY) && !errors.Is(cerr, unix.ENOSYS) && !errors.Is(cerr, unix.EPERM) {
		_ = os.Remove(dst)
		return "", fmt.Errorf("clone to %s: %w", dst, cerr)
	}
	if err := os.Remove(dst); err != nil {
		return "", err
	}
	if _, err := freezeImage(src, dst, size); err != nil {
		return "", err
	}
	return "copy", os.Chmod(dst, 0o644)
}

// freezeLink makes path a frozen layer of d's live image in O(1): a hard
// link, split from the live image by its next guest write. It returns the
// allocated ranges below size. Caller holds tb.mu.
func freezeLink(d *disk, path string, size int64) ([]Extent, error) {
	if err := os.Link(d.path, path); err != nil {
		return nil, fmt.Errorf("freeze %s as %s: %w", d.path, path, err)
	}
	alloc, err := dataExtents(d.f, size)
	if err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	return alloc, nil
}
