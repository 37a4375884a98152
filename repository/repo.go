package repository

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/manifest"
)

// Repo is a directory of QCOW2 chains laid out as
// ROOT/<vm-uuid>/<disk-key>/<job-id>.qcow2, and the registry of the qemu-nbd
// exports it started. Its methods are safe for concurrent use. One Repo per
// root per host: the registry and the Create/Remove lock are in memory.
type Repo struct {
	root string

	// dirs holds a lock per disk directory (lockDir): Create, Remove,
	// prune and the temporary files' listing and removal of one disk
	// serialise, so a file cannot be removed while an incremental backed
	// by it (always in the same directory) is being created. Disks of
	// other VMs, or other disks, do not wait for each other: a qemu-img
	// create or a merge of one never holds up another's.
	dirMu sync.Mutex
	dirs  map[string]*dirLock

	mu      sync.Mutex // guards exports and closed
	exports map[*Export]struct{}
	closed  bool
}

// File is one backup file present in a disk's directory.
type File struct {
	JobID      string
	Path       string // absolute
	Size       int64  // apparent size of the file in bytes
	ActualSize int64  // bytes allocated on disk
	ModTime    time.Time
	// BackingFile is the backing file name as written in the qcow2 header
	// ("" for a full). Files made by Create hold a name relative to the
	// file's directory.
	BackingFile string
	// BackingJobID is the job id of the backing file when it is a sibling
	// backup file ("" for a full or a backing file elsewhere).
	BackingJobID string
}

// Open opens the repository rooted at root, creating the directory (0750)
// when missing. The root is made absolute with symbolic links resolved, so
// the paths the Repo returns are canonical.
func Open(root string) (*Repo, error) {
	if root == "" {
		return nil, errors.New("open repository: empty root")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("open repository %s: %w", root, err)
	}
	abs, err = filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", root, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("open repository %s: not a directory", root)
	}
	return &Repo{root: abs, exports: make(map[*Export]struct{}), dirs: make(map[string]*dirLock)}, nil
}

// Root returns the absolute root directory.
func (r *Repo) Root() string { return r.root }

// Path returns the absolute path of a job's backup file of a disk, whether
// or not it exists. The ids are validated first (ErrInvalidID).
func (r *Repo) Path(vmUUID string, diskKey int32, jobID string) (string, error) {
	if err := validateIDs(vmUUID, diskKey, jobID); err != nil {
		return "", fmt.Errorf("path of job %q disk %d of vm %q: %w", jobID, diskKey, vmUUID, err)
	}
	return filepath.Join(r.diskDir(vmUUID, diskKey), fileName(jobID)), nil
}

// ManifestPath returns the absolute path of a job's manifest of a disk
// (<job-id>.manifest beside <job-id>.qcow2; package manifest), whether or
// not it exists. The ids are validated first (ErrInvalidID).
func (r *Repo) ManifestPath(vmUUID string, diskKey int32, jobID string) (string, error) {
	if err := validateIDs(vmUUID, diskKey, jobID); err != nil {
		return "", fmt.Errorf("manifest path of job %q disk %d of vm %q: %w", jobID, diskKey, vmUUID, err)
	}
	return filepath.Join(r.diskDir(vmUUID, diskKey), jobID+manifest.Ext), nil
}

// diskDir is the directory of a disk's chain; ids must be valid.
func (r *Repo) diskDir(vmUUID string, diskKey int32) string {
	return filepath.Join(r.root, vmUUID, strconv.FormatInt(int64(diskKey), 10))
}

// dirLock is the lock of one disk directory, kept while anyone holds or
// waits for it.
type dirLock struct {
	mu   sync.Mutex
	refs int // guarded by Repo.dirMu
}

// lockDir locks the disk directory dir (a diskDir path) and returns its
// unlock.
func (r *Repo) lockDir(dir string) (unlock func()) {
	dir = filepath.Clean(dir)
	r.dirMu.Lock()
	l := r.dirs[dir]
	if l == nil {
		l = &dirLock{}
		r.dirs[dir] = l
	}
	l.refs++
	r.dirMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		r.dirMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(r.dirs, dir)
		}
		r.dirMu.Unlock()
	}
}

// Create makes the backup file of job jobID for a disk and returns its path.
//
// With backingJobID empty it is a full: an empty qcow2 of exactly
// capacityBytes virtual bytes. Otherwise it is an incremental whose backing
// file is backingJobID's file of the same disk, referenced by its relative
// name (so the repository can be moved) with format qcow2; that file must
// exist (ErrNoBacking) and have exactly capacityBytes virtual bytes
// (ErrCapacityMismatch).
//
// The image is made under a temporary dot-name in the disk's directory and
// linked to its final name only when complete, so a failed Create leaves no
// file behind, and an existing file is never replaced (ErrExists).
// capacityBytes must be a positive multiple of 512 (ErrInvalidCapacity).
// A full file system gives an error matching ErrNoSpace.
func (r *Repo) Create(ctx context.Context, vmUUID string, diskKey int32, jobID string, capacityBytes int64, backingJobID string) (string, error) {
	path, err := r.create(ctx, vmUUID, diskKey, jobID, capacityBytes, backingJobID)
	if err != nil {
		return "", fmt.Errorf("create backup file of job %s for disk %d of vm %s: %w", jobID, diskKey, vmUUID, withNoSpace(err))
	}
	zerolog.Ctx(ctx).Info().Str("job_id", jobID).Str("vm", vmUUID).Int32("disk_key", diskKey).
		Str("path", path).Int64("capacity", capacityBytes).Str("base_job_id", backingJobID).
		Msg("backup file created")
	return path, nil
}

func (r *Repo) create(ctx context.Context, vmUUID string, diskKey int32, jobID string, capacity int64, backingJobID string) (string, error) {
	if err := validateIDs(vmUUID, diskKey, jobID); err != nil {
		return "", err
	}
	if backingJobID != "" {
		if err := ValidateJobID(backingJobID); err != nil {
			return "", fmt.Errorf("backing job id: %w", err)
		}
		if backingJobID == jobID {
			return "", fmt.Errorf("job %s cannot back onto itself: %w", jobID, ErrInvalidID)
		}
	}
	if err := ValidateCapacity(capacity); err != nil {
		return "", err
	}
	dir := r.diskDir(vmUUID, diskKey)
	final := filepath.Join(dir, fileName(jobID))

	defer r.lockDir(dir)()

	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	if _, err := os.Lstat(final); err == nil {
		return "", fmt.Errorf("%s: %w", final, ErrExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	removeTemps(dir, jobID)

	args := []string{"create", "-f", "qcow2"}
	if backingJobID != "" {
		backing := filepath.Join(dir, fileName(backingJobID))
		// Its header, not qemu-img info: the caller checked the chain
		// (CheckBase) and this only needs the format and the size.
		img, _, err := readHeader(backing)
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("backing file %s of job %s: %w", backing, backingJobID, ErrNoBacking)
		}
		if err != nil {
			return "", fmt.Errorf("backing file %s, want a qcow2 file: %w: %w", backing, ErrNoBacking, err)
		}
		if img.VirtualSize != capacity {
			return "", fmt.Errorf("capacity %d bytes, backing file %s has %d: %w", capacity, backing, img.VirtualSize, ErrCapacityMismatch)
		}
		args = append(args, "-b", fileName(backingJobID), "-F", "qcow2")
	}

	tf, err := os.CreateTemp(dir, tempPrefix(jobID)+"*.tmp")
	if err != nil {
		return "", err
	}
	tmp := tf.Name()
	tf.Close()
	done := false
	defer func() {
		if !done {
			os.Remove(tmp)
		}
	}()

	args = append(args, tmp, strconv.FormatInt(capacity, 10))
	if _, err := run(ctx, qemuImg, args...); err != nil {
		return "", err
	}
	if err := syncPath(tmp); err != nil {
		return "", err
	}
	// Link, not rename: it fails instead of replacing a file that appeared.
	if err := os.Link(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("%s: %w", final, ErrExists)
		}
		return "", err
	}
	done = true
	os.Remove(tmp)
	if err := syncPath(dir); err != nil {
		return "", err
	}
	return final, nil
}

// ValidateCapacity reports whether Create accepts a capacity: a positive
// multiple of 512 bytes. The error wraps ErrInvalidCapacity.
func ValidateCapacity(bytes int64) error {
	if bytes <= 0 || bytes%512 != 0 {
		return fmt.Errorf("capacity %d bytes, want a positive multiple of 512: %w", bytes, ErrInvalidCapacity)
	}
	return nil
}

// tempPrefix starts the temporary names of a job's file. The leading dot
// keeps them out of the id space (ids never start with a dot).
func tempPrefix(jobID string) string { return "." + fileName(jobID) + "." }

// removeTemps removes temporary files a crashed Create of jobID left in dir.
// Callers hold dir's lock (lockDir).
func removeTemps(dir, jobID string) {
	// Ids hold no glob metacharacters.
	matches, _ := filepath.Glob(filepath.Join(dir, tempPrefix(jobID)+"*.tmp"))
	for _, m := range matches {
		os.Remove(m)
	}
}

// syncPath fsyncs a file or directory.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// List returns the backup files of a disk, sorted by job id. A disk with no
// directory has none. Temporary files of a Create in progress are skipped.
func (r *Repo) List(vmUUID string, diskKey int32) ([]File, error) {
	files, err := r.list(vmUUID, diskKey)
	if err != nil {
		return nil, fmt.Errorf("list backup files of disk %d of vm %q: %w", diskKey, vmUUID, err)
	}
	return files, nil
}

func (r *Repo) list(vmUUID string, diskKey int32) ([]File, error) {
	if err := ValidateID(vmUUID); err != nil {
		return nil, fmt.Errorf("vm id: %w", err)
	}
	if err := validateDiskKey(diskKey); err != nil {
		return nil, err
	}
	dir := r.diskDir(vmUUID, diskKey)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var files []File
	for _, e := range entries {
		name := e.Name()
		job, ok := strings.CutSuffix(name, fileExt)
		if !ok || ValidateJobID(job) != nil || !e.Type().IsRegular() {
			continue
		}
		f, err := fileOf(filepath.Join(dir, name), job)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].JobID < files[j].JobID })
	return files, nil
}

// File returns job jobID's backup file of a disk as List describes it. A
// missing file is an error matching fs.ErrNotExist; a file whose qcow2
// header cannot be read is an error too. Ids are validated (ErrInvalidID).
func (r *Repo) File(vmUUID string, diskKey int32, jobID string) (File, error) {
	path, err := r.Path(vmUUID, diskKey, jobID)
	if err != nil {
		return File{}, err
	}
	f, err := fileOf(path, jobID)
	if err != nil {
		return File{}, fmt.Errorf("backup file of job %s for disk %d of vm %s: %w", jobID, diskKey, vmUUID, err)
	}
	return f, nil
}

// fileOf describes the backup file of job at path.
func fileOf(path, job string) (File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return File{}, err
	}
	if !st.Mode().IsRegular() {
		return File{}, fmt.Errorf("%s is not a regular file: %w", path, fs.ErrNotExist)
	}
	backing, err := readBackingName(path)
	if err != nil {
		return File{}, err
	}
	f := File{JobID: job, Path: path, Size: st.Size(), ModTime: st.ModTime(), BackingFile: backing}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		f.ActualSize = sys.Blocks * 512
	}
	if b, ok := strings.CutSuffix(backing, fileExt); ok && !strings.Contains(backing, "/") && ValidateJobID(b) == nil {
		f.BackingJobID = b
	}
	return f, nil
}

// Remove deletes a job's backup file of a disk, typically the partial file
// of a failed attempt, with its manifest and any temporary file a crashed
// Create of the job left. It refuses a file another file of the disk uses as its backing file
// (ErrIsBacking) and a file that is exported (ErrBusy). A missing file is
// not an error, so Remove can be retried. Remove never touches anything
// outside the disk's directory.
func (r *Repo) Remove(vmUUID string, diskKey int32, jobID string) error {
	if err := r.remove(vmUUID, diskKey, jobID); err != nil {
		return fmt.Errorf("remove backup file of job %s for disk %d of vm %s: %w", jobID, diskKey, vmUUID, err)
	}
	return nil
}

func (r *Repo) remove(vmUUID string, diskKey int32, jobID string) error {
	if err := validateIDs(vmUUID, diskKey, jobID); err != nil {
		return err
	}
	dir := r.diskDir(vmUUID, diskKey)
	target := filepath.Join(dir, fileName(jobID))

	defer r.lockDir(dir)()

	if e := r.exportOf(target); e != nil {
		return fmt.Errorf("%s by qemu-nbd pid %d: %w", target, e.PID(), ErrBusy)
	}
	files, err := r.list(vmUUID, diskKey)
	if err != nil {
		return err
	}
	for _, f := range files {
		if f.Path == target || f.BackingFile == "" {
			continue
		}
		b := f.BackingFile
		if !filepath.IsAbs(b) {
			b = filepath.Join(dir, b)
		}
		if filepath.Clean(b) == target {
			return fmt.Errorf("%s backs job %s: %w", target, f.JobID, ErrIsBacking)
		}
	}
	removeTemps(dir, jobID)
	if err := manifest.Remove(filepath.Join(dir, jobID+manifest.Ext)); err != nil {
		return err
	}
	if err := os.Remove(target); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	return syncPath(dir)
}

// Close stops every export the Repo started (see Export.Close) and refuses
// new ones (ErrClosed). Files are untouched. It returns the joined errors of
// the exports' Close.
func (r *Repo) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	var errs []error
	for _, e := range r.exportList() {
		if err := e.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
