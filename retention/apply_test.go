package retention_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/retention"
)

// parseTime reads restic's test times: "2006-01-02 15:04:05[.f]", UTC.
func parseTime(t *testing.T, s string) time.Time {
	t.Helper()
	tm, err := time.ParseInLocation("2006-01-02 15:04:05", s, time.UTC)
	if err != nil {
		t.Fatalf("time %q: %v", s, err)
	}
	return tm
}

// readLines returns the lines of a testdata file that are not comments.
func readLines(t *testing.T, name string) []string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := sc.Text(); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// resticPoints are restic's test snapshots, named s000, s001, ... in
// restic's order.
func resticPoints(t *testing.T) []retention.Point {
	t.Helper()
	var pts []retention.Point
	for i, l := range readLines(t, filepath.Join("testdata", "restic", "snapshots.txt")) {
		pts = append(pts, retention.Point{ID: fmt.Sprintf("s%03d", i), Time: parseTime(t, l)})
	}
	return pts
}

// parsePolicy reads "policy daily=3 weekly=2 monthly=-1".
func parsePolicy(t *testing.T, line string) retention.Policy {
	t.Helper()
	var p retention.Policy
	fields := strings.Fields(strings.TrimPrefix(line, "policy "))
	for _, f := range fields {
		k, v, _ := strings.Cut(f, "=")
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("policy %q: %v", line, err)
		}
		switch k {
		case "last":
			p.Last = n
		case "hourly":
			p.Hourly = n
		case "daily":
			p.Daily = n
		case "weekly":
			p.Weekly = n
		case "monthly":
			p.Monthly = n
		case "yearly":
			p.Yearly = n
		default:
			t.Fatalf("policy %q: unknown rule %q", line, k)
		}
	}
	return p
}

// kept renders the kept decisions as the testdata files list them.
func kept(ds []retention.Decision) []string {
	var out []string
	for _, d := range ds {
		if d.Keep {
			out = append(out, d.Point.Time.UTC().Format("2006-01-02 15:04:05.999999999")+"\t"+strings.Join(d.Reasons, "; "))
		}
	}
	return out
}

// TestResticGolden applies restic's test policies to restic's test
// snapshots and compares the kept snapshots and their reasons with
// restic's golden files (testdata/restic, ported; see their headers).
func TestResticGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "restic", "policy_keep_snapshots_*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	points := resticPoints(t)
	if len(points) != 103 {
		t.Fatalf("%d restic test snapshots, want 103", len(points))
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			lines := readLines(t, file)
			p := parsePolicy(t, lines[0])
			var want []string
			for _, l := range lines[1:] {
				tm, reasons, _ := strings.Cut(l, "\t")
				want = append(want, parseTime(t, tm).Format("2006-01-02 15:04:05.999999999")+"\t"+reasons)
			}
			ds, err := retention.Apply(points, p, time.UTC)
			if err != nil {
				t.Fatal(err)
			}
			if len(ds) != len(points) {
				t.Fatalf("%d decisions for %d points", len(ds), len(points))
			}
			if got := kept(ds); !slices.Equal(got, want) {
				t.Errorf("policy %v kept\n%s\nwant (restic)\n%s", p, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestPolicyValidate: restic refuses forget without a policy and negative
// counts other than "unlimited".
func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		p    retention.Policy
		want error
	}{
		{retention.Policy{}, retention.ErrEmptyPolicy},
		{retention.Policy{Protect: []string{"a"}}, retention.ErrEmptyPolicy},
		{retention.Policy{Daily: -2}, retention.ErrInvalidPolicy},
		{retention.Policy{Last: 1, Yearly: -5}, retention.ErrInvalidPolicy},
		{retention.Policy{Last: 1, Protect: []string{""}}, retention.ErrInvalidPolicy},
		{retention.Policy{Last: -1}, nil},
		{retention.Policy{Weekly: 1, Protect: []string{"a"}}, nil},
	} {
		err := tc.p.Validate()
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%+v: %v, want %v", tc.p, err, tc.want)
		}
		if _, aerr := retention.Apply([]retention.Point{{ID: "x", Time: time.Now()}}, tc.p, nil); (aerr == nil) != (err == nil) {
			t.Errorf("%+v: Apply %v, Validate %v", tc.p, aerr, err)
		}
	}
}

func pt(id, ts string) retention.Point {
	tm, err := time.Parse(time.RFC3339, ts)
	if err != nil {
		panic(err)
	}
	return retention.Point{ID: id, Time: tm}
}

// summary is "id:reason,reason" per point, newest first; "id:-" for a
// removed one.
func summary(ds []retention.Decision) string {
	var parts []string
	for _, d := range ds {
		r := "-"
		if d.Keep {
			r = strings.Join(d.Reasons, ",")
		}
		parts = append(parts, d.Point.ID+":"+r)
	}
	return strings.Join(parts, " ")
}

// TestApplyEdges: ties, zones, protected points, unlimited counts, bad
// points, no points.
func TestApplyEdges(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("no tzdata:", err)
	}
	day := []retention.Point{
		pt("c", "2026-01-01T23:30:00Z"), // 00:30 on 2 January in Berlin
		pt("b", "2026-01-01T22:30:00Z"),
		pt("a", "2026-01-01T10:00:00Z"),
	}
	for _, tc := range []struct {
		name   string
		points []retention.Point
		p      retention.Policy
		loc    *time.Location
		want   string
	}{
		{"ties by id", []retention.Point{pt("z", "2026-01-01T10:00:00Z"), pt("m", "2026-01-01T10:00:00Z"), pt("a", "2026-01-01T10:00:00Z")},
			retention.Policy{Last: 2}, nil, "a:last snapshot m:last snapshot z:-"},
		{"ties in a daily bucket", []retention.Point{pt("z", "2026-01-01T10:00:00Z"), pt("a", "2026-01-01T10:00:00Z"), pt("q", "2025-12-31T10:00:00Z")},
			retention.Policy{Daily: 1}, nil, "a:daily snapshot z:- q:-"},
		{"one day in UTC", day, retention.Policy{Daily: 5}, time.UTC,
			"c:daily snapshot b:- a:oldest daily snapshot"},
		{"two days in Berlin", day, retention.Policy{Daily: 5}, berlin,
			"c:daily snapshot b:daily snapshot a:oldest daily snapshot"},
		{"count spent, no oldest", day, retention.Policy{Daily: 1}, time.UTC, "c:daily snapshot b:- a:-"},
		{"protected old point", day, retention.Policy{Last: 1, Protect: []string{"a", "gone"}}, nil,
			"c:last snapshot b:- a:protected"},
		{"protected newest counts", day, retention.Policy{Last: 1, Protect: []string{"c"}}, nil,
			"c:protected,last snapshot b:- a:-"},
		{"unlimited last", day, retention.Policy{Last: -1}, nil,
			"c:last snapshot b:last snapshot a:last snapshot"},
		{"unlimited hourly", append(slices.Clone(day), pt("a2", "2026-01-01T10:30:00Z")), retention.Policy{Hourly: -1}, nil,
			"c:hourly snapshot b:hourly snapshot a2:hourly snapshot a:oldest hourly snapshot"},
		{"iso week across a year", []retention.Point{pt("mon", "2024-12-30T12:00:00Z"), pt("sun", "2024-12-29T12:00:00Z"), pt("sat", "2024-12-28T12:00:00Z")},
			retention.Policy{Weekly: 2, Yearly: 2}, nil, "mon:weekly snapshot,yearly snapshot sun:weekly snapshot sat:oldest yearly snapshot"},
		{"no points", nil, retention.Policy{Daily: 7}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := retention.Apply(tc.points, tc.p, tc.loc)
			if err != nil {
				t.Fatal(err)
			}
			if got := summary(ds); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}

	for _, bad := range [][]retention.Point{
		{pt("", "2026-01-01T10:00:00Z")},
		{pt("a", "2026-01-01T10:00:00Z"), pt("a", "2026-01-02T10:00:00Z")},
	} {
		if ds, err := retention.Apply(bad, retention.Policy{Last: 1}, nil); !errors.Is(err, retention.ErrInvalidPoint) || ds != nil {
			t.Errorf("Apply(%v): %v %v, want ErrInvalidPoint and no decisions", bad, ds, err)
		}
	}
}

// TestApplyProperties: on random points and policies (fixed seed) the
// newest point is kept, every point gets one decision, the order is
// newest first whatever the input order, and no more points are kept
// than the counts allow (restic's policySum check) plus the protected.
func TestApplyProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 42))
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 500 {
		n := rng.IntN(60)
		var points []retention.Point
		for j := range n {
			points = append(points, retention.Point{ID: fmt.Sprintf("p%02d", j), Time: base.Add(time.Duration(rng.Int64N(int64(800 * 24 * time.Hour))))})
		}
		count := func() int { return rng.IntN(5) - 1 }
		p := retention.Policy{Last: count(), Hourly: count(), Daily: count(), Weekly: count(), Monthly: count(), Yearly: count()}
		if rng.IntN(3) == 0 && n > 0 {
			p.Protect = []string{points[rng.IntN(n)].ID}
		}
		ds, err := retention.Apply(points, p, nil)
		if errors.Is(err, retention.ErrEmptyPolicy) {
			continue
		}
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if len(ds) != n {
			t.Fatalf("case %d: %d decisions for %d points", i, len(ds), n)
		}
		shuffled := slices.Clone(points)
		rng.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		again, _ := retention.Apply(shuffled, p, nil)
		if summary(again) != summary(ds) {
			t.Fatalf("case %d: input order changed the result", i)
		}
		if n == 0 {
			continue
		}
		if !ds[0].Keep {
			t.Errorf("case %d: policy %v removed the newest point", i, p)
		}
		sum, unlimited, keptN := len(p.Protect), false, 0
		for _, c := range []int{p.Last, p.Hourly, p.Daily, p.Weekly, p.Monthly, p.Yearly} {
			sum += max(c, 0)
			unlimited = unlimited || c == retention.Unlimited
		}
		for j, d := range ds {
			if j > 0 && d.Point.Time.After(ds[j-1].Point.Time) {
				t.Fatalf("case %d: decisions not newest first", i)
			}
			if d.Keep != (len(d.Reasons) > 0) {
				t.Fatalf("case %d: %+v keeps without a reason or has reasons without keeping", i, d)
			}
			if d.Keep {
				keptN++
			}
		}
		if !unlimited && keptN > sum {
			t.Errorf("case %d: policy %v kept %d points, more than its counts allow (%d)", i, p, keptN, sum)
		}
	}
}

// TestPolicyString describes policies as restic does.
func TestPolicyString(t *testing.T) {
	for p, want := range map[*retention.Policy]string{
		{Daily: 7, Weekly: 2, Monthly: 3, Yearly: 10}: "keep 7 daily, 2 weekly, 3 monthly, 10 yearly snapshots",
		{Last: -1}:                             "keep all latest snapshots",
		{Last: 3, Protect: []string{"a", "b"}}: "keep 3 latest snapshots and 2 protected",
		{}:                                     "remove",
	} {
		if got := p.String(); got != want {
			t.Errorf("%+v: %q, want %q", *p, got, want)
		}
	}
}

// TestPolicyJSON: the field names another component stores policies by.
func TestPolicyJSON(t *testing.T) {
	p := retention.Policy{Last: 3, Daily: 7, Monthly: -1, Protect: []string{"job-1"}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"keep_last":3,"keep_daily":7,"keep_monthly":-1,"protect":["job-1"]}`; string(b) != want {
		t.Errorf("JSON %s, want %s", b, want)
	}
	var back retention.Policy
	if err := json.Unmarshal([]byte(`{"keep_hourly":24,"keep_weekly":4,"keep_yearly":1}`), &back); err != nil ||
		back.Hourly != 24 || back.Weekly != 4 || back.Yearly != 1 {
		t.Errorf("unmarshal: %+v %v", back, err)
	}
}
