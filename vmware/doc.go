// Package vmware is the vCenter side of a backup: a govmomi client that
// finds VMs, takes and removes snapshots, reads disk backings and change
// ids, pages QueryChangedDiskAreas, parses change ids, and starts the
// nbdkit processes that serve a disk of a snapshot over NBD (vCenter's
// /folder over HTTPS or VDDK in production, a local image in tests and
// demos).
//
// It owns nothing but vCenter sessions and nbdkit source processes. It must
// never know about NATS, the catalog, repositories or the copier, and it
// never decides full versus incremental: it reports facts (change ids,
// capacities, rejected ids) and typed errors, and the agent decides.
//
// # Basics
//
// Connect logs in (credentials in the URL's user info) and keeps the
// session alive; Close logs out. FindVM accepts a moref ("vm-123"), an
// instance UUID or a name. CreateSnapshot names the snapshot as given —
// SnapshotName(jobID) is "sendense-<job_id>" — without memory.
// SnapshotDisks reads each disk of the snapshot by device key: capacity,
// backing file, disk UUID and the change id the snapshot stamped.
// ChangedAreas pages QueryChangedDiskAreas from offset 0 to the capacity
// with FullChangeID ("*") for a full or the base's change id for an
// incremental, and returns merged extents. RemoveSnapshot(…, true) removes
// one snapshot with consolidation; StaleSnapshots lists snapshots by
// prefix with the job id taken from the name.
//
// Sources: LocalSource / LocalSources serve a raw image with
// `nbdkit --readonly … file`; HTTPSSources / HTTPSCommand read the
// snapshot's disk through vCenter's /folder interface with `nbdkit curl`:
// FlatFileURL GETs the backing's descriptor with the session cookie,
// ParseDescriptor and FlatExtent find its one flat extent (refusing
// sparse, delta, RDM and split disks), and the cookie reaches nbdkit only
// as cookie=+FILE; VDDKSources / VDDKCommand build the VDDK
// plugin's command line (thumbprint, vm=moref=, snapshot=, file=,
// transports=, compression=) with the password only as password=+FILE.
// ConnectTLS verifies vCenter with a CA file (TLS), which the https
// sources reuse as cainfo=.
// Each Source lives in a private socket directory; Close stops it (SIGTERM,
// then SIGKILL after a timeout) and removes the directory.
//
// Errors wrap the sentinels of errors.go: ErrVMNotFound, ErrChangeIDRejected
// (the disk needs a full), ErrBadChangeInfo (a reply that does not advance
// or leaves the disk), ErrUnavailable (transient: retry), ErrLoginRejected,
// ErrSnapshotNotFound, ErrInvalidOptions, ErrSourceStart, ErrBadDescriptor,
// ErrDatastoreAccess. Classification
// uses the vSphere fault types, never message text.
//
// Calls take a context; when it has no deadline a default is added
// (DefaultCallTimeout per call, DefaultTaskTimeout for snapshot tasks). A
// Client is safe for concurrent use.
//
// # Caveats
//
// A disk's ChangeID is empty when CBT is not active on it; a backup of such
// a disk cannot record a change id and must fail, not succeed without one.
// Independent and physical-mode RDM disks are reported (see Disk.Mode) but
// are not part of snapshots: the caller must decide to refuse or skip them.
// ChangedAreas needs the capacity of the disk at that snapshot (from
// SnapshotDisks), not the VM's current one, or a resized disk pages wrong.
// A VDDK source cannot be tested here (no VDDK library); only its command
// line is.
package vmware
