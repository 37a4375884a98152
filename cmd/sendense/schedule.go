package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/retention"
	"github.com/sendense/sendense/schemas"
)

func init() { extraCommands = append(extraCommands, newScheduleCmd) }

// newScheduleCmd groups add, list and rm. Schedules are run by nats-server
// itself (bus.AddSchedule); these commands only store, read and purge them.
func newScheduleCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Add, list and remove backup, verify and forget schedules (fired by the NATS server itself)",
		Long: `Schedules are messages on backup.schedules.<name> in the BACKUP_REQUESTS
stream; nats-server stores a backup.requested message at every firing (a
backup.verify.requested for a verify schedule, a backup.forget.requested for a
forget schedule), so no scheduler process runs. Adding and removing needs the admin role, listing the
requester role.

Patterns (what nats-server accepts):
  @every DURATION     e.g. @every 6h (at least 1s; no time zone)
  @hourly @daily @midnight @weekly @monthly @yearly @annually
  6-field cron        second minute hour day-of-month month day-of-week,
                      e.g. '0 30 2 * * *' (02:30:00 daily), '0 0 3 * * sat'`,
	}
	cmd.AddCommand(newScheduleAddCmd(a), newScheduleListCmd(a), newScheduleRmCmd(a))
	return cmd
}

type scheduleAddCmd struct {
	verify     bool
	forget     bool
	policy     func() (retention.Policy, error)
	all        bool
	vm         string
	cron       string
	backupType string
	repository string
	timeZone   string
	force      bool
}

func newScheduleAddCmd(a *app) *cobra.Command {
	c := &scheduleAddCmd{}
	cmd := &cobra.Command{
		Use:   "add NAME --vm VM --cron PATTERN | add NAME --verify --vm VM|--all --cron PATTERN | add NAME --forget --vm VM|--all --keep-… N --cron PATTERN",
		Short: "Add a schedule that requests a backup of a VM (or, with --verify, a verification; with --forget, a retention run) at every firing",
		Long: `Add a schedule. NAME is 1 to 64 letters, digits, '-' or '_'. Each firing queues
a backup.requested with requested_by "schedule:NAME" and a job id of its own.
With --verify each firing queues a backup.verify.requested instead, which the hub
takes: it verifies every completed backup of --vm (or of every VM with --all),
as 'sendense verify' does, and publishes backup.verified per backup.
With --forget each firing queues a backup.forget.requested with the policy of
the --keep-… and --protect flags, which the hub takes: it applies the policy to
the completed backups of --vm (or of each VM with --all) in --repository, as
'sendense forget' does; a VM whose backup runs is tried again every 2 minutes.
To keep a backup schedule's chain short, add a forget schedule for the same VM
a few hours after it (backup at 01:00, forget at 05:00).
A name that already has a schedule is refused (exit 4) unless --force, which
replaces it. Everything is checked before anything is published.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.run(cmd.Context(), a, args[0], cmd.Flags())
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.vm, "vm", "", "VM name, instance UUID or moref (required, except with --verify --all)")
	f.BoolVar(&c.verify, "verify", false, "schedule a verification of completed backups instead of a backup")
	f.BoolVar(&c.forget, "forget", false, "schedule a retention run (the --keep-… flags) instead of a backup")
	f.BoolVar(&c.all, "all", false, "with --verify or --forget: every VM's completed backups")
	f.StringVar(&c.cron, "cron", "", "when: '@every 6h', '@daily' or a 6-field cron such as '0 30 2 * * *' (required)")
	f.StringVar(&c.backupType, "type", schemas.TypeAuto, "auto, full or incremental")
	f.StringVar(&c.repository, "repository", schemas.DefaultRepository, "repository name")
	f.StringVar(&c.timeZone, "time-zone", "", "IANA time zone the cron pattern is read in, e.g. Europe/Berlin (default UTC; not with @every)")
	f.BoolVar(&c.force, "force", false, "replace a schedule of the same name")
	c.policy = retentionFlags(cmd)
	_ = cmd.MarkFlagRequired("cron")
	cmd.MarkFlagsMutuallyExclusive("vm", "all")
	cmd.MarkFlagsMutuallyExclusive("verify", "forget")
	return cmd
}

// keepFlags are the flags of a retention policy (retentionFlags).
var keepFlags = []string{"keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly", "protect"}

func (c *scheduleAddCmd) run(ctx context.Context, a *app, name string, flags *pflag.FlagSet) error {
	s := bus.Schedule{Name: name, Cron: c.cron, TimeZone: c.timeZone,
		Request: schemas.Request{VM: c.vm, BackupType: c.backupType, Repository: c.repository}}
	what := fmt.Sprintf("vm %s, %s", c.vm, c.backupType)
	switch {
	case c.verify:
		if c.vm == "" && !c.all {
			return errors.New("--verify needs --vm VM or --all")
		}
		repo := c.repository
		if repo == schemas.DefaultRepository {
			repo = "" // every repository of the hub, unless named
		}
		s.Request = schemas.Request{}
		s.Verify = &schemas.VerifyRequest{VM: c.vm, All: c.all, Repository: repo}
		what = "verify vm " + c.vm
		if c.all {
			what = "verify every backup"
		}
	case c.forget:
		if c.vm == "" && !c.all {
			return errors.New("--forget needs --vm VM or --all")
		}
		policy, err := c.policy()
		if err != nil {
			return err
		}
		s.Request = schemas.Request{}
		s.Forget = &schemas.ForgetRequest{VM: c.vm, All: c.all, Repository: c.repository, Policy: schemas.Retention(policy)}
		what = fmt.Sprintf("forget vm %s: %s", c.vm, policy)
		if c.all {
			what = "forget every vm: " + policy.String()
		}
	case c.all:
		return errors.New("--all goes with --verify or --forget; a backup schedule names one --vm")
	case c.vm == "":
		return errors.New("required flag \"vm\" not set")
	}
	if !c.forget {
		for _, k := range keepFlags {
			if flags.Changed(k) {
				return fmt.Errorf("--%s goes with --forget: to apply a policy after backups, add a forget schedule for the VM next to its backup schedule", k)
			}
		}
	}
	if err := s.Validate(); err != nil {
		return err
	}
	if s.Forget != nil && len(s.Forget.Policy.Protect) > 0 {
		// Short ids become the jobs' full ids before they are stored.
		cl, closeCat, err := a.catalogClient(ctx, bus.RoleAdmin)
		if err != nil {
			return err
		}
		s.Forget.Policy.Protect, err = resolveJobIDs(ctx, cl, "--protect", s.Forget.Policy.Protect)
		closeCat()
		if err != nil {
			return err
		}
	}
	js, closeConn, err := a.jetStream(ctx, bus.RoleAdmin)
	if err != nil {
		return err
	}
	defer closeConn()
	s, err = bus.AddSchedule(ctx, js, s, bus.AddOptions{Replace: c.force})
	if errors.Is(err, bus.ErrScheduleExists) {
		return &exitError{code: exitConflict, err: fmt.Errorf("schedule %s exists; remove it first or add --force to replace it", name)}
	}
	if err != nil {
		return err
	}
	next, _ := s.Next(time.Now())
	fmt.Fprintf(a.stdout, "schedule %s added (%s, %s); next firing %s\n", name, what, cronText(s), fmtTime(next))
	return nil
}

type scheduleListCmd struct {
	json bool
}

func newScheduleListCmd(a *app) *cobra.Command {
	c := &scheduleListCmd{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List schedules with their next firing (computed from the pattern as the server does)",
		Long: `List schedules by name. NEXT is computed here with the server's own cron
parser: exact for cron patterns; for @every it counts whole intervals from
when the schedule was added, which is off after a server restart (the server
then fires once and counts from there).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a)
		},
	}
	cmd.Flags().BoolVar(&c.json, "json", false, "print the schedules as a JSON array")
	return cmd
}

// scheduleRow is one schedule as `schedule list --json` prints it.
type scheduleRow struct {
	Name string `json:"name"`
	// Kind is backup, verify or forget.
	Kind        string    `json:"kind"`
	VM          string    `json:"vm"`
	BackupType  string    `json:"backup_type"`
	Repository  string    `json:"repository"`
	Cron        string    `json:"cron"`
	TimeZone    string    `json:"time_zone"`
	Next        time.Time `json:"next,omitzero"`
	Added       time.Time `json:"added"`
	RequestedBy string    `json:"requested_by"`
	Seq         uint64    `json:"seq"`
	// Policy is a forget schedule's retention policy.
	Policy *retention.Policy `json:"policy,omitempty"`
	Error  string            `json:"error,omitempty"`
}

func (c *scheduleListCmd) run(ctx context.Context, a *app) error {
	js, closeConn, err := a.jetStream(ctx, bus.RoleRequester)
	if err != nil {
		return err
	}
	defer closeConn()
	list, bad, err := bus.ListSchedules(ctx, js)
	if err != nil {
		return err
	}
	now := time.Now()
	rows := make([]scheduleRow, 0, len(list))
	for _, s := range list {
		r := scheduleRow{Name: s.Name, Kind: s.Kind(), VM: s.Request.VM, BackupType: s.Request.BackupType, Repository: s.Request.Repository,
			Cron: s.Cron, TimeZone: s.TimeZone, Added: s.Added, RequestedBy: s.Request.RequestedBy, Seq: s.Seq}
		if s.Verify != nil {
			r.BackupType, r.VM, r.Repository, r.RequestedBy = "verify", s.Verify.VM, s.Verify.Repository, s.Verify.RequestedBy
			if s.Verify.All {
				r.VM = "(all)"
			}
		}
		if f := s.Forget; f != nil {
			p := retention.Policy(f.Policy)
			r.BackupType, r.VM, r.Repository, r.RequestedBy, r.Policy = "forget", f.VM, f.Repository, f.RequestedBy, &p
			if f.All {
				r.VM = "(all)"
			}
		}
		if r.BackupType == "" {
			r.BackupType = schemas.TypeAuto
		}
		if r.Repository == "" {
			r.Repository = schemas.DefaultRepository
		}
		if r.TimeZone == "" {
			r.TimeZone = "UTC"
		}
		if err := bad[s.Name]; err != nil {
			r.Error = err.Error()
		} else if next, err := s.Next(now); err != nil {
			r.Error = err.Error()
		} else {
			r.Next = next
		}
		rows = append(rows, r)
	}
	if c.json {
		return writeJSON(a, rows)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tVM\tTYPE/POLICY\tCRON\tTIME ZONE\tNEXT\tADDED")
	for _, r := range rows {
		next := fmtTime(r.Next)
		if r.Error != "" {
			next = "error: " + r.Error
		}
		what := r.BackupType
		switch {
		case r.Policy != nil:
			what = r.Policy.String()
		case r.Kind == "verify":
			what = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Kind, dash(r.VM), what, r.Cron, r.TimeZone, next, fmtTime(r.Added))
	}
	return tw.Flush()
}

func newScheduleRmCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a schedule (requests it already queued stay queued)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := bus.ValidScheduleName(name); err != nil {
				return err
			}
			js, closeConn, err := a.jetStream(cmd.Context(), bus.RoleAdmin)
			if err != nil {
				return err
			}
			defer closeConn()
			if err := bus.RemoveSchedule(cmd.Context(), js, name); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "schedule %s removed\n", name)
			return nil
		},
	}
}

// cronText is a schedule's pattern with its zone.
func cronText(s bus.Schedule) string {
	if s.TimeZone == "" {
		return fmt.Sprintf("%q", s.Cron)
	}
	return fmt.Sprintf("%q in %s", s.Cron, s.TimeZone)
}

// jetStream connects as role and returns its JetStream context and a
// function that closes the connection.
func (a *app) jetStream(ctx context.Context, role bus.Role) (jetstream.JetStream, func(), error) {
	nc, err := a.connect(ctx, role)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return js, nc.Close, nil
}
