package repository

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"
)

// Prune operations (PruneStep.Op). Each removes one point's file of one
// disk and leaves every other point reading exactly as before, and each is
// idempotent and resumable from any crash point: Prune reads what is left
// to do from the files (is the removed file still there, which backing
// name does the child's header hold) and does only that.
const (
	// OpMerge removes a point with no base (a full) whose child backs onto
	// it: `qemu-img commit -d` writes the child's clusters into the full
	// (-d: the child is not emptied, so the child over the full reads as
	// the child's point at every moment of the commit), then the full is
	// renamed over the child's name (an atomic rename: the file at the
	// child's name is the child's point before and after) and the
	// directory is synced. The child's own children keep their backing
	// name.
	OpMerge = "merge"
	// OpRebase removes a point with a base (the parent) whose child backs
	// onto it: a safe `qemu-img rebase -b <parent>.qcow2` of the child
	// (it first copies into the child every cluster where the removed
	// point and the parent differ, then rewrites the child's header; an
	// interrupted rebase leaves the child reading as before over the
	// removed point), then the removed file is deleted.
	OpRebase = "rebase"
	// OpDelete removes a point nothing backs onto: its file is deleted
	// (refused with ErrIsBacking when a file backs onto it).
	OpDelete = "delete"
)

// ManifestExt is the extension of a point's manifest file, kept next to
// its image (<job-id>.manifest); Prune removes it with the image.
const ManifestExt = ".manifest"

// PruneStep is the removal of one point's file of one disk.
type PruneStep struct {
	VMUUID  string
	DiskKey int32
	JobID   string // the point removed
	Op      string // OpMerge, OpRebase or OpDelete
	Child   string // OpMerge, OpRebase: the job whose file backs onto JobID's
	Parent  string // OpRebase: the job JobID's file backs onto
}

// PruneHook, when set in a context (WithPruneHook), is called by Prune at
// each named step, before the step's effect is done ("commit", "rename",
// "rebase", "delete") and after it ("committed", "renamed", "rebased",
// "deleted"). Tests use it to stop a process at a known point; a returned
// error stops Prune with that error.
type PruneHook func(step string) error

type pruneHookKey struct{}

// WithPruneHook returns ctx carrying hook for Prune.
func WithPruneHook(ctx context.Context, hook PruneHook) context.Context {
	return context.WithValue(ctx, pruneHookKey{}, hook)
}

func pruneHook(ctx context.Context, step string) error {
	if h, ok := ctx.Value(pruneHookKey{}).(PruneHook); ok && h != nil {
		return h(step)
	}
	return nil
}

// ErrPruneState: the files of a disk are in a state no prune operation
// (nor a crash during one) leaves, so Prune does not know how to go on:
// the child backs onto neither the removed point nor the parent, the child
// file is missing, or the removed file has a base where a merge needs none.
var ErrPruneState = errors.New("files are not in a state prune can resume from")

// Prune removes a point's file of one disk as step says (see OpMerge,
// OpRebase, OpDelete), and its manifest. It is idempotent: a step already
// done does nothing, a step interrupted at any point (a crash, a killed
// qemu-img, a full disk) is finished by calling Prune again with the same
// step. It refuses while any file of the disk is exported (ErrBusy: a
// restore reads through the chain), and returns ErrNoSpace when the file
// system is full (nothing is lost: call it again once there is space).
// A crash can leave a file written by qemu-img with leaked clusters; no
// point's content depends on them.
func (r *Repo) Prune(ctx context.Context, step PruneStep) error {
	if err := r.prune(ctx, step); err != nil {
		return fmt.Errorf("prune %s of job %s for disk %d of vm %s: %w", step.Op, step.JobID, step.DiskKey, step.VMUUID, err)
	}
	return nil
}

func (r *Repo) prune(ctx context.Context, s PruneStep) error {
	if err := validateIDs(s.VMUUID, s.DiskKey, s.JobID); err != nil {
		return err
	}
	for _, id := range []struct{ what, id string }{{"child", s.Child}, {"parent", s.Parent}} {
		need := id.what == "child" && s.Op != OpDelete || id.what == "parent" && s.Op == OpRebase
		switch {
		case need && id.id == "":
			return fmt.Errorf("%s needs a %s job: %w", s.Op, id.what, ErrInvalidID)
		case !need && id.id != "":
			return fmt.Errorf("%s takes no %s job: %w", s.Op, id.what, ErrInvalidID)
		case id.id == "":
		default:
			if err := ValidateID(id.id); err != nil {
				return fmt.Errorf("%s job: %w", id.what, err)
			}
			if id.id == s.JobID {
				return fmt.Errorf("%s job %s is the removed job: %w", id.what, id.id, ErrInvalidID)
			}
		}
	}
	dir := r.diskDir(s.VMUUID, s.DiskKey)
	log := zerolog.Ctx(ctx).With().Str("op", s.Op).Str("job_id", s.JobID).Int32("disk", s.DiskKey).Logger()

	defer r.lockDir(dir)()
	if e := r.exportIn(dir); e != nil {
		return fmt.Errorf("%s by qemu-nbd pid %d: %w", e.Path(), e.PID(), ErrBusy)
	}
	removed := filepath.Join(dir, fileName(s.JobID))
	var err error
	switch s.Op {
	case OpMerge:
		err = r.merge(ctx, dir, removed, filepath.Join(dir, fileName(s.Child)), log)
	case OpRebase:
		err = r.rebase(ctx, s.VMUUID, s.DiskKey, dir, removed, filepath.Join(dir, fileName(s.Child)), fileName(s.Parent), log)
	case OpDelete:
		err = r.deleteUnused(ctx, s.VMUUID, s.DiskKey, dir, removed, log)
	default:
		return fmt.Errorf("unknown prune operation %q: %w", s.Op, ErrInvalidID)
	}
	if err != nil {
		return withNoSpace(err)
	}
	return removeManifest(dir, s.JobID)
}

// merge commits child into removed (a full), then renames removed over
// child. Resumes: removed gone means the rename happened.
func (r *Repo) merge(ctx context.Context, dir, removed, child string, log zerolog.Logger) error {
	if _, err := os.Lstat(removed); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Lstat(child); err != nil {
			return fmt.Errorf("merge done, but %s: %w: %w", child, ErrPruneState, err)
		}
		return nil // renamed: done
	} else if err != nil {
		return err
	}
	if base, err := readBackingName(removed); err != nil {
		return err
	} else if base != "" {
		return fmt.Errorf("%s backs onto %s, a merge needs a full: %w", removed, base, ErrPruneState)
	}
	cb, err := readBackingName(child)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("child %s is missing: %w", child, ErrPruneState)
	}
	if err != nil {
		return err
	}
	if cb != filepath.Base(removed) {
		return fmt.Errorf("child %s backs onto %q, not %s: %w", child, cb, filepath.Base(removed), ErrPruneState)
	}
	if err := pruneHook(ctx, "commit"); err != nil {
		return err
	}
	log.Info().Str("child", filepath.Base(child)).Msg("committing child into the full")
	// -d: do not empty the child; -f: its format. The child's backing
	// (removed) receives the child's allocated clusters.
	if _, err := run(ctx, qemuImg, "commit", "-d", "-f", "qcow2", child); err != nil {
		return err
	}
	if err := syncPath(removed); err != nil {
		return err
	}
	if err := pruneHook(ctx, "committed"); err != nil {
		return err
	}
	if err := pruneHook(ctx, "rename"); err != nil {
		return err
	}
	if err := os.Rename(removed, child); err != nil {
		return err
	}
	if err := syncPath(dir); err != nil {
		return err
	}
	return pruneHook(ctx, "renamed")
}

// rebase rebases child from removed onto parent, then deletes removed.
// Resumes: child's backing name says whether the rebase happened.
func (r *Repo) rebase(ctx context.Context, vmUUID string, diskKey int32, dir, removed, child, parent string, log zerolog.Logger) error {
	cb, err := readBackingName(child)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("child %s is missing: %w", child, ErrPruneState)
	}
	if err != nil {
		return err
	}
	switch cb {
	case parent: // rebased
	case filepath.Base(removed):
		if _, err := os.Stat(filepath.Join(dir, parent)); err != nil {
			return fmt.Errorf("parent %s: %w: %w", parent, ErrPruneState, err)
		}
		if err := pruneHook(ctx, "rebase"); err != nil {
			return err
		}
		log.Info().Str("child", filepath.Base(child)).Str("parent", parent).Msg("rebasing child onto the parent")
		// Safe mode (no -u): copies what differs between the old and the
		// new backing into the child before it rewrites the header. The
		// relative name is what Create writes.
		if _, err := run(ctx, qemuImg, "rebase", "-f", "qcow2", "-b", parent, "-F", "qcow2", child); err != nil {
			return err
		}
		if err := syncPath(child); err != nil {
			return err
		}
		if err := pruneHook(ctx, "rebased"); err != nil {
			return err
		}
	default:
		return fmt.Errorf("child %s backs onto %q, neither %s nor %s: %w", child, cb, filepath.Base(removed), parent, ErrPruneState)
	}
	return r.deleteUnused(ctx, vmUUID, diskKey, dir, removed, log)
}

// deleteUnused deletes path unless a file of the disk backs onto it
// (ErrIsBacking: deleting it would break that file's chain).
func (r *Repo) deleteUnused(ctx context.Context, vmUUID string, diskKey int32, dir, path string, log zerolog.Logger) error {
	files, err := r.list(vmUUID, diskKey)
	if err != nil {
		return err
	}
	for _, f := range files {
		if f.Path != path && f.BackingFile != "" && filepath.Clean(filepath.Join(dir, f.BackingFile)) == path {
			return fmt.Errorf("%s backs onto %s: %w", f.Path, filepath.Base(path), ErrIsBacking)
		}
	}
	return deleteFile(ctx, dir, path, log)
}

// deleteFile deletes path (a missing file is done) and syncs dir.
func deleteFile(ctx context.Context, dir, path string, log zerolog.Logger) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := pruneHook(ctx, "delete"); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := syncPath(dir); err != nil {
		return err
	}
	log.Info().Str("file", filepath.Base(path)).Msg("point's file deleted")
	return pruneHook(ctx, "deleted")
}

// removeManifest deletes <job>.manifest in dir, if there.
func removeManifest(dir, jobID string) error {
	err := os.Remove(filepath.Join(dir, jobID+ManifestExt))
	switch {
	case err == nil:
		return syncPath(dir)
	case errors.Is(err, fs.ErrNotExist):
		return nil
	}
	return err
}

// exportIn returns an export of a file in dir, or nil.
func (r *Repo) exportIn(dir string) *Export {
	for _, e := range r.exportList() {
		if filepath.Dir(e.Path()) == dir {
			return e
		}
	}
	return nil
}
