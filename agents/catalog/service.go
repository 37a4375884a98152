package catalog

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// Serve starts the NATS micro service ServiceName on nc, answering the
// endpoints of api.go from cat, and returns it; stop it with Stop before
// closing cat. Several catalogs may serve at once: each endpoint is in the
// micro default queue group, so one of them answers each request.
// Handlers run on the subscription's goroutine, one request at a time per
// endpoint; reads never block the consumer's writes (bbolt).
func Serve(nc *nats.Conn, cat *store.Catalog, log zerolog.Logger) (micro.Service, error) {
	log = log.With().Str("component", "catalog-service").Logger()
	svc, err := micro.AddService(nc, micro.Config{
		Name:        ServiceName,
		Version:     ServiceVersion,
		Description: "Sendense catalog: jobs, chains and change ids, answered from the bbolt catalog",
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			log.Warn().Str("subject", e.Subject).Str("error", e.Description).Msg("catalog service error")
		},
	})
	if err != nil {
		return nil, fmt.Errorf("add micro service %s: %w", ServiceName, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("jetstream for %s: %w", ServiceName, err)
	}
	s := &service{cat: cat, nc: nc, log: log, q: &queue{js: js}}
	g := svc.AddGroup(SubjectPrefix)
	endpoints := []struct {
		name, subject string
		fn            func([]byte) (any, error)
	}{
		{"job_get", SubjectJobGet, s.job},
		{"jobs_list", SubjectJobsList, s.jobs},
		{"vms_list", SubjectVMsList, s.vms},
		{"chain_get", SubjectChainGet, s.chain},
		{"chain_head", SubjectChainHead, s.chainHead},
		{"chains_list", SubjectChainsList, s.chains},
		{"poison_list", SubjectPoisonList, s.poison},
		{"stats", SubjectStats, s.stats},
	}
	for _, e := range endpoints {
		sub := e.subject[len(SubjectPrefix)+1:]
		if err := g.AddEndpoint(e.name, bus.GuardReply(log, s.handler(e.subject, e.fn)), micro.WithEndpointSubject(sub)); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("add endpoint %s of %s: %w", e.subject, ServiceName, err)
		}
	}
	log.Info().Str("service", ServiceName).Str("subjects", SubjectPrefix+".>").Msg("catalog service started")
	return svc, nil
}

type service struct {
	cat *store.Catalog
	q   *queue
	nc  *nats.Conn
	log zerolog.Logger
}

// badRequest makes an error of the request itself (400).
func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

func (s *service) handler(subject string, fn func([]byte) (any, error)) micro.HandlerFunc {
	return func(req micro.Request) {
		v, err := fn(req.Data())
		if err == nil {
			var data []byte
			data, err = json.Marshal(v)
			if err == nil && int64(len(data)) > s.nc.MaxPayload() {
				s.respondError(req, subject, CodeTooLarge, fmt.Sprintf("reply of %d bytes is over the server's max payload of %d; ask for less (limit)", len(data), s.nc.MaxPayload()))
				return
			}
			if err == nil {
				if rerr := req.Respond(data); rerr != nil {
					s.log.Warn().Err(rerr).Str("subject", subject).Msg("catalog service respond")
				}
				return
			}
		}
		switch {
		case errors.Is(err, backup.ErrNotFound):
			s.respondError(req, subject, CodeNotFound, err.Error())
		case errors.Is(err, ErrBadRequest), errors.Is(err, store.ErrInvalid):
			s.respondError(req, subject, CodeBadRequest, err.Error())
		default:
			s.log.Error().Err(err).Str("subject", subject).Msg("catalog service request")
			s.respondError(req, subject, CodeInternal, err.Error())
		}
	}
}

func (s *service) respondError(req micro.Request, subject, code, desc string) {
	if err := req.Error(code, desc, nil); err != nil {
		s.log.Warn().Err(err).Str("subject", subject).Str("code", code).Msg("catalog service respond")
	}
}

// decode reads a JSON request; an empty body is the zero request.
func decode(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return badRequest("decode request: %v", err)
	}
	return nil
}

func (s *service) job(data []byte) (any, error) {
	var r JobRequest
	if err := decode(data, &r); err != nil {
		return nil, err
	}
	if r.ID == "" {
		return nil, badRequest("id is required")
	}
	j, err := s.cat.Job(r.ID)
	if errors.Is(err, backup.ErrNotFound) {
		return s.queuedJob(r.ID)
	}
	return j, err
}

func (s *service) jobs(data []byte) (any, error) {
	var r JobsRequest
	if err := decode(data, &r); err != nil {
		return nil, err
	}
	return s.jobsWithQueued(backup.JobFilter{VM: r.VM, Status: r.Status, IDPrefix: r.IDPrefix, Offset: r.Offset, Limit: r.Limit})
}

func (s *service) vms([]byte) (any, error) { return s.cat.VMs() }

func (r *ChainRequest) check() error {
	if r.VMUUID == "" {
		return badRequest("vm_uuid is required")
	}
	if r.Repository == "" {
		r.Repository = schemas.DefaultRepository
	}
	return nil
}

func (s *service) chain(data []byte) (any, error) {
	var r ChainRequest
	if err := decode(data, &r); err != nil {
		return nil, err
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	return s.cat.Chain(r.VMUUID, r.DiskKey, r.Repository)
}

func (s *service) chainHead(data []byte) (any, error) {
	var r ChainRequest
	if err := decode(data, &r); err != nil {
		return nil, err
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	return s.cat.ChainHead(r.VMUUID, r.DiskKey, r.Repository)
}

func (s *service) chains(data []byte) (any, error) {
	var r ChainsRequest
	if err := decode(data, &r); err != nil {
		return nil, err
	}
	if r.VMUUID == "" {
		return nil, badRequest("vm_uuid is required")
	}
	return s.cat.Chains(r.VMUUID, r.Repository)
}

func (s *service) poison(data []byte) (any, error) {
	var r PoisonRequest
	if err := decode(data, &r); err != nil {
		return nil, err
	}
	if r.Limit <= 0 {
		r.Limit = DefaultPoisonLimit
	}
	recs, err := s.cat.Poison()
	if err != nil {
		return nil, err
	}
	if len(recs) > r.Limit {
		recs = recs[len(recs)-r.Limit:]
	}
	for i := range recs {
		if len(recs[i].Raw) > MaxPoisonRawReply {
			recs[i].Raw = recs[i].Raw[:MaxPoisonRawReply]
			recs[i].Truncated = true
		}
	}
	return recs, nil
}

func (s *service) stats(data []byte) (any, error) {
	return s.cat.Stats()
}
