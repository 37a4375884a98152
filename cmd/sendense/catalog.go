package main

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/internal/datadir"
)

func init() { extraCommands = append(extraCommands, newCatalogCmd) }

// catalogCmd runs the catalog role alone, against any NATS.
type catalogCmd struct {
	proc    processFlags
	catalog catalogFlags
}

func newCatalogCmd(a *app) *cobra.Command {
	c := &catalogCmd{}
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "Run the catalog alone: consume BACKUP_EVENTS into DATA/catalog.db and answer sendense.catalog.*",
		Long: `Run the catalog alone until SIGINT or SIGTERM: the consumer that files
every event of BACKUP_EVENTS into DATA/catalog.db, and the sendense.catalog.*
service that answers jobs, job and chain. Usually with --nats-url; without it
an embedded server is started under DATA/nats, as for serve.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := a.systemConfig("sendense-catalog", c.proc)
			c.catalog.apply(&cfg)
			cfg.Catalog = true
			return a.runSystem(cmd.Context(), cfg)
		},
	}
	c.proc.register(cmd.Flags())
	c.catalog.register(cmd.Flags())
	cmd.AddCommand(newCatalogRebuildCmd(a), newCatalogPoisonCmd(a), newCatalogStatsCmd(a))
	return cmd
}

// catalogRebuildCmd replays BACKUP_EVENTS into a fresh catalog file.
type catalogRebuildCmd struct {
	json bool
}

func newCatalogRebuildCmd(a *app) *cobra.Command {
	c := &catalogRebuildCmd{}
	cmd := &cobra.Command{
		Use:   "rebuild",
		Short: "Replay BACKUP_EVENTS from the first message into a fresh DATA/catalog.db and swap it in",
		Long: `Replay BACKUP_EVENTS from its first message into a fresh catalog file next
to DATA/catalog.db, then rename it into place; the previous file is kept as
DATA/catalog.db.bak. Stop serve or catalog first: the live file must not be
in use. Without --nats-url the embedded server's store under DATA/nats is
opened (in process only, unless --nats-listen is given).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f := cmd.Flag("nats-listen"); f != nil && !f.Changed {
				a.nats.listen = bus.ListenNone
			}
			return c.run(cmd.Context(), a)
		},
	}
	cmd.Flags().BoolVar(&c.json, "json", false, "print the result as JSON")
	return cmd
}

func (c *catalogRebuildCmd) run(ctx context.Context, a *app) error {
	// Before starting anything: the data dir's lock, then the catalog's
	// (an embedded server would fail on its own port or store first, with
	// a less helpful error).
	lock, err := datadir.Acquire(a.dataDir)
	if err != nil {
		return err
	}
	defer lock.Release()
	path := catalogPath(a.dataDir)
	if err := catalog.CheckIdle(path); err != nil {
		return err
	}
	rt, err := a.startNATS(ctx, bus.Identity{Role: bus.RoleCatalog})
	if err != nil {
		return err
	}
	defer rt.Close()
	js, err := jetstream.New(rt.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	st, err := catalog.Rebuild(ctx, js, path, a.log)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(a, st)
	}
	_, err = fmt.Fprintf(a.stdout, "rebuilt %s from %s sequences %d..%d: %d messages, %d filed, %d poison, %d jobs in %s\n",
		st.Path, bus.StreamEvents, st.FirstSeq, st.LastSeq, st.Messages, st.Filed, st.Poison, st.Jobs, st.Took.Round(time.Millisecond))
	if err == nil && st.Backup != "" {
		_, err = fmt.Fprintf(a.stdout, "previous catalog kept as %s\n", st.Backup)
	}
	return err
}

// catalogPoisonCmd lists the events the catalog refused.
type catalogPoisonCmd struct {
	limit int
	json  bool
}

func newCatalogPoisonCmd(a *app) *cobra.Command {
	c := &catalogPoisonCmd{}
	cmd := &cobra.Command{
		Use:   "poison",
		Short: "List the events the catalog refused (failed schema or store rules), newest last",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a)
		},
	}
	cmd.Flags().IntVar(&c.limit, "limit", catalog.DefaultPoisonLimit, "show the newest N records")
	cmd.Flags().BoolVar(&c.json, "json", false, "print JSON (payloads base64, cut to 4 KiB)")
	return cmd
}

func (c *catalogPoisonCmd) run(ctx context.Context, a *app) error {
	cl, closeConn, err := a.catalogClient(ctx, bus.RoleAdmin)
	if err != nil {
		return err
	}
	defer closeConn()
	recs, err := cl.Poison(ctx, c.limit)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(a, recs)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSUBJECT\tSEQ\tEVENT\tJOB\tREASON")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", fmtTime(r.Time), r.Subject, dash(uintStr(r.Seq)),
			dash(r.EventID), dash(r.JobID), cut(r.Reason, 120))
	}
	return tw.Flush()
}

// catalogStatsCmd prints the catalog's counts.
type catalogStatsCmd struct {
	json bool
}

func newCatalogStatsCmd(a *app) *cobra.Command {
	c := &catalogStatsCmd{}
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Print the catalog's counts: jobs by status, chain links, applied events, poison records",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a)
		},
	}
	cmd.Flags().BoolVar(&c.json, "json", false, "print JSON")
	return cmd
}

func (c *catalogStatsCmd) run(ctx context.Context, a *app) error {
	cl, closeConn, err := a.catalogClient(ctx, bus.RoleAdmin)
	if err != nil {
		return err
	}
	defer closeConn()
	st, err := cl.Stats(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(a, st)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "jobs\t%d\n", st.Jobs)
	for _, s := range []string{"running", "completed", "failed", "rejected"} {
		fmt.Fprintf(tw, "  %s\t%d\n", s, st.ByStatus[s])
	}
	fmt.Fprintf(tw, "chain links\t%d\n", st.Links)
	fmt.Fprintf(tw, "applied events\t%d\n", st.Applied)
	fmt.Fprintf(tw, "poison records\t%d\n", st.Poison)
	fmt.Fprintf(tw, "file size\t%s\n", fmtBytes(st.FileBytes))
	fmt.Fprintf(tw, "layout version\t%d\n", st.SchemaVersion)
	return tw.Flush()
}

// catalogClient connects as role for a client command and returns a
// catalog client and the function that closes the connection.
func (a *app) catalogClient(ctx context.Context, role bus.Role) (*catalog.Client, func(), error) {
	nc, err := a.connect(ctx, role)
	if err != nil {
		return nil, nil, err
	}
	return catalog.NewClient(nc), nc.Close, nil
}

// writeJSON prints v as indented JSON.
func writeJSON(a *app, v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeJSONLine prints v as one line of JSON: a line of NDJSON, for
// streams and single results alike.
func writeJSONLine(a *app, v any) error {
	return json.NewEncoder(a.stdout).Encode(v)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func uintStr(n uint64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprint(n)
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
