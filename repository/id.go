package repository

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sendense/sendense/schemas"
)

// MaxIDLen is the longest VM id or job id accepted. It keeps
// "<job-id>.qcow2" and its temporary name well under NAME_MAX (255).
const MaxIDLen = 128

// fileExt is the extension of every backup file.
const fileExt = ".qcow2"

// ValidateID reports whether s can be used as a VM id (job ids:
// ValidateJobID, which accepts a subset of these names): 1 to
// MaxIDLen characters from [A-Za-z0-9._-], not starting with '.' or '-'.
// Such a name is always one path element inside its parent directory: it
// cannot be "", "." or "..", hold a separator, or look like an option.
// The error wraps ErrInvalidID.
func ValidateID(s string) error {
	if s == "" {
		return fmt.Errorf("empty id: %w", ErrInvalidID)
	}
	if len(s) > MaxIDLen {
		return fmt.Errorf("id of %d bytes, more than %d: %w", len(s), MaxIDLen, ErrInvalidID)
	}
	if s[0] == '.' || s[0] == '-' {
		return fmt.Errorf("id %q starts with %q: %w", s, s[0], ErrInvalidID)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("id %q has character %q at %d: %w", s, c, i, ErrInvalidID)
		}
	}
	return nil
}

// ValidateJobID reports whether s can be a job id: schemas.ValidJobID,
// the one definition every part shares (a job id is also a valid
// ValidateID name). The error wraps ErrInvalidID and
// schemas.ErrInvalidJobID.
func ValidateJobID(s string) error {
	if err := schemas.ValidJobID(s); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidID, err)
	}
	return nil
}

func validateDiskKey(key int32) error {
	if key < 0 {
		return fmt.Errorf("disk key %d is negative: %w", key, ErrInvalidID)
	}
	return nil
}

func validateIDs(vmUUID string, diskKey int32, jobID string) error {
	if err := ValidateID(vmUUID); err != nil {
		return fmt.Errorf("vm id: %w", err)
	}
	if err := validateDiskKey(diskKey); err != nil {
		return err
	}
	if err := ValidateJobID(jobID); err != nil {
		return err
	}
	return nil
}

// fileName is the name of a job's backup file inside the disk directory.
func fileName(jobID string) string { return jobID + fileExt }

// location names one backup file by its ids.
type location struct {
	vm   string
	disk int32
	job  string
}

// parsePath maps an absolute or relative path back to its ids, or fails
// with ErrNotInRepo when it is not ROOT/<vm>/<disk>/<job>.qcow2 with valid
// ids. Symbolic links are not resolved: the check is on the name.
func (r *Repo) parsePath(path string) (location, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return location{}, fmt.Errorf("path %s: %w", path, ErrNotInRepo)
	}
	rel, err := filepath.Rel(r.root, abs)
	if err != nil {
		return location{}, fmt.Errorf("path %s: %w", path, ErrNotInRepo)
	}
	parts := strings.Split(rel, string(filepath.Separator))
	if len(parts) != 3 || !strings.HasSuffix(parts[2], fileExt) {
		return location{}, fmt.Errorf("path %s: %w", path, ErrNotInRepo)
	}
	loc := location{vm: parts[0], job: strings.TrimSuffix(parts[2], fileExt)}
	key, err := strconv.ParseInt(parts[1], 10, 32)
	if err != nil || strconv.FormatInt(key, 10) != parts[1] {
		return location{}, fmt.Errorf("path %s: disk directory %q: %w", path, parts[1], ErrNotInRepo)
	}
	loc.disk = int32(key)
	if err := validateIDs(loc.vm, loc.disk, loc.job); err != nil {
		return location{}, fmt.Errorf("path %s: %w: %w", path, ErrNotInRepo, err)
	}
	return loc, nil
}
