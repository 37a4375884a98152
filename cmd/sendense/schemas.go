package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/schemas"
)

func newSchemasCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "schemas [NAME]",
		Short: "Print the JSON Schemas of the messages (the contract); without NAME, list them",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				for _, n := range schemas.Names() {
					fmt.Fprintln(a.stdout, n)
				}
				return nil
			}
			b, err := schemas.Schema(args[0])
			if err != nil {
				return err
			}
			_, err = a.stdout.Write(b)
			return err
		},
	}
}
