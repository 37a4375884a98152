package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/bus"
)

func init() { extraCommands = append(extraCommands, newVMsCmd) }

// vmsCmd lists the VMs the catalog knows.
type vmsCmd struct {
	json bool
}

func newVMsCmd(a *app) *cobra.Command {
	c := &vmsCmd{}
	cmd := &cobra.Command{
		Use:   "vms",
		Short: "List the VMs the catalog has backups of: last backup, its status, restore points",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a)
		},
	}
	cmd.Flags().BoolVar(&c.json, "json", false, "print the VMs as a JSON array")
	return cmd
}

func (c *vmsCmd) run(ctx context.Context, a *app) error {
	cl, closeConn, err := a.catalogClient(ctx, bus.RoleRequester)
	if err != nil {
		return err
	}
	defer closeConn()
	vms, err := cl.VMs(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(a, vms)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tUUID\tLAST BACKUP\tSTATUS\tLAST JOB\tLAST COMPLETED\tPOINTS")
	for _, v := range vms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", dash(v.Name), dash(v.UUID), fmtTime(v.LastAt), v.LastStatus,
			v.LastJobID, fmtTime(v.LastCompletedAt), v.Points)
	}
	return tw.Flush()
}
