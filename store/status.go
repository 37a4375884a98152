package store

// Ended reports whether the job has its outcome: completed (or pruned
// since), rejected, or failed with no retry left. A running job, or one whose last attempt
// failed and will be retried, has not ended.
func (j Job) Ended() bool {
	switch j.Status {
	case StatusCompleted, StatusRejected, StatusPruned:
		return true
	case StatusFailed:
		return j.Failure == nil || !j.Failure.Retryable
	}
	return false
}
