package main

import (
	"context"
	"fmt"

	"github.com/sendense/sendense/agents/catalog"
)

// resolveJobIDs turns each of ids (a job id or a unique prefix of at least
// catalog.MinShortID characters, as `job` and `restore --job` take) into
// the job's full id through the catalog. flag names the flag in errors;
// an unknown or ambiguous id is an error, so a typo never protects
// nothing.
func resolveJobIDs(ctx context.Context, cl *catalog.Client, flag string, ids []string) ([]string, error) {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		j, err := cl.ResolveJob(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flag, id, err)
		}
		out = append(out, j.ID)
	}
	return out, nil
}
