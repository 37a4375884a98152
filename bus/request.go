package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"
)

// ServiceError is an error answer of a NATS micro service: the
// Nats-Service-Error-Code and Nats-Service-Error headers of the reply. Err
// is the sentinel error its code stands for, if the caller named one (see
// Request), so errors.Is matches it.
type ServiceError struct {
	Subject     string
	Code        string
	Description string
	Err         error
}

func (e *ServiceError) Error() string {
	return fmt.Sprintf("%s: %s (code %s)", e.Subject, e.Description, e.Code)
}

// Unwrap returns the sentinel error of the code, or nil.
func (e *ServiceError) Unwrap() error { return e.Err }

// Request is the one request/reply call of the service clients (catalog,
// repository, testbed control): it sends req as JSON on subject, waits for
// the reply within timeout and within ctx, whichever ends first (timeout
// 0: ctx alone), and decodes it into reply (nil: the reply is ignored).
// An error answer is returned as a *ServiceError that wraps
// sentinels[code] (nothing when the code is not in the map). With no
// service listening the error wraps nats.ErrNoResponders.
//
// timeout bounds each call even under a longer ctx: core NATS does not
// resend a request or a reply lost with a server (a request written to a
// connection whose server was just killed, a reply sent while its
// requester reconnects), so a caller that polls under a long deadline
// would otherwise wait out that whole deadline on the first lost
// message. It gets context.DeadlineExceeded after timeout and asks again.
//
// A request the server refused to carry (the identity may not publish on
// subject, or may not subscribe to its reply inbox: a --nats-nkey of
// another role) also ends at the timeout, since the server only says so
// asynchronously; the error then wraps that nats.ErrPermissionViolation
// instead of the deadline, so the user reads why.
func Request(ctx context.Context, nc *nats.Conn, subject string, req, reply any, timeout time.Duration,
	sentinels map[string]error) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode request for %s: %w", subject, err)
	}
	msg, err := nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		if denied := deniedRequest(nc, subject); denied != nil && errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("request %s: %w (connection %s: its credentials lack the rights this needs)", subject, denied, nc.Opts.Name)
		}
		return fmt.Errorf("request %s: %w", subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return &ServiceError{Subject: subject, Code: code, Description: msg.Header.Get(micro.ErrorHeader), Err: sentinels[code]}
	}
	if reply == nil {
		return nil
	}
	if err := json.Unmarshal(msg.Data, reply); err != nil {
		return fmt.Errorf("decode reply of %s: %w", subject, err)
	}
	return nil
}

// deniedRequest returns the connection's last error when it is the
// server's refusal of a request on subject: a publish to subject, or the
// subscription to the connection's reply inbox (its prefix followed by *).
func deniedRequest(nc *nats.Conn, subject string) error {
	last := nc.LastError()
	if !errors.Is(last, nats.ErrPermissionViolation) {
		return nil
	}
	inbox := nc.NewRespInbox()
	mux := inbox[:strings.LastIndexByte(inbox, '.')+1] + "*"
	if msg := last.Error(); strings.Contains(msg, `Publish to "`+subject+`"`) || strings.Contains(msg, `Subscription to "`+mux+`"`) {
		return last
	}
	return nil
}

// GuardReply wraps a micro service handler so that it never answers on a
// reply subject other than an inbox (ReplyAllowed): a request whose reply
// subject names anything else (a stream's delete API, an agent's event
// subject) is dropped and logged. Every Sendense service wraps its
// endpoints with it; the server's permissions refuse such answers too.
func GuardReply(log zerolog.Logger, h micro.Handler) micro.HandlerFunc {
	return func(r micro.Request) {
		if !ReplyAllowed(r.Reply()) {
			log.Warn().Str("subject", r.Subject()).Str("reply", r.Reply()).Msg("service request with a reply subject that is no inbox dropped")
			return
		}
		h.Handle(r)
	}
}
