package bus

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/schemas"
)

// Verification requests: backup.verify.requested in StreamRequests, fired
// by a verify schedule (Schedule.Verify) or published by admin, taken by
// the hub through its durable consumer ConsumerHubVerify.
const (
	// SubjectVerifyRequested carries a schemas.VerifyRequest.
	SubjectVerifyRequested = schemas.NameVerifyRequested
	// ConsumerHubVerify is the hub's durable pull consumer on
	// StreamRequests, filtered on SubjectVerifyRequested (never overlapping
	// the agents' backup.requested, as a work queue requires).
	ConsumerHubVerify = "sendense-hub-verify"
	// VerifyAckWait is how long a verify request may run before it is
	// delivered again: a verification reads every selected point whole,
	// so it is long; the hub acks when it finished.
	VerifyAckWait = 40 * time.Minute
	// VerifyMaxDeliver caps deliveries of a verify request: a hub that
	// died mid-way verifies again, but a request that kills it does not
	// loop.
	VerifyMaxDeliver = 3
)

// VerifyConsumerConfig is ConsumerHubVerify's configuration.
func VerifyConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerHubVerify,
		Description:   "Sendense hub: verification requests",
		FilterSubject: SubjectVerifyRequested,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       VerifyAckWait,
		MaxDeliver:    VerifyMaxDeliver,
		MaxAckPending: 1,
	}
}

// EnsureVerifyConsumer creates or updates ConsumerHubVerify on
// StreamRequests (as admin, like EnsureRequestConsumer), waiting with
// Await until ctx ends while the stream is not there.
func EnsureVerifyConsumer(ctx context.Context, js jetstream.JetStream, opts AwaitOptions) (jetstream.Consumer, error) {
	return ensureConsumer(ctx, js, StreamRequests, VerifyConsumerConfig(), opts)
}
