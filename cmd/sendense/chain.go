package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
)

func init() { extraCommands = append(extraCommands, newChainCmd) }

// chainCmd shows the chains of completed backups of a VM's disks.
type chainCmd struct {
	vm   string
	disk int32
	repo string
	json bool
}

func newChainCmd(a *app) *cobra.Command {
	c := &chainCmd{}
	cmd := &cobra.Command{
		Use:   "chain --vm NAME|UUID",
		Short: "Show the chain of completed backups of each disk of a VM (asks the catalog service)",
		Long: `Show, per disk and repository, the completed backups of a VM oldest first:
the full, then each incremental backed by the one before it, with change ids
and target files. --vm takes a name or moref (looked up in the VM's jobs) or
an instance UUID.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a, cmd.Flags().Changed("disk"))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&c.vm, "vm", "", "the VM: name, moref or instance UUID (required)")
	fs.Int32Var(&c.disk, "disk", 0, "only this disk (VMware device key, e.g. 2000)")
	fs.StringVarP(&c.repo, "repository", "r", "", "only this repository (default: all)")
	fs.BoolVar(&c.json, "json", false, "print the chains as a JSON array")
	_ = cmd.MarkFlagRequired("vm")
	return cmd
}

var uuidRE = regexp.MustCompile(`^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$`)

// resolveVM returns the instance UUID of vm: the UUID of the newest of its
// jobs that names one, or vm itself when it is a UUID the catalog has no
// job for.
func resolveVM(ctx context.Context, cl *catalog.Client, vm string) (string, error) {
	jobs, err := cl.Jobs(ctx, backup.JobFilter{VM: vm, Limit: 50})
	if err != nil {
		return "", err
	}
	for _, j := range jobs {
		if j.VM.UUID != "" {
			return j.VM.UUID, nil
		}
	}
	if uuidRE.MatchString(vm) {
		return vm, nil
	}
	return "", fmt.Errorf("vm %q: no job in the catalog names it with an instance uuid: %w", vm, backup.ErrNotFound)
}

func (c *chainCmd) run(ctx context.Context, a *app, diskSet bool) error {
	cl, closeConn, err := a.catalogClient(ctx, bus.RoleRequester)
	if err != nil {
		return err
	}
	defer closeConn()
	uuid, err := resolveVM(ctx, cl, c.vm)
	if err != nil {
		return err
	}
	all, err := cl.Chains(ctx, uuid, c.repo)
	if err != nil {
		return err
	}
	chains := []backup.Chain{}
	for _, ch := range all {
		if !diskSet || ch.DiskKey == c.disk {
			chains = append(chains, ch)
		}
	}
	if diskSet && len(chains) == 0 && len(all) > 0 {
		var keys []string
		for _, ch := range all {
			if k := strconv.Itoa(int(ch.DiskKey)); !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
		return fmt.Errorf("vm %s has no backup of disk %d (disks with backups: %s): %w", c.vm, c.disk, strings.Join(keys, ", "), backup.ErrNotFound)
	}
	if c.json {
		return writeJSON(a, chains)
	}
	if len(chains) == 0 {
		_, err := fmt.Fprintf(a.stdout, "no completed backup of vm %s (%s)\n", c.vm, uuid)
		return err
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPOSITORY\tDISK\t#\tJOB\tTYPE\tCHANGE ID\tSIZE\tCOMPLETED\tBACKING\tTARGET")
	for _, ch := range chains {
		for i, l := range ch.Links {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ch.Repository, ch.DiskKey, i+1, l.JobID,
				l.BackupType, l.ChangeID, fmtBytes(l.ActualSizeBytes), fmtTime(l.Time), dash(l.Backing), l.Target)
		}
	}
	return tw.Flush()
}
