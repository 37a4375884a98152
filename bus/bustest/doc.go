// Package bustest starts NATS servers for tests of any package: an
// embedded server (Embedded), a separate nats-server process built from
// the module (External), and a JetStream cluster of embedded servers
// (Cluster). Every server gets its own t.TempDir() store and a random
// port, and is stopped in t.Cleanup, also when the test fails.
//
// It must never be imported by non-test code.
//
// # Basics
//
// One behaviour suite, several implementations (restic style): ForEach
// runs a test once per implementation, so a suite proves it does not
// depend on the server being embedded:
//
//	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
//		s := start(t)
//		// use s.Conn, s.JS ...
//	})
//
// Secure, SecureEmbedded, SecureExternal and SecureCluster run servers that
// admit only the roles' users, as sendense does; ExternalWithConfig runs a
// nats-server process with a given configuration (what
// `sendense creds server-config` prints). StartTLSCluster runs a 3-node
// (or n-node) cluster of real nats-server processes with TLS on client
// and route ports and the roles' users, with per-node Stop, Start, Kill
// and StreamLeader; its configuration comes from WriteClusterConfig,
// which only writes files (a CA, and per node a config, a certificate for
// its address and a store directory), so a test can start the same nodes
// elsewhere, for example in network namespaces. A test that must fill a disk
// mounts a small tmpfs with internal/testutil.Tmpfs.
//
// Logger returns a zerolog.Logger that writes through t.Log and goes
// quiet once the test's cleanups have run, so late callbacks of clients
// and servers never write to a finished test.
//
// # Caveats
//
// External builds the nats-server binary with `go build` once and keeps it
// in os.UserCacheDir()/sendense-test, keyed by the module version; the
// first run in a fresh cache takes a while. The go command must be on
// PATH or in GOROOT. Cluster picks its route ports by listening on port 0
// and closing, so another process could in theory take one in between.
package bustest
