package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/manifest"
)

// TestRestoreOverTLS: `serve --repo-listen` exports over TCP with TLS-PSK,
// and `restore --verify` reads the nbds:// export with the key of its
// reply, identical to what the snapshot froze.
func TestRestoreOverTLS(t *testing.T) {
	t.Parallel()
	s := startServe(t, "small", "--repo-listen", "127.0.0.1", "--repo-ports", "22809-22909")
	s.must(t, "backup", "--vm", "pgtest1", "--wait", "--job-id", "tls-full")
	dir := t.TempDir()
	out := s.must(t, "restore", "--job", "tls-full", "--to", dir, "--verify")
	if strings.Count(out, "identical") != 2 {
		t.Errorf("restore --verify over tls:\n%s", out)
	}
	sim := simctl.NewClient(s.nc)
	for _, key := range []int32{2000, 2001} {
		fr, err := sim.Frozen(context.Background(), "pgtest1", "sendense-tls-full", key)
		if err != nil {
			t.Fatal(err)
		}
		restored := filepath.Join(dir, fmt.Sprintf("%d.raw", key))
		if o, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", fr.Path, restored).CombinedOutput(); err != nil {
			t.Errorf("restored %s differs from the frozen image: %v %s", restored, err, o)
		}
	}
	// A second restore to the same place refuses before writing anything;
	// --force overwrites.
	first := filepath.Join(dir, "2001.raw")
	before, err := os.Stat(first)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := s.run(t, "restore", "--job", "tls-full", "--to", dir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("restore over existing files: %v\n%s; want a refusal naming --force", err, out)
	}
	if after, err := os.Stat(first); err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("a refused restore touched %s: %v", first, err)
	}
	if out := s.must(t, "restore", "--job", "tls-full", "--to", dir, "--force", "--verify"); strings.Count(out, "identical") != 2 {
		t.Errorf("restore --force --verify:\n%s", out)
	}
	if logs := s.p.out.String(); !strings.Contains(logs, `"uri":"nbds://127.0.0.1:`) {
		t.Error("serve's log shows no nbds:// export")
	}
	if code := s.p.stop(t); code != 0 {
		t.Errorf("serve exited with %d after SIGTERM", code)
	}
}

// TestRepoFlagsInvalid: export settings that cannot work stop the hub at
// once with the flag named.
func TestRepoFlagsInvalid(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--repo-listen", "127.0.0.1", "--repo-ports", "2000-1000"}, "--repo-ports"},
		{[]string{"--repo-listen", "127.0.0.1", "--repo-ports", "many"}, "--repo-ports"},
		{[]string{"--repo-listen", "0.0.0.0"}, "advertised address"},
		{[]string{"--repo-advertise", "hub.example"}, "without a listen address"},
	} {
		_, err := cli(t, append([]string{"hub", "--data", t.TempDir(), "--nats-url", "nats://127.0.0.1:1", "--api-listen", "none"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("hub %v: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}

// TestRestoreCopyAndVerify: nbdcopy writes an export over a larger older
// file without leaving its tail, holes stay holes, qcow2 goes through a
// scratch copy that is removed, and verify names the first sector that
// differs.
func TestRestoreCopyAndVerify(t *testing.T) {
	t.Parallel()
	testutil.RequireTool(t, "nbdcopy")
	testutil.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	srcImg := filepath.Join(dir, "src.img")
	data := testutil.WriteRawImage(t, srcImg, 8<<20, 5)
	uri := testutil.StartNbdkit(t, "--readonly", "file", "file="+srcImg)
	ctx := context.Background()

	dst := filepath.Join(dir, "out.raw")
	if err := os.WriteFile(dst, bytes.Repeat([]byte{0xff}, 12<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := nbdcopy(ctx, uri, dst, nil); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("restored %d bytes, want the source's %d, identical", len(got), len(data))
	}
	if err := verifyCopy(ctx, uri, dst, "raw", nil); err != nil {
		t.Fatalf("verify of an identical copy: %v", err)
	}
	off := int64(3<<20 + 17)
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{data[off] ^ 0x40}, off); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	// qemu-img compare names the sector that differs.
	if err := verifyCopy(ctx, uri, dst, "raw", nil); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("offset %d", off&^511)) {
		t.Fatalf("verify of a copy with byte %d flipped: %v, want an error naming offset %d", off, err, off&^511)
	}

	q := filepath.Join(dir, "out.qcow2")
	if err := withScratch(q, func(scratch string) error {
		if err := nbdcopy(ctx, uri, scratch, nil); err != nil {
			return err
		}
		return qemuImg(ctx, "convert", "-f", "raw", "-O", "qcow2", scratch, q)
	}); err != nil {
		t.Fatal(err)
	}
	want, err := manifest.HashFile(srcImg)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyCopy(ctx, uri, q, "qcow2", want); err != nil {
		t.Fatalf("verify of the qcow2 copy against its manifest: %v", err)
	}
	// The export and the copy agree, but not with what the backup read:
	// the manifest names the chunk.
	wrong := want.Clone()
	wrong.Digests[5] = manifest.Sum([]byte("other"))
	if err := verifyCopy(ctx, uri, q, "qcow2", wrong); err == nil || !strings.Contains(err.Error(), "chunk 5 (offset 5242880") {
		t.Fatalf("verify against a manifest that differs at chunk 5: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), "scratch") {
			t.Errorf("scratch file %s left behind", e.Name())
		}
	}
}
