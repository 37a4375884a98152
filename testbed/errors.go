package testbed

import "errors"

// Sentinel errors returned by the Testbed's methods (match with errors.Is).
var (
	// ErrUnknownVM: no testbed VM has that name, instance UUID or moref.
	ErrUnknownVM = errors.New("unknown testbed vm")
	// ErrUnknownDisk: the VM has no disk with that device key.
	ErrUnknownDisk = errors.New("unknown testbed disk")
	// ErrUnknownSnapshot: no snapshot with that moref or name was taken
	// through this testbed.
	ErrUnknownSnapshot = errors.New("unknown testbed snapshot")
	// ErrOutOfRange: a guest write or resize does not fit the disk.
	ErrOutOfRange = errors.New("out of disk range")
	// ErrInvalidSpec: Options, a VMSpec or a DiskSpec is invalid.
	ErrInvalidSpec = errors.New("invalid testbed spec")
	// ErrClosed: the testbed was closed.
	ErrClosed = errors.New("testbed closed")
)
