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
// Agents read requests from the durable pull consumer made by
// EnsureRequestConsumer (jetstream Consume/Messages/Fetch), keep long jobs
// alive with KeepInProgress, and take the VM's lease with Leases.Acquire;
// the copy runs with Lease.Context, which ends if the lease is lost. The
// catalog reads BACKUP_EVENTS through EnsureCatalogConsumer, or replays it
// with an ordered consumer to rebuild.
//
// # Caveats
//
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
package bus
