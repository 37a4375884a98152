package bus

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/schemas"
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
	// Await tunes the wait for each stream (see Await): its backoff, the
	// timeout of one attempt and the log of each wait.
	Await AwaitOptions
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
			Description: "Sendense backup requests, consumed by node agents (work queue), verification and retention requests, consumed by the hub, and the schedules that fire them",
			Subjects:    []string{SubjectRequested, SubjectVerifyRequested, SubjectForgetRequested, SubjectSchedules},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
			Discard:     jetstream.DiscardOld,
			MaxMsgs:     -1,
			MaxBytes:    -1,
			MaxAge:      0,
			Duplicates:  RequestsDuplicateWindow,
			// The server fires schedules (backup.schedules.<name>) onto
			// backup.requested itself. Schedules need roll-ups (a schedule
			// is one message per subject), so AllowRollup is set too; see
			// the package's Caveats for what that lets a publisher do.
			AllowMsgSchedules: true,
			AllowRollup:       true,
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
//
// Each stream is waited for with Await until ctx ends: a JetStream cluster
// that is still forming (no meta leader yet, not every peer known) does not
// answer, or answers "temporarily unavailable" or "insufficient
// resources", and each such attempt is logged and tried again. Give ctx a
// deadline (the start-up timeout).
func EnsureStreams(ctx context.Context, js jetstream.JetStream, opts StreamOptions) error {
	for _, cfg := range StreamConfigs(opts) {
		err := Await(ctx, "stream "+cfg.Name, func(ctx context.Context) error {
			if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
				return fmt.Errorf("create or update stream %s: %w", cfg.Name, err)
			}
			return nil
		}, opts.Await)
		if err != nil {
			return err
		}
	}
	return nil
}

// StreamForSubject returns the stream that stores a backup.* subject, or ""
// for a subject none of them binds (the bare backup.<type> subjects of
// events from before agent identities are no longer bound).
func StreamForSubject(subject string) string {
	if subject == SubjectRequested || subject == SubjectVerifyRequested || subject == SubjectForgetRequested {
		return StreamRequests
	}
	if name, ok := strings.CutPrefix(subject, SubjectSchedulePrefix); ok && ValidScheduleName(name) == nil {
		return StreamRequests
	}
	name, agent, err := ParseEventSubject(subject)
	switch {
	case err != nil:
		return ""
	case name == schemas.NameProgress:
		return StreamProgress
	case agent != "":
		return StreamEvents
	}
	return ""
}

// StoreReady reports whether JetStream can take the pipeline's writes now:
// it answers and is enabled (a clustered nats-server shuts JetStream down
// on a node whose disk filled up), the account's storage is not used up,
// and each stream of StreamConfigs has a leader (a cluster that lost its
// quorum has none). It writes nothing, so it cannot see a standalone
// server whose disk filled up: that server keeps answering everything but
// writes (see the package's Caveats); Leases.Probe, a real write, and
// Embedded.StoreErr can. The error wraps ErrUnavailable and says what is
// missing.
func StoreReady(ctx context.Context, js jetstream.JetStream) error {
	info, err := js.AccountInfo(ctx)
	if err != nil {
		return fmt.Errorf("jetstream account info: %w: %w", ErrUnavailable, err)
	}
	if max := info.Limits.MaxStore; max > 0 && int64(info.Store) >= max {
		return fmt.Errorf("jetstream storage used up (%d of %d bytes): %w", info.Store, max, ErrUnavailable)
	}
	for _, name := range []string{StreamRequests, StreamEvents, StreamProgress} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("stream %s: %w: %w", name, ErrUnavailable, err)
		}
		ci := st.CachedInfo()
		if ci.Cluster != nil && ci.Cluster.Leader == "" {
			return fmt.Errorf("stream %s has no leader: %w", name, ErrUnavailable)
		}
	}
	return nil
}
