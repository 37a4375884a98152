package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// CancelBucket is the KV bucket of canceled jobs: the durable record,
// written by `sendense cancel` (admin) before it asks the agents, that a
// job must not run again. Every agent reads it before it runs a delivery
// of a request. The agent running the job when cancel asked stops it and
// publishes backup.failed reason canceled; should that agent die first,
// the request is redelivered, and the agent that takes it finds the record
// and ends the job as canceled instead of running it. Agents only read the
// bucket; the hub's process creates it with the streams (EnsureCancels).
const CancelBucket = "sendense_cancels"

// CancelKeep is how long a cancel record is kept (the bucket's max age):
// far longer than a request waits for its redelivery (seconds to minutes,
// hours while no agent runs), and short enough that the bucket never grows
// with the jobs. A request that waits longer than that for an agent runs.
const CancelKeep = 30 * 24 * time.Hour

// CancelKey is job jobID's key in CancelBucket: "job.<job id>" (a job id
// is a valid key: ValidJobID).
func CancelKey(jobID string) string { return "job." + jobID }

// CancelRecord is what CancelBucket holds for a canceled job.
type CancelRecord struct {
	// By names who canceled (user@host of the cancel command).
	By string    `json:"by"`
	At time.Time `json:"at"`
}

// Cancels reads and writes CancelBucket. Safe for concurrent use.
type Cancels struct {
	kv jetstream.KeyValue
}

// EnsureCancels creates or updates CancelBucket (file storage, history 1,
// max age CancelKeep, replicas as the streams) and returns its Cancels,
// waiting with Await until ctx ends while the cluster does not answer yet:
// what the hub's process does, as admin, at start.
func EnsureCancels(ctx context.Context, js jetstream.JetStream, replicas int, await AwaitOptions) (*Cancels, error) {
	var kv jetstream.KeyValue
	err := Await(ctx, "cancel bucket "+CancelBucket, func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      CancelBucket,
			Description: "Sendense canceled jobs: never run again",
			History:     1,
			TTL:         CancelKeep,
			Storage:     jetstream.FileStorage,
			Replicas:    max(replicas, 1),
		})
		if err != nil {
			return fmt.Errorf("create or update cancel bucket %s: %w", CancelBucket, err)
		}
		return nil
	}, await)
	if err != nil {
		return nil, err
	}
	return &Cancels{kv: kv}, nil
}

// OpenCancels binds to CancelBucket without creating or changing it. A
// bucket that does not exist yet gives an error wrapping
// jetstream.ErrBucketNotFound.
func OpenCancels(ctx context.Context, js jetstream.JetStream) (*Cancels, error) {
	kv, err := js.KeyValue(ctx, CancelBucket)
	if err != nil {
		return nil, fmt.Errorf("open cancel bucket %s: %w", CancelBucket, err)
	}
	return &Cancels{kv: kv}, nil
}

// Record records that job jobID is canceled (by whom, now). Recording a
// job twice keeps the newest record.
func (c *Cancels) Record(ctx context.Context, jobID, by string) error {
	if err := ValidJobID(jobID); err != nil {
		return err
	}
	data, err := json.Marshal(CancelRecord{By: by, At: time.Now().UTC()})
	if err != nil {
		return err
	}
	if _, err := c.kv.Put(ctx, CancelKey(jobID), data); err != nil {
		return fmt.Errorf("record cancel of job %s in %s: %w", jobID, CancelBucket, err)
	}
	return nil
}

// Canceled returns job jobID's cancel record; ok is false when the job
// was not canceled (or its record is older than CancelKeep).
func (c *Cancels) Canceled(ctx context.Context, jobID string) (_ CancelRecord, ok bool, _ error) {
	e, err := c.kv.Get(ctx, CancelKey(jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return CancelRecord{}, false, nil
	}
	if err != nil {
		return CancelRecord{}, false, fmt.Errorf("read cancel of job %s from %s: %w", jobID, CancelBucket, err)
	}
	var rec CancelRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		// A record that does not decode still says the job was canceled.
		return CancelRecord{By: "unknown"}, true, nil
	}
	return rec, true, nil
}
