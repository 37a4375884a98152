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
		Long: `Print the JSON Schema (draft 2020-12) of a message, bundled with the shared
definitions it references; without NAME, list the messages and "common".
"schemas common" prints the shared definitions alone (the document behind
the messages' common/v1.json references).`,
		Args:        cobra.MaximumNArgs(1),
		Annotations: noNATSAnnotation,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				for _, n := range append(schemas.Names(), schemas.CommonName) {
					fmt.Fprintln(a.stdout, n)
				}
				return nil
			}
			get := schemas.Schema
			if args[0] == schemas.CommonName {
				get = func(string) ([]byte, error) { return schemas.Common() }
			}
			b, err := get(args[0])
			if err != nil {
				return err
			}
			_, err = a.stdout.Write(b)
			return err
		},
	}
}
