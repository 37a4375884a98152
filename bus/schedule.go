package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/schemas"
)

// Schedules are message schedules run by nats-server itself (2.14 and
// later): a message on backup.schedules.<name> in StreamRequests with the
// header Nats-Schedule makes the server store a copy of its payload on
// backup.requested at every firing. No scheduler process exists; the
// schedule is a message of the stream, so it is replicated and survives
// restarts like the requests. See docs/design.md, "Schedules".
const (
	// SubjectSchedulePrefix starts a schedule's subject:
	// backup.schedules.<name> (ScheduleSubject).
	SubjectSchedulePrefix = "backup.schedules."
	// SubjectSchedules matches every schedule; StreamRequests binds it.
	SubjectSchedules = SubjectSchedulePrefix + "*"
)

// Headers of nats-server's message schedules.
const (
	// HeaderSchedule is the schedule's pattern: "@every 1h", a 6-field
	// cron "0 0 2 * * *" (seconds first), or "@hourly", "@daily", ...
	HeaderSchedule = "Nats-Schedule"
	// HeaderScheduleTarget is the subject each firing is stored on.
	HeaderScheduleTarget = "Nats-Schedule-Target"
	// HeaderScheduleTimeZone is the IANA zone a cron pattern is read in
	// (absent: UTC). The server refuses it with @every.
	HeaderScheduleTimeZone = "Nats-Schedule-Time-Zone"
	// HeaderScheduler is set by the server on each firing: the subject of
	// the schedule that fired it.
	HeaderScheduler = "Nats-Scheduler"
	// HeaderScheduleNext is set by the server on each firing: the next
	// firing (RFC 3339), or "purge" for a one-shot.
	HeaderScheduleNext = "Nats-Schedule-Next"
)

// RequestedByPrefix starts the requested_by of a schedule's requests:
// "schedule:<name>", which the catalog keeps with every job it fires.
const RequestedByPrefix = "schedule:"

// MaxScheduleNameLen is the longest schedule name ValidScheduleName accepts.
const MaxScheduleNameLen = 64

// ValidScheduleName reports whether name can name a schedule: 1 to
// MaxScheduleNameLen characters of [A-Za-z0-9_-], not starting with '-'.
// The name is a subject token (backup.schedules.<name>). The error wraps
// ErrInvalidSchedule.
func ValidScheduleName(name string) error {
	return checkToken("schedule name", name, MaxScheduleNameLen, ErrInvalidSchedule)
}

// ScheduleSubject returns backup.schedules.<name>.
func ScheduleSubject(name string) string { return SubjectSchedulePrefix + name }

// cronAliases are the predefined patterns nats-server accepts, as it
// expands them (server/scheduler.go, parseMsgSchedule).
var cronAliases = map[string]string{
	"@yearly":   "0 0 0 1 1 *",
	"@annually": "0 0 0 1 1 *",
	"@monthly":  "0 0 0 1 * *",
	"@weekly":   "0 0 0 * * 0",
	"@daily":    "0 0 0 * * *",
	"@midnight": "0 0 0 * * *",
	"@hourly":   "0 0 * * * *",
}

// cronSpec is a parsed schedule pattern.
type cronSpec struct {
	every time.Duration  // @every; else cron
	cron  string         // the 6-field pattern, aliases expanded
	loc   *time.Location // cron only; UTC when no zone is given
}

// parseSchedule checks pattern and zone as nats-server does when the
// schedule is published, with the reason in the error (the server only
// says "pattern is invalid"). It refuses the one-shot "@at" (a schedule
// repeats) and the zone "Local" (the server host's zone, which differs
// between nodes). The error wraps ErrInvalidSchedule.
func parseSchedule(pattern, zone string) (cronSpec, error) {
	bad := func(format string, args ...any) (cronSpec, error) {
		return cronSpec{}, fmt.Errorf("schedule %q: %s: %w", pattern, fmt.Sprintf(format, args...), ErrInvalidSchedule)
	}
	if pattern != strings.TrimSpace(pattern) || pattern == "" {
		return bad("empty, or space around it")
	}
	var loc *time.Location
	if zone != "" {
		if zone == "Local" {
			return bad("time zone Local means each server's own zone; name one, such as Europe/Berlin")
		}
		l, err := time.LoadLocation(zone)
		if err != nil {
			return bad("time zone %q: %v", zone, err)
		}
		loc = l
	}
	switch {
	case strings.HasPrefix(pattern, "@at "):
		return bad("@at fires once; a schedule repeats (use @every or a cron pattern)")
	case strings.HasPrefix(pattern, "@every "):
		if loc != nil {
			return bad("@every takes no time zone (an interval is the same in every zone)")
		}
		d, err := time.ParseDuration(pattern[len("@every "):])
		if err != nil {
			return bad("@every needs a duration such as 90s, 15m or 24h: %v", err)
		}
		if d < time.Second {
			return bad("@every %v is shorter than the server's minimum of 1s", d)
		}
		return cronSpec{every: d}, nil
	}
	cron := pattern
	if c, ok := cronAliases[pattern]; ok {
		cron = c
	} else if strings.HasPrefix(pattern, "@") {
		return bad("unknown; use @every DURATION, @hourly, @daily, @weekly, @monthly, @yearly or a 6-field cron")
	}
	if n := len(strings.Fields(cron)); n != 6 {
		hint := ""
		if n == 5 {
			hint = fmt.Sprintf(" (seconds first: did you mean %q?)", "0 "+cron)
		}
		return bad("a cron pattern has 6 fields, second minute hour day-of-month month day-of-week; got %d%s", n, hint)
	}
	if loc == nil {
		loc = time.UTC
	}
	if _, err := parseCron(cron, loc, time.Now().UnixNano()); err != nil {
		return bad("%v", err)
	}
	return cronSpec{cron: cron, loc: loc}, nil
}

// CheckSchedule reports whether nats-server accepts pattern with time zone
// zone ("" for UTC) as a repeating schedule; see Schedule.Cron. The error
// says why not and wraps ErrInvalidSchedule.
func CheckSchedule(pattern, zone string) error {
	_, err := parseSchedule(pattern, zone)
	return err
}

// NextFiring returns the first firing of a schedule after after. For a
// cron pattern it is exact: the server computes the same instant with the
// same parser. For @every the server fires at added (rounded to the
// second) plus whole intervals, but a server that was down across a firing
// fires once on return and counts the next interval from then, so after
// downtime the result can be off by up to one interval.
func NextFiring(pattern, zone string, added, after time.Time) (time.Time, error) {
	spec, err := parseSchedule(pattern, zone)
	if err != nil {
		return time.Time{}, err
	}
	if spec.every > 0 {
		next := added.UTC().Round(time.Second).Add(spec.every)
		if next.After(after) {
			return next, nil
		}
		n := after.Sub(next)/spec.every + 1
		return next.Add(n * spec.every), nil
	}
	next, err := parseCron(spec.cron, spec.loc, after.UnixNano())
	if err != nil {
		return time.Time{}, fmt.Errorf("schedule %q: %v: %w", pattern, err, ErrInvalidSchedule)
	}
	return next, nil
}

// Schedule is one backup schedule: what `sendense schedule add` stores.
type Schedule struct {
	// Name names the schedule (ValidScheduleName).
	Name string `json:"name"`
	// Cron is the pattern as nats-server reads it: "@every 6h", a
	// 6-field cron "0 30 2 * * *" (second minute hour day-of-month month
	// day-of-week, day names and month names allowed), or @hourly,
	// @daily, @midnight, @weekly, @monthly, @yearly, @annually.
	Cron string `json:"cron"`
	// TimeZone is the IANA zone a cron pattern is read in; "" is UTC.
	TimeZone string `json:"time_zone,omitempty"`
	// Request is the backup.requested payload every firing carries. It
	// has no job id (each firing gets its own, derived from its stream
	// sequence); RequestedBy is "schedule:<name>". Empty for a verify or
	// forget schedule.
	Request schemas.Request `json:"request"`
	// Verify, when set, makes this a verify schedule: every firing
	// stores this request on backup.verify.requested, which the hub
	// takes (ConsumerHubVerify). Exactly one of its JobID, VM and All;
	// RequestedBy defaults to "schedule:<name>".
	Verify *schemas.VerifyRequest `json:"verify,omitempty"`
	// Forget, when set, makes this a forget (retention) schedule: every
	// firing stores this request on backup.forget.requested, which the
	// hub takes (ConsumerHubForget) and applies as `sendense forget`
	// would. Exactly one of its VM and All, and a policy; RequestedBy
	// defaults to "schedule:<name>". At most one of Verify and Forget.
	Forget *schemas.ForgetRequest `json:"forget,omitempty"`

	// Seq and Added are the stored message's stream sequence and time;
	// set by ListSchedules and GetSchedule.
	Seq   uint64    `json:"seq,omitempty"`
	Added time.Time `json:"added,omitzero"`
}

// Next is the schedule's first firing after now (see NextFiring).
func (s Schedule) Next(now time.Time) (time.Time, error) {
	return NextFiring(s.Cron, s.TimeZone, s.Added, now)
}

// Validate checks s as AddSchedule does before it publishes: the name,
// the pattern and zone, and the request against the backup.requested
// schema. The error wraps ErrInvalidSchedule.
func (s Schedule) Validate() error {
	_, err := s.prepare()
	return err
}

// AddOptions tunes AddSchedule.
type AddOptions struct {
	// Replace stores the schedule even if one of that name exists (its
	// pattern, zone and request are replaced; the stream keeps one message
	// per schedule). Default false: an existing schedule is
	// ErrScheduleExists and nothing is stored.
	Replace bool
}

// prepare checks s and returns its payload. RequestedBy defaults to
// "schedule:<name>"; a schema reference is added.
func (s *Schedule) prepare() ([]byte, error) {
	if err := ValidScheduleName(s.Name); err != nil {
		return nil, err
	}
	if _, err := parseSchedule(s.Cron, s.TimeZone); err != nil {
		return nil, fmt.Errorf("schedule %s: %w", s.Name, err)
	}
	if s.Verify != nil && s.Forget != nil {
		return nil, fmt.Errorf("schedule %s: both a verification and a forget: %w", s.Name, ErrInvalidSchedule)
	}
	if s.Verify != nil {
		return s.prepareVerify()
	}
	if s.Forget != nil {
		return s.prepareForget()
	}
	if s.Request.JobID != "" {
		return nil, fmt.Errorf("schedule %s: the request has job id %q, but every firing needs its own: %w", s.Name, s.Request.JobID, ErrInvalidSchedule)
	}
	if s.Request.RequestedBy == "" {
		s.Request.RequestedBy = RequestedByPrefix + s.Name
	}
	if s.Request.Schema == nil {
		s.Request.Schema = &schemas.SchemaRef{Name: schemas.NameRequested, Version: schemas.Version}
	}
	data, err := json.Marshal(s.Request)
	if err != nil {
		return nil, fmt.Errorf("marshal request of schedule %s: %w", s.Name, err)
	}
	if err := schemas.Validate(schemas.NameRequested, data); err != nil {
		return nil, fmt.Errorf("request of schedule %s: %w: %w", s.Name, ErrInvalidSchedule, err)
	}
	return data, nil
}

// prepareVerify checks a verify schedule's request and returns its payload.
func (s *Schedule) prepareVerify() ([]byte, error) {
	v := s.Verify
	if s.Request.VM != "" || s.Request.JobID != "" || s.Request.BackupType != "" || len(s.Request.Labels) > 0 {
		return nil, fmt.Errorf("schedule %s: both a backup request and a verification: %w", s.Name, ErrInvalidSchedule)
	}
	n := 0
	for _, set := range []bool{v.JobID != "", v.VM != "", v.All} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("schedule %s: a verification names exactly one of a job, a vm or all: %w", s.Name, ErrInvalidSchedule)
	}
	if v.RequestedBy == "" {
		v.RequestedBy = RequestedByPrefix + s.Name
	}
	if v.Schema == nil {
		v.Schema = &schemas.SchemaRef{Name: schemas.NameVerifyRequested, Version: schemas.Version}
	}
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("marshal verification of schedule %s: %w", s.Name, err)
	}
	if err := schemas.Validate(schemas.NameVerifyRequested, data); err != nil {
		return nil, fmt.Errorf("verification of schedule %s: %w: %w", s.Name, ErrInvalidSchedule, err)
	}
	return data, nil
}

// prepareForget checks a forget schedule's request and returns its
// payload. The policy is checked as the hub checks it, so a schedule that
// every firing would be refused for (no count) is never stored.
func (s *Schedule) prepareForget() ([]byte, error) {
	f := s.Forget
	if s.Request.VM != "" || s.Request.JobID != "" || s.Request.BackupType != "" || len(s.Request.Labels) > 0 {
		return nil, fmt.Errorf("schedule %s: both a backup request and a forget: %w", s.Name, ErrInvalidSchedule)
	}
	if (f.VM != "") == f.All {
		return nil, fmt.Errorf("schedule %s: a forget names exactly one of a vm or all: %w", s.Name, ErrInvalidSchedule)
	}
	p := f.Policy
	if p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0 {
		return nil, fmt.Errorf("schedule %s: a forget needs at least one keep count: %w", s.Name, ErrInvalidSchedule)
	}
	if f.RequestedBy == "" {
		f.RequestedBy = RequestedByPrefix + s.Name
	}
	if f.Schema == nil {
		f.Schema = &schemas.SchemaRef{Name: schemas.NameForgetRequested, Version: schemas.Version}
	}
	data, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("marshal forget of schedule %s: %w", s.Name, err)
	}
	if err := schemas.Validate(schemas.NameForgetRequested, data); err != nil {
		return nil, fmt.Errorf("forget of schedule %s: %w: %w", s.Name, ErrInvalidSchedule, err)
	}
	return data, nil
}

// Kind says what the schedule's firings ask for: "backup", "verify" or
// "forget".
func (s Schedule) Kind() string {
	switch {
	case s.Verify != nil:
		return "verify"
	case s.Forget != nil:
		return "forget"
	}
	return "backup"
}

// target is the subject the schedule's firings are stored on.
func (s Schedule) target() string {
	switch {
	case s.Verify != nil:
		return SubjectVerifyRequested
	case s.Forget != nil:
		return SubjectForgetRequested
	}
	return SubjectRequested
}

// AddSchedule checks s (name, pattern, zone, and the request against the
// backup.requested schema) and stores it on backup.schedules.<name> in
// StreamRequests; from then on the server fires it. Nothing is stored
// when a check fails (ErrInvalidSchedule) or, without opts.Replace, when a
// schedule of that name exists (ErrScheduleExists: the check is the
// server's, Nats-Expected-Last-Subject-Sequence 0, so two concurrent adds
// cannot both win). It returns the stored schedule.
func AddSchedule(ctx context.Context, js jetstream.JetStream, s Schedule, opts AddOptions) (Schedule, error) {
	data, err := s.prepare()
	if err != nil {
		return Schedule{}, err
	}
	msg := nats.NewMsg(ScheduleSubject(s.Name))
	msg.Data = data
	msg.Header.Set(HeaderSchedule, s.Cron)
	msg.Header.Set(HeaderScheduleTarget, s.target())
	if s.TimeZone != "" {
		msg.Header.Set(HeaderScheduleTimeZone, s.TimeZone)
	}
	msg.Header.Set(HeaderContentType, ContentTypeJSON)
	var popts []jetstream.PublishOpt
	if !opts.Replace {
		popts = append(popts, jetstream.WithExpectLastSequencePerSubject(0))
	}
	ack, err := js.PublishMsg(ctx, msg, popts...)
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant):
		return Schedule{}, fmt.Errorf("add schedule %s: %w", s.Name, ErrScheduleExists)
	case errors.As(err, &apiErr) && slices.Contains(scheduleRefusals, apiErr.ErrorCode):
		return Schedule{}, fmt.Errorf("add schedule %s: server refused %q (zone %q): %w: %w", s.Name, s.Cron, s.TimeZone, ErrInvalidSchedule, err)
	default:
		return Schedule{}, fmt.Errorf("add schedule %s: %w", s.Name, err)
	}
	s.Seq = ack.Sequence
	s.Added = time.Now().UTC()
	return s, nil
}

// scheduleRefusals are the error codes of nats-server's message schedule
// checks (errors.json): disabled, pattern, target, TTL, rollup, source,
// scheduler, time zone.
var scheduleRefusals = []jetstream.ErrorCode{10188, 10189, 10190, 10191, 10192, 10203, 10212, 10223}

// GetSchedule returns the schedule named name, or ErrScheduleNotFound.
func GetSchedule(ctx context.Context, js jetstream.JetStream, name string) (Schedule, error) {
	if err := ValidScheduleName(name); err != nil {
		return Schedule{}, err
	}
	st, err := js.Stream(ctx, StreamRequests)
	if err != nil {
		return Schedule{}, fmt.Errorf("get schedule %s: stream %s: %w", name, StreamRequests, err)
	}
	raw, err := st.GetLastMsgForSubject(ctx, ScheduleSubject(name))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Schedule{}, fmt.Errorf("schedule %s: %w", name, ErrScheduleNotFound)
	}
	if err != nil {
		return Schedule{}, fmt.Errorf("get schedule %s: %w", name, err)
	}
	return scheduleOf(raw)
}

// scheduleOf reads a stored schedule message. A message on
// backup.schedules.* that is no schedule (no Nats-Schedule header, or a
// payload that is no request) is an error wrapping ErrInvalidSchedule.
func scheduleOf(raw *jetstream.RawStreamMsg) (Schedule, error) {
	name := strings.TrimPrefix(raw.Subject, SubjectSchedulePrefix)
	s := Schedule{
		Name:     name,
		Cron:     raw.Header.Get(HeaderSchedule),
		TimeZone: raw.Header.Get(HeaderScheduleTimeZone),
		Seq:      raw.Sequence,
		Added:    raw.Time.UTC(),
	}
	if s.Cron == "" {
		return s, fmt.Errorf("message %d on %s has no %s header: %w", raw.Sequence, raw.Subject, HeaderSchedule, ErrInvalidSchedule)
	}
	if raw.Header.Get(HeaderScheduleTarget) == SubjectForgetRequested {
		f, err := schemas.DecodeForgetRequest(raw.Data)
		if err != nil {
			return s, fmt.Errorf("schedule %s: forget: %w: %w", name, ErrInvalidSchedule, err)
		}
		s.Forget = &f
		return s, nil
	}
	if raw.Header.Get(HeaderScheduleTarget) == SubjectVerifyRequested {
		v, err := schemas.DecodeVerifyRequest(raw.Data)
		if err != nil {
			return s, fmt.Errorf("schedule %s: verification: %w: %w", name, ErrInvalidSchedule, err)
		}
		s.Verify = &v
		return s, nil
	}
	req, err := schemas.DecodeRequest(raw.Data)
	if err != nil {
		return s, fmt.Errorf("schedule %s: request: %w: %w", name, ErrInvalidSchedule, err)
	}
	s.Request = req
	return s, nil
}

// ListSchedules returns every schedule in StreamRequests, by name. It
// reads the stream's subject counts and the last message of each schedule
// subject; it creates no consumer (a consumer on a work-queue stream
// would delete what it acks). A message on backup.schedules.* that is no
// schedule is listed with what could be read and its error in bad.
func ListSchedules(ctx context.Context, js jetstream.JetStream) (list []Schedule, bad map[string]error, err error) {
	st, err := js.Stream(ctx, StreamRequests)
	if err != nil {
		return nil, nil, fmt.Errorf("list schedules: stream %s: %w", StreamRequests, err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(SubjectSchedules))
	if err != nil {
		return nil, nil, fmt.Errorf("list schedules: info of stream %s: %w", StreamRequests, err)
	}
	subjects := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		subjects = append(subjects, subj)
	}
	slices.Sort(subjects)
	for _, subj := range subjects {
		raw, err := st.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, nil, fmt.Errorf("list schedules: last message on %s: %w", subj, err)
		}
		s, err := scheduleOf(raw)
		if err != nil {
			if bad == nil {
				bad = map[string]error{}
			}
			bad[s.Name] = err
		}
		list = append(list, s)
	}
	return list, bad, nil
}

// RemoveSchedule purges backup.schedules.<name>: the server stops firing
// it. Requests it already fired stay queued. A name with no schedule is
// ErrScheduleNotFound.
func RemoveSchedule(ctx context.Context, js jetstream.JetStream, name string) error {
	if _, err := GetSchedule(ctx, js, name); err != nil && !errors.Is(err, ErrInvalidSchedule) {
		return err
	}
	st, err := js.Stream(ctx, StreamRequests)
	if err != nil {
		return fmt.Errorf("remove schedule %s: stream %s: %w", name, StreamRequests, err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(ScheduleSubject(name))); err != nil {
		return fmt.Errorf("remove schedule %s: purge %s: %w", name, ScheduleSubject(name), err)
	}
	return nil
}
