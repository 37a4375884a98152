// Package manifest is the format of a backup point's manifest: the SHA-256
// digest of every fixed-size chunk of a disk as it was at that point, taken
// while the backup read the snapshot. Verification re-reads the point through
// its QCOW2 chain and compares chunk by chunk; `restore --verify` compares a
// restored disk the same way.
//
// It is a leaf: it knows files and bytes only, never NATS, the catalog,
// VMware or NBD. The copier, the agent, the hub and the CLI share it.
//
// # Basics
//
// A disk of capacity C has ceil(C / ChunkSize) chunks; the last one is
// short when C is not a multiple of ChunkSize. A chunk's digest is the
// SHA-256 of its bytes (the short chunk's of its own length), so a chunk of
// zeroes has ZeroDigest(length).
//
//	m := manifest.New(capacity)                // every chunk zero
//	m.Set(i, manifest.Sum(chunk))               // chunks that were read
//	sum, err := manifest.Write(path, m)         // atomically; sum is the file's SHA-256
//	m, sum, err = manifest.Read(path)
//	i, ok := m.FirstMismatch(other)             // the first chunk that differs
//
// The file is binary, big-endian: a 32-byte header (Magic, Version as
// uint32, the chunk size as uint32, the capacity as uint64, the number of
// digests as uint64) followed by the 32-byte digests in chunk order.
// A 1 TiB disk's manifest is 32 MiB.
//
// # Caveats
//
// Write replaces the file through a synced temporary file beside it
// (".<name>.*.tmp"), renames it and syncs the directory, so a crash leaves
// the old file or the new one, never half of one, and a temporary file at
// worst. Read refuses anything that is not a complete manifest of this
// version: a wrong magic (ErrBadMagic), another version (ErrVersion), a
// header whose sizes disagree, or a short or long file (ErrCorrupt).
package manifest
