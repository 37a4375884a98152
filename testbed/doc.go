// Package testbed is a vCenter for tests and demos: govmomi's simulator
// (vcsim) extended with what backups need and vcsim lacks — disks backed by
// real local images, snapshots that freeze those images, and Changed Block
// Tracking with QueryChangedDiskAreas.
//
// It owns the simulated inventory, the disk images under Options.Dir and
// the CBT bookkeeping. It must never be used against, or pretend to be, a
// production vCenter, and it knows nothing of NATS, the catalog or the
// copier: clients talk to it only through the vSphere API (URL) and, for
// simulated guest activity, through the Testbed methods.
//
// # Basics
//
// New starts an HTTPS SDK server (self-signed; URL carries the credentials)
// with the VMs of Options.VMs. Each disk has a live raw sparse image
// (VMs().Disks[i].ImagePath) that the simulated guest writes to with Write,
// WriteZeros, PunchHole and WriteRandom, and a CBT state: a random tracking
// UUID and a sequence.
//
// CreateSnapshot (CreateSnapshot_Task or CreateSnapshotEx_Task, via any
// client) is the instant the disks freeze: under the testbed lock each live
// image gets a frozen image in O(1) — a hard link to it, split from the
// live image by the next guest write (cow.go); each disk's sequence grows
// and "<uuid>/<seq>" is stamped as changeId on the disk backings of the VM
// and of the new snapshot. SnapshotImage returns the frozen image of a disk
// at a snapshot — what a backup of it must contain — and keeps it after the
// snapshot is removed, until Close.
//
// Each frozen image is also the datastore file a real vSphere would expose
// for that snapshot: the snapshot's disk backing names a layer
// "[LocalDS_0] <vm>/<disk>-00000n.vmdk" (a flat descriptor, kept in memory)
// whose extent "<disk>-00000n-flat.vmdk" is the frozen image file itself,
// served by vCenter's /folder interface with Range reads. Every /folder
// request needs the session cookie of a logged-in client (401 otherwise).
// The VM's own disk backing names the latest frozen layer too (vSphere
// would name a new delta disk there). The SDK certificate is self-signed
// for the listen host, localhost and Options.TLSHosts; CertificatePEM is
// what a client trusts.
//
// QueryChangedDiskAreas(snapshot, key, startOffset, "*") returns the
// allocated areas of that snapshot's frozen image. With a change id it
// returns every area written from that id's snapshot up to this snapshot,
// widened to Options.BlockSize and clipped to the disk. Replies carry at
// most Options.MaxChangedAreas areas; StartOffset echoes the request and
// Length is the range the reply describes (to the end of its last area
// when cut short, else to the end of the disk), so callers page with
// startOffset = StartOffset + Length. Faults are vSphere's: InvalidArgument
// (invalidProperty changeId, deviceKey, startOffset or snapshot) for
// malformed input, FileFault for a well-formed change id that is unknown,
// foreign, from the future or from before ResetCBT, ManagedObjectNotFound
// for a snapshot that does not exist.
//
// With KeepImages, the testbed's state (VMs, UUIDs, CBT epochs, sequences
// and recorded writes, snapshots, frozen layers, the layer counter) is
// written to Dir/StateFile on every change, and New on a Dir holding one
// restores it instead of creating Options.VMs afresh (only the VMs it lacks
// are created): see state.go. CreateVM and DeleteVM change the inventory
// while the testbed runs.
//
// ResetCBT starts a new tracking epoch (new UUID, sequence restarts; old ids
// are refused). Resize grows a disk through ReconfigVM, like a disk extend.
//
// # Caveats
//
// Guest writes are serialised with snapshots by one mutex, so a snapshot is
// atomic with respect to them; a test may write while a backup reads a
// frozen image.
//
// Snapshots are O(1) whatever the disk's size (BenchmarkSnapshot, `make
// bench-snapshot`): a frozen image is a hard link to the live image plus a
// walk of its extent map, and removing a snapshot merges nothing. The
// copy moved to the first guest write after a snapshot, which splits the
// live image from its frozen names: a reflink clone (FICLONE, O(1)) where
// the filesystem has them (btrfs, XFS), else a sparse copy of the data
// (ext4 here: about a second per GiB). Why this design: every reader
// needs a frozen image to be one plain raw file — nbdkit's file plugin
// (the local transport), /folder with Range reads (the https transport),
// and the tests that compare restores with it — and the guest API only
// writes, never reads. Copy-on-write layers at block granularity (an
// LVM-like preserved-blocks file, or qcow2 overlays served by qemu-nbd)
// would make the first write cheap too, but need a view server for every
// reader and qcow2 writes for the guest API; reflinks alone are O(1) only
// where the filesystem has them (not on ext4, where the tests run). With
// hard links, backups that run with no guest writes in between — the
// scale tests, the empty incremental — never copy a byte, and the copy a
// guest write pays is outside any backup job.
//
// A removed snapshot's layer stays readable over /folder until Close (a
// real vSphere deletes it when it consolidates), and with several
// snapshots each names a flat layer of its own where vSphere would name
// sparse deltas: the testbed never makes a disk the https transport
// refuses.
//
// The simulator extension works by Registry.Handler: for the CBT and
// snapshot calls it puts a wrapper of the simulator's VirtualMachine into
// the caller's session registry for the duration of the call (see
// handler.go). The global registry is never touched.
//
// vcsim logs some events (for example FileAlreadyExists while naming new
// vmdk files) through the standard library's log package; redirect
// log.SetOutput in a binary that cares.
package testbed
