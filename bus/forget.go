package bus

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/schemas"
)

// Retention requests: backup.forget.requested in StreamRequests, fired by
// a forget schedule (Schedule.Forget) or published by admin, taken by the
// hub through its durable consumer ConsumerHubForget.
const (
	// SubjectForgetRequested carries a schemas.ForgetRequest.
	SubjectForgetRequested = schemas.NameForgetRequested
	// ConsumerHubForget is the hub's durable pull consumer on
	// StreamRequests, filtered on SubjectForgetRequested (never
	// overlapping the agents' backup.requested or the verify requests, as
	// a work queue requires).
	ConsumerHubForget = "sendense-hub-forget"
	// ForgetAckWait is how long a forget request may run before it is
	// delivered again: a prune merges and rebases whole images (the hub
	// allows a forget 30 minutes); the hub acks when it finished.
	ForgetAckWait = 35 * time.Minute
	// ForgetBusyDelay is how long the hub waits before it takes a forget
	// request again whose VM was busy (a backup held its lease, a restore
	// of it was open).
	ForgetBusyDelay = 2 * time.Minute
	// ForgetMaxDeliver caps deliveries of a forget request: a busy VM is
	// tried again every ForgetBusyDelay, for about an hour, and then the
	// hub gives the firing up (logged); the next firing applies the
	// policy anyway. A request that kills the hub does not loop.
	ForgetMaxDeliver = 30
)

// ForgetConsumerConfig is ConsumerHubForget's configuration.
func ForgetConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerHubForget,
		Description:   "Sendense hub: retention (forget) requests",
		FilterSubject: SubjectForgetRequested,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ForgetAckWait,
		MaxDeliver:    ForgetMaxDeliver,
		MaxAckPending: 1,
	}
}

// EnsureForgetConsumer creates or updates ConsumerHubForget on
// StreamRequests (as admin, like EnsureVerifyConsumer), waiting with
// Await until ctx ends while the stream is not there.
func EnsureForgetConsumer(ctx context.Context, js jetstream.JetStream, opts AwaitOptions) (jetstream.Consumer, error) {
	return ensureConsumer(ctx, js, StreamRequests, ForgetConsumerConfig(), opts)
}
