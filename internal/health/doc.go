// Package health owns the liveness and readiness answers of a sendense
// process: GET /healthz (200 while the process runs) and GET /readyz (200
// only when every registered check passes, else 503 with a JSON body that
// lists each check and its error).
//
// Roles add their checks to one Registry as they start (connected to NATS,
// streams there, consumers bound, vCenter and the repository service
// answering); the handler runs them on each request, concurrently, each
// under CheckTimeout. It must never change anything: a check only reads.
//
// # Basics
//
//	reg := health.New()
//	reg.Add("nats", func(ctx context.Context) error { ... })
//	reg.Register(mux) // adds /healthz and /readyz
package health
