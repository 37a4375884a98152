// Package promreg registers Prometheus collectors the way every sendense
// component does: Register returns the collector to use, which is the one
// already registered under the same description when a component is
// started again with the same registry (a restarted role in one process),
// and panics on a conflicting registration, a programming error.
package promreg
