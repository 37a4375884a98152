package repository

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// Sentinel errors. Match them with errors.Is; the returned errors wrap them
// with the operation and the ids involved.
var (
	// ErrInvalidID: a VM id, disk key or job id is empty, too long, starts
	// with a dot or holds a character outside [A-Za-z0-9._-] (so it could
	// name something outside the repository), or a disk key is negative.
	ErrInvalidID = errors.New("invalid id")

	// ErrNotInRepo: a path given to Export does not name a backup file of
	// this repository (ROOT/<vm>/<disk>/<job>.qcow2).
	ErrNotInRepo = errors.New("path is not a backup file of the repository")

	// ErrExists: Create found a file already at the target path. A retried
	// attempt must use a new job id or Remove the partial file first.
	ErrExists = errors.New("backup file already exists")

	// ErrNoBacking: Create was asked for an incremental whose backing file
	// (the previous backup of the disk) is not in the repository.
	ErrNoBacking = errors.New("backing file not found")

	// ErrCapacityMismatch: an incremental's capacity differs from its backing
	// file's virtual size (the disk was resized: take a full instead).
	ErrCapacityMismatch = errors.New("capacity differs from the backing file")

	// ErrInvalidCapacity: a capacity that is not positive or not a multiple
	// of 512 bytes (qcow2 would round it, so a restore would not be exact).
	ErrInvalidCapacity = errors.New("invalid capacity")

	// ErrIsBacking: Remove refused to delete a file that another file of the
	// same disk uses as its backing file.
	ErrIsBacking = errors.New("file is the backing file of another backup")

	// ErrBusy: Remove of an exported file, a writable export of a file
	// already exported, a read-only export or a Check of a file exported
	// writable.
	ErrBusy = errors.New("file is exported")

	// ErrClosed: the Repo was closed; it starts no new exports.
	ErrClosed = errors.New("repository closed")

	// ErrInvalidFormat: Restore was asked for a format other than raw or qcow2.
	ErrInvalidFormat = errors.New("invalid image format")

	// ErrInvalidAddr: ExportOptions.TCPAddr is not host:port.
	ErrInvalidAddr = errors.New("invalid export address")

	// ErrInsecure: an export over TCP without TLS credentials
	// (ExportOptions.PSK). Nothing is ever served on the network in clear.
	ErrInsecure = errors.New("tcp export without tls")

	// ErrInvalidPSK: a TLS pre-shared key whose identity or key is not of
	// the accepted form (see PSK.Validate).
	ErrInvalidPSK = errors.New("invalid tls psk")

	// ErrAddrInUse: the TCP port of an export is taken (by another program
	// or another export); try another port.
	ErrAddrInUse = errors.New("export address in use")

	// ErrSocketPath: the unix socket path would exceed the sun_path limit;
	// choose a shorter ExportOptions.SocketDir.
	ErrSocketPath = errors.New("socket path too long")

	// ErrExportDied: qemu-nbd exited without being asked to (see
	// Export.ExitErr), or exited while starting.
	ErrExportDied = errors.New("qemu-nbd exited unexpectedly")

	// ErrKilled: Close had to SIGKILL qemu-nbd after the stop timeout or a
	// cancelled context, so qcow2 metadata cached in qemu-nbd may not have
	// reached the file. Treat the written data as untrusted.
	ErrKilled = errors.New("qemu-nbd killed before a clean shutdown")

	// ErrCorrupt: qemu-img check found corruptions or could not check the
	// image (see CheckError).
	ErrCorrupt = errors.New("image check failed")

	// ErrLeaks: qemu-img check found leaked clusters only: space is wasted
	// but every guest byte reads correctly (see CheckError).
	ErrLeaks = errors.New("image has leaked clusters")

	// ErrBrokenChain: CheckBase found a backing chain that does not open
	// (a backing file is missing, unreadable or damaged, a header is
	// corrupt) or that holds a file that is not qcow2 or is marked corrupt.
	ErrBrokenChain = errors.New("backing chain broken")

	// ErrNoSpace: the repository's file system is full (ENOSPC, or EDQUOT
	// for a quota). Create's errors match it whether a system call said so
	// or qemu-img did, only as text on its stderr (an *ExecError matches
	// it then).
	ErrNoSpace = errors.New("no space left in the repository")
)

// ExecError is a failed external command. Its message is
// "<program> <args>: <exit status or error>: <stderr>".
type ExecError struct {
	Args     []string // program and arguments as run
	ExitCode int      // -1 when the program did not run or was killed by a signal
	Stderr   string   // trimmed, possibly the last part only
	Err      error    // from os/exec
	// NoSpace: the program said its file system was full (see
	// noSpaceMessages); the error then matches ErrNoSpace.
	NoSpace bool
}

func (e *ExecError) Error() string {
	msg := strings.Join(e.Args, " ") + ": " + e.Err.Error()
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *ExecError) Unwrap() error { return e.Err }

// Is matches ErrNoSpace when the program reported a full file system.
func (e *ExecError) Is(target error) bool { return target == ErrNoSpace && e.NoSpace }

// noSpaceMessages are how qemu-img reports ENOSPC and EDQUOT on stderr
// (strerror), for example "qemu-img: x.qcow2: Could not write refcount
// table: No space left on device". It exits 1 like for any other failure,
// so the text is all that tells a full repository from a broken one.
var noSpaceMessages = []string{"No space left on device", "Disk quota exceeded"}

func saysNoSpace(stderr string) bool {
	for _, m := range noSpaceMessages {
		if strings.Contains(stderr, m) {
			return true
		}
	}
	return false
}

// withNoSpace makes err match ErrNoSpace when a system call failed with
// ENOSPC or EDQUOT.
func withNoSpace(err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

// CheckError is returned by Check for an image with corruptions, leaked
// clusters or a check that could not complete. It matches ErrLeaks when
// leaked clusters are the only finding (exit status 3), ErrCorrupt otherwise.
type CheckError struct {
	Path        string
	ExitCode    int // qemu-img check: 1 check not completed, 2 corruptions, 3 leaks only
	Corruptions int
	Leaks       int
	CheckErrors int
	Output      string // stderr of qemu-img check (may be truncated)
}

func (e *CheckError) Error() string {
	return fmt.Sprintf("check %s: exit status %d: %d corruptions, %d leaked clusters, %d check errors: %s",
		e.Path, e.ExitCode, e.Corruptions, e.Leaks, e.CheckErrors, e.Output)
}

// Is matches ErrLeaks for a leaks-only finding and ErrCorrupt for the rest.
func (e *CheckError) Is(target error) bool {
	if e.ExitCode == 3 {
		return target == ErrLeaks
	}
	return target == ErrCorrupt
}
