package system

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/sendense/sendense/testbed"
)

// InventorySyntax documents the inventories Inventory accepts, for flag help.
const InventorySyntax = "sample, small, pair, or scale:vms=N,disks=M,size=SIZE,fill=SIZE[,prefix=NAME][,seed=N]"

// MaxScaleVMs caps vms= of a scale inventory.
const MaxScaleVMs = 10000

// Inventory returns a set of simulated VMs by name or spec:
//
//   - "sample" (the demo's: pgtest1 with a 6 GiB and a 1 GiB disk,
//     testbed.SampleVMs);
//   - "small" (pgtest1 with 256 MiB and 128 MiB disks, a quarter filled;
//     for tests of the command line);
//   - "pair" (pgtest1 and pgtest2, each with a 512 MiB disk three quarters
//     filled and a 128 MiB disk a quarter filled: two agents copy at once
//     for long enough to be interrupted mid-copy);
//   - "scale:vms=N,disks=M,size=SIZE,fill=SIZE[,prefix=NAME][,seed=N]":
//     N VMs (1 … MaxScaleVMs) named NAME001 … (prefix default "scale",
//     numbers zero-padded to the width of N, at least 3), each with M
//     disks (1 … 15) of SIZE bytes holding FILL bytes of seeded random
//     data (0 … SIZE). Sizes are integers with an optional unit: B, KiB,
//     MiB, GiB, TiB (or K, M, G, T, also 1024-based); SIZE must be a
//     multiple of 1 KiB. vms, disks and size are required; fill defaults
//     to 0 and seed to 1 (VM i uses seed+i·16).
func Inventory(name string) ([]testbed.VMSpec, error) {
	switch name {
	case "", "sample":
		return testbed.SampleVMs(), nil
	case "small":
		return []testbed.VMSpec{{Name: "pgtest1", Seed: 7, Disks: []testbed.DiskSpec{
			{CapacityBytes: 256 << 20, FillBytes: 64 << 20},
			{CapacityBytes: 128 << 20, FillBytes: 32 << 20},
		}}}, nil
	case "pair":
		var vms []testbed.VMSpec
		for i := range 2 {
			vms = append(vms, testbed.VMSpec{Name: fmt.Sprintf("pgtest%d", i+1), Seed: int64(11 + i), Disks: []testbed.DiskSpec{
				{CapacityBytes: 512 << 20, FillBytes: 256 << 20},
				{CapacityBytes: 128 << 20, FillBytes: 32 << 20},
			}})
		}
		return vms, nil
	}
	if spec, ok := strings.CutPrefix(name, "scale:"); ok {
		return scaleInventory(spec)
	}
	return nil, fmt.Errorf("unknown simulated inventory %q (want %s)", name, InventorySyntax)
}

func scaleInventory(spec string) ([]testbed.VMSpec, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("simulated inventory \"scale:%s\": %s (want %s)", spec, fmt.Sprintf(format, a...), InventorySyntax)
	}
	var (
		vms, disks         int64
		size, fill         int64
		seed               int64 = 1
		prefix                   = "scale"
		seen                     = map[string]bool{}
		haveVMs, haveDisks bool
		haveSize           bool
	)
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return nil, bad("%q is not key=value", kv)
		}
		if seen[k] {
			return nil, bad("%s given twice", k)
		}
		seen[k] = true
		var err error
		switch k {
		case "vms":
			vms, err = strconv.ParseInt(v, 10, 64)
			if err != nil || vms < 1 || vms > MaxScaleVMs {
				return nil, bad("vms=%s is not a number in [1, %d]", v, MaxScaleVMs)
			}
			haveVMs = true
		case "disks":
			disks, err = strconv.ParseInt(v, 10, 64)
			if err != nil || disks < 1 || disks > 15 {
				return nil, bad("disks=%s is not a number in [1, 15]", v)
			}
			haveDisks = true
		case "size":
			if size, err = parseBytes(v); err != nil {
				return nil, bad("size: %v", err)
			}
			if size <= 0 || size%1024 != 0 {
				return nil, bad("size=%s is not a positive multiple of 1 KiB", v)
			}
			haveSize = true
		case "fill":
			if fill, err = parseBytes(v); err != nil {
				return nil, bad("fill: %v", err)
			}
		case "prefix":
			prefix = v
		case "seed":
			if seed, err = strconv.ParseInt(v, 10, 64); err != nil {
				return nil, bad("seed=%s is not a number", v)
			}
		default:
			return nil, bad("unknown key %q", k)
		}
	}
	switch {
	case !haveVMs:
		return nil, bad("vms= is required")
	case !haveDisks:
		return nil, bad("disks= is required")
	case !haveSize:
		return nil, bad("size= is required")
	case fill > size:
		return nil, bad("fill %d is larger than size %d", fill, size)
	}
	width := max(3, len(strconv.FormatInt(vms, 10)))
	out := make([]testbed.VMSpec, 0, vms)
	for i := int64(1); i <= vms; i++ {
		vm := testbed.VMSpec{Name: fmt.Sprintf("%s%0*d", prefix, width, i), Seed: seed + i*16}
		for range disks {
			vm.Disks = append(vm.Disks, testbed.DiskSpec{CapacityBytes: size, FillBytes: fill})
		}
		out = append(out, vm)
	}
	// The testbed checks names (letters, digits, '.', '_', '-'): ask it
	// now, so a bad prefix fails here with the spec in the message.
	if err := out[0].Validate(); err != nil {
		return nil, bad("prefix %q: %v", prefix, err)
	}
	return out, nil
}

// parseBytes reads "16MiB", "1G", "4096" (1024-based units).
func parseBytes(s string) (int64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.TrimSpace(s[len(num):])
	mult := int64(1)
	switch strings.ToLower(unit) {
	case "", "b":
	case "k", "kib":
		mult = 1 << 10
	case "m", "mib":
		mult = 1 << 20
	case "g", "gib":
		mult = 1 << 30
	case "t", "tib":
		mult = 1 << 40
	default:
		return 0, fmt.Errorf("%q: unknown unit %q (B, KiB, MiB, GiB, TiB)", s, unit)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}
