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
// Exports are on unix sockets (one host), or with RepoOptions.Listen on TCP
// with TLS: each export gets a port of RepoOptions.Ports and a fresh
// pre-shared key, and the reply (OpenReply.TLS, RestoreOpenReply.TLS) is
// the only place the key goes, to the requester's private inbox. The
// service logs URIs, never keys.
//
// Before an incremental is made, its base is checked (repository.CheckBase):
// a missing base answers CodeBaseMissing, a base whose backing chain does not
// open or that qemu-img check finds corrupt CodeBaseInvalid, and the agent
// takes a full instead. A full file system answers CodeRepositoryFull.
//
// Reconciliation (Reconcile, at start and every ReconcileInterval) removes
// the files that are no backup: partial files of attempts that failed
// without aborting, and temporary files of crashed creates. The admin-only
// sendense.repo.check compares every completed backup with its file and
// lists (and removes) the same orphans.
//
// Every target keeps the point's manifest (package manifest): all zero
// chunks for a full, the base's for an incremental, with the digests the
// agent sends (sendense.repo.target.digests); the close writes it as
// <job-id>.manifest and answers its SHA-256. The admin-only
// sendense.repo.verify checks completed points (qemu-img check, the
// manifest against the catalog, the point read through its chain and
// hashed per chunk) and publishes backup.verified per job; verify
// schedules reach it as backup.verify.requested (ServeVerifyRequests).
// Forget schedules reach Forget as backup.forget.requested
// (ServeForgetRequests): a busy VM is asked for again after ForgetRetry,
// a request that cannot succeed is terminated with a log line.
// sendense.repo.manifest reads a manifest page by page. An open target's
// manifest lives in the hub's memory until its close: 32 bytes per MiB of
// disk (32 MiB for a 1 TiB disk). A verification does not take the VM's
// lease: one that overlaps a prune of the same chain can fail on a file
// being merged, and a failed verification makes that disk's next backup
// a full.
//
// # Caveats
//
// A failed or partial backup is never a base: the base of an incremental is
// chosen by the agent from the catalog's chain, which holds completed
// backups only, and a partial file is removed on abort, by the reaper or by
// reconciliation. The reaper closes exports whose job no longer holds its
// VM's lease (the agent vanished) and removes their partial files. The
// service must never decide full vs incremental; that is the agent's job
// (design invariant 3).
//
// The service never removes a completed backup: a file it did not make
// itself in this process is removed only when the catalog, caught up with
// BACKUP_EVENTS (CatalogProgress), does not show it completed, and, for
// reconciliation, its job does not hold its VM's lease and the file is
// older than ReconcileGrace. Without a catalog it removes no such file. The
// catalog checked is one consumer (bus.ConsumerCatalog by default): with
// several catalog replicas, the one answering sendense.catalog.* must be
// the one whose progress is read.
//
// A file of a disk whose qcow2 header cannot be read blocks removals in that
// disk's directory (repository.Remove cannot tell what it backs onto): its
// orphans stay, and repo check reports the file if it is a completed backup.
// sendense.repo.check lists every completed job in one catalog reply, so a
// catalog whose completed jobs exceed the server's max payload answers it
// with an error (reconciliation asks per VM and is not limited so).
package hub
