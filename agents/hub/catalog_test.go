package hub_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
)

// TestConsumerProgress reads the catalog's consumer as the hub role, with
// the hub's permissions: not caught up while the consumer is missing,
// while an event waits to be delivered, or while a delivered one waits for
// its ack; caught up once it is acknowledged.
func TestConsumerProgress(t *testing.T) {
	s := bustest.SecureEmbedded(t, catalogtest.Agent)
	ctx := testCtx(t)
	hubConn := s.Connect(t, bus.Identity{Role: bus.RoleHub})
	if err := bus.EnsureStreams(ctx, hubConn.JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	p := hub.NewConsumerProgress(hubConn.JS, "")

	if err := p.CaughtUp(ctx); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("CaughtUp without a catalog consumer: %v, want ErrConsumerNotFound", err)
	}
	catConn := s.Connect(t, bus.Identity{Role: bus.RoleCatalog})
	cons, err := bus.EnsureCatalogConsumer(ctx, catConn.JS, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CaughtUp(ctx); err != nil {
		t.Errorf("CaughtUp on an empty stream: %v", err)
	}

	agent := s.Connect(t, bus.AgentIdentity(catalogtest.Agent))
	j := catalogtest.Job{ID: "job-progress"}
	if err := catalogtest.Publish(ctx, catalogtest.Publisher(agent.JS, bustest.Logger(t)), j.Started()); err != nil {
		t.Fatal(err)
	}
	if err := p.CaughtUp(ctx); !errors.Is(err, hub.ErrCatalogBehind) {
		t.Errorf("CaughtUp with an event not delivered: %v, want ErrCatalogBehind", err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 1 {
		t.Fatalf("fetched %d events, want 1 (%v)", len(msgs), batch.Error())
	}
	if err := p.CaughtUp(ctx); !errors.Is(err, hub.ErrCatalogBehind) {
		t.Errorf("CaughtUp with an event delivered, not acknowledged: %v, want ErrCatalogBehind", err)
	}
	if err := msgs[0].DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.CaughtUp(ctx); err != nil {
		t.Errorf("CaughtUp after the ack: %v", err)
	}

	// Right after a publish is acknowledged, the server may not count the
	// event in the consumer's NumPending yet: CaughtUp must still say
	// behind, every time. Each event is consumed before the next, so the
	// consumer is otherwise caught up.
	pub := catalogtest.Publisher(agent.JS, bustest.Logger(t))
	for i := range 100 {
		j := catalogtest.Job{ID: fmt.Sprintf("job-race-%d", i)}
		if err := catalogtest.Publish(ctx, pub, j.Started()); err != nil {
			t.Fatal(err)
		}
		if err := p.CaughtUp(ctx); !errors.Is(err, hub.ErrCatalogBehind) {
			t.Fatalf("CaughtUp right after publish %d: %v, want ErrCatalogBehind", i, err)
		}
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.CaughtUp(ctx); err != nil {
		t.Errorf("CaughtUp after every event was acknowledged: %v", err)
	}
}
