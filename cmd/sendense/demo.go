package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/system"
)

func init() { extraCommands = append(extraCommands, newDemoCmd) }

type demoCmd struct {
	keep    bool
	percent float64
}

func newDemoCmd(a *app) *cobra.Command {
	c := &demoCmd{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Full and incremental backup of a simulated VM through the real pipeline, then a restore check",
		Long: `Run the whole pipeline in a temporary directory, as serve --simulate-vcenter does
(embedded NATS, catalog, hub, agent, simulated vCenter with CBT), and drive it
over NATS like a user: a full backup of pgtest1, 1% guest writes, an
incremental, then restore both backup points of every disk and compare each
with the image the simulated vCenter froze at that snapshot. Prints a table
per disk and exits non-zero when any check fails. Logs go to demo.log in the
directory.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.run(cmd.Context(), a) },
	}
	cmd.Flags().BoolVar(&c.keep, "keep", false, "keep the temporary directory (catalog, repository, logs)")
	cmd.Flags().Float64Var(&c.percent, "percent", 1, "guest writes between the backups, percent of each disk")
	return cmd
}

func (c *demoCmd) run(ctx context.Context, a *app) error {
	start := time.Now()
	dir, err := os.MkdirTemp("", "sendense-demo-")
	if err != nil {
		return err
	}
	if c.keep {
		fmt.Fprintf(a.stdout, "working in %s (kept)\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	logf, err := os.Create(filepath.Join(dir, "demo.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	log := zerolog.New(logf).With().Timestamp().Logger()
	stdlog.SetOutput(io.Discard) // the simulator's expected faults

	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	fmt.Fprintln(a.stdout, "starting embedded NATS, catalog, hub, agent and a simulated vCenter with CBT")
	sys, err := system.Start(ctx, system.Config{
		DataDir: filepath.Join(dir, "data"), NATSListen: "none",
		Catalog: true, Hub: true, Agent: true, SimulateVCenter: true,
		AgentID: "demo-agent", Log: log,
	})
	if err != nil {
		return fmt.Errorf("start pipeline (log: %s): %w", logf.Name(), err)
	}
	defer sys.Stop()
	for _, vm := range sys.Testbed.VMs() {
		for _, d := range vm.Disks {
			fmt.Fprintf(a.stdout, "vm %s disk %d: %d bytes virtual, image %s\n", vm.Name, d.Key, d.CapacityBytes, d.ImagePath)
		}
	}
	rep, err := system.RunDemo(ctx, sys.NC, system.DemoOptions{VM: "pgtest1", Percent: c.percent, Dir: filepath.Join(dir, "restore")}, a.stdout)
	if err != nil {
		return fmt.Errorf("demo (log: %s): %w", logf.Name(), err)
	}
	fmt.Fprintf(a.stdout, "demo took %s\n", time.Since(start).Round(time.Millisecond))
	if !rep.OK() {
		return &exitError{code: 1, err: errors.New("demo checks failed")}
	}
	return nil
}
