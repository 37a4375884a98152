package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream names.
const (
	// StreamRequests is the work queue of backup requests (subject
	// backup.requested). A message leaves it when an agent acks or
	// terminates it.
	StreamRequests = "BACKUP_REQUESTS"
	// StreamEvents keeps every lifecycle event forever; it is the catalog's
	// log, replayed to rebuild it.
	StreamEvents = "BACKUP_EVENTS"
	// StreamProgress keeps the last progress message of each job for 24 h.
	StreamProgress = "BACKUP_PROGRESS"
)

// Stream limits.
const (
	// RequestsDuplicateWindow is how long a request's Nats-Msg-Id (its job
	// id) is remembered: a hub or CLI that re-publishes the same job within
	// it creates no second request.
	RequestsDuplicateWindow = 10 * time.Minute
	// EventsDuplicateWindow is how long an event id is remembered by
	// StreamEvents. It covers publish retries across a reconnect; older
	// duplicates are still dropped by the catalog, which records applied ids.
	EventsDuplicateWindow = 10 * time.Minute
	// ProgressMaxAge is how long a job's last progress message is kept.
	ProgressMaxAge = 24 * time.Hour
	// ProgressDuplicateWindow is StreamProgress's duplicate window.
	ProgressDuplicateWindow = 2 * time.Minute
)

// StreamOptions tunes the streams EnsureStreams creates.
type StreamOptions struct {
	// Replicas is the number of copies of each stream in a cluster:
	// 1 (default, also for 0) on a single server, 3 or 5 in a cluster.
	Replicas int
}

func (o StreamOptions) replicas() int {
	if o.Replicas <= 0 {
		return 1
	}
	return o.Replicas
}

// StreamConfigs returns the configurations EnsureStreams applies, in the
// order requests, events, progress. All use file storage.
func StreamConfigs(opts StreamOptions) []jetstream.StreamConfig {
	r := opts.replicas()
	return []jetstream.StreamConfig{
		{
			Name:        StreamRequests,
			Description: "Sendense backup requests, consumed by node agents (work queue)",
			Subjects:    []string{SubjectRequested},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
			Discard:     jetstream.DiscardOld,
			MaxMsgs:     -1,
			MaxBytes:    -1,
			MaxAge:      0,
			Duplicates:  RequestsDuplicateWindow,
		},
		{
			Name:        StreamEvents,
			Description: "Sendense backup lifecycle events, the catalog's log (kept)",
			Subjects:    append([]string(nil), EventSubjects...),
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
			Discard:     jetstream.DiscardOld,
			MaxMsgs:     -1,
			MaxBytes:    -1,
			MaxAge:      0,
			Duplicates:  EventsDuplicateWindow,
		},
		{
			Name:              StreamProgress,
			Description:       "Sendense backup progress, last message per job",
			Subjects:          []string{SubjectProgressAll},
			Retention:         jetstream.LimitsPolicy,
			Storage:           jetstream.FileStorage,
			Replicas:          r,
			Discard:           jetstream.DiscardOld,
			MaxMsgs:           -1,
			MaxBytes:          -1,
			MaxMsgsPerSubject: 1,
			MaxAge:            ProgressMaxAge,
			Duplicates:        ProgressDuplicateWindow,
			AllowDirect:       true,
		},
	}
}

// EnsureStreams creates the three streams or updates them to the
// configurations of StreamConfigs. It is idempotent and safe to run from
// every process at start. An existing stream whose immutable settings
// (retention, storage) differ is an error, not silently kept.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, opts StreamOptions) error {
	for _, cfg := range StreamConfigs(opts) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("create or update stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// StreamForSubject returns the stream that stores a backup.* subject, or ""
// for a subject none of them binds.
func StreamForSubject(subject string) string {
	switch subject {
	case SubjectRequested:
		return StreamRequests
	case SubjectStarted, SubjectChangeID, SubjectCompleted, SubjectFailed, SubjectRejected:
		return StreamEvents
	}
	const pre = "backup.progress."
	if len(subject) > len(pre) && subject[:len(pre)] == pre {
		for i := len(pre); i < len(subject); i++ {
			if subject[i] == '.' {
				return ""
			}
		}
		return StreamProgress
	}
	return ""
}
