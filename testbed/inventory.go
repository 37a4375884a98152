package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// ErrVMExists: CreateVM was asked for a name a testbed VM already has.
var ErrVMExists = errors.New("testbed vm exists")

// CreateVM adds a VM while the testbed runs, as Options.VMs does at New:
// its disks are created and filled before it returns. The name must be
// new.
func (tb *Testbed) CreateVM(ctx context.Context, spec VMSpec) (VMInfo, error) {
	if err := spec.Validate(); err != nil {
		return VMInfo{}, err
	}
	tb.invMu.Lock()
	defer tb.invMu.Unlock()
	tb.mu.Lock()
	_, err := tb.lookupVM(spec.Name)
	closed := tb.closed
	tb.mu.Unlock()
	switch {
	case closed:
		return VMInfo{}, ErrClosed
	case err == nil:
		return VMInfo{}, fmt.Errorf("create vm %s: %w", spec.Name, ErrVMExists)
	}
	if err := tb.createVM(ctx, spec); err != nil {
		// Leave nothing half made behind.
		if derr := tb.deleteVM(ctx, spec.Name); derr != nil && !errors.Is(derr, ErrUnknownVM) {
			tb.log.Warn().Err(derr).Str("vm", spec.Name).Msg("remove a vm whose creation failed")
		}
		return VMInfo{}, fmt.Errorf("create testbed vm %s: %w", spec.Name, err)
	}
	tb.persist()
	for _, vm := range tb.VMs() {
		if vm.Name == spec.Name {
			return vm, nil
		}
	}
	return VMInfo{}, fmt.Errorf("create vm %s: %w", spec.Name, ErrUnknownVM)
}

// DeleteVM powers a VM off and destroys it (name, instance UUID or
// moref): it leaves the simulated inventory, and its images, frozen ones
// included, and its snapshots' records are removed.
func (tb *Testbed) DeleteVM(ctx context.Context, vm string) error {
	tb.invMu.Lock()
	defer tb.invMu.Unlock()
	if err := tb.deleteVM(ctx, vm); err != nil {
		return err
	}
	tb.persist()
	return nil
}

func (tb *Testbed) deleteVM(ctx context.Context, id string) error {
	tb.mu.Lock()
	st, err := tb.lookupVM(id)
	tb.mu.Unlock()
	if err != nil {
		return fmt.Errorf("delete vm: %w", err)
	}
	if st.ref.Value != "" {
		vmObj := object.NewVirtualMachine(tb.client.Client, st.ref)
		state, err := vmObj.PowerState(ctx)
		if err != nil {
			return fmt.Errorf("delete vm %s: power state: %w", st.name, err)
		}
		if state == types.VirtualMachinePowerStatePoweredOn {
			task, err := vmObj.PowerOff(ctx)
			if err == nil {
				err = task.Wait(ctx)
			}
			if err != nil {
				return fmt.Errorf("delete vm %s: power off: %w", st.name, err)
			}
		}
		task, err := vmObj.Destroy(ctx)
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			return fmt.Errorf("delete vm %s: destroy: %w", st.name, err)
		}
	}

	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.vms = slices.DeleteFunc(tb.vms, func(v *vmState) bool { return v == st })
	tb.snaps = slices.DeleteFunc(tb.snaps, func(r *snapRecord) bool { return r.vm == st })
	var errs []error
	for _, d := range st.disks {
		var p object.DatastorePath
		if p.FromString(d.fileName) {
			prefix := p.Datastore + "/" + path.Dir(p.Path) + "/"
			for k := range tb.dsFiles {
				if strings.HasPrefix(k, prefix) {
					delete(tb.dsFiles, k)
				}
			}
		}
		if d.f != nil {
			errs = append(errs, d.f.Close())
			d.f = nil
		}
	}
	errs = append(errs, os.RemoveAll(st.dir))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete vm %s: remove its images: %w", st.name, err)
	}
	tb.log.Info().Str("vm", st.name).Str("moref", st.ref.Value).Msg("testbed vm deleted")
	return nil
}
