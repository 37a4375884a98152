// Package hub holds the hub's roles: the repository service (sendense.repo),
// which creates QCOW2 targets and exports them with qemu-nbd for node agents,
// and the HTTP request API, which turns POST /api/v1/backups into a
// backup.requested message.
//
// # Basics
//
// An agent asks the repository service to open a target for (job, disk): a
// fresh QCOW2, full or backed by the previous completed backup of that disk,
// exported writable over NBD. When the copy is flushed the agent closes the
// target (qemu-nbd stops, the file is synced and its actual size measured);
// on any failure it aborts the target (export stopped, partial file removed).
// The service also exports chain points read-only for restores.
//
// # Caveats
//
// A failed or partial backup is never a base: the base of an incremental is
// chosen by the agent from the catalog's chain, which holds completed
// backups only, and a partial file is removed on abort or by the reaper.
// The reaper closes exports whose job no longer holds its VM's lease (the
// agent vanished) and removes their partial files. The service must never
// decide full vs incremental; that is the agent's job (design invariant 3).
package hub
