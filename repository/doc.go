// Package repository owns the backup files on the hub: QCOW2 chains laid out
// as ROOT/<vm-uuid>/<disk-key>/<job-id>.qcow2, and the qemu-nbd processes
// that export them to the copier.
//
// It creates fulls and incrementals (an incremental's backing file is the
// previous backup of the same disk, referenced by relative name), checks
// that a file can serve as a base (CheckBase), exports a file with qemu-nbd
// (writable for a backup, read-only for a restore or a verification),
// closes exports cleanly, reaps exports whose owner is gone, reads chain
// information, checks, compares and restores images, lists every disk
// directory (Disks) and the temporary files of crashed creates (Temps), and
// removes the partial file of a failed attempt. It removes a point from a
// chain without changing what any other point reads (Prune: merge the
// first full into its child, rebase a middle point's child onto its
// parent, or delete a point nothing backs onto), resumable from any crash
// point. A full file system makes errors matching ErrNoSpace.
//
// It must never know about NATS, the catalog or VMware: callers (the hub's
// repository service) decide which job is the base and which files are
// partial. It must never join an unchecked name into a path: every VM id,
// disk key and job id is validated (ValidateID, ValidateJobID, ErrInvalidID), and Export
// accepts only paths that map back to valid ids (ErrNotInRepo). It never runs
// a shell.
//
// # Basics
//
//	repo, err := repository.Open("/var/lib/sendense/repo")
//	path, err := repo.Create(ctx, vm, 2000, jobID, capacity, previousJobID) // "" for a full
//	exp, err := repo.Export(ctx, path, repository.ExportOptions{})          // writable, unix socket
//	// ... the copier writes to exp.URI() and flushes ...
//	err = exp.Close(ctx)                                                    // SIGTERM, wait, fsync
//	info, err := repo.Info(ctx, path)                                       // info.ActualSize, info.Chain
//
// External programs: qemu-img and qemu-nbd from PATH (Debian qemu-utils).
// Failures are *ExecError values: "qemu-img create ...: exit status 1:
// <stderr>". Logging goes to the zerolog logger in the context
// (zerolog.Ctx), if any.
//
// qemu-nbd runs as a foreground child (no --fork) with -t, so it keeps
// serving after a client disconnects. Export returns once qemu-nbd sends the
// NBD greeting, not merely once its socket accepts: qemu-nbd 7.2 listens
// before it enters its main loop, and a SIGTERM in that window is lost (the
// loop's start resets the state the handler set), so an immediate Close
// used to hang until SIGKILL (38 of 40 tries here). Close also repeats
// SIGTERM every 250 ms while it waits.
// On SIGTERM qemu-nbd flushes the image (bdrv_close_all) and exits 0, in
// milliseconds on this host even with a client connected; Close also fsyncs
// the file afterwards and only SIGKILLs after ExportOptions.StopTimeout
// (default 10 s). The flush matters: whatever the cache mode, qcow2 metadata
// lives in qemu-nbd's memory until flushed, so data written by a client that
// did not flush is lost if qemu-nbd is SIGKILLed (checked on this host:
// `qemu-img compare` then differs at offset 0). Clients should still flush
// before asking for Close.
//
// # Caveats
//
//   - The export registry and the lock that stops Remove racing a Create are
//     in memory: use one Repo per root per host. qemu's own file locks still
//     stop two writers of one file across processes.
//   - qemu-nbd gets Pdeathsig=SIGTERM, so it exits (flushing) when the
//     process that started it dies. Linux sends it when the OS thread that
//     forked exits, which Go does only for a goroutine that exits while
//     locked to its thread: do not call Export from such a goroutine. An
//     export whose owner is alive but whose job is over is only closed by
//     Close or Reap.
//   - TCP exports always use TLS with a pre-shared key (ExportOptions.PSK,
//     NewPSK): Export refuses a TCP address without one (ErrInsecure). The
//     key is written to a private directory qemu-nbd reads (never argv) and
//     removed on Close; whoever holds it can read and write the export, so
//     hand it only to the export's client. The port is checked free before
//     qemu-nbd binds it; a program taking it in between gives ErrAddrInUse
//     too, and the caller tries another port.
//   - Remove checks backing references among the files of the same disk
//     directory only (Create never makes any other kind).
//   - Capacities must be multiples of 512 bytes: qcow2 rounds the virtual
//     size up, which would make a restore longer than the disk.
//   - A crash during Create can leave a ".<job-id>.qcow2.*.tmp" file; List
//     never lists it, Temps does, and the next Create or Remove of that job
//     or RemoveTemp deletes it.
package repository
