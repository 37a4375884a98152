package main

import (
	"bytes"
	"encoding/json"
	"io"

	"github.com/nats-io/nats.go"
)

// busLine is one line of a streaming --json (watch, backup --wait): a
// message as it came, {"subject":…,"event":{…}}. A message whose payload
// is not valid JSON, or not a valid event, carries "error" (and the raw
// payload as "data" when it is not JSON at all).
type busLine struct {
	Subject string          `json:"subject"`
	Event   json.RawMessage `json:"event,omitempty"`
	Data    string          `json:"data,omitempty"`
	Error   string          `json:"error,omitempty"`
}

// writeBusLine prints m as one NDJSON line; problem, if not "", is its
// error field.
func writeBusLine(w io.Writer, m *nats.Msg, problem string) error {
	l := busLine{Subject: m.Subject, Error: problem}
	var buf bytes.Buffer
	if json.Valid(m.Data) && json.Compact(&buf, m.Data) == nil {
		l.Event = buf.Bytes()
	} else {
		l.Data = string(m.Data)
		if l.Error == "" {
			l.Error = "payload is not JSON"
		}
	}
	return json.NewEncoder(w).Encode(l)
}
