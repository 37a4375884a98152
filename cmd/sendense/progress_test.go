package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/vbauerster/mpb/v8"
)

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// drive feeds one two-disk backup through a printer: a full disk and an
// incremental one, 10 s long.
func drive(pr printer, clk *fakeClock) *progressCounter {
	c := newProgressCounter(clk.now)
	c.setKind(2000, "full")
	c.setKind(2001, "incremental")
	pr.Println("disk 2000: full (no base)")
	for i := int64(1); i <= 10; i++ {
		clk.t = clk.t.Add(time.Second)
		c.update(2000, i*10<<20, 100<<20, i == 10)
		c.update(2001, i<<20, 10<<20, i == 10)
		pr.Update(c.views())
		if i == 5 {
			c.ended(2001, 10<<20, 4<<20)
			pr.Println("disk 2001: change id 52 abc/1 recorded (10.0 MiB read, 4.0 MiB written)")
		}
	}
	c.ended(2000, 100<<20, 60<<20)
	pr.Println("disk 2000: change id 52 abc/2 recorded (100.0 MiB read, 60.0 MiB written)")
	pr.Update(c.views())
	pr.Finish(c.summary("backup of vm pgtest1", "completed"))
	return c
}

func TestPlainPrinter(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var out bytes.Buffer
	drive(newPlainPrinter(&out, clk.now), clk)
	s := out.String()
	if strings.ContainsRune(s, 0x1b) || strings.ContainsRune(s, '\r') {
		t.Errorf("plain output has escape codes or carriage returns:\n%q", s)
	}
	for _, want := range []string{
		"disk 2000: full (no base)\n",
		"disk 2001: change id 52 abc/1 recorded",
		"disk 2000: change id 52 abc/2 recorded",
		"disk 2000:  10% 10.0 MiB of 100.0 MiB, 10.0 MiB/s, ETA 9s\n",
		"disk 2000: 100% 100.0 MiB of 100.0 MiB, 10.0 MiB/s, done\n",
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
	if n := strings.Count(s, "disk 2001: 100%"); n != 1 {
		t.Errorf("disk 2001 done printed %d times, want once:\n%s", n, s)
	}
}

func TestTermPrinter(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var out syncBuffer
	pr := newTermPrinter(&out, mpb.WithWidth(120), mpb.WithAutoRefresh())
	drive(pr, clk)
	s := out.String()
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
	// The summary comes after the last bar was drawn: nothing follows it
	// but its own lines.
	i := strings.Index(s, "backup of vm pgtest1 completed")
	if i < 0 || strings.ContainsRune(s[i:], 0x1b) {
		t.Errorf("escape codes after the summary:\n%q", s)
	}
}
