// Package retention decides which backup points of a VM to keep and
// which to remove, under a keep-last / hourly / daily / weekly / monthly /
// yearly policy with restic's `forget` semantics, plus protected points.
//
// It is pure: it knows points (an id and a time) and a policy, nothing of
// the catalog, the repository, qcow2 chains or NATS. Removing a point, and
// keeping every kept point restorable while doing so, is the caller's job.
//
// # Basics
//
// Apply sorts the points newest first (equal times by id, ascending) and
// walks them once. Each rule of the policy is a bucket with a count: a
// point whose period (its hour, day, ISO week, month or year, in the
// location given to Apply) differs from the period of the last point that
// bucket kept is kept by that bucket, and the count goes down by one;
// keep-last gives every point its own period. A count of -1 never runs
// out. When the walk reaches the oldest point and a bucket still has
// count left, that bucket keeps the oldest point even if it shares its
// period with the last kept one (reason "oldest daily snapshot" and so
// on): what remains of the history is kept as long as the policy allows.
// This is restic's internal/data/snapshot_policy.go at commit
// 13cb18f8ad846a974542efce775618b2f039762b (restic 0.17 and later, issue
// 3624: "keep oldest snapshot when there aren't enough snapshots").
// Reasons use restic's words: "last snapshot", "hourly snapshot", ...
//
// Protected points are always kept, with the reason "protected" first.
// They still count in the buckets like any other point (as restic's
// snapshots kept by --keep-tag do): a protected newest point is one of the
// keep-last points.
//
// With any valid policy the newest point is kept: every bucket with a
// count keeps the first point it sees.
//
// # Caveats
//
//   - An empty policy is ErrEmptyPolicy, as restic refuses `forget`
//     without one. A policy that only protects points is empty too: it
//     would remove every other point, the newest included.
//   - restic's --keep-within*, --keep-tag and grouping by host and paths
//     are not here; a caller groups points per VM (or per disk) itself.
//   - Periods are taken in the location given to Apply (nil is UTC); the
//     same points can be kept differently in another zone.
package retention
