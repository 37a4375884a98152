// Package testutil holds the few helpers every integration test needs:
// finding the real tools (qemu-img, qemu-nbd, nbdkit, nbdcopy) and starting
// nbdkit on a unix socket in a test's temp dir, mounting a small tmpfs
// (a file system that fills up).
//
// With CI=true a missing tool fails the test instead of skipping it, so a
// green CI run cannot hide a missing install step. It must never be imported
// by non-test code.
package testutil
