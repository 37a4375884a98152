package repository

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateID(t *testing.T) {
	tests := []struct {
		id      string
		wantErr bool
	}{
		{"5012abcd-0000-4000-8000-000000000001", false},
		{"job_2024.01-01", false},
		{"a", false},
		{"vm-123", false},
		{strings.Repeat("a", MaxIDLen), false},
		{"", true},
		{".", true},
		{"..", true},
		{"../x", true},
		{"a/b", true},
		{"/abs", true},
		{".hidden", true},
		{"-rf", true},
		{"a b", true},
		{"a\x00b", true},
		{"a\\b", true},
		{"é", true},
		{strings.Repeat("a", MaxIDLen+1), true},
	}
	for _, tt := range tests {
		err := ValidateID(tt.id)
		if gotErr := err != nil; gotErr != tt.wantErr {
			t.Errorf("ValidateID(%q) = %v, want error %t", tt.id, err, tt.wantErr)
		}
		if err != nil && !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidateID(%q) = %v, want ErrInvalidID", tt.id, err)
		}
	}
}

// TestTraversalRejected checks that no entry point joins a bad id into a
// path: every one fails with ErrInvalidID and nothing is created.
func TestTraversalRejected(t *testing.T) {
	r, ctx := newRepo(t)
	long := strings.Repeat("x", 300)
	tests := []struct {
		name string
		vm   string
		disk int32
		job  string
	}{
		{"dotdot job", testVM, 2000, "../x"},
		{"slash job", testVM, 2000, "a/b"},
		{"empty job", testVM, 2000, ""},
		{"dot job", testVM, 2000, "."},
		{"dotdot only job", testVM, 2000, ".."},
		{"long job", testVM, 2000, long},
		{"dotdot vm", "../x", 2000, "j1"},
		{"slash vm", "a/b", 2000, "j1"},
		{"empty vm", "", 2000, "j1"},
		{"dot vm", ".", 2000, "j1"},
		{"dotdot only vm", "..", 2000, "j1"},
		{"long vm", long, 2000, "j1"},
		{"absolute vm", "/etc", 2000, "j1"},
		{"negative disk", testVM, -1, "j1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := r.Path(tt.vm, tt.disk, tt.job); !errors.Is(err, ErrInvalidID) {
				t.Errorf("Path = %v, want ErrInvalidID", err)
			}
			if _, err := r.Create(ctx, tt.vm, tt.disk, tt.job, testCapacity, ""); !errors.Is(err, ErrInvalidID) {
				t.Errorf("Create = %v, want ErrInvalidID", err)
			}
			if tt.job != "j1" {
				if _, err := r.Create(ctx, testVM, 2000, "ok-job", testCapacity, tt.job); tt.job != "" && !errors.Is(err, ErrInvalidID) {
					t.Errorf("Create with backing %q = %v, want ErrInvalidID", tt.job, err)
				}
			}
			if err := r.Remove(tt.vm, tt.disk, tt.job); !errors.Is(err, ErrInvalidID) {
				t.Errorf("Remove = %v, want ErrInvalidID", err)
			}
			if tt.job == "j1" {
				if _, err := r.List(tt.vm, tt.disk); !errors.Is(err, ErrInvalidID) {
					t.Errorf("List = %v, want ErrInvalidID", err)
				}
			}
		})
	}
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(r.Root()), "*"))
	if len(matches) != 1 {
		t.Errorf("files next to the root: %v, want only the root", matches)
	}
}

func TestExportRejectsPathsOutsideLayout(t *testing.T) {
	r, ctx := newRepo(t)
	good := mustCreate(t, r, ctx, "j1", "")
	tests := []string{
		filepath.Join(r.Root(), "..", "x.qcow2"),
		filepath.Join(r.Root(), testVM, "2000", "..", "2000", "..", "..", "..", "etc", "passwd"),
		filepath.Join(r.Root(), testVM, "x.qcow2"),
		filepath.Join(r.Root(), testVM, "2000", "j1.raw"),
		filepath.Join(r.Root(), testVM, "02000", "j1.qcow2"),
		filepath.Join(r.Root(), testVM, "-1", "j1.qcow2"),
		filepath.Join(r.Root(), testVM, "2000", ".j1.qcow2"),
		"/etc/passwd",
		"relative/j1.qcow2",
	}
	for _, p := range tests {
		if _, err := r.Export(ctx, p, ExportOptions{ReadOnly: true}); !errors.Is(err, ErrNotInRepo) {
			t.Errorf("Export(%q) = %v, want ErrNotInRepo", p, err)
		}
	}
	if _, err := r.parsePath(good); err != nil {
		t.Errorf("parsePath(%q) = %v", good, err)
	}
}
