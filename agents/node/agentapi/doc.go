// Package agentapi is the wire contract of the node agents' own service:
// the cancel of a running job (bus.AgentCancel; only admin may ask, only
// the agent running the job answers), its request and reply types, and
// RequestCancel, which the CLI calls. It imports no agent code (no copier,
// no libnbd), so a client carries only the contract.
package agentapi
