package repoapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/manifest"
)

// Sentinel errors matched (errors.Is) by the *bus.ServiceError of the
// repository service, by the code it answered.
var (
	// ErrUnknownRepository: no repository of that name (CodeUnknownRepository).
	ErrUnknownRepository = errors.New("unknown repository")
	// ErrBaseMissing: the incremental's base file is missing or unreadable
	// (CodeBaseMissing).
	ErrBaseMissing = errors.New("base backup missing")
	// ErrBaseInvalid: the base's backing chain does not check (CodeBaseInvalid).
	ErrBaseInvalid = errors.New("base backup invalid")
	// ErrBaseUnverified: the base has no manifest, or not the expected one
	// (CodeBaseUnverified).
	ErrBaseUnverified = errors.New("base backup unverified")
	// ErrNotFound: no such open target, backup, manifest, point, export or
	// VM backup (CodeNotFound).
	ErrNotFound = errors.New("not found")
	// ErrRepositoryFull: no space left in the repository (CodeRepositoryFull).
	ErrRepositoryFull = errors.New("repository full")
	// ErrConflict: the target exists for a completed job, or is in use
	// (CodeConflict).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the hub cannot decide safely now (CodeUnavailable).
	ErrUnavailable = errors.New("repository service unavailable")
	// ErrBusy: the VM's chains cannot change now: a backup holds its
	// lease, a restore of it is open or a prune runs (CodeBusy).
	ErrBusy = errors.New("vm busy")
	// ErrBadRequest: the request cannot be served as asked (CodeBadRequest).
	ErrBadRequest = errors.New("bad request")
)

// sentinels maps the service's codes to the errors above.
var sentinels = map[string]error{
	CodeUnknownRepository: ErrUnknownRepository,
	CodeBaseMissing:       ErrBaseMissing,
	CodeBaseInvalid:       ErrBaseInvalid,
	CodeBaseUnverified:    ErrBaseUnverified,
	CodeNotFound:          ErrNotFound,
	CodeRepositoryFull:    ErrRepositoryFull,
	CodeConflict:          ErrConflict,
	CodeUnavailable:       ErrUnavailable,
	CodeBusy:              ErrBusy,
	CodeBadRequest:        ErrBadRequest,
}

// Client calls the repository service. Safe for concurrent use.
type Client struct {
	nc *nats.Conn
	// Timeout bounds each call, under the caller's context (bus.Request).
	// Opening a target starts qemu-nbd, so the default is generous: 60 s.
	Timeout time.Duration
}

// NewClient returns a client on nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc, Timeout: 60 * time.Second} }

func (c *Client) call(ctx context.Context, subject string, req, out any) error {
	return bus.Request(ctx, c.nc, subject, req, out, c.Timeout, sentinels)
}

// Info checks that a repository exists (errors.Is ErrUnknownRepository when not).
func (c *Client) Info(ctx context.Context, repo string) (InfoReply, error) {
	var out InfoReply
	err := c.call(ctx, SubjectInfo, InfoRequest{Repository: repo}, &out)
	return out, err
}

// Open creates and exports a target.
func (c *Client) Open(ctx context.Context, req OpenRequest) (OpenReply, error) {
	var out OpenReply
	err := c.call(ctx, SubjectTargetOpen, req, &out)
	return out, err
}

// Close stops a target's export and reports its actual size.
func (c *Client) Close(ctx context.Context, ref TargetRef) (CloseReply, error) {
	var out CloseReply
	err := c.call(ctx, SubjectTargetClose, ref, &out)
	return out, err
}

// Abort stops a target's export and removes its partial file.
func (c *Client) Abort(ctx context.Context, ref TargetRef) error {
	return c.call(ctx, SubjectTargetAbort, ref, nil)
}

// Digests hands digests of chunks read to an open target, in requests of
// at most MaxDigests entries.
func (c *Client) Digests(ctx context.Context, ref TargetRef, entries []manifest.Entry) error {
	for len(entries) > 0 {
		n := min(len(entries), MaxDigests)
		if err := c.call(ctx, SubjectTargetDigests, DigestsRequest{TargetRef: ref, Entries: entries[:n]}, nil); err != nil {
			return err
		}
		entries = entries[n:]
	}
	return nil
}

// Verify verifies completed backups (SubjectVerify). Reading every point
// takes time: the service allows itself VerifyTimeout, and so does the
// client (under ctx).
func (c *Client) Verify(ctx context.Context, req VerifyRequest) (VerifyReply, error) {
	var out VerifyReply
	err := bus.Request(ctx, c.nc, SubjectVerify, req, &out, VerifyTimeout, sentinels)
	return out, err
}

// Manifest reads a completed backup's whole manifest page by page and
// checks it against the SHA-256 the service reports for the file.
func (c *Client) Manifest(ctx context.Context, ref TargetRef) (*manifest.Manifest, manifest.Digest, error) {
	var m *manifest.Manifest
	var sum string
	for off := int64(0); ; {
		var page ManifestReply
		if err := c.call(ctx, SubjectManifest, ManifestRequest{TargetRef: ref, Offset: off}, &page); err != nil {
			return nil, manifest.Digest{}, err
		}
		if m == nil {
			m = &manifest.Manifest{ChunkSize: page.ChunkSize, Capacity: page.Capacity, Digests: make([]manifest.Digest, 0, page.Chunks)}
			sum = page.SHA256
		}
		if page.SHA256 != sum || page.Offset != off {
			return nil, manifest.Digest{}, fmt.Errorf("manifest of job %s disk %d changed while read", ref.JobID, ref.DiskKey)
		}
		m.Digests = append(m.Digests, page.Digests...)
		off += int64(len(page.Digests))
		if off >= page.Chunks || len(page.Digests) == 0 {
			break
		}
	}
	b, err := m.MarshalBinary()
	if err != nil {
		return nil, manifest.Digest{}, fmt.Errorf("manifest of job %s disk %d: %w", ref.JobID, ref.DiskKey, err)
	}
	got := manifest.Sum(b)
	if got.String() != sum {
		return nil, manifest.Digest{}, fmt.Errorf("manifest of job %s disk %d: pages hash to %s, the file to %s", ref.JobID, ref.DiskKey, got, sum)
	}
	return m, got, nil
}

// OpenRestore exports one chain point read-only.
func (c *Client) OpenRestore(ctx context.Context, ref TargetRef) (RestoreOpenReply, error) {
	var out RestoreOpenReply
	err := c.call(ctx, SubjectRestoreOpen, ref, &out)
	return out, err
}

// CloseRestore releases a restore export.
func (c *Client) CloseRestore(ctx context.Context, exportID string) error {
	return c.call(ctx, SubjectRestoreClose, RestoreCloseRequest{ExportID: exportID}, nil)
}

// Forget applies a retention policy (see SubjectForget). Only admin may
// call it. Merging and rebasing read and write whole images, so give it
// time: the service allows itself 30 minutes.
func (c *Client) Forget(ctx context.Context, req ForgetRequest) (ForgetReply, error) {
	var out ForgetReply
	err := c.call(ctx, SubjectForget, req, &out)
	return out, err
}

// Check checks repositories against the catalog and removes orphans unless
// req.DryRun (see SubjectCheck). Only admin may call it. The check lists
// every file, so give it time: the service allows itself 2 minutes.
func (c *Client) Check(ctx context.Context, req CheckRequest) (CheckReply, error) {
	var out CheckReply
	err := c.call(ctx, SubjectCheck, req, &out)
	return out, err
}
