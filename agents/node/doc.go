// Package node is the node agent (SNA): it takes backup.requested messages
// from the BACKUP_REQUESTS work queue and runs each backup end to end.
//
// # Basics
//
// For each request the agent validates it (bad input → backup.rejected, then
// the message is terminated), derives the job id (the request's, else one
// derived from the stream sequence so a redelivery keeps it), takes the VM's
// lease, and only then decides full or incremental per disk from the
// catalog's chain head (design invariant 3; Plan is the one place). It
// snapshots the VM as sendense-<job_id>, opens one target per disk from the
// repository service, publishes backup.started, copies each disk's changed
// extents, publishes backup.changeid per disk when its copy is flushed,
// removes the snapshot, closes the targets and publishes backup.completed
// with every disk's change id. Only then is the request acked.
//
// # Caveats
//
// On any error the agent cleans up the same way (snapshot removed, targets
// aborted and their partial files removed), publishes backup.failed with a
// reason code and whether it is retryable, and acks (permanent, or out of
// attempts) or negatively acks with backoff (retryable). A request whose VM
// lease is held waits with a delayed negative ack: it is neither lost nor run
// concurrently. Before releasing a lease the agent waits (bounded) until the
// catalog shows the job's outcome, so the next job of that VM sees this
// backup as its base.
//
// # Cancel
//
// Admin cancels a job with a request on bus.AgentCancel (RequestCancel;
// ServeCancel answers for an agent). The agent that runs the job (from the
// decoded request until it is settled) answers CancelStopping and ends the
// job's context with cause ErrCanceled; the run cleans up as on any
// failure and the job ends with backup.failed reason canceled, never
// retried, and the request is acked. Each attempt's outcome is decided
// once (settle): a cancel that comes later answers CancelTooLate and
// changes nothing. Other agents do not answer.
//
// The agent never passes state through environment variables, file names or
// port numbers: identity travels in the events (invariant 1).
//
// # Metrics
//
// With Config.Registry set (sendense serve passes the one it serves with
// --metrics-listen), the agent exports sendense_agent_jobs_total by
// outcome (completed, failed, rejected; a retried job counts each failed
// attempt), sendense_agent_jobs_running, the bytes completed backups read
// and wrote (sendense_agent_read_bytes_total,
// sendense_agent_written_bytes_total) and sendense_agent_job_seconds.
package node
