package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// app holds what every command shares: global flags and the logger. Commands
// get it through their closure and open the NATS connection with connect or
// startNATS (nats.go), once.
type app struct {
	dataDir   string
	logFormat string
	logLevel  string
	nats      natsFlags
	log       zerolog.Logger
	stdout    io.Writer
}

func newRootCmd() *cobra.Command {
	a := &app{stdout: os.Stdout}
	root := &cobra.Command{
		Use:           "sendense",
		Short:         "Event-driven backups of VMware VMs over NATS JetStream, CBT and NBD",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			a.stdout = cmd.OutOrStdout()
			return a.setupLogging(cmd.ErrOrStderr())
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.dataDir, "data", "./var", "data directory (catalog, embedded NATS store, repository)")
	pf.StringVar(&a.logFormat, "log-format", "", "log format: console or json (default console when stderr is a terminal, else json)")
	pf.StringVar(&a.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	a.nats.register(pf)

	root.AddCommand(
		newVersionCmd(a),
		newSchemasCmd(a),
	)
	for _, add := range extraCommands {
		root.AddCommand(add(a))
	}
	hideNATSFlags(root)
	return root
}

// noNATSAnnotation marks a command that never connects to NATS: its help
// does not list the global NATS flags (help and completion are such
// commands too).
var noNATSAnnotation = map[string]string{noNATSKey: "true"}

// hideNATSFlags hides the global NATS flags from the help of the commands
// that never connect: version, schemas, help, completion (they still
// accept the flags, so a script that always passes them works).
func hideNATSFlags(root *cobra.Command) {
	help := root.HelpFunc()
	root.SetHelpFunc(func(c *cobra.Command, args []string) {
		if noNATS(c) {
			c.Root().PersistentFlags().VisitAll(func(f *pflag.Flag) {
				if f.Name == "context" || f.Name == "insecure" || strings.HasPrefix(f.Name, "nats-") {
					f.Hidden = true
				}
			})
		}
		help(c, args)
	})
}

func noNATS(c *cobra.Command) bool {
	for ; c != nil && c.HasParent(); c = c.Parent() {
		if c.Annotations[noNATSKey] == "true" || c.Name() == "help" || c.Name() == "completion" {
			return true
		}
	}
	return false
}

const noNATSKey = "sendense/no-nats"

// extraCommands lets each command file register itself, so root.go does not
// change whenever a command is added.
var extraCommands []func(*app) *cobra.Command

func (a *app) setupLogging(w io.Writer) error {
	lvl, err := zerolog.ParseLevel(strings.ToLower(a.logLevel))
	if err != nil {
		return fmt.Errorf("parse --log-level %q: %w", a.logLevel, err)
	}
	format := a.logFormat
	if format == "" {
		format = "json"
		if isTerminal(w) {
			format = "console"
		}
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	switch format {
	case "console":
		a.log = zerolog.New(zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}).Level(lvl).With().Timestamp().Logger()
	case "json":
		a.log = zerolog.New(w).Level(lvl).With().Timestamp().Logger()
	default:
		return fmt.Errorf("unknown --log-format %q (want console or json)", format)
	}
	return nil
}
