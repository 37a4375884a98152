// Package repoapi is the wire contract of the hub's repository service
// (NATS micro, service sendense-repo): its subjects, the request and reply
// types, the error codes and the sentinel errors they map to, and a Client
// that calls it. Agents, the CLI and the hub's own server import it; it
// imports no server code (no bbolt, no qemu), so a client carries only the
// contract.
//
// # Basics
//
// Target open/close/abort/digests are for the agent that runs a job;
// restore, check, forget, verify and manifest for the CLI (bus.PermissionsOf
// says which role may call which subject). Errors come back as
// *bus.ServiceError; match them with errors.Is against ErrBusy,
// ErrRepositoryFull and the others.
package repoapi
