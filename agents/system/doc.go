// Package system composes the roles into one running process: NATS
// (embedded or external), the streams, the catalog consumer and service,
// the hub (repository service and request API), the node agent, and, for
// tests and the demo, the simulated vCenter with its control service.
//
// `sendense serve`, `sendense demo` and the end-to-end tests all start the
// pipeline through Start, so there is one way to wire it.
//
// # Caveats
//
// Stop shuts the roles down in dependency order: the agent first (its
// running jobs fail as retryable and clean up), then the hub (closing every
// export), the catalog, NATS, and the simulator last.
package system
