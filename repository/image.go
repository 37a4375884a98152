package repository

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// Image describes one image of a chain, from qemu-img info.
type Image struct {
	Path        string // absolute
	Format      string // "qcow2", "raw", ...
	VirtualSize int64  // guest-visible bytes
	ActualSize  int64  // bytes allocated on the host
	ClusterSize int64  // 0 for formats without clusters
	// BackingFile is the backing file name as written in the image ("" for
	// a base); BackingPath is it resolved against the image's directory.
	BackingFile   string
	BackingPath   string
	BackingFormat string
	Dirty         bool // qcow2 dirty flag (lazy refcounts, not closed cleanly)
	Corrupt       bool // qcow2 corrupt flag
}

// Info describes an image and its backing chain.
type Info struct {
	Image         // the image asked about
	Chain []Image // the image itself first, then its backing file, down to the base
}

type imageJSON struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	ActualSize          int64  `json:"actual-size"`
	ClusterSize         int64  `json:"cluster-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFormat       string `json:"backing-filename-format"`
	DirtyFlag           bool   `json:"dirty-flag"`
	FormatSpecific      struct {
		Data struct {
			Corrupt bool `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

func (j imageJSON) image() Image {
	return Image{
		Path: j.Filename, Format: j.Format, VirtualSize: j.VirtualSize, ActualSize: j.ActualSize,
		ClusterSize: j.ClusterSize, BackingFile: j.BackingFilename, BackingPath: j.FullBackingFilename,
		BackingFormat: j.BackingFormat, Dirty: j.DirtyFlag, Corrupt: j.FormatSpecific.Data.Corrupt,
	}
}

// Info reads an image and its backing chain with
// `qemu-img info --output=json --backing-chain -U`. -U (force share) lets it
// read a file that qemu-nbd is exporting; sizes of such a file are a moment's
// view. Works on any path, in the repository or not.
func (r *Repo) Info(ctx context.Context, path string) (Info, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Info{}, fmt.Errorf("info of %s: %w", path, err)
	}
	out, err := run(ctx, qemuImg, "info", "--output=json", "--backing-chain", "-U", abs)
	if err != nil {
		return Info{}, fmt.Errorf("info of %s: %w", path, err)
	}
	var chain []imageJSON
	if err := json.Unmarshal(out, &chain); err != nil {
		return Info{}, fmt.Errorf("info of %s: decode qemu-img output: %w", path, err)
	}
	if len(chain) == 0 {
		return Info{}, fmt.Errorf("info of %s: qemu-img returned no image", path)
	}
	info := Info{Chain: make([]Image, len(chain))}
	for i, j := range chain {
		info.Chain[i] = j.image()
	}
	info.Image = info.Chain[0]
	return info, nil
}

// Check runs `qemu-img check` on a qcow2 file. It returns nil for a clean
// image, a *CheckError for an image with leaked clusters only (matches
// ErrLeaks), corruptions or a check that could not complete (matches
// ErrCorrupt), and ErrBusy for a file this Repo exports writable. Check
// reads the file only (no repair).
func (r *Repo) Check(ctx context.Context, path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if e := r.exportOf(abs); e != nil && !e.ReadOnly() {
		return fmt.Errorf("check %s: exported writable by qemu-nbd pid %d: %w", path, e.PID(), ErrBusy)
	}
	out, err := run(ctx, qemuImg, "check", "-f", "qcow2", "--output=json", abs)
	if err == nil {
		return nil
	}
	var ee *ExecError
	if !errors.As(err, &ee) || ee.ExitCode < 1 || ee.ExitCode > 3 || ctx.Err() != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	ce := &CheckError{Path: abs, ExitCode: ee.ExitCode, Output: ee.Stderr}
	var res struct {
		Corruptions int `json:"corruptions"`
		Leaks       int `json:"leaks"`
		CheckErrors int `json:"check-errors"`
	}
	if json.Unmarshal(out, &res) == nil {
		ce.Corruptions, ce.Leaks, ce.CheckErrors = res.Corruptions, res.Leaks, res.CheckErrors
	}
	return ce
}

// CheckBase checks that job jobID's backup file of a disk can be the
// backing file of a new incremental, before one is made on it:
//
//   - the file exists, is a regular file and opens for reading
//     (ErrNoBacking otherwise);
//   - `qemu-img info --backing-chain -U` opens its whole backing chain and
//     every file of it is qcow2 and not marked corrupt (ErrBrokenChain
//     otherwise: a backing file is missing, unreadable or damaged, or a
//     header is corrupt so the file no longer probes as qcow2);
//   - `qemu-img check` of the file itself finds no corruption (a
//     *CheckError matching ErrCorrupt otherwise; leaked clusters only waste
//     space and pass). The older files of the chain are not checked: each
//     was checked when it became a base.
//
// Both programs read metadata only, so the time does not grow with the
// data: for a 1 GiB base with every cluster written, 20 ms on an idle
// 2-CPU host and under 100 ms loaded (BenchmarkCheckBase). Ids are
// validated (ErrInvalidID). A file exported writable fails with ErrBusy.
func (r *Repo) CheckBase(ctx context.Context, vmUUID string, diskKey int32, jobID string) error {
	path, err := r.Path(vmUUID, diskKey, jobID)
	if err != nil {
		return err
	}
	if err := r.checkBase(ctx, path); err != nil {
		return fmt.Errorf("check base %s of disk %d of vm %s: %w", jobID, diskKey, vmUUID, err)
	}
	return nil
}

func (r *Repo) checkBase(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoBacking, err)
	}
	st, err := f.Stat()
	f.Close()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoBacking, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file: %w", path, ErrNoBacking)
	}
	info, err := r.Info(ctx, path)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("%w: %w", ErrBrokenChain, err)
	}
	for _, img := range info.Chain {
		if img.Format != "qcow2" {
			return fmt.Errorf("%s in the backing chain has format %q, want qcow2: %w", img.Path, img.Format, ErrBrokenChain)
		}
		if img.Corrupt {
			return fmt.Errorf("%s in the backing chain is marked corrupt: %w", img.Path, ErrBrokenChain)
		}
	}
	if last := info.Chain[len(info.Chain)-1]; last.BackingFile != "" {
		return fmt.Errorf("%s names backing file %q that qemu-img did not open: %w", last.Path, last.BackingFile, ErrBrokenChain)
	}
	if err := r.Check(ctx, path); err != nil && !errors.Is(err, ErrLeaks) {
		return err
	}
	return nil
}

// Compare reports whether two images have the same guest-visible content,
// with `qemu-img compare` (formats probed; unallocated areas read as zeros;
// for images of different sizes the extra part must be zeros). Exit status
// 1 means different; anything else but 0 is an error.
func (r *Repo) Compare(ctx context.Context, a, b string) (bool, error) {
	_, err := run(ctx, qemuImg, "compare", a, b)
	if err == nil {
		return true, nil
	}
	var ee *ExecError
	if errors.As(err, &ee) && ee.ExitCode == 1 && ctx.Err() == nil {
		return false, nil
	}
	return false, fmt.Errorf("compare %s with %s: %w", a, b, err)
}

// Restore writes the guest-visible content of a chain point (read through
// its backing chain) to dst, as "raw" or a standalone "qcow2" (no backing
// file), with `qemu-img convert`. dst is created or overwritten; after an
// error (or a cancelled ctx, which kills qemu-img) it may hold a partial
// image.
func (r *Repo) Restore(ctx context.Context, path, dst, format string) error {
	if format != "raw" && format != "qcow2" {
		return fmt.Errorf("restore %s to %s: format %q, want raw or qcow2: %w", path, dst, format, ErrInvalidFormat)
	}
	if _, err := run(ctx, qemuImg, "convert", "-f", "qcow2", "-O", format, path, dst); err != nil {
		return fmt.Errorf("restore %s to %s: %w", path, dst, err)
	}
	return nil
}

// qcow2Magic starts every qcow2 file.
var qcow2Magic = []byte{'Q', 'F', 'I', 0xfb}

// qcow2 header fields (docs/interop/qcow2.txt in qemu): the version 2
// header is 72 bytes, version 3 adds the feature bits.
const (
	qcow2HeaderV2   = 72
	qcow2HeaderV3   = 104
	qcow2Dirty      = 1 << 0 // incompatible feature bits
	qcow2Corrupt    = 1 << 1
	qcow2Compress   = 1 << 3
	qcow2ExtendedL2 = 1 << 4
	// qcow2Known are the incompatible features readHeader knows.
	qcow2Known = qcow2Dirty | qcow2Corrupt | qcow2Compress | qcow2ExtendedL2
)

// readBackingName returns the backing file name written in a qcow2 header
// ("" for none), without running qemu-img.
func readBackingName(path string) (string, error) {
	img, _, err := readHeader(path)
	if err != nil {
		return "", err
	}
	return img.BackingFile, nil
}

// readHeader describes one qcow2 file from its header, without running
// qemu-img: Format "qcow2", VirtualSize, ClusterSize, BackingFile and
// BackingPath, Dirty and Corrupt; ActualSize from the file's allocated
// blocks (what qemu-img info reports); BackingFormat is not read. A file
// that is no qcow2 of version 2 or 3, or whose header is cut short, is an
// error (not wrapped in a sentinel: callers say what it means to them).
// unknown holds the incompatible feature bits this package does not know
// (an external data file, a bit newer than this code): with any, the file
// alone is not the image as read here.
func readHeader(path string) (_ Image, unknown uint64, _ error) {
	// O_NONBLOCK: a FIFO in a file's place must not block the open; the
	// check below refuses it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return Image{}, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Image{}, 0, err
	}
	if !st.Mode().IsRegular() {
		return Image{}, 0, fmt.Errorf("%s is not a regular file", path)
	}
	var hdr [qcow2HeaderV3]byte
	n, err := f.ReadAt(hdr[:], 0)
	if n < qcow2HeaderV2 {
		return Image{}, 0, fmt.Errorf("read qcow2 header of %s: %d bytes: %w", path, n, cmp.Or(err, io.ErrUnexpectedEOF))
	}
	if string(hdr[:4]) != string(qcow2Magic) {
		return Image{}, 0, fmt.Errorf("read qcow2 header of %s: not a qcow2 file", path)
	}
	be := binary.BigEndian
	version := be.Uint32(hdr[4:8])
	if version != 2 && version != 3 {
		return Image{}, 0, fmt.Errorf("read qcow2 header of %s: version %d", path, version)
	}
	img := Image{Path: path, Format: "qcow2", VirtualSize: int64(be.Uint64(hdr[24:32]))}
	if bits := be.Uint32(hdr[20:24]); bits >= 9 && bits <= 21 {
		img.ClusterSize = 1 << bits
	}
	if version == 3 {
		if n < qcow2HeaderV3 {
			return Image{}, 0, fmt.Errorf("read qcow2 header of %s: %d bytes of a version 3 header: %w", path, n, cmp.Or(err, io.ErrUnexpectedEOF))
		}
		incompat := be.Uint64(hdr[72:80])
		unknown = incompat &^ qcow2Known
		img.Dirty, img.Corrupt = incompat&qcow2Dirty != 0, incompat&qcow2Corrupt != 0
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		img.ActualSize = sys.Blocks * 512
	}
	off, size := be.Uint64(hdr[8:16]), be.Uint32(hdr[16:20])
	if off == 0 || size == 0 {
		return img, unknown, nil
	}
	if size > 1023 || off > 1<<40 { // the spec's limit on the name; a sane offset
		return Image{}, 0, fmt.Errorf("read qcow2 header of %s: backing name of %d bytes at %d", path, size, off)
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return Image{}, 0, fmt.Errorf("read backing name of %s: %w", path, err)
	}
	img.BackingFile = string(name)
	img.BackingPath = img.BackingFile
	if !filepath.IsAbs(img.BackingPath) {
		img.BackingPath = filepath.Join(filepath.Dir(path), img.BackingPath)
	}
	return img, unknown, nil
}

// maxChainHeaders bounds the files HeaderChain reads: a chain longer than
// this is taken for a loop.
const maxChainHeaders = 4096

// HeaderChain describes an image and its backing chain from the qcow2
// headers alone, in microseconds where Info runs qemu-img (some 25 ms).
// It checks what opening the chain checks: every file of it exists, is a
// regular qcow2 file (version 2 or 3) whose header reads whole and has no
// incompatible feature this package does not know, and the last names no
// backing file; any failure wraps ErrBrokenChain (a file's own absence
// wraps fs.ErrNotExist too). It also refuses a file marked corrupt, which
// Info only reports. The image's data and its refcounts are not read (see
// Check). Sizes of a file being written are a moment's view; Dirty,
// Corrupt and ActualSize are as Info reports them, BackingFormat is
// always "".
func (r *Repo) HeaderChain(path string) (Info, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Info{}, fmt.Errorf("header chain of %s: %w", path, err)
	}
	var info Info
	seen := map[string]bool{}
	for next := abs; next != ""; {
		if seen[next] || len(info.Chain) == maxChainHeaders {
			return Info{}, fmt.Errorf("header chain of %s: %s: backing chain loops or exceeds %d files: %w", path, next, maxChainHeaders, ErrBrokenChain)
		}
		seen[next] = true
		img, unknown, err := readHeader(next)
		if err != nil {
			return Info{}, fmt.Errorf("header chain of %s: %w: %w", path, ErrBrokenChain, err)
		}
		if unknown != 0 {
			return Info{}, fmt.Errorf("header chain of %s: %s has incompatible features %#x: %w", path, next, unknown, ErrBrokenChain)
		}
		if img.Corrupt {
			return Info{}, fmt.Errorf("header chain of %s: %s is marked corrupt: %w", path, next, ErrBrokenChain)
		}
		info.Chain = append(info.Chain, img)
		next = img.BackingPath
	}
	info.Image = info.Chain[0]
	return info, nil
}
