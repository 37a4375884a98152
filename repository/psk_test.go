package repository

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustPSK(t *testing.T) PSK {
	t.Helper()
	p, err := NewPSK()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPSK: keys are fresh, valid, never formatted, and written in the
// file format qemu and libnbd read.
func TestPSK(t *testing.T) {
	t.Parallel()
	a, b := mustPSK(t), mustPSK(t)
	if a.Key == b.Key {
		t.Fatal("two keys are equal")
	}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprint(a), fmt.Sprintf("%v %+v %s %#v", a, a, a, a), fmt.Sprint(&a)} {
		if strings.Contains(s, a.Key) {
			t.Errorf("formatted psk holds the key: %s", s)
		}
	}
	dir, err := a.WriteDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, PSKFileName))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != PSKIdentity+":"+a.Key+"\n" {
		t.Errorf("key file %q", got)
	}

	for _, bad := range []PSK{
		{Identity: "", Key: a.Key},
		{Identity: "a b", Key: a.Key},
		{Identity: "x:y", Key: a.Key},
		{Identity: PSKIdentity, Key: ""},
		{Identity: PSKIdentity, Key: "abc"},
		{Identity: PSKIdentity, Key: strings.ToUpper(a.Key)},
		{Identity: PSKIdentity, Key: a.Key + "\nevil:00"},
	} {
		err := bad.Validate()
		if !errors.Is(err, ErrInvalidPSK) {
			t.Errorf("Validate(%q) = %v, want ErrInvalidPSK", bad.Identity, err)
		}
		if _, err := bad.WriteDir(t.TempDir()); !errors.Is(err, ErrInvalidPSK) {
			t.Errorf("WriteDir(%q) = %v, want ErrInvalidPSK", bad.Identity, err)
		}
	}
}
