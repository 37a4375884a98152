package simctl

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/testbed"
)

// Subjects of the control service.
const (
	Group           = bus.TestbedService
	SubjectVMs      = Group + ".vms"
	SubjectWrite    = Group + ".write"
	SubjectResetCBT = Group + ".cbt.reset"
	SubjectResize   = Group + ".resize"
	SubjectFrozen   = Group + ".frozen"
	SubjectVMCreate = Group + ".vm.create"
	SubjectVMDelete = Group + ".vm.delete"
)

// CreateVMRequest asks for new VMs: one VM (VM), or the VMs of an
// inventory spec such as "scale:vms=10,disks=2,size=1GiB,fill=16MiB"
// (Inventory; the system package's Inventory parses it, passed to Serve).
type CreateVMRequest struct {
	VM        *testbed.VMSpec `json:"vm,omitempty"`
	Inventory string          `json:"inventory,omitempty"`
}

// CreateVMReply describes the VMs created.
type CreateVMReply struct {
	VMs []testbed.VMInfo `json:"vms"`
}

// DeleteVMRequest names a VM to delete (name, instance UUID or moref).
type DeleteVMRequest struct {
	VM string `json:"vm"`
}

// InventoryFunc turns an inventory spec into VM specs.
type InventoryFunc func(spec string) ([]testbed.VMSpec, error)

// WriteRequest asks for random guest writes over Percent of each disk's
// capacity (or only DiskKey's when set).
type WriteRequest struct {
	VM      string  `json:"vm"`
	Percent float64 `json:"percent"`
	DiskKey int32   `json:"disk_key,omitempty"`
	Seed    int64   `json:"seed,omitempty"`
}

// WriteReply reports the bytes written per disk.
type WriteReply struct {
	Disks map[int32]int64 `json:"disks"`
}

// DiskRequest names one disk; CapacityBytes is for resize.
type DiskRequest struct {
	VM            string `json:"vm"`
	DiskKey       int32  `json:"disk_key"`
	CapacityBytes int64  `json:"capacity_bytes,omitempty"`
}

// FrozenRequest asks for the image frozen by a snapshot.
type FrozenRequest struct {
	VM       string `json:"vm"`
	Snapshot string `json:"snapshot"` // name, sendense-<job_id>
	DiskKey  int32  `json:"disk_key"`
	// Checksum asks for SHA256 and Size of the image (it reads the whole
	// image), for a caller on another host that cannot open Path.
	Checksum bool `json:"checksum,omitempty"`
}

// FrozenReply gives the frozen image (a path on the simulated vCenter's
// host) and the change id stamped on it.
type FrozenReply struct {
	Path     string `json:"path"`
	ChangeID string `json:"change_id"`
	SHA256   string `json:"sha256,omitempty"` // hex, when asked
	Size     int64  `json:"size,omitempty"`   // bytes, when asked
}

// Serve registers the service on nc and returns once the server has its
// subscriptions; stop it with the returned service.
//
// inventory, when not nil, parses CreateVMRequest.Inventory.
func Serve(nc *nats.Conn, tb *testbed.Testbed, log zerolog.Logger, inventory InventoryFunc) (micro.Service, error) {
	svc, err := micro.AddService(nc, micro.Config{Name: "sendense-testbed", Version: "1.0.0",
		Description: "control of the simulated vCenter"})
	if err != nil {
		return nil, fmt.Errorf("add testbed service: %w", err)
	}
	add := func(name, subject string, h func(data []byte) (any, error)) error {
		return svc.AddEndpoint(name, bus.GuardReply(log, micro.HandlerFunc(func(r micro.Request) {
			out, err := h(r.Data())
			if err != nil {
				log.Warn().Err(err).Str("subject", subject).Msg("testbed control request failed")
				_ = r.Error("400", err.Error(), nil)
				return
			}
			_ = r.RespondJSON(out)
		})), micro.WithEndpointSubject(subject))
	}
	errs := []error{
		add("vms", SubjectVMs, func([]byte) (any, error) { return tb.VMs(), nil }),
		add("write", SubjectWrite, func(data []byte) (any, error) {
			var req WriteRequest
			if err := json.Unmarshal(data, &req); err != nil {
				return nil, err
			}
			return write(tb, req)
		}),
		add("cbt-reset", SubjectResetCBT, func(data []byte) (any, error) {
			var req DiskRequest
			if err := json.Unmarshal(data, &req); err != nil {
				return nil, err
			}
			return struct{}{}, tb.ResetCBT(req.VM, req.DiskKey)
		}),
		add("resize", SubjectResize, func(data []byte) (any, error) {
			var req DiskRequest
			if err := json.Unmarshal(data, &req); err != nil {
				return nil, err
			}
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			return struct{}{}, tb.Resize(ctx, req.VM, req.DiskKey, req.CapacityBytes)
		}),
		add("frozen", SubjectFrozen, func(data []byte) (any, error) {
			var req FrozenRequest
			if err := json.Unmarshal(data, &req); err != nil {
				return nil, err
			}
			p, err := tb.SnapshotImageByName(req.VM, req.Snapshot, req.DiskKey)
			if err != nil {
				return nil, err
			}
			id, err := tb.ChangeIDAt(req.VM, req.Snapshot, req.DiskKey)
			if err != nil {
				return nil, err
			}
			out := FrozenReply{Path: p, ChangeID: id}
			if req.Checksum {
				if out.SHA256, out.Size, err = checksum(p); err != nil {
					return nil, err
				}
			}
			return out, nil
		}),
		add("vm-create", SubjectVMCreate, func(data []byte) (any, error) {
			var req CreateVMRequest
			if err := json.Unmarshal(data, &req); err != nil {
				return nil, err
			}
			return createVMs(tb, inventory, req)
		}),
		add("vm-delete", SubjectVMDelete, func(data []byte) (any, error) {
			var req DeleteVMRequest
			if err := json.Unmarshal(data, &req); err != nil {
				return nil, err
			}
			if req.VM == "" {
				return nil, fmt.Errorf("delete vm: no vm named")
			}
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			return struct{}{}, tb.DeleteVM(ctx, req.VM)
		}),
	}
	for _, err := range errs {
		if err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("add testbed endpoint: %w", err)
		}
	}
	// The endpoints' subscriptions reach the server asynchronously: once
	// the flush's round trip is done, callers on other connections find
	// them, so a caller that saw Serve return never gets "no responders".
	if err := nc.Flush(); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("testbed service: flush its subscriptions: %w", err)
	}
	return svc, nil
}

// checksum is the SHA-256 (hex) and size of the file at path.
func checksum(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("checksum frozen image: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("checksum frozen image %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// createVMs creates the request's VMs in order, stopping at the first
// failure (the VMs made before it stay and are in the reply).
func createVMs(tb *testbed.Testbed, inventory InventoryFunc, req CreateVMRequest) (CreateVMReply, error) {
	var specs []testbed.VMSpec
	switch {
	case (req.VM == nil) == (req.Inventory == ""):
		return CreateVMReply{}, fmt.Errorf("create vms: give vm or inventory, one of them")
	case req.VM != nil:
		specs = []testbed.VMSpec{*req.VM}
	case inventory == nil:
		return CreateVMReply{}, fmt.Errorf("create vms: this service takes no inventory specs")
	default:
		var err error
		if specs, err = inventory(req.Inventory); err != nil {
			return CreateVMReply{}, err
		}
	}
	for _, s := range specs { // all or nothing for bad specs
		if err := s.Validate(); err != nil {
			return CreateVMReply{}, err
		}
	}
	out := CreateVMReply{VMs: []testbed.VMInfo{}}
	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	defer cancel()
	for _, s := range specs {
		vm, err := tb.CreateVM(ctx, s)
		if err != nil {
			return out, fmt.Errorf("create vm %s (after %d created): %w", s.Name, len(out.VMs), err)
		}
		out.VMs = append(out.VMs, vm)
	}
	return out, nil
}

func write(tb *testbed.Testbed, req WriteRequest) (WriteReply, error) {
	if req.Percent <= 0 || req.Percent > 100 {
		return WriteReply{}, fmt.Errorf("percent %v not in (0, 100]", req.Percent)
	}
	out := WriteReply{Disks: map[int32]int64{}}
	seed := req.Seed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	for _, vm := range tb.VMs() {
		if vm.Name != req.VM && vm.UUID != req.VM && vm.Moref != req.VM {
			continue
		}
		for _, d := range vm.Disks {
			if req.DiskKey != 0 && d.Key != req.DiskKey {
				continue
			}
			ext, err := tb.WriteRandom(vm.Name, d.Key, req.Percent/100, seed+int64(d.Key))
			if err != nil {
				return out, err
			}
			for _, e := range ext {
				out.Disks[d.Key] += e.Length
			}
		}
		return out, nil
	}
	return out, fmt.Errorf("vm %q not found in the testbed", req.VM)
}

// Client calls the control service.
type Client struct{ nc *nats.Conn }

// NewClient returns a client on nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc} }

// callTimeout bounds a call as the service bounds its handler: a minute,
// createTimeout for creating VMs.
const (
	callTimeout   = time.Minute
	createTimeout = 10 * time.Minute
)

func (c *Client) call(ctx context.Context, subject string, req, out any) error {
	timeout := callTimeout
	if subject == SubjectVMCreate {
		timeout = createTimeout
	}
	return bus.Request(ctx, c.nc, subject, req, out, timeout, nil)
}

// VMs lists the testbed's VMs.
func (c *Client) VMs(ctx context.Context) ([]testbed.VMInfo, error) {
	var out []testbed.VMInfo
	return out, c.call(ctx, SubjectVMs, struct{}{}, &out)
}

// Write makes random guest writes.
func (c *Client) Write(ctx context.Context, req WriteRequest) (WriteReply, error) {
	var out WriteReply
	return out, c.call(ctx, SubjectWrite, req, &out)
}

// ResetCBT resets a disk's change tracking.
func (c *Client) ResetCBT(ctx context.Context, vm string, key int32) error {
	return c.call(ctx, SubjectResetCBT, DiskRequest{VM: vm, DiskKey: key}, nil)
}

// Resize grows a disk.
func (c *Client) Resize(ctx context.Context, vm string, key int32, capacity int64) error {
	return c.call(ctx, SubjectResize, DiskRequest{VM: vm, DiskKey: key, CapacityBytes: capacity}, nil)
}

// Frozen returns the image frozen by a snapshot.
func (c *Client) Frozen(ctx context.Context, vm, snapshot string, key int32) (FrozenReply, error) {
	var out FrozenReply
	return out, c.call(ctx, SubjectFrozen, FrozenRequest{VM: vm, Snapshot: snapshot, DiskKey: key}, &out)
}

// CreateVM creates one VM.
func (c *Client) CreateVM(ctx context.Context, spec testbed.VMSpec) (testbed.VMInfo, error) {
	var out CreateVMReply
	if err := c.call(ctx, SubjectVMCreate, CreateVMRequest{VM: &spec}, &out); err != nil {
		return testbed.VMInfo{}, err
	}
	if len(out.VMs) != 1 {
		return testbed.VMInfo{}, fmt.Errorf("create vm %s: %d vms in the reply", spec.Name, len(out.VMs))
	}
	return out.VMs[0], nil
}

// CreateInventory creates the VMs of an inventory spec.
func (c *Client) CreateInventory(ctx context.Context, spec string) ([]testbed.VMInfo, error) {
	var out CreateVMReply
	return out.VMs, c.call(ctx, SubjectVMCreate, CreateVMRequest{Inventory: spec}, &out)
}

// DeleteVM deletes a VM and its images.
func (c *Client) DeleteVM(ctx context.Context, vm string) error {
	return c.call(ctx, SubjectVMDelete, DeleteVMRequest{VM: vm}, nil)
}

// FrozenChecksum is Frozen with the image's SHA256 and Size, for a caller
// that cannot read the simulated vCenter's files.
func (c *Client) FrozenChecksum(ctx context.Context, vm, snapshot string, key int32) (FrozenReply, error) {
	var out FrozenReply
	return out, c.call(ctx, SubjectFrozen, FrozenRequest{VM: vm, Snapshot: snapshot, DiskKey: key, Checksum: true}, &out)
}
