package testutil

import (
	"strings"
	"testing"
)

func TestFirstDiff(t *testing.T) {
	if d := FirstDiff([]string{"a", "b"}, []string{"a", "b"}); d != "" {
		t.Errorf("equal documents: %q", d)
	}
	if d := FirstDiff([]string{"a", "b"}, []string{"a", "c"}); !strings.Contains(d, "line 2") || !strings.Contains(d, "want b") || !strings.Contains(d, "got  c") {
		t.Errorf("changed line: %q", d)
	}
	if d := FirstDiff([]string{"a"}, []string{"a", "extra"}); !strings.Contains(d, "line 2") || !strings.Contains(d, "got  extra") {
		t.Errorf("longer got: %q", d)
	}
}
