package hub

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/retention"
	"github.com/sendense/sendense/schemas"
)

// ServeForgetRequests takes backup.forget.requested messages (forget
// schedules) from c, the hub's consumer bus.ConsumerHubForget, until ctx
// ends: each runs as Forget (within the forget timeout; the plan is
// logged, backup.pruning and backup.pruned are published per removed
// point) and is acked when done. A message that does not decode, or that
// Forget refuses for good (no selector, an unknown VM or repository, a
// bad policy, a full repository), is terminated with a log line: asking
// again would not help, and the next firing asks anyway. A VM that is busy
// (a backup holds its lease, a restore of it is open) or a catalog that
// does not answer makes the hub ask again after RepoOptions.ForgetRetry;
// with all, VMs done already keep their points then, and only a busy VM
// has anything left to remove. After bus.ForgetMaxDeliver deliveries the
// firing is given up with a log line. One request at a time.
func (s *RepoService) ServeForgetRequests(ctx context.Context, c jetstream.Consumer) error {
	log := s.log.With().Str("consumer", bus.ConsumerHubForget).Logger()
	serveRequests(ctx, c, log, func(m jetstream.Msg) { s.forgetRequest(ctx, m, log) })
	return nil
}

// retryable reports whether a forget that failed with code may succeed
// later without anyone changing the request.
func retryable(code string) bool { return code == repoapi.CodeBusy || code == repoapi.CodeUnavailable }

func (s *RepoService) forgetRequest(ctx context.Context, m jetstream.Msg, log zerolog.Logger) {
	req, err := schemas.DecodeForgetRequest(m.Data())
	if err != nil {
		log.Error().Err(err).Msg("forget request refused")
		_ = m.Term()
		return
	}
	delivered := uint64(1)
	if md, err := m.Metadata(); err == nil {
		delivered = md.NumDelivered
	}
	policy := retention.Policy(req.Policy)
	log = log.With().Str("requested_by", req.RequestedBy).Str("vm", req.VM).Bool("all", req.All).
		Str("repository", req.Repository).Str("policy", policy.String()).Uint64("delivered", delivered).Logger()
	fctx, cancel := context.WithTimeout(ctx, forgetTimeout)
	defer cancel()
	rep, err := s.Forget(fctx, repoapi.ForgetRequest{VM: req.VM, All: req.All, Repository: req.Repository, Policy: policy})
	var ce *codedError
	switch {
	case err != nil && ctx.Err() != nil:
		return // delivered again to the next hub after the ack wait
	case errors.As(err, &ce) && retryable(ce.code):
		s.retryForget(ctx, m, log.With().Err(err).Logger(), delivered)
		return
	case err != nil:
		log.Error().Err(err).Msg("forget request refused")
		_ = m.Term()
		return
	}
	removed, again := 0, false
	for _, v := range rep.VMs {
		removed += v.Removed
		l := log.Info()
		if v.Error != "" {
			l = log.Warn().Str("error", v.Error).Str("code", v.Code)
			again = again || retryable(v.Code)
		}
		l.Str("vm_uuid", v.VM.UUID).Str("vm_name", v.VM.Name).Int("points", len(v.Points)).Int("removed", v.Removed).Msg("forget request: vm done")
	}
	if again {
		s.retryForget(ctx, m, log.With().Int("removed", removed).Logger(), delivered)
		return
	}
	log.Info().Int("vms", len(rep.VMs)).Int("removed", removed).Msg("forget request done")
	if err := m.DoubleAck(ctx); err != nil {
		log.Warn().Err(err).Msg("ack forget request")
	}
}

// retryForget asks for m again after ForgetRetry, or gives it up (Term)
// once it was delivered bus.ForgetMaxDeliver times.
func (s *RepoService) retryForget(ctx context.Context, m jetstream.Msg, log zerolog.Logger, delivered uint64) {
	if delivered >= bus.ForgetMaxDeliver {
		log.Error().Msg("forget request given up: the vm stayed busy; the next firing applies the policy")
		_ = m.Term()
		return
	}
	log.Warn().Dur("retry_in", s.opts.ForgetRetry).Msg("forget request: vm busy or catalog unavailable; it is delivered again")
	if err := m.NakWithDelay(s.opts.ForgetRetry); err != nil && ctx.Err() == nil {
		log.Warn().Err(err).Msg("nak forget request")
	}
}
