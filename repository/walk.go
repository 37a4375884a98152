package repository

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Disk names one disk directory of the repository, ROOT/<vm-uuid>/<key>.
type Disk struct {
	VMUUID string
	Key    int32
}

// Disks returns every disk directory of the repository, sorted by VM id
// then key. Entries whose names are not valid ids (ValidateID, a canonical
// non-negative decimal key) are skipped, as are files where a directory
// would be: the repository made none of them.
func (r *Repo) Disks() ([]Disk, error) {
	vms, err := os.ReadDir(r.root)
	if err != nil {
		return nil, fmt.Errorf("list disks of repository %s: %w", r.root, err)
	}
	var disks []Disk
	for _, vm := range vms {
		if !vm.IsDir() || ValidateID(vm.Name()) != nil {
			continue
		}
		keys, err := os.ReadDir(filepath.Join(r.root, vm.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("list disks of vm %s: %w", vm.Name(), err)
		}
		for _, k := range keys {
			key, ok := parseDiskKey(k.Name())
			if !k.IsDir() || !ok {
				continue
			}
			disks = append(disks, Disk{VMUUID: vm.Name(), Key: key})
		}
	}
	sort.Slice(disks, func(i, j int) bool {
		if disks[i].VMUUID != disks[j].VMUUID {
			return disks[i].VMUUID < disks[j].VMUUID
		}
		return disks[i].Key < disks[j].Key
	})
	return disks, nil
}

// parseDiskKey parses a disk directory name: a canonical decimal int32 >= 0.
func parseDiskKey(name string) (int32, bool) {
	key, err := strconv.ParseInt(name, 10, 32)
	if err != nil || key < 0 || strconv.FormatInt(key, 10) != name {
		return 0, false
	}
	return int32(key), true
}

// tempJob returns the job id of a temporary file name
// ".<job-id>.qcow2.<random>.tmp" (a Create's) or
// ".<job-id>.manifest.<random>.tmp" (a manifest being written; package
// manifest), ok false for any other name.
func tempJob(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, ".")
	if !ok || !strings.HasSuffix(rest, ".tmp") {
		return "", false
	}
	for _, ext := range []string{fileExt, ManifestExt} {
		i := strings.LastIndex(rest, ext+".")
		if i <= 0 || len(rest) < i+len(ext+".")+len(".tmp") {
			continue
		}
		if job := rest[:i]; ValidateJobID(job) == nil {
			return job, true
		}
	}
	return "", false
}

// Temps returns the temporary files that Creates or manifest writes which
// did not finish (the process crashed) left in a disk's directory,
// ".<job-id>.qcow2.*.tmp" and ".<job-id>.manifest.*.tmp",
// sorted by name, with JobID, Path, sizes and ModTime set. It holds the
// lock Create holds while its temporary file exists, so no temporary file
// of a Create of this Repo in progress is listed.
func (r *Repo) Temps(vmUUID string, diskKey int32) ([]File, error) {
	if err := ValidateID(vmUUID); err != nil {
		return nil, fmt.Errorf("list temporary files of disk %d of vm %q: vm id: %w", diskKey, vmUUID, err)
	}
	if err := validateDiskKey(diskKey); err != nil {
		return nil, fmt.Errorf("list temporary files of disk %d of vm %q: %w", diskKey, vmUUID, err)
	}
	dir := r.diskDir(vmUUID, diskKey)
	defer r.lockDir(dir)()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list temporary files of disk %d of vm %s: %w", diskKey, vmUUID, err)
	}
	var files []File
	for _, e := range entries {
		job, ok := tempJob(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		st, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list temporary files of disk %d of vm %s: %w", diskKey, vmUUID, err)
		}
		f := File{JobID: job, Path: path, Size: st.Size(), ModTime: st.ModTime()}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			f.ActualSize = sys.Blocks * 512
		}
		files = append(files, f)
	}
	return files, nil
}

// RemoveTemp removes one temporary file Temps listed. path must be a
// temporary file name in a disk directory of this repository
// (ErrNotInRepo otherwise). A missing file is not an error.
func (r *Repo) RemoveTemp(path string) error {
	if err := r.removeTemp(path); err != nil {
		return fmt.Errorf("remove temporary file %s: %w", path, err)
	}
	return nil
}

func (r *Repo) removeTemp(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ErrNotInRepo
	}
	rel, err := filepath.Rel(r.root, abs)
	if err != nil {
		return ErrNotInRepo
	}
	parts := strings.Split(rel, string(filepath.Separator))
	if len(parts) != 3 || ValidateID(parts[0]) != nil {
		return ErrNotInRepo
	}
	if _, ok := parseDiskKey(parts[1]); !ok {
		return ErrNotInRepo
	}
	if _, ok := tempJob(parts[2]); !ok {
		return ErrNotInRepo
	}
	defer r.lockDir(filepath.Dir(abs))()
	if err := os.Remove(abs); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	return syncPath(filepath.Dir(abs))
}
