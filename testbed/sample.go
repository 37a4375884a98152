package testbed

// SampleVMs is the inventory `sendense demo` and `sendense serve
// --simulate-vcenter` start with: pgtest1 with two thin disks of different
// sizes, the first over 4 GiB virtual and partly filled; the second's
// capacity is not a multiple of 1 MiB. The fills are large enough that 1%
// of guest writes stays well under 10% of a full backup's size.
func SampleVMs() []VMSpec {
	return []VMSpec{{
		Name: "pgtest1",
		Seed: 1,
		Disks: []DiskSpec{
			{CapacityBytes: 6 << 30, FillBytes: 1 << 30},
			{CapacityBytes: 1<<30 + 192<<10, FillBytes: 256 << 20},
		},
	}}
}
