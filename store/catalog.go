package store

// The catalog file (one bbolt file, DATA/catalog.db), layout version 4:
//
//	meta/
//	|--> schema_version -> "4" (decimal ASCII; see schemaVersion)
//	applied/                              ids of events filed without a usable job id
//	|--> <event id> -> "-"
//	job_events/                           every filed event, the source of every derived record
//	|--> part(<job id>) part(<event id>) <type code: 1 byte> part(<agent>) <stream seq: 8 bytes> -> <event JSON>
//	                                 or -> (empty: a tombstone of layout 2, the event was moved to the poison records)
//	progress/                             newest backup.progress per job, by (attempt, seq, time, id)
//	|--> <job id> -> Progress (JSON)
//	jobs/                                 derived from job_events and progress
//	|--> <job id> -> backup.Job (JSON; its id is "job_id" since layout 4, "id" before)
//	jobs_by_time/                         index for Jobs, newest last
//	|--> <created_at: 12 bytes><job id> -> (empty)
//	links/                                chain index: one key per completed job
//	|--> part(<vm uuid>) part(<repository>) <completed time: 12 bytes> <job id> -> (empty)
//	poison/                               events kept for inspection, never applied
//	|--> job/part(<job id>) part(<event id>) part(<agent>) -> PoisonRecord (JSON)  (a filed event its job's re-derivation refuses)
//	|--> event/part(<job id>) part(<event id>) part(<agent>) -> PoisonRecord (JSON)  (an event Apply refused unfiled, or RecordPoison with an event id)
//	|--> seq/<subject>/<seq: 20 digits> -> PoisonRecord (JSON)  (RecordPoison with a stream sequence)
//	|--> raw/<sha256 hex>          -> PoisonRecord (JSON)  (none of these)
//
// part(s) is s with every 0x00 written as 0x00 0xff, then 0x00 0x01 (see
// appendPart): one job's events, one job's poison records, or one disk's
// chain, are one key range.
// The type code (eventNames) is in the key so that the value is the JSON
// alone: the payload the event was decoded from, filed without a copy.
// The agent that published the event (Source.Agent; "" for a legacy event)
// and the stream sequence it was stored at (Source.Seq, big-endian; 0 when
// unknown) end the key. An event's identity is (job id, event id, agent):
// a job's range holds one key per identity, the one of the lowest sequence
// (Apply). The keys of a job's range are also its filed event ids
// (progress excepted) and their sequences, which is all the consistency
// rules need besides the events: Apply reads the range anyway to
// re-derive the job, so a duplicate costs no lookup of its own, and a new
// event one Put.
// Times in keys are 8 bytes big-endian seconds since 1970 with the sign bit
// flipped, then 4 bytes big-endian nanoseconds, so byte order is time order.
//
// A disk's chain is the VM's completed jobs in the repository that have
// the disk, in (time, job id) order; each Link is derived from its job's
// record when read (linksOf), so a batch adds one index key per completed
// job, next to the VM's last one, and nothing per disk.
// Everything under jobs/, jobs_by_time/ and links/ is a pure function of
// job_events/ and progress/: each Apply re-derives the jobs it touched from
// their whole event set, which is what makes the catalog order-tolerant.
// So are the poison records of a job's events (poison/job/): job_events
// keeps every filed event, applied or not, and each re-derivation decides
// which are poison (consistency.go), writes their records and removes
// those of events that are now applied. The job record lists its poisoned
// event ids (Job.PoisonedEventIDs), so a job without any needs no look at
// poison/.
//
// Version 2 had the keys of job_events without agent and sequence (they
// read as agent "" and sequence 0, unknown, in version 3), kept poison
// records by event id alone (id/<event id>), and moved a completed event
// that broke invariant 2 out of job_events (the tombstones above); it had
// no consistency rules beyond invariant 2. Open migrates a version 2 file
// (migrate): it moves every key of job_events to its version 3 key, and
// every id/ poison record to its version 3 key (a tombstone's to job/,
// the others to event/), then re-derives every job under the rules of
// version 3. An event version 2 applied that the rules refuse, such as a
// forged backup.completed, becomes poison and leaves its chain. Version 3
// files written before the stream sequence was in the key (never
// released) are not migrated.
//
// Version 1 kept the events in one nested bucket per job (events/<job
// id>/<event id>), every applied id in applied/<event id> -> <job id>, and
// the links in nested buckets per VM, repository and disk
// (chains/<vm>/<repository>/<disk key>/<time><job id> -> Link JSON). A
// commit rewrote at least one page per job and per chain it touched, and
// each event cost three lookups; Open migrates a version 1 file to version
// 2 and then to 3 (migrate).

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// schemaVersion is the layout version this build writes. Bump it and add a
// migration in migrate when the layout changes.
const schemaVersion = 4

// pageSize is the bbolt page size of a new file (an existing file keeps
// its own). 8 KiB instead of the OS page: a batch spills half the nodes
// and Apply ran 10-20 % faster at 1024-event batches, while a commit of a
// single job took no longer (measured with store's BenchmarkApply and a
// page-count probe; 16 KiB gave no more).
const pageSize = 8192

// initialMmapSize is the address space bbolt maps at Open (not memory:
// pages are read in as used). While the file stays under it, bbolt never
// remaps, which would copy every node the writing transaction holds and
// block readers until it is done; etcd maps 10 GiB for the same reason.
const initialMmapSize = 1 << 30

// DefaultTimeout is how long Open waits for the file lock by default.
const DefaultTimeout = 5 * time.Second

var (
	bucketMeta       = []byte("meta")
	bucketApplied    = []byte("applied")
	bucketEvents     = []byte("job_events")
	bucketProgress   = []byte("progress")
	bucketJobs       = []byte("jobs")
	bucketJobsByTime = []byte("jobs_by_time")
	bucketLinks      = []byte("links")
	bucketPoison     = []byte("poison")

	keySchemaVersion = []byte("schema_version")

	topBuckets = [][]byte{
		bucketMeta, bucketApplied, bucketEvents, bucketProgress,
		bucketJobs, bucketJobsByTime, bucketLinks, bucketPoison,
	}
)

// Options configure Open. The zero value (or nil) gives the defaults.
type Options struct {
	// Timeout is how long Open waits for the file lock when another
	// process holds it. Zero means DefaultTimeout (5 s); negative means
	// wait forever. On timeout Open returns ErrLocked.
	Timeout time.Duration

	// Logger receives warnings, such as a completed event moved to the
	// poison records after the fact. Default: zerolog's zero Logger, which
	// discards everything.
	Logger zerolog.Logger

	// Now returns the time stamped on new poison records. Default time.Now.
	Now func() time.Time
}

// Catalog is the bbolt catalog. All methods are safe for concurrent use:
// bbolt runs one writing transaction at a time and reads never block.
type Catalog struct {
	db  *bolt.DB
	log zerolog.Logger
	now func() time.Time
}

// Open opens or creates the catalog file at path (its directory is created
// if missing). Every write is synced to disk before Apply or RecordPoison
// returns (bbolt NoSync is off). It returns ErrLocked when another process
// holds the file and ErrSchemaVersion when the file is from a newer build.
func Open(path string, opts *Options) (*Catalog, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	timeout := o.Timeout
	switch {
	case timeout == 0:
		timeout = DefaultTimeout
	case timeout < 0:
		timeout = 0 // bbolt: wait forever
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         timeout,
		NoSync:          false,
		FreelistType:    bolt.FreelistMapType,
		PageSize:        pageSize,
		InitialMmapSize: initialMmapSize,
		// The freelist is not written at each commit but rebuilt by Open
		// from the pages (as etcd does): a one-job commit wrote 12 pages,
		// now 11, and took ~15 % less time (store's page-count probe).
		NoFreelistSync: true,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open catalog %s after %s: %w", path, timeout, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	c := &Catalog{db: db, log: o.Logger, now: o.Now}
	if err := db.Update(c.initBuckets); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	return c, nil
}

// initBuckets creates the top-level buckets, writes the schema version of a
// new file, migrates a file of an older layout and refuses one from a newer
// build. All in Open's one transaction: a migration that fails leaves the
// file as it was.
func (c *Catalog) initBuckets(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketMeta, err)
	}
	v := schemaVersion
	if raw := meta.Get(keySchemaVersion); raw != nil {
		if v, err = strconv.Atoi(string(raw)); err != nil {
			return fmt.Errorf("read schema version %q: %w", raw, ErrSchemaVersion)
		}
	}
	if v > schemaVersion {
		return fmt.Errorf("schema version %d, this build knows up to %d: %w", v, schemaVersion, ErrSchemaVersion)
	}
	for _, name := range topBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	if err := migrate(tx, v, c.log, c.now); err != nil {
		return err
	}
	return meta.Put(keySchemaVersion, []byte(strconv.Itoa(schemaVersion)))
}

// Close closes the file, waiting for running transactions to finish.
// Calls after Close return errors (bbolt's "database not open").
func (c *Catalog) Close() error {
	if err := c.db.Close(); err != nil {
		return fmt.Errorf("close catalog %s: %w", c.db.Path(), err)
	}
	return nil
}

// Path returns the file's path.
func (c *Catalog) Path() string { return c.db.Path() }

// Check runs bbolt's consistency check over the whole file and returns
// every inconsistency found (at most ten, joined), or nil.
func (c *Catalog) Check() error {
	return c.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() { // drain fully: Check runs a goroutine
			if len(errs) < 10 {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("check catalog %s: %w", c.db.Path(), errors.Join(errs...))
		}
		return nil
	})
}
