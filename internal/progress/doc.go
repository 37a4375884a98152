// Package progress turns byte counts into what a person reads about a
// running copy: a recent rate and an estimated time left. It is the one
// place that samples progress, as restic's ui/progress is: a worker only
// counts (the copier adds to an atomic counter; a restore reads nbdcopy's
// percentage), one Sampler per job samples those counts on its owner's
// schedule, and printers or publishers show what it returns.
//
// # Basics
//
// NewSampler(now) starts the clock; Sample(done) records a point and
// returns the rate over the last Window (DefaultWindow, 10 s; over the
// whole run until a window has passed). ETA(done, total, rate) is the
// time left, (total-done)/rate, for that rate or one that came from
// elsewhere (a backup.progress event's rate_bytes_per_sec).
//
// It must never do I/O, log or know about the bus, NBD or the terminal.
//
// # Caveats
//
// A Sampler is not safe for concurrent use: one goroutine samples. The
// clock is injected (nil: time.Now) so tests move it by hand.
package progress
