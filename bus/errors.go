package bus

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// JSErrCodeDuplicateInProcess is the JetStream API error code of
// "duplicate message id is in process" (nats-server's
// JSStreamDuplicateMessageConflict, HTTP-like code 409). A clustered stream
// answers it when a message with the same Nats-Msg-Id is still being
// proposed; publishing again with the same id later yields either the
// stored message's PubAck (Duplicate=true) or a store. nats.go has no
// constant for it.
const JSErrCodeDuplicateInProcess jetstream.ErrorCode = 10158

// JetStream API error codes (nats-server's errors.json) of a store that
// cannot take a message: the account's or server's storage is used up, a
// write failed (a full disk), or JetStream is disabled (a clustered
// nats-server turns it off after a write fails for lack of space; a
// standalone one does not answer at all, see the package's Caveats).
const (
	jsErrAccountResources      jetstream.ErrorCode = 10002 // resource limits exceeded for account
	jsErrInsufficientResources jetstream.ErrorCode = 10023 // insufficient resources
	jsErrNotEnabledForAccount  jetstream.ErrorCode = 10039 // JetStream not enabled for account
	jsErrStorageExceeded       jetstream.ErrorCode = 10047 // insufficient storage resources available
	jsErrNotEnabled            jetstream.ErrorCode = 10076 // JetStream not enabled
	jsErrStoreFailed           jetstream.ErrorCode = 10077 // store failed: {err}
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrLeaseHeld is returned by Leases.Acquire when another holder has
	// the lease and it has not expired. The returned error is a *HeldError
	// that names the holder.
	ErrLeaseHeld = errors.New("lease held by another holder")

	// ErrLeaseLost is the cause of a Lease's context when a renewal found
	// the lease gone or taken over, or could not renew it before it expired;
	// Lease.Release returns it when there was nothing left to release.
	ErrLeaseLost = errors.New("lease lost")

	// ErrLeaseReleased is the cause of a Lease's context after Release.
	ErrLeaseReleased = errors.New("lease released")

	// ErrInvalidSubject is returned by Publish for a subject that is empty,
	// contains wildcards, whitespace or empty tokens.
	ErrInvalidSubject = errors.New("invalid subject")

	// ErrInvalidMsgID is returned by Publish for an empty message id or one
	// that cannot travel in a header (CR, LF).
	ErrInvalidMsgID = errors.New("invalid message id")

	// ErrInvalidJobID is returned for a job id that is not valid (see
	// ValidJobID); the error matches schemas.ErrInvalidJobID too.
	ErrInvalidJobID = errors.New("invalid job id")

	// ErrInvalidEvent is returned by PublishEvent for an event without an
	// id, schema name or job id, published on a subject that does not
	// match its schema name and job id, or that fails its schema.
	ErrInvalidEvent = errors.New("invalid event")

	// ErrInvalidLeaseKey is returned by Acquire for a key that is not a
	// valid KV key ([-/_=.a-zA-Z0-9], not starting or ending with '.').
	ErrInvalidLeaseKey = errors.New("invalid lease key")

	// ErrInvalidIdentity is returned for an unknown role or an agent name
	// that is not a single subject token (see ValidAgentID).
	ErrInvalidIdentity = errors.New("invalid identity")

	// ErrInvalidSchedule is returned for a schedule name that is not a
	// single subject token (ValidScheduleName), a pattern or time zone
	// nats-server would refuse (CheckSchedule), a request that fails the
	// backup.requested schema or carries a job id, and a message on
	// backup.schedules.* that is no schedule.
	ErrInvalidSchedule = errors.New("invalid schedule")

	// ErrScheduleExists is returned by AddSchedule, without Replace, for a
	// name that already has a schedule.
	ErrScheduleExists = errors.New("schedule exists")

	// ErrScheduleNotFound is returned for a name that has no schedule.
	ErrScheduleNotFound = errors.New("schedule not found")

	// ErrInsecureListen is returned by StartEmbedded for a listener that
	// would expose the server off this machine without TLS (unless
	// EmbeddedOptions.Insecure), or without authentication.
	ErrInsecureListen = errors.New("insecure listen address")

	// ErrTLSFiles is returned for a TLS directory or files that cannot be
	// used: a CA certificate without its key or the reverse, a CA file
	// without a certificate, no host to issue a certificate for.
	ErrTLSFiles = errors.New("unusable tls files")

	// ErrUnavailable wraps failures that mean JetStream cannot store now:
	// no quorum or no leader for the stream, JetStream disabled or out of
	// storage, or no server reachable until the deadline. The operation
	// may succeed later without any change on the caller's side; a node
	// agent stops taking work until it does (see StoreReady).
	ErrUnavailable = errors.New("jetstream unavailable")

	// ErrDuplicateMsgID is returned by the Publisher when the stream
	// already holds another message under the same Nats-Msg-Id: a job id
	// reused for a new request, or an event id reused for other content.
	// The message was not stored.
	ErrDuplicateMsgID = errors.New("message id already used")
)

// HeldError is returned by Leases.Acquire when the lease is taken. It
// matches ErrLeaseHeld with errors.Is. Holder and Since are empty when the
// current value could not be read (for example it expired in between).
type HeldError struct {
	Key    string
	Holder Holder
	Since  time.Time
}

func (e *HeldError) Error() string {
	if e.Holder.JobID == "" {
		return fmt.Sprintf("lease %s: %v", e.Key, ErrLeaseHeld)
	}
	return fmt.Sprintf("lease %s: %v %s since %s", e.Key, ErrLeaseHeld, e.Holder, e.Since.UTC().Format(time.RFC3339))
}

// Is makes errors.Is(err, ErrLeaseHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrLeaseHeld }
