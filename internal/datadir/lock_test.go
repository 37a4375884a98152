package datadir_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sendense/sendense/internal/datadir"
)

// A second Acquire of a held dir fails naming the dir and the holder's
// pid, and leaves the lock file as it was; after Release it succeeds.
// (flock locks belong to the open file, so a second open in the same
// process conflicts like another process; cmd/sendense runs two.)
func TestAcquire(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	l, err := datadir.Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := os.ReadFile(l.Path())
	if strings.TrimSpace(string(pid)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("lock file holds %q, want this pid %d", pid, os.Getpid())
	}
	before, _ := os.Stat(l.Path())

	_, err = datadir.Acquire(dir)
	if !errors.Is(err, datadir.ErrLocked) {
		t.Fatalf("second Acquire: %v, want ErrLocked", err)
	}
	for _, want := range []string{dir, "pid " + strconv.Itoa(os.Getpid()), "in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	after, _ := os.Stat(l.Path())
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Errorf("the refused Acquire changed the lock file")
	}

	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	l2, err := datadir.Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	_ = l2.Release()
}

// A data dir that cannot be made is an error naming it.
func TestAcquireBadDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := datadir.Acquire(filepath.Join(file, "data")); err == nil || !strings.Contains(err.Error(), "create data dir") {
		t.Errorf("Acquire under a file: %v, want a create data dir error", err)
	}
}
