package main

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vbauerster/mpb/v8"
)

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// drive feeds one two-disk backup through a printer as backup --wait
// does: a full disk and an incremental one, 10 s long, each second a
// progress event whose rate (the agent's) is 11 MiB/s, and every event
// passed on as received.
func drive(pr printer, clk *fakeClock) *progressCounter {
	c := newProgressCounter(clk.now)
	event := func(subject, data string) {
		if err := pr.Event(&nats.Msg{Subject: subject, Data: []byte(data)}, ""); err != nil {
			panic(err)
		}
	}
	pr.Notice("job j1 is queued: no agent has taken it yet")
	event("backup.started.a1", `{"job_id":"j1"}`)
	c.setKind(2000, "full")
	c.setKind(2001, "incremental")
	pr.Println("disk 2000: full (no base)")
	for i := int64(1); i <= 10; i++ {
		clk.t = clk.t.Add(time.Second)
		event("backup.progress.j1", `{"job_id":"j1","seq":`+strconv.FormatInt(i, 10)+`}`)
		c.update(2000, i*10<<20, 100<<20, i == 10)
		c.update(2001, i<<20, 10<<20, i == 10)
		c.rated(11 << 20)
		pr.Update(c.status())
		if i == 5 {
			c.ended(2001, 10<<20, 4<<20)
			pr.Println("disk 2001: change id 52 abc/1 recorded (10.0 MiB read, 4.0 MiB written)")
		}
	}
	c.ended(2000, 100<<20, 60<<20)
	pr.Println("disk 2000: change id 52 abc/2 recorded (100.0 MiB read, 60.0 MiB written)")
	pr.Update(c.status())
	pr.Finish(c.summary("backup of vm pgtest1", "completed"))
	if err := pr.Result(map[string]any{"job": map[string]string{"id": "j1"}}); err != nil {
		panic(err)
	}
	return c
}

func TestPlainPrinter(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var out, errOut bytes.Buffer
	pr := newPlainPrinter(&out, clk.now)
	pr.errw = &errOut
	drive(pr, clk)
	s := out.String()
	if errOut.String() != "job j1 is queued: no agent has taken it yet\n" || strings.Contains(s, "queued") {
		t.Errorf("notice on stderr %q, stdout has it: %v", errOut.String(), strings.Contains(s, "queued"))
	}
	if strings.ContainsRune(s, 0x1b) || strings.ContainsRune(s, '\r') {
		t.Errorf("plain output has escape codes or carriage returns:\n%q", s)
	}
	for _, want := range []string{
		"disk 2000: full (no base)\n",
		"disk 2001: change id 52 abc/1 recorded",
		"disk 2000: change id 52 abc/2 recorded",
		"disk 2000:  10% 10.0 MiB of 100.0 MiB\n",
		"disk 2001:  10% 1.0 MiB of 10.0 MiB\n",
		// The agent's rate, and the time left at it: 99 MiB at 11 MiB/s.
		"total:  10% 11.0 MiB of 110.0 MiB, 11.0 MiB/s, ETA 9s\n",
		// Ended disks: their mean throughput (100 MiB in 10 s, 10 MiB in 5 s).
		"disk 2000: 100% 100.0 MiB of 100.0 MiB, 10.0 MiB/s, done\n",
		"disk 2001: 100% 10.0 MiB of 10.0 MiB, 2.0 MiB/s, done\n",
		// 10 s, 110 MiB read, 64 MiB written: 11 MiB/s.
		"backup of vm pgtest1 completed in 10s: 2 disk(s) of 110.0 MiB, 110.0 MiB read, 64.0 MiB written, 11.0 MiB/s\n",
		"  full: 1 disk(s), 100.0 MiB read, 60.0 MiB written\n",
		"  incremental: 1 disk(s), 10.0 MiB read, 4.0 MiB written\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("plain output lacks %q:\n%s", want, s)
		}
	}
	// Throttled: a first line, one after 5 s, the done line.
	if n := strings.Count(s, "disk 2000:  "); n > 3 {
		t.Errorf("disk 2000 progress printed %d times, want at most 3:\n%s", n, s)
	}
	if n := strings.Count(s, "total: "); n > 3 {
		t.Errorf("total printed %d times, want at most 3:\n%s", n, s)
	}
	if n := strings.Count(s, "disk 2001: 100%"); n != 1 {
		t.Errorf("disk 2001 done printed %d times, want once:\n%s", n, s)
	}
	if strings.Contains(s, "{") {
		t.Errorf("plain output has events or results in JSON:\n%s", s)
	}
}

func TestTermPrinter(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var out syncBuffer
	var errOut bytes.Buffer
	pr := newTermPrinter(&out, mpb.WithWidth(120), mpb.WithAutoRefresh())
	pr.errw = &errOut // not a terminal: notices go there, not above the bars
	drive(pr, clk)
	s := out.String()
	if errOut.String() != "job j1 is queued: no agent has taken it yet\n" || strings.Contains(s, "queued") {
		t.Errorf("notice on stderr %q, stdout has it: %v", errOut.String(), strings.Contains(s, "queued"))
	}
	for _, want := range []string{
		"disk 2000: full (no base)\n",
		"disk 2001: change id 52 abc/1 recorded",
		"disk 2000: change id 52 abc/2 recorded",
		"backup of vm pgtest1 completed in 10s",
		"  full: 1 disk(s)",
	} {
		if strings.Count(s, want) != 1 {
			t.Errorf("terminal output has %q %d times, want once:\n%q", want, strings.Count(s, want), s)
		}
	}
	// The total bar shows the agent's rate (and the time left at it while
	// bytes are left; the bars are drawn faster than the test moves).
	if !regexp.MustCompile(`total +110.0 MiB / 110.0 MiB .* 11.0 MiB/s`).MatchString(s) {
		t.Errorf("terminal output lacks the total bar with the rate:\n%q", s)
	}
	// The summary comes after the last bar was drawn: nothing follows it
	// but its own lines.
	i := strings.Index(s, "backup of vm pgtest1 completed")
	if i < 0 || strings.ContainsRune(s[i:], 0x1b) {
		t.Errorf("escape codes after the summary:\n%q", s)
	}
	if strings.Contains(s, `"subject"`) || strings.Contains(s, `"job"`) {
		t.Errorf("terminal output has events or results in JSON:\n%q", s)
	}
}

// The JSON printer prints NDJSON only: each event as received as
// {"subject":…,"event":{…}}, then the result; no text, bars or summary.
func TestJSONPrinter(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var out, errOut bytes.Buffer
	pr := newJSONPrinter(&out)
	pr.errw = &errOut
	drive(pr, clk)
	if errOut.String() != "job j1 is queued: no agent has taken it yet\n" {
		t.Errorf("notice on stderr %q, want the line, as text", errOut.String())
	}
	if err := pr.Event(&nats.Msg{Subject: "backup.failed.a1", Data: []byte("not json")}, ""); err != nil {
		t.Fatal(err)
	}
	lines := ndjson(t, "json printer", out.String())
	if len(lines) != 1+10+1+1 {
		t.Fatalf("%d lines, want started, 10 progress, the result and the bad event:\n%s", len(lines), out.String())
	}
	if subjectOf(lines[0]) != "backup.started.a1" || string(lines[0]["event"]) != `{"job_id":"j1"}` {
		t.Errorf("first line %s, want the started event as received", out.String())
	}
	for _, l := range lines[1:11] {
		if subjectOf(l) != "backup.progress.j1" || len(l["event"]) == 0 {
			t.Errorf("line %v, want a progress event", l)
		}
	}
	var res struct{ Job struct{ ID string } }
	b, _ := json.Marshal(lines[11])
	if err := json.Unmarshal(b, &res); err != nil || res.Job.ID != "j1" {
		t.Errorf("result line %s, want {\"job\":{\"id\":\"j1\"}}", b)
	}
	var bad busLine
	b, _ = json.Marshal(lines[12])
	if err := json.Unmarshal(b, &bad); err != nil || bad.Data != "not json" || bad.Error == "" || bad.Event != nil {
		t.Errorf("bad event line %s, want its payload as data and an error", b)
	}
}

// A restore is counted by the CLI itself: its counter's sampler gives the
// rate, and the ETA follows from it.
func TestRestoreCounterRate(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	c := newProgressCounter(clk.now)
	c.setKind(2000, "restore")
	c.update(2000, 0, 100<<20, false)
	c.sample()
	if s := c.status(); s.Rate != 0 || s.ETA != 0 {
		t.Errorf("at the start: %+v, want no rate and no ETA", s)
	}
	for i := int64(1); i <= 4; i++ {
		clk.t = clk.t.Add(time.Second)
		c.update(2000, i*20<<20, 100<<20, false)
		c.sample()
	}
	s := c.status()
	if s.Rate != 20<<20 || s.ETA != time.Second || s.Done != 80<<20 || s.Total != 100<<20 {
		t.Errorf("after 4 s at 20 MiB/s: %+v, want 20 MiB/s, ETA 1s, 80 of 100 MiB", s)
	}
	if got := rateETA(s); got != "20.0 MiB/s, ETA 1s" {
		t.Errorf("rateETA = %q", got)
	}
}
