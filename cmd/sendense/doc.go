// Command sendense is the one binary of the Sendense backup pipeline.
//
// It parses flags and wires packages together; the roles themselves live in
// package agents. Each command is a small struct with its flags and a run
// method, one file per command; the NATS connection, the logger and the data
// directory are opened once, in root.go, outside the commands.
//
// It must never hold business logic: deciding, copying and storing belong to
// agents, copier and store.
package main
