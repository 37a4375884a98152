// Command catalog-v2 wrote testdata/catalog-v2.db: a catalog of layout
// version 2 holding a legitimate completed job, a forged completed of that
// job (a higher attempt with every change id bumped, which layout 2 made
// the chain head), a forged completed of a new job without any started,
// a completed that a later started moved to the poison records (a layout 2
// tombstone), and another VM's job. It only builds at commit 9c62275 (the
// last build of layout 2, with store.WithPayload); its events are those of
// v2Batches in migrate_test.go, which TestMigrateV2 rebuilds:
//
//	git worktree add --detach /tmp/store-v2 9c62275
//	mkdir /tmp/store-v2/gen && cp store/testdata/catalog-v2/main.go /tmp/store-v2/gen/
//	(cd /tmp/store-v2 && go run ./gen /tmp/catalog-v2.db)
//	cp /tmp/catalog-v2.db store/testdata/ && git worktree remove --force /tmp/store-v2
//
// The file is first created with 4 KiB pages (store keeps an existing
// file's page size) and cut at the end to its used pages (bbolt grows a
// file by 16 MiB past them), to keep it small.
package main

import (
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

var (
	vm1 = schemas.VMRef{Name: "pgtest1", UUID: "50123456-aaaa-bbbb-cccc-000000000001", Moref: "vm-101"}
	vm2 = schemas.VMRef{Name: "web2", UUID: "50123456-aaaa-bbbb-cccc-000000000002", Moref: "vm-102"}

	diskA = schemas.DiskRef{Key: 2000, UUID: "6000c291-0000-0000-0000-00000000000a", CapacityBytes: 8 << 30}
	diskB = schemas.DiskRef{Key: 2001, UUID: "6000c291-0000-0000-0000-00000000000b", CapacityBytes: 16 << 30}
)

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: catalog-v2 FILE")
	}
	path := os.Args[1]
	db, err := bolt.Open(path, 0o600, &bolt.Options{PageSize: 4096})
	if err != nil {
		log.Fatal(err)
	}
	if err := db.Close(); err != nil {
		log.Fatal(err)
	}
	c, err := store.Open(path, &store.Options{Now: func() time.Time { return t0 }})
	if err != nil {
		log.Fatal(err)
	}
	for i, batch := range v2Batches() {
		evs := make([]schemas.Event, len(batch))
		for k, ev := range batch {
			data, err := schemas.Marshal(ev)
			if err != nil {
				log.Fatal(err)
			}
			evs[k] = store.WithPayload(ev, data)
		}
		errs, err := c.Apply(evs...)
		if err != nil {
			log.Fatal(err)
		}
		for k, err := range errs {
			if err != nil {
				fmt.Printf("batch %d event %d: %v\n", i, k, err)
			}
		}
	}
	for _, vm := range []schemas.VMRef{vm1, vm2} {
		head, err := c.ChainHead(vm.UUID, diskA.Key, "default")
		fmt.Printf("chain head of %s disk %d: %s %s %v\n", vm.Name, diskA.Key, head.JobID, head.ChangeID, err)
	}
	if err := c.Close(); err != nil {
		log.Fatal(err)
	}

	db, err = bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		log.Fatal(err)
	}
	var used int64
	err = db.View(func(tx *bolt.Tx) error {
		used = tx.Size()
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := db.Close(); err != nil {
		log.Fatal(err)
	}
	if err := os.Truncate(path, used); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %d bytes\n", path, used)
}

// v2Batches is v2Batches of migrate_test.go.
func v2Batches() [][]schemas.Event {
	legit := spec{job: "job-legit", disks: []schemas.DiskRef{diskA, diskB}}
	other := spec{job: "job-other", vm: vm2, at: t0.Add(10 * time.Minute)}
	incomplete := spec{job: "job-incomplete", vm: vm2, disks: []schemas.DiskRef{diskA, diskB}, at: t0.Add(20 * time.Minute)}
	forged := spec{job: "job-forged", disks: []schemas.DiskRef{diskA, diskB}, at: t0.Add(time.Hour)}
	missing := incomplete.completed()
	missing.Disks = missing.Disks[:1]
	return [][]schemas.Event{
		legit.run(),
		other.run(),
		{missing},
		{incomplete.started(), incomplete.changeIDEvent(0)},
		{forgedCompleted(legit, 2)},
		{forgedCompleted(forged, 1)},
	}
}

// What follows copies the event builders of store's helpers_test.go.

func bumped(changeID string) string {
	base, seq, _ := strings.Cut(changeID, "/")
	return fmt.Sprintf("%s/%s0", base, seq)
}

func forgedCompleted(s spec, attempt int) *schemas.Completed {
	c := s.completed()
	c.Attempt = attempt
	c.ID = eventID(s.job, attempt, schemas.NameCompleted, 0, 0)
	for i := range c.Disks {
		c.Disks[i].ChangeID = bumped(c.Disks[i].ChangeID)
	}
	return c
}

func eventID(job string, attempt int, name string, disk int32, seq int64) string {
	return fmt.Sprintf("%s.%d.%s.%d.%d", job, attempt, strings.TrimPrefix(name, "backup."), disk, seq)
}

type spec struct {
	job     string
	vm      schemas.VMRef
	repo    string
	attempt int
	at      time.Time
	disks   []schemas.DiskRef
	typ     string
	backing string
}

func (s spec) withDefaults() spec {
	if s.vm == (schemas.VMRef{}) {
		s.vm = vm1
	}
	if s.repo == "" {
		s.repo = "default"
	}
	if s.attempt == 0 {
		s.attempt = 1
	}
	if s.at.IsZero() {
		s.at = t0
	}
	if s.disks == nil {
		s.disks = []schemas.DiskRef{diskA}
	}
	if s.typ == "" {
		s.typ = schemas.TypeFull
	}
	return s
}

func (s spec) header(name string, disk int32, seq int64, at time.Time) schemas.Header {
	s = s.withDefaults()
	return schemas.Header{
		Schema:  schemas.SchemaRef{Name: name, Version: schemas.Version},
		ID:      eventID(s.job, s.attempt, name, disk, seq),
		Time:    at,
		JobID:   s.job,
		Attempt: s.attempt,
		VM:      s.vm,
	}
}

func (s spec) target(d schemas.DiskRef) string {
	s = s.withDefaults()
	return fmt.Sprintf("%s/%d/%s.qcow2", s.vm.UUID, d.Key, s.job)
}

func (s spec) changeID(d schemas.DiskRef) string {
	s = s.withDefaults()
	return fmt.Sprintf("52 de 4c 0b 6f 37 1f 3d-a2 5a 6b 2d a2 0d %02x f7/%d", d.Key%256, len(s.job)*1000+s.attempt*10+int(d.Key%7))
}

func (s spec) reason() string {
	if s.typ == schemas.TypeIncremental {
		return schemas.ReasonBaseUsable
	}
	return schemas.ReasonNoBase
}

func (s spec) started() *schemas.Started {
	s = s.withDefaults()
	ev := &schemas.Started{
		Header:        s.header(schemas.NameStarted, 0, 0, s.at),
		Repository:    s.repo,
		RequestedType: schemas.TypeAuto,
		RequestedBy:   "test",
		Snapshot:      "sendense-" + s.job,
	}
	for _, d := range s.disks {
		ev.Disks = append(ev.Disks, schemas.DiskPlan{
			Disk: d, BackupType: s.typ, Reason: s.reason(), Backing: s.backing, Target: s.target(d),
		})
	}
	return ev
}

func (s spec) changeIDEvent(i int) *schemas.ChangeID {
	s = s.withDefaults()
	d := s.disks[i]
	return &schemas.ChangeID{
		Header:       s.header(schemas.NameChangeID, d.Key, 0, s.at.Add(time.Duration(i+1)*time.Second)),
		Repository:   s.repo,
		Disk:         d,
		ChangeID:     s.changeID(d),
		BackupType:   s.typ,
		BytesRead:    int64(i+1) << 20,
		BytesWritten: int64(i+1) << 19,
		Target:       s.target(d),
	}
}

func (s spec) completedAt() time.Time {
	s = s.withDefaults()
	return s.at.Add(time.Duration(len(s.disks)+1) * time.Second)
}

func (s spec) completed() *schemas.Completed {
	s = s.withDefaults()
	ev := &schemas.Completed{
		Header:     s.header(schemas.NameCompleted, 0, 0, s.completedAt()),
		Repository: s.repo,
	}
	for i, d := range s.disks {
		ev.Disks = append(ev.Disks, schemas.DiskResult{
			Disk: d, ChangeID: s.changeID(d), BackupType: s.typ, Reason: s.reason(),
			BytesRead: int64(i+1) << 20, BytesWritten: int64(i+1) << 19,
			Target: s.target(d), Backing: s.backing, ActualSizeBytes: int64(i+1) << 18,
		})
	}
	return ev
}

func (s spec) run() []schemas.Event {
	s = s.withDefaults()
	evs := []schemas.Event{s.started()}
	for i := range s.disks {
		evs = append(evs, s.changeIDEvent(i))
	}
	return append(evs, s.completed())
}
