package testutil

import "fmt"

// FirstDiff compares two documents line by line (a missing line counts as
// empty) and describes the first line that differs, numbered from 1, or
// returns "" when none does.
func FirstDiff(want, got []string) string {
	for i := range max(len(want), len(got)) {
		var w, g string
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		if w != g {
			return fmt.Sprintf("first difference at line %d:\n want %s\n got  %s", i+1, w, g)
		}
	}
	return ""
}
