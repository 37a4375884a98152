package hub

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/repository"
)

// startManifest returns the manifest a new target starts from: every chunk
// zero for a full (the fresh QCOW2 reads as zeroes where the agent writes
// nothing), the base's manifest for an incremental. A base whose manifest
// is missing, unreadable or not the one the agent names
// (BaseManifestSHA256, when set) answers CodeBaseUnverified: the agent
// takes a full.
func (s *RepoService) startManifest(r *repository.Repo, req repoapi.OpenRequest) (*manifest.Manifest, error) {
	if req.BackingJobID == "" {
		return manifest.New(req.CapacityBytes), nil
	}
	path, err := r.ManifestPath(req.VMUUID, req.DiskKey, req.BackingJobID)
	if err != nil {
		return nil, classify(err)
	}
	m, sum, err := manifest.Read(path)
	switch {
	case err != nil:
		return nil, coded(repoapi.CodeBaseUnverified, fmt.Errorf("base %s of job %s disk %d: %w", req.BackingJobID, req.JobID, req.DiskKey, err))
	case req.BaseManifestSHA256 != "" && sum.String() != req.BaseManifestSHA256:
		return nil, coded(repoapi.CodeBaseUnverified, fmt.Errorf("base %s of job %s disk %d: manifest %s has SHA-256 %s, the catalog says %s",
			req.BackingJobID, req.JobID, req.DiskKey, path, sum, req.BaseManifestSHA256))
	case m.Capacity != req.CapacityBytes || m.ChunkSize != manifest.ChunkSize:
		return nil, coded(repoapi.CodeBaseUnverified, fmt.Errorf("base %s of job %s disk %d: manifest of %d bytes in chunks of %d, the disk has %d",
			req.BackingJobID, req.JobID, req.DiskKey, m.Capacity, m.ChunkSize, req.CapacityBytes))
	}
	return m, nil
}

// targetDigests records digests of chunks the agent read for its open
// target.
func (s *RepoService) targetDigests(_ context.Context, data []byte) (any, error) {
	var req repoapi.DigestsRequest
	if _, err := s.decodeRepo(data, &req, &req.Repository); err != nil {
		return nil, err
	}
	if len(req.Entries) > repoapi.MaxDigests {
		return nil, coded(repoapi.CodeBadRequest, fmt.Errorf("%d digests for job %s disk %d: at most %d per request", len(req.Entries), req.JobID, req.DiskKey, repoapi.MaxDigests))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.targets[req.TargetRef]
	if !ok || t.man == nil {
		return nil, coded(repoapi.CodeNotFound, fmt.Errorf("no open target for job %s disk %d of vm %s", req.JobID, req.DiskKey, req.VMUUID))
	}
	for _, e := range req.Entries {
		if e.Index < 0 || e.Index >= int64(len(t.man.Digests)) {
			return nil, coded(repoapi.CodeBadRequest, fmt.Errorf("digest of chunk %d for job %s disk %d: the disk has %d chunks", e.Index, req.JobID, req.DiskKey, len(t.man.Digests)))
		}
	}
	for _, e := range req.Entries {
		t.man.Digests[e.Index] = e.Digest
	}
	return struct{}{}, nil
}

// manifestPage answers a page of a completed backup's manifest.
func (s *RepoService) manifestPage(_ context.Context, data []byte) (any, error) {
	var req repoapi.ManifestRequest
	r, err := s.decodeRepo(data, &req, &req.Repository)
	if err != nil {
		return nil, err
	}
	path, err := r.ManifestPath(req.VMUUID, req.DiskKey, req.JobID)
	if err != nil {
		return nil, classify(err)
	}
	m, sum, err := manifest.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, coded(repoapi.CodeNotFound, fmt.Errorf("job %s disk %d has no manifest: %w", req.JobID, req.DiskKey, err))
	}
	if err != nil {
		return nil, err
	}
	limit := req.Limit
	if limit <= 0 || limit > repoapi.MaxDigests {
		limit = repoapi.MaxDigests
	}
	n := int64(len(m.Digests))
	if req.Offset < 0 || req.Offset > n {
		return nil, coded(repoapi.CodeBadRequest, fmt.Errorf("manifest of job %s disk %d: offset %d of %d chunks", req.JobID, req.DiskKey, req.Offset, n))
	}
	end := min(n, req.Offset+int64(limit))
	return repoapi.ManifestReply{ChunkSize: m.ChunkSize, Capacity: m.Capacity, Chunks: n, SHA256: sum.String(), Offset: req.Offset,
		Digests: m.Digests[req.Offset:end]}, nil
}
