// Package catalog is the catalog role: the consumer that files every
// backup event of BACKUP_EVENTS into the bbolt catalog (package store),
// the NATS micro service that answers questions about it
// (sendense.catalog.*), the client agents and the CLI use to ask, and the
// rebuild that replays the stream into a fresh catalog.
//
// It owns the path from a delivered message to a committed, acknowledged
// record: decode and validate (schemas.Decode), apply in groups (one bbolt
// transaction per batch), ack only after commit, terminate poison with a
// reason. It must never decide anything about backups (that is the
// agent's), never define subjects or streams of its own beyond its
// service's request/reply subjects (bus owns them), and never ack an event
// before the transaction that holds it has committed.
//
// # Basics
//
// Run is the consumer; it runs until its context ends:
//
//	cat, _ := store.Open(filepath.Join(data, "catalog.db"), nil)
//	svc, _ := catalog.Serve(nc, cat, log) // sendense.catalog.* answers
//	defer svc.Stop()
//	err := catalog.Run(ctx, js, cat, catalog.Options{Registry: reg, Log: log})
//
// Group commit: a reader goroutine decodes delivered messages as they come
// and hands everything it holds (up to MaxBatch) to the single writer the
// moment the writer is free; the writer applies the batch with one
// store.Apply and then acks it. At low rates a batch is one event and its
// latency is one synced transaction; at high rates batches grow while the
// writer commits, and the cost of a sync is shared.
//
// Anyone with a NATS connection asks the catalog with a Client (NewClient):
// Job, Jobs, Chain, ChainHead, Chains, Poison, Stats. The wire contract
// (subjects, JSON request types, error codes) is in api.go.
//
// Rebuild replays BACKUP_EVENTS into a fresh file and swaps it in; Replay
// replays into an open catalog. Because store.Apply is idempotent and
// order-tolerant, a replay gives the catalog the live consumer built
// (store.Snapshot.Equal), also when it replays into a catalog that
// already holds part of the events.
//
// # Caveats
//
//   - Delivery is at least once. A catalog that dies between its commit
//     and its acks gets the batch again after the consumer's ack wait
//     (Options.AckWait, 30 s by default); Apply makes that a no-op.
//   - The duplicates metric only counts redelivered messages (and repeats
//     within a batch) whose event the catalog already held. An event
//     re-published under a new stream sequence after the stream's
//     duplicate window is a no-op too, but counts as applied.
//   - A message that fails its schema costs a transaction of its own
//     (store.RecordPoison) before it is terminated.
//   - Throughput is bound by the single bbolt writer (store.Apply and its
//     fsync per batch); decoding (schemas.Decode, about 10 µs per event)
//     overlaps with the commit. BenchmarkCatalog prints a decode-only loop
//     next to the catalog and the raw JetStream loop.
//   - Rebuild needs the live catalog file to itself: stop serve or catalog
//     first. With an embedded server, the CLI starts the server on the
//     data directory for the replay.
//   - Service replies are bounded by the server's max payload; a jobs list
//     that does not fit is answered with 413 (ask with a limit).
package catalog
