package vmware

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// VM is a virtual machine as FindVM saw it. InstanceUUID is its identity in
// events and in the repository; Ref is what vCenter calls take.
type VM struct {
	Ref          types.ManagedObjectReference
	Name         string
	InstanceUUID string
	BIOSUUID     string
	CBTEnabled   bool   // config.changeTrackingEnabled
	PowerState   string // poweredOn, poweredOff, suspended
	Disks        []Disk // from the VM's current configuration, sorted by key
}

// Moref returns the managed object id, "vm-123".
func (v *VM) Moref() string { return v.Ref.Value }

var vmProps = []string{
	"name",
	"config.instanceUuid",
	"config.uuid",
	"config.changeTrackingEnabled",
	"config.hardware.device",
	"runtime.powerState",
}

// FindVM resolves id, which is a moref ("vm-123"), an instance UUID, or a VM
// name, in that order of interpretation (a VM whose name looks like a moref
// or a UUID is still found by name when the other lookup finds nothing).
// It returns ErrVMNotFound (wrapped with id) when nothing matches and
// ErrVMAmbiguous when several VMs have that name.
func (c *Client) FindVM(ctx context.Context, id string) (*VM, error) {
	ctx, cancel := withDefaultTimeout(ctx, DefaultCallTimeout)
	defer cancel()
	if strings.TrimSpace(id) == "" {
		return nil, fmt.Errorf("find vm %q: %w", id, ErrVMNotFound)
	}

	if isMoref(id) {
		vm, err := c.vmByRef(ctx, types.ManagedObjectReference{Type: "VirtualMachine", Value: id})
		if err == nil {
			return vm, nil
		}
		if !isNotFound(err) {
			return nil, fmt.Errorf("find vm %q: %w", id, classify(err))
		}
	}

	if _, err := uuid.Parse(id); err == nil && len(id) == 36 {
		si := object.NewSearchIndex(c.gc.Client)
		for _, instance := range []bool{true, false} {
			ref, err := si.FindByUuid(ctx, nil, id, true, &instance)
			if err != nil {
				return nil, fmt.Errorf("find vm %q by uuid: %w", id, classify(err))
			}
			if ref == nil { // FindByUuid returns nil, nil when nothing matches
				continue
			}
			vm, err := c.vmByRef(ctx, ref.Reference())
			if err != nil {
				return nil, fmt.Errorf("find vm %q: %w", id, classify(err))
			}
			return vm, nil
		}
	}

	refs, err := c.vmsByName(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("find vm %q by name: %w", id, classify(err))
	}
	switch len(refs) {
	case 0:
		return nil, fmt.Errorf("find vm %q: %w", id, ErrVMNotFound)
	case 1:
		vm, err := c.vmByRef(ctx, refs[0])
		if err != nil {
			if isNotFound(err) { // removed between the two calls
				return nil, fmt.Errorf("find vm %q: %w", id, ErrVMNotFound)
			}
			return nil, fmt.Errorf("find vm %q: %w", id, classify(err))
		}
		return vm, nil
	default:
		ids := make([]string, len(refs))
		for i, r := range refs {
			ids[i] = r.Value
		}
		return nil, fmt.Errorf("find vm %q: %w: %s", id, ErrVMAmbiguous, strings.Join(ids, ", "))
	}
}

func (c *Client) vmsByName(ctx context.Context, name string) ([]types.ManagedObjectReference, error) {
	m := view.NewManager(c.gc.Client)
	v, err := m.CreateContainerView(ctx, c.gc.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, err
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	// A func matcher compares exactly; a string would be a glob pattern.
	exact := func(v any) bool { s, ok := v.(string); return ok && s == name }
	return v.Find(ctx, []string{"VirtualMachine"}, property.Match{"name": exact})
}

func (c *Client) vmByRef(ctx context.Context, ref types.ManagedObjectReference) (*VM, error) {
	var m mo.VirtualMachine
	if err := c.gc.RetrieveOne(ctx, ref, vmProps, &m); err != nil {
		return nil, err
	}
	vm := &VM{Ref: m.Self, Name: m.Name, PowerState: string(m.Runtime.PowerState)}
	if m.Config != nil {
		vm.InstanceUUID = m.Config.InstanceUuid
		vm.BIOSUUID = m.Config.Uuid
		if m.Config.ChangeTrackingEnabled != nil {
			vm.CBTEnabled = *m.Config.ChangeTrackingEnabled
		}
		disks, err := disksFromDevices(m.Config.Hardware.Device)
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", ref.Value, err)
		}
		vm.Disks = disks
	}
	return vm, nil
}

func isMoref(id string) bool {
	rest, ok := strings.CutPrefix(id, "vm-")
	if !ok || rest == "" {
		return false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
