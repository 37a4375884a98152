package store

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Buckets of layout version 1, which migrate moves into the flat ones.
var (
	bucketEventsV1 = []byte("events")
	bucketChainsV1 = []byte("chains")
)

// migrate upgrades a file of layout version from to schemaVersion, inside
// Open's transaction. The top-level buckets of schemaVersion exist already.
func migrate(tx *bolt.Tx, from int) error {
	switch from {
	case schemaVersion:
		return nil
	case 1:
		if err := migrateEventsV1(tx); err != nil {
			return fmt.Errorf("migrate from schema version 1: %w", err)
		}
		if err := migrateChainsV1(tx); err != nil {
			return fmt.Errorf("migrate from schema version 1: %w", err)
		}
		if err := migrateAppliedV1(tx); err != nil {
			return fmt.Errorf("migrate from schema version 1: %w", err)
		}
		return nil
	}
	return fmt.Errorf("migrate from schema version %d: %w", from, ErrSchemaVersion)
}

// migrateEventsV1 moves events/<job id>/<event id> -> <name> 0x00 <JSON>
// to job_events/part(<job id>)part(<event id>)<type code> -> <JSON>.
func migrateEventsV1(tx *bolt.Tx) error {
	old := tx.Bucket(bucketEventsV1)
	if old == nil {
		return nil
	}
	dst := tx.Bucket(bucketEvents)
	err := old.ForEachBucket(func(job []byte) error {
		return old.Bucket(job).ForEach(func(id, v []byte) error {
			name, js, ok := bytes.Cut(v, []byte{0})
			code := eventCode(string(name))
			if !ok || code == 0 {
				return fmt.Errorf("event %s of job %s has no known type name", id, job)
			}
			if err := dst.Put(eventKey(string(job), string(id), code), js); err != nil {
				return fmt.Errorf("move event %s of job %s: %w", id, job, err)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	return tx.DeleteBucket(bucketEventsV1)
}

// migrateChainsV1 turns chains/<vm>/<repository>/<disk key>/<time><job id>
// (one key per disk, the Link JSON as value) into the index key
// links/part(<vm>)part(<repository>)<time><job id> (one per completed job;
// version 2 reads the links from the job record).
func migrateChainsV1(tx *bolt.Tx) error {
	root := tx.Bucket(bucketChainsV1)
	if root == nil {
		return nil
	}
	dst := tx.Bucket(bucketLinks)
	err := root.ForEachBucket(func(vm []byte) error {
		vb := root.Bucket(vm)
		return vb.ForEachBucket(func(repo []byte) error {
			rb := vb.Bucket(repo)
			prefix := repoPrefix(string(vm), string(repo))
			return rb.ForEachBucket(func(disk []byte) error {
				return rb.Bucket(disk).ForEach(func(k, _ []byte) error {
					if err := dst.Put(append(prefix[:len(prefix):len(prefix)], k...), nil); err != nil {
						return fmt.Errorf("move link %x of vm %s disk %d: %w", k, vm, decodeDiskKey(disk), err)
					}
					return nil
				})
			})
		})
	})
	if err != nil {
		return err
	}
	return tx.DeleteBucket(bucketChainsV1)
}

// migrateAppliedV1 moves the applied ids of events with a job id (version
// 1 kept every applied id in applied/<event id> -> <job id>) into the
// job's range of job_events: an id whose event is stored there needs
// nothing more, one whose event was moved to the poison records gets a
// tombstone (an empty value, type code 0). Ids recorded without a job id
// ("-") stay.
func migrateAppliedV1(tx *bolt.Tx) error {
	applied := tx.Bucket(bucketApplied)
	events := tx.Bucket(bucketEvents)
	var moved [][]byte
	err := applied.ForEach(func(id, job []byte) error {
		if string(job) == "-" {
			return nil
		}
		k := eventKey(string(job), string(id), 0)
		if got, _ := events.Cursor().Seek(k[:len(k)-1]); !bytes.HasPrefix(got, k[:len(k)-1]) {
			if err := events.Put(k, nil); err != nil {
				return fmt.Errorf("record applied event %s of job %s: %w", id, job, err)
			}
		}
		moved = append(moved, id)
		return nil
	})
	if err != nil {
		return err
	}
	for _, id := range moved {
		if err := applied.Delete(id); err != nil {
			return fmt.Errorf("move applied event %s: %w", id, err)
		}
	}
	return nil
}
