package system

import (
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

var nopLog = zerolog.Nop()

func newJS(nc *nats.Conn) (jetstream.JetStream, error) { return jetstream.New(nc) }
