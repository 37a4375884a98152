package bus_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// TestExternalTLSCluster: a 3-node cluster of real nats-server processes
// with TLS on client and route ports (bustest.WriteClusterConfig, what
// `sendense creds server-config --tls` prints) admits every role over TLS
// with its seed, refuses a client in clear text and one that does not
// trust the CA, and keeps storing with its stream leader killed.
func TestExternalTLSCluster(t *testing.T) {
	c := bustest.StartTLSCluster(t, 3, "node1")
	ids := []bus.Identity{bus.AgentIdentity("node1")}
	for _, r := range bus.Roles() {
		ids = append(ids, bus.Identity{Role: r})
	}
	conns := map[string]*bustest.Conn{}
	for _, id := range ids {
		conn := c.Connect(t, id)
		if !conn.TLSRequired() {
			t.Errorf("%s: server does not require tls", id)
		}
		if st, err := conn.TLSConnectionState(); err != nil || !st.HandshakeComplete || st.Version < tls.VersionTLS12 {
			t.Errorf("%s: tls state %v; want a completed TLS 1.2+ handshake", id, err)
		}
		conns[id.Name()] = conn
	}
	for i := range c.Config.Nodes {
		if err := c.ConnectPlain(i); err == nil {
			t.Errorf("node %d let a client in without tls", i)
		}
	}
	noCA := c.Options(bus.Identity{Role: bus.RoleAdmin})
	noCA.TLSCA = ""
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	nc, err := bus.Connect(ctx, noCA, bustest.Logger(t))
	cancel()
	if err == nil {
		nc.Close()
		t.Error("a client that does not trust the cluster's CA connected")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("client without the CA: %v, want a certificate error", err)
	}

	ctx = testCtx(t)
	admin := conns["admin"]
	if err := bus.EnsureStreams(ctx, admin.JS, bus.StreamOptions{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	agent := conns["agent-node1"]
	pub, err := bus.NewAgentPublisher(agent.JS, "node1", bustest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	subject := bus.AgentSubject(schemas.NameStarted, "node1")
	if _, err := pub.Publish(ctx, subject, "tls.1.started.0.0", "backup.started", []byte(`{"n":0}`)); err != nil {
		t.Fatal(err)
	}
	leader, err := c.StreamLeader(ctx, admin.JS, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	c.Kill(leader)
	// The two others elect a new leader; the publish goes through once
	// they have (the client reconnects over TLS if it was on the killed
	// node).
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := pub.Publish(pctx, subject, "tls.1.started.0.1", "backup.started", []byte(`{"n":1}`))
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("publish with the stream leader killed: %v", err)
		}
	}
	if n := streamMsgs(t, admin.JS, bus.StreamEvents); n != 2 {
		t.Errorf("events stream has %d messages, want 2", n)
	}
	if now, err := c.StreamLeader(ctx, admin.JS, bus.StreamEvents); err != nil || now == leader {
		t.Errorf("stream leader after the kill: %d, %v; want another node than %d", now, err, leader)
	}
	c.Start(t, leader)
	c.WaitHealthy(t, leader)
}
