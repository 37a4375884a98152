package bus

import "golang.org/x/sys/unix"

// freeSpace returns the bytes an unprivileged process may still write on
// the file system of path, and the file system's size.
func freeSpace(path string) (free, size int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	unit := int64(st.Frsize) // the unit of the block counts
	if unit <= 0 {
		unit = int64(st.Bsize)
	}
	return int64(st.Bavail) * unit, int64(st.Blocks) * unit, nil
}
