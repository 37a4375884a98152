// Package datadir owns the exclusive lock of a sendense data directory:
// one process at a time may use DATA (its embedded NATS store, catalog,
// credentials and repository).
//
// Lock is the very first thing such a process does: it takes an exclusive
// flock on DATA/.lock before anything else under DATA is created or opened,
// so a second process refuses before it touches any file. The lock goes
// with the process (the kernel drops it when the process dies, even on
// SIGKILL), so a stale lock file never blocks a restart. It must never
// remove or rewrite the lock file of a holder: a process that did not get
// the lock only reads it.
package datadir
