// Package bus owns everything Sendense does on NATS: subjects, streams,
// consumers, the lease bucket, message ids and CloudEvents headers,
// publishing, client connections and the embedded server.
//
// It must never know about bbolt, VMware or NBD, and nothing else in the
// project may define a subject, a stream or a Nats-Msg-Id by itself.
//
// # Basics
//
// A process either starts an embedded server (StartEmbedded; JetStream on
// file storage under DataDir/jetstream, every write synced before its
// PubAck) and connects in-process (Embedded.Connect), or connects to an
// external server or cluster (Connect, which reconnects forever with
// backoff and logs every disconnect and reconnect). Then it runs
// EnsureStreams, idempotently:
//
//	stream           subjects                              kept
//	BACKUP_REQUESTS  backup.requested                      work queue: until acked or terminated
//	                 backup.schedules.<name>               one message per schedule, until removed
//	BACKUP_EVENTS    backup.{started,changeid,completed,   forever (the catalog's log)
//	                 failed,rejected}
//	BACKUP_PROGRESS  backup.progress.<job_id>              last message per job, 24 h
//
// Everything is published through a Publisher: Publish, PublishEvent and
// PublishRequest set Nats-Msg-Id and the CloudEvents headers and retry with
// the same id on timeouts, "no responders" and JetStream's "duplicate
// message id is in process", so a message is stored once however often it
// is sent within the duplicate window. Event ids come from EventID: job,
// attempt, type, disk key, sequence. PublishEvent also validates the event
// against its schema (schemas.Validate) and refuses it with ErrInvalidEvent
// otherwise, so no producer can put on the bus what the catalog would
// poison; Publish sends a payload as it is.
//
// Schedules are messages too (AddSchedule, ListSchedules, RemoveSchedule):
// a message on backup.schedules.<name> with a Nats-Schedule header makes
// nats-server store a copy of its payload on backup.requested at every
// firing; no Sendense process runs a timer.
//
// Agents read requests from the durable pull consumer made by
// EnsureRequestConsumer (jetstream Consume/Messages/Fetch), keep long jobs
// alive with KeepInProgress, and take the VM's lease with Leases.Acquire;
// the copy runs with Lease.Context, which ends if the lease is lost. The
// catalog reads BACKUP_EVENTS through EnsureCatalogConsumer, or replays it
// with an ordered consumer to rebuild.
//
// Across hosts NATS runs over TLS with one CA (TLSDir: ca.pem, ca-key.pem
// and server.pem, server-key.pem, in DATA/tls). An embedded server that
// listens off loopback with a TLSDir makes them at its first start and
// requires TLS from clients and on its routes (mutual); TLSDir.IssueServer
// issues external nats-servers' certificates from the same CA and
// NodeConfig writes their configuration. A client given Options.TLSCA (or
// a tls:// URL) uses TLS, verifies the server against that CA only and
// refuses a server without TLS; with TLSIfOffered it uses TLS only when
// the server asks for it.
//
// At start-up the cluster may not be there yet. EnsureStreams, NewLeases,
// EnsureRequestConsumer and EnsureCatalogConsumer wait for it with Await
// (exponential backoff with jitter, each try bounded, one log line per
// wait) until their context ends: give it the start-up deadline. Binding
// to what another role makes (OpenLeases, RequestConsumer) does not wait;
// its caller wraps it in Await.
//
// # Caveats
//
//   - BACKUP_REQUESTS allows roll-ups, because nats-server's schedules
//     need them. Anyone who may publish on backup.requested (hub,
//     requester) can therefore send a Nats-Rollup header and purge the
//     queued requests (or, with "all", the schedules too); subject
//     permissions cannot see headers. Give the requester role only to
//     those you would let cancel queued backups.
//   - A firing carries the schedule's payload, so it has no job id; each
//     gets one derived from its stream sequence (DeriveJobID), and
//     requested_by "schedule:<name>".
//   - Deduplication holds within a stream's duplicate window (10 min for
//     requests and events). Consumers must still be idempotent: the catalog
//     records applied event ids.
//   - The request consumer does not cap deliveries (MaxDeliver -1): waiting
//     for a lease uses delayed naks, which count as deliveries. Agents cap
//     failed attempts themselves; see RequestConsumerOptions.
//   - A lease is only as good as its renewal: the holder stops (its
//     Context ends) once it could not renew for about 0.9 × ttl, and the
//     server forgets the lease ttl after the last renewal. Clocks do not
//     matter; only durations are compared.
//   - An embedded server's in-process connection does not survive a
//     restart of that server; use its ClientURL with Connect when it must.
//   - Embedded servers sync every write (SyncAlways). That costs
//     throughput and buys durability on a single node.
//   - A full disk stops JetStream until it is restarted. When nats-server
//     (v2.15) cannot write a stream's file (ENOSPC), a standalone server
//     logs "Critical write error ... no space left on device" and keeps
//     the error on the stream: it never answers a publish to that stream
//     again, even once space is back, so publishers time out (Publish
//     returns ErrUnavailable), while JetStream stays enabled and answers
//     everything else: StoreReady, which writes nothing, sees nothing
//     wrong; Leases.Probe, a real write, fails. A clustered server logs
//     "JetStream out of File resources, will be DISABLED" and shuts
//     JetStream down on that node. Messages acknowledged before are kept;
//     the write that failed is not stored and was never acknowledged.
//   - An embedded server recovers by itself. Every StoreCheckInterval
//     (default 5 s) a watchdog looks for a stream's write error (the
//     server's Healthz) or JetStream shut down. Then it waits until the
//     store's file system has StoreMinFree bytes free (default 64 MiB, or
//     1% of the file system up to 1 GiB when that is more), shuts
//     JetStream down if it is still up and enables it again with the
//     store and limits it started with, logging each step with
//     component=jetstream-watchdog. Until then Embedded.StoreErr says what
//     is wrong. A restart that does not hold is retried after the interval,
//     then at doubling intervals up to a minute. Streams, consumers and the
//     duplicate window come back from disk; client connections stay up,
//     and a message that was not stored is stored once when its publisher
//     sends it again with the same id. In a cluster only a node whose
//     JetStream was shut down is restarted: a clustered R1 stream's write
//     error is not seen. Clients that connect after a restart are told in
//     the server's INFO that JetStream is off (nats.Conn's
//     ConnectedServerJetStream); nats-server sets that flag again only on
//     a configuration reload, and nothing in Sendense reads it.
//   - An external nats-server does not recover by itself: after freeing
//     space its operator must restart the nats-server process. Only
//     shutting JetStream down and enabling it again clears a standalone
//     server's write error, or brings back a clustered node's JetStream;
//     that is what the embedded watchdog does in-process
//     (Server.ShutdownJetStream, Server.EnableJetStream), and a running
//     nats-server process offers no command for it.
package bus
