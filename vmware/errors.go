package vmware

import "errors"

// Sentinel errors. Match them with errors.Is; the returned errors wrap them
// together with the operation and the identifiers involved.
var (
	// ErrVMNotFound: no VM matches the name, instance UUID or moref given to
	// FindVM. Permanent: the request names an unknown VM.
	ErrVMNotFound = errors.New("vm not found")

	// ErrVMAmbiguous: more than one VM has the name given to FindVM. Use the
	// instance UUID or the moref instead. Permanent.
	ErrVMAmbiguous = errors.New("vm name is ambiguous")

	// ErrSnapshotNotFound: the snapshot moref does not exist (any more).
	// RemoveSnapshot returns it for a snapshot that is already gone, so a
	// cleanup path can treat it as done.
	ErrSnapshotNotFound = errors.New("snapshot not found")

	// ErrChangeIDRejected: vCenter refused the change id given to
	// ChangedAreas (unknown, from before a CBT reset, from another disk, or
	// malformed). The disk needs a full backup; never retry with the same id.
	ErrChangeIDRejected = errors.New("change id rejected")

	// ErrInvalidChangeID: a string is not a VMware change id
	// ("52 3c … d4/31"). ParseChangeID returns it.
	ErrInvalidChangeID = errors.New("invalid change id")

	// ErrBadChangeInfo: a QueryChangedDiskAreas reply cannot be right (it does
	// not advance, leaves a gap, or names areas outside the disk). Paging
	// stops with this error instead of looping or copying wrong ranges.
	ErrBadChangeInfo = errors.New("bad changed disk areas reply")

	// ErrUnavailable: vCenter could not be reached or the connection broke
	// (network errors, TLS errors, timeouts). Transient: retry with backoff.
	ErrUnavailable = errors.New("vcenter unavailable")

	// ErrLoginRejected: vCenter refused the credentials. Permanent until the
	// configuration changes.
	ErrLoginRejected = errors.New("vcenter login rejected")

	// ErrUnsupportedDisk: a virtual disk has a backing this package cannot
	// describe (not flat, sparse, SE sparse or RDM).
	ErrUnsupportedDisk = errors.New("unsupported disk backing")

	// ErrBadDescriptor: a file read as a VMDK text descriptor is not one
	// (binary, too large, no header or extent, a malformed extent line).
	ErrBadDescriptor = errors.New("bad vmdk descriptor")

	// ErrDatastoreAccess: vCenter's /folder interface refused a datastore
	// file or answered with an unexpected status (401: the session is not
	// valid; 404: no such file). The error carries the status.
	ErrDatastoreAccess = errors.New("datastore file access failed")

	// ErrInvalidOptions: a source or VDDK option is missing or malformed.
	ErrInvalidOptions = errors.New("invalid source options")

	// ErrSourceStart: nbdkit did not start or did not open its socket.
	ErrSourceStart = errors.New("nbd source did not start")
)
