package testbed

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Defaults for Options.
const (
	DefaultMaxChangedAreas = 64
	DefaultBlockSize       = 64 << 10
	DefaultUser            = "administrator@vsphere.local"
	DefaultPassword        = "sendense"
)

// Options configures a Testbed. Zero values take the documented defaults.
type Options struct {
	// Dir holds the disk images: Dir/<vm>/disk-<key>.img (live) and
	// Dir/<vm>/disk-<key>.frozen-<n>.img (one per snapshot). Required.
	Dir string
	// VMs to create. Each gets a paravirtual SCSI controller (key 1000) and
	// its disks with keys 2000, 2001, … in order, thin flat backings on
	// datastore LocalDS_0, and changeTrackingEnabled=true. It is powered on.
	VMs []VMSpec
	// MaxChangedAreas caps the areas in one QueryChangedDiskAreas reply, as
	// vSphere does, so callers must page. Default 64.
	MaxChangedAreas int
	// BlockSize is the CBT tracking granularity: changed areas are widened
	// to multiples of it (clipped to the disk's end). A power of two,
	// 512 … 1 MiB. Default 64 KiB.
	BlockSize int64
	// Listen is the SDK server's host:port. Default 127.0.0.1 on a random port.
	Listen string
	// TLSHosts are extra names or addresses the SDK server's self-signed
	// certificate is valid for, besides the Listen host, localhost and
	// the loopback addresses (every local address when Listen's host is
	// unspecified).
	TLSHosts []string
	// Certificate, when set, is the SDK server's certificate (say, one a
	// deployment's CA issued) instead of a self-signed one; TLSHosts is
	// then unused.
	Certificate *tls.Certificate
	// User and Password are the only credentials the simulated vCenter
	// accepts. Defaults DefaultUser / DefaultPassword.
	User, Password string
	// KeepImages leaves the images in Dir at Close (default: removed).
	KeepImages bool
	// Log receives the testbed's events (VMs created, disks frozen, guest
	// writes). The zero value discards.
	Log zerolog.Logger
}

// VMSpec describes one VM.
type VMSpec struct {
	Name  string // letters, digits, '.', '_' and '-' only; it is also a directory name
	Disks []DiskSpec
	Seed  int64 // seeds the initial data of the disks (disk i uses Seed+i)
}

// DiskSpec describes one disk.
type DiskSpec struct {
	// CapacityBytes is the virtual size, a multiple of 1 KiB (any size: the
	// image is a sparse file).
	CapacityBytes int64
	// FillBytes of random data are written before any snapshot, in 1 MiB
	// extents at seeded offsets (at most CapacityBytes).
	FillBytes int64
}

// VMInfo describes a testbed VM.
type VMInfo struct {
	Name  string     `json:"name"`
	UUID  string     `json:"uuid"` // instance UUID
	Moref string     `json:"moref"`
	Disks []DiskInfo `json:"disks"`
}

// DiskInfo describes a testbed disk.
type DiskInfo struct {
	Key           int32  `json:"key"`
	UUID          string `json:"uuid"`
	CapacityBytes int64  `json:"capacity_bytes"`
	FileName      string `json:"file_name"`  // datastore path vCenter reports
	ImagePath     string `json:"image_path"` // the live image (guest writes go here)
	TrackingUUID  string `json:"tracking_uuid"`
	Sequence      int64  `json:"sequence"` // change id sequence of the last snapshot
}

// Testbed is a simulated vCenter whose VMs have real disk images, changed
// block tracking and snapshots that freeze the images. All methods are safe
// for concurrent use, including guest writes while a backup reads a frozen
// image.
type Testbed struct {
	opts   Options
	log    zerolog.Logger
	model  *simulator.Model
	server *simulator.Server
	client *govmomi.Client

	mu     sync.Mutex // guards everything below and all image I/O
	vms    []*vmState
	snaps  []*snapRecord
	frozen int // counter for frozen image names
	closed bool
	// dsFiles are the datastore files published for the frozen layers,
	// by "<datastore>/<path>" (see datastore.go).
	dsFiles map[string]dsFile
	dsDirs  map[string]string // datastore name → the simulator's directory of it

	sess sessions // session cookies recently found active

	invMu sync.Mutex // serialises CreateVM and DeleteVM

	restoring bool          // New is restoring from the state file: nothing is persisted
	restored  bool          // New found a state file
	ready     bool          // New succeeded: the state may be written
	done      chan struct{} // closed by Close: background persisting stops
	bg        sync.WaitGroup

	wmu     sync.Mutex // guards wrapped
	wrapped map[sessionRef]int
}

type vmState struct {
	// restoring: the VM is being created again from the state file, and
	// its snapshots with it; the handler leaves its calls to the simulator.
	restoring bool

	name  string
	uuid  string
	ref   types.ManagedObjectReference
	dir   string
	disks []*disk
}

type disk struct {
	key      int32
	uuid     string
	fileName string
	capacity int64
	path     string
	f        *os.File

	backing  string              // the datastore layer the VM's backing names ("": fileName)
	tracking string              // CBT tracking UUID
	seq      int64               // sequence of the last snapshot (0: none yet)
	writes   map[int64]*rangeSet // guest writes by the sequence current when written
	points   map[string]*point   // by change id, kept across CBT resets
}

// snapRecord is one snapshot taken through the testbed.
type snapRecord struct {
	vm      *vmState
	name    string
	ref     types.ManagedObjectReference // filled in once known (the task creates it)
	points  map[int32]*point
	created time.Time
	gone    bool // removed from the inventory (known since a restart)
}

var vmNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$`)

// simStart serializes the making of govmomi simulator models and servers
// (see New).
var simStart sync.Mutex

// New starts a simulated vCenter (govmomi's simulator with one datacenter,
// one host and datastore LocalDS_0) serving HTTPS on Options.Listen, creates
// the VMs and their images, and returns when all are ready. Close it.
func New(ctx context.Context, opts Options) (_ *Testbed, err error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	saved, restore, err := loadState(opts.Dir)
	if err != nil {
		return nil, err
	}
	tb := &Testbed{opts: opts, log: opts.Log, wrapped: map[sessionRef]int{}, dsFiles: map[string]dsFile{}, done: make(chan struct{})}
	defer func() {
		if err != nil {
			tb.Close()
		}
	}()

	// govmomi's models share the default option settings (package-level
	// OptionValues that NewServer rewrites), so two testbeds made at once
	// race: one at a time.
	if err := newSimulator(tb, opts); err != nil {
		return nil, err
	}
	// Before any client connects: /folder needs a session (datastore.go).
	tb.server.Config.Handler = tb.folderHandler(tb.server.Config.Handler)

	client, err := govmomi.NewClient(ctx, tb.URL(), true)
	if err != nil {
		return nil, fmt.Errorf("connect testbed client: %w", err)
	}
	tb.mu.Lock()
	tb.client = client
	tb.mu.Unlock()
	if err := tb.findDatastores(ctx); err != nil {
		return nil, err
	}
	tb.mu.Lock()
	home := ""
	for _, u := range tb.dsDirs {
		home = filepath.Dir(u) // the datastores are directories of the model's home
	}
	tb.mu.Unlock()
	if home != "" {
		if err := removeStaleSimHome(opts.Dir, home); err != nil {
			return nil, err
		}
	}
	known := map[string]bool{}
	if restore {
		tb.mu.Lock()
		tb.restoring, tb.restored, tb.frozen = true, true, saved.Frozen
		tb.mu.Unlock()
		for _, sv := range saved.VMs {
			var snaps []savedSnap
			for _, ss := range saved.Snaps {
				if ss.VM == sv.Name {
					snaps = append(snaps, ss)
				}
			}
			if err := tb.restoreVM(ctx, sv, snaps); err != nil {
				return nil, fmt.Errorf("restore testbed vm %s from %s: %w", sv.Name, filepath.Join(opts.Dir, StateFile), err)
			}
			known[sv.Name] = true
		}
		tb.mu.Lock()
		tb.restoring = false
		tb.mu.Unlock()
	}
	for _, spec := range opts.VMs {
		if known[spec.Name] {
			continue
		}
		if err := tb.createVM(ctx, spec); err != nil {
			return nil, fmt.Errorf("create testbed vm %s: %w", spec.Name, err)
		}
	}
	tb.mu.Lock()
	tb.ready = true
	tb.persistLocked()
	tb.mu.Unlock()
	tb.log.Info().Str("url", tb.server.URL.Redacted()).Int("vms", len(tb.vms)).Bool("restored", restore).Msg("testbed vcenter started")
	return tb, nil
}

func (o *Options) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, a...))
	}
	if o.Dir == "" {
		return bad("dir is required")
	}
	if o.MaxChangedAreas == 0 {
		o.MaxChangedAreas = DefaultMaxChangedAreas
	}
	if o.MaxChangedAreas < 1 {
		return bad("max changed areas %d < 1", o.MaxChangedAreas)
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.BlockSize < 512 || o.BlockSize > 1<<20 || o.BlockSize&(o.BlockSize-1) != 0 {
		return bad("block size %d is not a power of two in [512, 1 MiB]", o.BlockSize)
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	if o.User == "" {
		o.User = DefaultUser
	}
	if o.Password == "" {
		o.Password = DefaultPassword
	}
	seen := map[string]bool{}
	for _, vm := range o.VMs {
		if err := vm.Validate(); err != nil {
			return err
		}
		if seen[vm.Name] {
			return bad("vm name %q used twice", vm.Name)
		}
		seen[vm.Name] = true
	}
	return nil
}

// Validate checks one VM's spec (errors wrap ErrInvalidSpec).
func (vm VMSpec) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, a...))
	}
	if !vmNameRE.MatchString(vm.Name) {
		return bad("vm name %q: use letters, digits, '.', '_', '-'", vm.Name)
	}
	if len(vm.Disks) == 0 || len(vm.Disks) > 15 {
		return bad("vm %s: want 1 to 15 disks, got %d", vm.Name, len(vm.Disks))
	}
	for i, d := range vm.Disks {
		if d.CapacityBytes <= 0 || d.CapacityBytes%1024 != 0 {
			return bad("vm %s disk %d: capacity %d is not a positive multiple of 1 KiB", vm.Name, i, d.CapacityBytes)
		}
		if d.FillBytes < 0 || d.FillBytes > d.CapacityBytes {
			return bad("vm %s disk %d: fill %d outside [0, capacity]", vm.Name, i, d.FillBytes)
		}
	}
	return nil
}

func (tb *Testbed) createVM(ctx context.Context, spec VMSpec) error {
	st, err := tb.createSimVM(ctx, spec, nil)
	if err != nil {
		return err
	}
	tb.mu.Lock()
	tb.vms = append(tb.vms, st) // now, so Close removes its files on a later error
	tb.mu.Unlock()
	vmObj := object.NewVirtualMachine(tb.client.Client, st.ref)
	var mvm mo.VirtualMachine
	if err := vmObj.Properties(ctx, st.ref, []string{"config"}, &mvm); err != nil {
		return err
	}
	for i, ds := range spec.Disks {
		key := int32(2000 + i)
		vd, ok := object.VirtualDeviceList(mvm.Config.Hardware.Device).FindByKey(key).(*types.VirtualDisk)
		if !ok {
			return fmt.Errorf("disk %d missing after create", key)
		}
		b := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		d := &disk{
			key:      key,
			uuid:     b.Uuid,
			fileName: b.FileName,
			capacity: ds.CapacityBytes,
			path:     filepath.Join(st.dir, fmt.Sprintf("disk-%d.img", key)),
			tracking: newTrackingUUID(),
			writes:   map[int64]*rangeSet{},
			points:   map[string]*point{},
		}
		d.f, err = os.OpenFile(d.path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o644)
		if err != nil {
			return err
		}
		tb.mu.Lock()
		st.disks = append(st.disks, d)
		tb.mu.Unlock()
		if err := d.f.Truncate(d.capacity); err != nil {
			return err
		}
		if err := tb.fill(d, ds.FillBytes, spec.Seed+int64(i)); err != nil {
			return err
		}
		tb.log.Info().Str("vm", spec.Name).Str("moref", st.ref.Value).Int32("disk_key", key).
			Int64("capacity_bytes", d.capacity).Int64("fill_bytes", ds.FillBytes).Str("image", d.path).Msg("testbed disk created")
	}
	return nil
}

// createSimVM creates spec's VM in the simulator, powered on, and its
// directory; with saved, with the instance UUID and disk UUIDs saved.
func (tb *Testbed) createSimVM(ctx context.Context, spec VMSpec, saved *savedVM) (*vmState, error) {
	c := tb.client.Client
	finder := find.NewFinder(c, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return nil, err
	}
	pool, err := finder.DefaultResourcePool(ctx)
	if err != nil {
		return nil, err
	}
	ds, err := finder.DefaultDatastore(ctx)
	if err != nil {
		return nil, err
	}
	dsRef := ds.Reference()
	dsPath := "[" + ds.Name() + "]"

	const ctrlKey = 1000
	changes := []types.BaseVirtualDeviceConfigSpec{&types.VirtualDeviceConfigSpec{
		Operation: types.VirtualDeviceConfigSpecOperationAdd,
		Device: &types.ParaVirtualSCSIController{VirtualSCSIController: types.VirtualSCSIController{
			SharedBus: types.VirtualSCSISharingNoSharing,
			VirtualController: types.VirtualController{
				BusNumber:     0,
				VirtualDevice: types.VirtualDevice{Key: ctrlKey},
			},
		}},
	}}
	for i, d := range spec.Disks {
		var diskUUID string
		if saved != nil && i < len(saved.Disks) {
			diskUUID = saved.Disks[i].UUID
		}
		unit := int32(i)
		if unit >= 7 { // unit 7 is the controller's own
			unit++
		}
		changes = append(changes, &types.VirtualDeviceConfigSpec{
			Operation:     types.VirtualDeviceConfigSpecOperationAdd,
			FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate,
			Device: &types.VirtualDisk{
				VirtualDevice: types.VirtualDevice{
					Key:           int32(2000 + i),
					ControllerKey: ctrlKey,
					UnitNumber:    &unit,
					Backing: &types.VirtualDiskFlatVer2BackingInfo{
						VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: dsPath, Datastore: &dsRef},
						DiskMode:                     string(types.VirtualDiskModePersistent),
						Uuid:                         diskUUID,
						ThinProvisioned:              types.NewBool(true),
					},
				},
				CapacityInBytes: d.CapacityBytes,
				CapacityInKB:    d.CapacityBytes / 1024,
			},
		})
	}
	config := types.VirtualMachineConfigSpec{
		Name:                  spec.Name,
		GuestId:               string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest),
		NumCPUs:               1,
		MemoryMB:              256,
		Files:                 &types.VirtualMachineFileInfo{VmPathName: dsPath},
		ChangeTrackingEnabled: types.NewBool(true),
		DeviceChange:          changes,
	}
	if saved != nil {
		config.InstanceUuid = saved.UUID
	}
	task, err := folders.VmFolder.CreateVM(ctx, config, pool, nil)
	if err != nil {
		return nil, err
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return nil, err
	}
	vmRef := info.Result.(types.ManagedObjectReference)
	vmObj := object.NewVirtualMachine(c, vmRef)
	if task, err = vmObj.PowerOn(ctx); err != nil {
		return nil, err
	}
	if err := task.Wait(ctx); err != nil {
		return nil, err
	}
	var mvm mo.VirtualMachine
	if err := vmObj.Properties(ctx, vmRef, []string{"config"}, &mvm); err != nil {
		return nil, err
	}
	st := &vmState{name: spec.Name, uuid: mvm.Config.InstanceUuid, ref: vmRef, dir: filepath.Join(tb.opts.Dir, spec.Name)}
	if err := os.MkdirAll(st.dir, 0o755); err != nil {
		return nil, err
	}
	return st, nil
}

// fill writes n bytes of seeded random data in 1 MiB extents at distinct
// seeded offsets, recorded as guest writes before the first snapshot.
func (tb *Testbed) fill(d *disk, n int64, seed int64) error {
	if n == 0 {
		return nil
	}
	const bs = 1 << 20
	block := int64(bs)
	if d.capacity < block {
		block = d.capacity
	}
	slots := d.capacity / block
	count := (n + block - 1) / block
	if count > slots {
		count = slots
	}
	rnd := newRandom(seed)
	order := rnd.r.Perm(int(slots))[:count]
	buf := make([]byte, block)
	left := n
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, slot := range order {
		l := min(left, block)
		off := int64(slot) * block
		rnd.fill(buf[:l])
		if _, err := d.f.WriteAt(buf[:l], off); err != nil {
			return fmt.Errorf("fill %s at %d: %w", d.path, off, err)
		}
		d.recordWrite(off, l)
		left -= l
	}
	return nil
}

// URL is the SDK URL with the credentials in its user info
// (https://user:pass@127.0.0.1:port/sdk). The certificate is self-signed
// (CertificatePEM): trust it, connect with insecure=true or pin Thumbprint.
func (tb *Testbed) URL() *url.URL {
	u := *tb.server.URL
	u.User = url.UserPassword(tb.opts.User, tb.opts.Password)
	return &u
}

// Certificate is the simulated vCenter's TLS certificate.
func (tb *Testbed) Certificate() *x509.Certificate { return tb.server.Certificate() }

// VMs describes every testbed VM, in creation order.
func (tb *Testbed) VMs() []VMInfo {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	out := make([]VMInfo, 0, len(tb.vms))
	for _, vm := range tb.vms {
		vi := VMInfo{Name: vm.name, UUID: vm.uuid, Moref: vm.ref.Value}
		for _, d := range vm.disks {
			vi.Disks = append(vi.Disks, DiskInfo{
				Key: d.key, UUID: d.uuid, CapacityBytes: d.capacity, FileName: d.fileName,
				ImagePath: d.path, TrackingUUID: d.tracking, Sequence: d.seq,
			})
		}
		out = append(out, vi)
	}
	return out
}

// Close stops the server, closes the images and, unless KeepImages, removes
// them (live and frozen). It is safe to call more than once.
func (tb *Testbed) Close() error {
	tb.mu.Lock()
	if tb.closed {
		tb.mu.Unlock()
		return nil
	}
	tb.persistLocked()
	tb.closed = true
	tb.mu.Unlock()
	if tb.done != nil {
		close(tb.done)
	}
	tb.bg.Wait()

	var errs []error
	if tb.client != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = tb.client.Logout(ctx)
		cancel()
	}
	if tb.server != nil {
		tb.server.Close()
	}
	if tb.model != nil {
		tb.model.Remove()
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	// A restore that failed leaves the images and the state file as they were.
	keep := tb.opts.KeepImages || (tb.restored && !tb.ready)
	for _, vm := range tb.vms {
		for _, d := range vm.disks {
			if d.f != nil {
				if err := d.f.Close(); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if !keep {
			if err := os.RemoveAll(vm.dir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if !keep {
		if err := os.Remove(filepath.Join(tb.opts.Dir, StateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	tb.log.Info().Msg("testbed vcenter stopped")
	return errors.Join(errs...)
}

// lookupVM finds a VM by name, instance UUID or moref. Caller holds tb.mu.
func (tb *Testbed) lookupVM(id string) (*vmState, error) {
	if tb.closed {
		return nil, ErrClosed
	}
	for _, vm := range tb.vms {
		if vm.name == id || vm.uuid == id || vm.ref.Value == id {
			return vm, nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownVM, id)
}

// lookupDisk finds a disk of a VM. Caller holds tb.mu.
func (tb *Testbed) lookupDisk(vmID string, key int32) (*vmState, *disk, error) {
	vm, err := tb.lookupVM(vmID)
	if err != nil {
		return nil, nil, err
	}
	for _, d := range vm.disks {
		if d.key == key {
			return vm, d, nil
		}
	}
	return nil, nil, fmt.Errorf("%w: disk %d of vm %s", ErrUnknownDisk, key, vm.name)
}

func (tb *Testbed) vmByRef(ref types.ManagedObjectReference) *vmState {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, vm := range tb.vms {
		if vm.ref == ref {
			return vm
		}
	}
	return nil
}

// newSimulator makes tb's govmomi model and its server (tb.model,
// tb.server), one testbed at a time (simStart).
func newSimulator(tb *Testbed, opts Options) error {
	simStart.Lock()
	defer simStart.Unlock()
	m := simulator.VPX()
	m.Datacenter, m.Host, m.Cluster, m.ClusterHost, m.Portgroup, m.Machine, m.Datastore = 1, 1, 0, 0, 0, 0, 1
	m.Autostart = false
	if err := m.Create(); err != nil {
		return fmt.Errorf("create simulator model: %w", err)
	}
	tb.model = m
	var cert tls.Certificate
	var err error
	if opts.Certificate != nil {
		cert = *opts.Certificate
	} else if cert, err = serverCertificate(opts.Listen, opts.TLSHosts); err != nil {
		return err
	}
	m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	m.Service.Listen = &url.URL{Host: opts.Listen, User: url.UserPassword(opts.User, opts.Password)}
	m.Map().Handler = tb.handle
	tb.server = m.Service.NewServer()
	return nil
}

// simHomeFile names, in Options.Dir, the temp directory govmomi's model
// made (its "vcsim.home", /tmp/govcsim-*): Close removes it (Model.Remove),
// a process killed before that does not, and the next New on the same Dir
// does (removeStaleSimHome).
const simHomeFile = ".vcsim-home"

// removeStaleSimHome removes the model directory a testbed killed on dir
// left behind, then records home as this one's.
func removeStaleSimHome(dir, home string) error {
	path := filepath.Join(dir, simHomeFile)
	if old, err := os.ReadFile(path); err == nil {
		stale := filepath.Clean(string(old))
		if filepath.Dir(stale) == filepath.Clean(os.TempDir()) && strings.HasPrefix(filepath.Base(stale), "govcsim-") && stale != home {
			if err := os.RemoveAll(stale); err != nil {
				return fmt.Errorf("remove the simulator directory %s a killed testbed left: %w", stale, err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("record the simulator directory: %w", err)
	}
	if err := os.WriteFile(path, []byte(home), 0o600); err != nil {
		return fmt.Errorf("record the simulator directory: %w", err)
	}
	return nil
}
