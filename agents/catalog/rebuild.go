package catalog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

const (
	// replayBatch is how many messages a replay applies per transaction.
	replayBatch = 1024
	// lockProbeTimeout is how long Rebuild and CheckIdle wait for the live
	// catalog's file lock before deciding a running process holds it.
	lockProbeTimeout = 500 * time.Millisecond
	// RebuildSuffix names the file a rebuild writes next to the live
	// catalog before it renames it into place.
	RebuildSuffix = ".rebuild"
	// BackupSuffix names the hard link to the previous catalog file that
	// Rebuild leaves behind.
	BackupSuffix = ".bak"
)

// RebuildStats describe a replay of BACKUP_EVENTS.
type RebuildStats struct {
	// Path is the catalog written (for Rebuild, the live path it replaced).
	Path string `json:"path"`
	// Backup is the previous catalog file, kept as a hard link at
	// Path+BackupSuffix; "" when there was none or the link failed.
	Backup string `json:"backup,omitempty"`
	// FirstSeq and LastSeq are the stream sequences replayed: from the
	// stream's first message to its last one when the replay started.
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	// Messages read; of them Filed were accepted by Apply (applied, or
	// already present, including events refused by an earlier replay) and
	// Poison were kept as poison (schema, or refused by the store now).
	Messages int `json:"messages"`
	Filed    int `json:"filed"`
	Poison   int `json:"poison"`
	// Jobs in the catalog afterwards.
	Jobs int `json:"jobs"`
	// Took is the replay's duration.
	Took time.Duration `json:"took_ns"`
}

// CheckIdle returns an error wrapping ErrCatalogInUse when another process
// holds the catalog file at path (a running serve or catalog), and nil
// when the file is free or does not exist. The CLI calls it before it
// starts anything for a rebuild.
func CheckIdle(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	cat, err := store.Open(path, &store.Options{Timeout: lockProbeTimeout})
	if err != nil {
		return lockError(path, err)
	}
	return cat.Close()
}

func lockError(path string, err error) error {
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("catalog %s: %w; stop `sendense serve` or `sendense catalog` first", path, ErrCatalogInUse)
	}
	return err
}

// Rebuild replays BACKUP_EVENTS, from its first message up to the last
// one present when it starts, into a fresh catalog file next to path
// (path+RebuildSuffix), checks it, and renames it over path, atomically.
// The previous file stays reachable as path+BackupSuffix (a hard link).
// Poison events replay as poison: the rebuilt catalog equals what the
// live consumer filed (store.Snapshot.Equal).
//
// It holds the live file's lock from start to rename, and refuses with
// ErrCatalogInUse when a running process holds it (stop serve or catalog
// first). On any error the live file is left untouched and the partial
// file removed. ctx bounds the whole replay.
func Rebuild(ctx context.Context, js jetstream.JetStream, path string, log zerolog.Logger) (RebuildStats, error) {
	log = log.With().Str("component", "catalog-rebuild").Str("path", path).Logger()
	_, statErr := os.Stat(path)
	existed := statErr == nil
	live, err := store.Open(path, &store.Options{Timeout: lockProbeTimeout, Logger: log})
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", lockError(path, err))
	}
	defer live.Close()

	tmp := path + RebuildSuffix
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return RebuildStats{}, fmt.Errorf("rebuild catalog %s: remove leftover %s: %w", path, tmp, err)
	}
	fresh, err := store.Open(tmp, &store.Options{Logger: log})
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild catalog %s: %w", path, err)
	}
	fail := func(err error) (RebuildStats, error) {
		_ = fresh.Close()
		_ = os.Remove(tmp)
		return RebuildStats{}, fmt.Errorf("rebuild catalog %s: %w", path, err)
	}
	st, err := Replay(ctx, js, fresh, log)
	if err != nil {
		return fail(err)
	}
	if err := fresh.Check(); err != nil {
		return fail(err)
	}
	if err := fresh.Close(); err != nil {
		_ = os.Remove(tmp)
		return RebuildStats{}, fmt.Errorf("rebuild catalog %s: %w", path, err)
	}
	st.Path = path
	if existed {
		bak := path + BackupSuffix
		if err := os.Remove(bak); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn().Err(err).Str("backup", bak).Msg("catalog rebuild: old backup not removed")
		}
		if err := os.Link(path, bak); err != nil {
			log.Warn().Err(err).Str("backup", bak).Msg("catalog rebuild: previous catalog not kept")
		} else {
			st.Backup = bak
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return RebuildStats{}, fmt.Errorf("rebuild catalog %s: swap in %s: %w", path, tmp, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		log.Warn().Err(err).Msg("catalog rebuild: directory not synced")
	}
	log.Info().Int("messages", st.Messages).Int("filed", st.Filed).Int("poison", st.Poison).Int("jobs", st.Jobs).
		Uint64("last_seq", st.LastSeq).Str("backup", st.Backup).Dur("took", st.Took).Msg("catalog rebuilt")
	return st, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Replay files every message of BACKUP_EVENTS, from the first up to the
// last one present when it starts, into cat, with an ordered consumer (no
// durable state, no acks), in batches of up to 1024 events per
// transaction. Messages that fail their schema are recorded as poison
// exactly as Run records them (subject and stream sequence), and events
// Apply refuses are poison as in Run. cat may already hold some or all of
// the events: the result is the same (Apply is idempotent).
func Replay(ctx context.Context, js jetstream.JetStream, cat *store.Catalog, log zerolog.Logger) (RebuildStats, error) {
	return replay(ctx, js, cat, log, 0)
}

// replay is Replay up to stream sequence upTo (0: the last one).
func replay(ctx context.Context, js jetstream.JetStream, cat *store.Catalog, log zerolog.Logger, upTo uint64) (RebuildStats, error) {
	start := time.Now()
	st := RebuildStats{Path: cat.Path()}
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return st, fmt.Errorf("replay %s: %w", bus.StreamEvents, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return st, fmt.Errorf("replay %s: stream info: %w", bus.StreamEvents, err)
	}
	st.FirstSeq, st.LastSeq = info.State.FirstSeq, info.State.LastSeq
	if upTo > 0 && upTo < st.LastSeq {
		st.LastSeq = upTo
	}
	if info.State.Msgs > 0 && st.LastSeq >= st.FirstSeq {
		if err := replayRange(ctx, js, cat, log, &st); err != nil {
			return st, err
		}
	}
	stats, err := cat.Stats()
	if err != nil {
		return st, err
	}
	st.Jobs = stats.Jobs
	st.Took = time.Since(start)
	return st, nil
}

func replayRange(ctx context.Context, js jetstream.JetStream, cat *store.Catalog, log zerolog.Logger, st *RebuildStats) error {
	cons, err := js.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return fmt.Errorf("replay %s: ordered consumer: %w", bus.StreamEvents, err)
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(replayBatch))
	if err != nil {
		return fmt.Errorf("replay %s: %w", bus.StreamEvents, err)
	}
	defer iter.Stop()
	batch := make([]jetstream.Msg, 0, replayBatch)
	for {
		m, err := iter.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("replay %s after %d messages: %w", bus.StreamEvents, st.Messages, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("replay %s: metadata: %w", bus.StreamEvents, err)
		}
		seq := md.Sequence.Stream
		if seq > st.LastSeq { // the last message was deleted meanwhile
			return replayBatchApply(cat, log, batch, st)
		}
		batch = append(batch, m)
		done := seq >= st.LastSeq || md.NumPending == 0
		if len(batch) >= replayBatch || done {
			if err := replayBatchApply(cat, log, batch, st); err != nil {
				return err
			}
			batch = batch[:0]
		}
		if done {
			return nil
		}
	}
}

func replayBatchApply(cat *store.Catalog, log zerolog.Logger, batch []jetstream.Msg, st *RebuildStats) error {
	evs := make([]schemas.Event, 0, len(batch))
	for _, m := range batch {
		st.Messages++
		it := newItem(m)
		ev, agent, err := decodeEvent(m.Subject(), m.Data())
		if err != nil {
			if perr := cat.RecordPoison(poisonRecord(m.Subject(), it.seq, m.Data(), err.Error())); perr != nil {
				return fmt.Errorf("replay: %w", perr)
			}
			log.Debug().Str("subject", m.Subject()).Uint64("seq", it.seq).Str("reason", err.Error()).Msg("replay: event poisoned")
			st.Poison++
			continue
		}
		evs = append(evs, store.WithSource(ev, store.Source{Payload: m.Data(), Agent: agent, Seq: it.seq}))
	}
	if len(evs) == 0 {
		return nil
	}
	errs, err := cat.Apply(evs...)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	for _, e := range errs {
		if e != nil {
			st.Poison++
		} else {
			st.Filed++
		}
	}
	return nil
}
