package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/testutil"
)

// startWatched starts an embedded server in dir, in-process only, with
// the store watchdog checking every interval, and connects to it.
func startWatched(t *testing.T, dir string, interval time.Duration, minFree int64) (*bus.Embedded, jetstream.JetStream) {
	t.Helper()
	log := bustest.Logger(t)
	e, err := bus.StartEmbedded(testCtx(t), bus.EmbeddedOptions{
		DataDir:            dir,
		Listen:             bus.ListenNone,
		NoAuth:             true,
		StoreCheckInterval: interval,
		StoreMinFree:       minFree,
		Log:                log.Level(zerolog.InfoLevel), // the server's debug log is very chatty
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	nc, err := e.Connect(log, bus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return e, js
}

// stored is a message the stream acknowledged.
type stored struct {
	id   string
	data []byte
	seq  uint64
}

// diskFullMsg is message i of the full-disk test: 8 KiB that say which.
func diskFullMsg(i int) (string, []byte) {
	return fmt.Sprintf("disk-full.%d", i), bytes.Repeat(fmt.Appendf(nil, "%07d,", i), 1024)
}

// freeBytes returns the free space of dir's file system.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fill appends zeros to path until at most left bytes are free on its
// file system, or until the file system is full when left is 0.
func fill(t *testing.T, path string, left int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		free := freeBytes(t, filepath.Dir(path))
		if left > 0 && free <= left {
			return
		}
		n := int64(len(chunk))
		if left > 0 {
			n = min(n, free-left)
		}
		if _, err := f.Write(chunk[:n]); err != nil {
			if errors.Is(err, unix.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}

// waitFor polls cond every 10 ms until it holds and returns how long that
// took; it fails the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	begin := time.Now()
	for !cond() {
		if time.Since(begin) > limit {
			t.Fatalf("%s: not after %v", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(begin)
}

// TestEmbeddedRecoversFromFullDisk fills the file system under an
// embedded server until a publish is not stored, and checks that the
// server recovers by itself once space is back, with every acknowledged
// message intact.
func TestEmbeddedRecoversFromFullDisk(t *testing.T) {
	mnt := testutil.Tmpfs(t, 24<<20)
	const interval = 100 * time.Millisecond
	e, js := startWatched(t, filepath.Join(mnt, "nats"), interval, 4<<20)
	ensureStreams(t, js)
	ctx := testCtx(t)
	pub := newPub(t, js)
	leases := newLeases(t, js) // not written before the disk is full: its first write needs a new page
	catalog, err := bus.EnsureCatalogConsumer(ctx, js, "catalog-disk-full")
	if err != nil {
		t.Fatal(err)
	}
	publish := func(ctx context.Context, i int) (stored, error) {
		id, data := diskFullMsg(i)
		ack, err := pub.Publish(ctx, subjStarted, id, "backup.started", data)
		if err != nil {
			return stored{id: id, data: data}, err
		}
		return stored{id: id, data: data, seq: ack.Sequence}, nil
	}

	var acked []stored
	i := 0
	for ; i < 20; i++ {
		m, err := publish(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, m)
	}

	// Leave 256 KiB, then publish until the stream cannot store.
	filler := filepath.Join(mnt, "filler")
	fill(t, filler, 256<<10)
	var failed stored
	for ; ; i++ {
		if i > 200 {
			t.Fatalf("still storing after %d messages of 8 KiB with 256 KiB free", i)
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := publish(pctx, i)
		cancel()
		if err == nil {
			acked = append(acked, m)
			continue
		}
		if !errors.Is(err, bus.ErrUnavailable) {
			t.Fatalf("publish on a full disk: %v, want ErrUnavailable", err)
		}
		t.Logf("publish %d on a full disk: %v", i, err)
		failed = m
		break
	}
	fill(t, filler, 0) // to the last byte: no write can land now

	pctx, cancel := context.WithTimeout(ctx, time.Second)
	err = leases.Probe(pctx, "test")
	cancel()
	if !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("probe write on a full disk: %v, want ErrUnavailable", err)
	}
	waitFor(t, 5*time.Second, "StoreErr reports the write error", func() bool { return e.StoreErr() != nil })
	if err := e.StoreErr(); !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("StoreErr = %v, want ErrUnavailable", err)
	}
	t.Logf("StoreErr on a full disk: %v", e.StoreErr())
	// StoreReady writes nothing, and a standalone server with a stream's
	// write error still answers everything but writes: it cannot tell.
	t.Logf("StoreReady on a full disk: %v", bus.StoreReady(ctx, js))
	time.Sleep(5 * interval)
	if n := e.StoreRestarts(); n != 0 {
		t.Fatalf("JetStream restarted %d times without free space", n)
	}

	// Free the space: the server recovers by itself.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	took := waitFor(t, 10*time.Second, "StoreErr clears", func() bool { return e.StoreErr() == nil })
	m, err := publish(ctx, i+1)
	if err != nil {
		t.Fatalf("publish after space is back: %v", err)
	}
	t.Logf("recovered %v after the space was freed (StoreErr nil after %v)", time.Since(freed), took)
	acked = append(acked, m)
	if n := e.StoreRestarts(); n != 1 {
		t.Errorf("JetStream restarted %d times, want 1", n)
	}
	if err := leases.Probe(ctx, "test"); err != nil {
		t.Errorf("probe write after recovery: %v", err)
	}
	if err := bus.StoreReady(ctx, js); err != nil {
		t.Errorf("StoreReady after recovery: %v", err)
	}
	cfg := e.Server().JetStreamConfig()
	if cfg == nil || cfg.StoreDir != filepath.Join(mnt, "nats", "jetstream") || cfg.MaxStore != bus.DefaultMaxStore ||
		cfg.MaxMemory != bus.DefaultMaxMemory || !cfg.SyncAlways {
		t.Errorf("jetstream config after the restart %+v, want the same store and limits as at start", cfg)
	}

	// What the agent does next: send the unstored message again, same id.
	// It is stored now, once; an acknowledged one is a duplicate still.
	again, err := publish(ctx, i)
	if err != nil {
		t.Fatalf("publish the unstored message again: %v", err)
	}
	if again.id != failed.id {
		t.Fatalf("republished %s, want %s", again.id, failed.id)
	}
	acked = append(acked, again)
	if ack, err := pub.Publish(ctx, subjStarted, acked[0].id, "backup.started", acked[0].data); err != nil || !ack.Duplicate || ack.Sequence != acked[0].seq {
		t.Errorf("re-publish of an acknowledged message: ack %+v, err %v; want a duplicate of seq %d", ack, err, acked[0].seq)
	}

	// Every acknowledged message is in the stream, with its payload, and
	// nothing else is.
	st, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range acked {
		got, err := st.GetMsg(ctx, m.seq)
		if err != nil {
			t.Errorf("acknowledged message %s (seq %d): %v", m.id, m.seq, err)
			continue
		}
		if got.Header.Get(jetstream.MsgIDHeader) != m.id || got.Subject != subjStarted || !bytes.Equal(got.Data, m.data) {
			t.Errorf("seq %d holds %s on %s (%d bytes), want %s (%d bytes)", m.seq, got.Header.Get(jetstream.MsgIDHeader), got.Subject, len(got.Data), m.id, len(m.data))
		}
	}
	if n := streamMsgs(t, js, bus.StreamEvents); n != uint64(len(acked)) {
		t.Errorf("events stream has %d messages, want the %d acknowledged", n, len(acked))
	}

	// The durable consumer made before the disk filled delivers them all.
	seen := map[string]bool{}
	for len(seen) < len(acked) {
		batch, err := catalog.Fetch(len(acked), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for msg := range batch.Messages() {
			seen[msg.Headers().Get(nats.MsgIdHdr)] = true
			_ = msg.Ack()
			n++
		}
		if n == 0 {
			t.Fatalf("catalog consumer delivered %d of %d messages (%v)", len(seen), len(acked), batch.Error())
		}
	}
	for _, m := range acked {
		if !seen[m.id] {
			t.Errorf("catalog consumer did not deliver %s", m.id)
		}
	}
}

// TestStoreWatchLeavesHealthyServerAlone checks that the watchdog of a
// busy, healthy server never restarts JetStream, and that Shutdown stops it.
func TestStoreWatchLeavesHealthyServerAlone(t *testing.T) {
	e, js := startWatched(t, t.TempDir(), 10*time.Millisecond, 0)
	ensureStreams(t, js)
	ctx := testCtx(t)
	pub := newPub(t, js)
	// Streams come and go (a stream being created shows in Healthz before
	// it is loaded) while messages are stored.
	for i := range 50 {
		name := fmt.Sprintf("SCRATCH_%d", i)
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"scratch." + name}, Storage: jetstream.FileStorage}); err != nil {
			t.Fatal(err)
		}
		id, data := diskFullMsg(i)
		if _, err := pub.Publish(ctx, subjStarted, id, "backup.started", data); err != nil {
			t.Fatal(err)
		}
		if err := js.DeleteStream(ctx, name); err != nil {
			t.Fatal(err)
		}
		if err := e.StoreErr(); err != nil {
			t.Fatalf("StoreErr of a healthy server: %v", err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := e.StoreRestarts(); n != 0 {
		t.Errorf("the watchdog restarted a healthy JetStream %d times", n)
	}
	e.Shutdown()
	select {
	case <-e.StoreWatchDone():
	default:
		t.Error("the watchdog still runs after Shutdown")
	}
	if n := e.StoreRestarts(); n != 0 {
		t.Errorf("the watchdog restarted JetStream %d times during Shutdown", n)
	}
}

// TestStoreWatchRestartsShutDownJetStream shuts JetStream down under the
// server's feet, as a clustered server does itself when its disk is full,
// and checks that the watchdog enables it again with the streams intact.
func TestStoreWatchRestartsShutDownJetStream(t *testing.T) {
	e, js := startWatched(t, t.TempDir(), 50*time.Millisecond, 1)
	ensureStreams(t, js)
	ctx := testCtx(t)
	pub := newPub(t, js)
	id, data := diskFullMsg(1)
	ack, err := pub.Publish(ctx, subjStarted, id, "backup.started", data)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Server().ShutdownJetStream(); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 10*time.Second, "JetStream enabled again", func() bool {
		return e.StoreRestarts() == 1 && e.Server().JetStreamEnabled() && e.StoreErr() == nil
	})
	t.Logf("JetStream enabled again %v after it was shut down", took)
	st, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.GetMsg(ctx, ack.Sequence)
	if err != nil || !bytes.Equal(got.Data, data) {
		t.Fatalf("message %d after the restart: %v", ack.Sequence, err)
	}
	id, data = diskFullMsg(2)
	if _, err := pub.Publish(ctx, subjStarted, id, "backup.started", data); err != nil {
		t.Fatalf("publish after the restart: %v", err)
	}
}

// TestClusterNodeRecoversFromFullDisk fills the disk of one server of a
// three-server cluster: the server shuts its JetStream down itself while
// the other two keep storing, and its watchdog brings it back once space
// is back, with every acknowledged message on it.
func TestClusterNodeRecoversFromFullDisk(t *testing.T) {
	mnt := testutil.Tmpfs(t, 32<<20)
	const interval = 100 * time.Millisecond
	begin := time.Now()
	c := bustest.ClusterWith(t, 3, func(i int, o *bus.EmbeddedOptions) {
		o.StoreCheckInterval = interval
		o.StoreMinFree = 4 << 20
		if i == 0 {
			o.DataDir = filepath.Join(mnt, "nats")
		}
	})
	full := c.Servers[0]
	ctx := testCtx(t)
	if err := bus.EnsureStreams(ctx, c.JS, bus.StreamOptions{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	pub := newPub(t, c.JS)
	acked := map[uint64]string{} // seq: id
	publish := func(i int) {
		t.Helper()
		id, data := diskFullMsg(i)
		ack, err := pub.Publish(ctx, subjStarted, id, "backup.started", data)
		if err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
		acked[ack.Sequence] = id
	}
	i := 0
	for ; i < 20; i++ {
		publish(i)
	}

	filler := filepath.Join(mnt, "filler")
	fill(t, filler, 0)
	// The other two servers keep a quorum: publishing goes on while the
	// full one shuts its JetStream down.
	for ; full.Server().JetStreamEnabled(); i++ {
		if i > 200 {
			t.Fatalf("server %s still has JetStream after %d messages on a full disk", full.Server().Name(), i)
		}
		publish(i)
	}
	t.Logf("%v: cluster ready, disk filled, %s shut its JetStream down", time.Since(begin), full.Server().Name())
	waitFor(t, 5*time.Second, "StoreErr reports JetStream shut down", func() bool { return full.StoreErr() != nil })
	if err := full.StoreErr(); !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("StoreErr = %v, want ErrUnavailable", err)
	}
	publish(i) // still stored by the other two
	i++
	time.Sleep(5 * interval)
	if n := full.StoreRestarts(); n != 0 {
		t.Fatalf("JetStream restarted %d times without free space", n)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 15*time.Second, "the full server's JetStream current again", func() bool {
		return full.StoreErr() == nil && full.Server().JetStreamIsCurrent()
	})
	t.Logf("%v: JetStream of %s current again %v after the space was freed", time.Since(begin), full.Server().Name(), took)
	if n := full.StoreRestarts(); n != 1 {
		t.Errorf("JetStream restarted %d times, want 1", n)
	}
	publish(i)

	// The server that was full catches up: it holds every acknowledged
	// message itself.
	var last uint64
	for seq := range acked {
		last = max(last, seq)
	}
	took = waitFor(t, 15*time.Second, "the full server holds every acknowledged message", func() bool {
		st := localStreamState(t, full, bus.StreamEvents)
		return st != nil && st.Msgs == uint64(len(acked)) && st.LastSeq == last
	})
	t.Logf("%v: %s holds all %d acknowledged messages %v later", time.Since(begin), full.Server().Name(), len(acked), took)
	st, err := c.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	for seq, id := range acked {
		m, err := st.GetMsg(ctx, seq)
		if err != nil || m.Header.Get(jetstream.MsgIDHeader) != id {
			t.Errorf("seq %d: %v, want %s", seq, err, id)
		}
	}
}

// localStreamState returns the state of stream name as server e stores
// it, nil when it has none.
func localStreamState(t *testing.T, e *bus.Embedded, name string) *server.StreamState {
	t.Helper()
	info, err := e.Server().Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		return nil
	}
	for _, a := range info.AccountDetails {
		for _, s := range a.Streams {
			if s.Name == name {
				return &s.State
			}
		}
	}
	return nil
}
