package vmware_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sendense/sendense/vmware"
)

// Descriptors as ESXi and Workstation write them.
const (
	esxiThin = `# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=a5c61889
parentCID=ffffffff
createType="vmfs"

# Extent description
RW 12582912 VMFS "pgtest1-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "783"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "3b4c0a1f8e8d1f0e2c7fa4d1a5c61889"
ddb.thinProvisioned = "1"
ddb.uuid = "60 00 C2 9a 4b 2e 61 0c-3f 5e 8a 41 c7 0e 9d 12"
ddb.virtualHWVersion = "14"
`
	esxiSpaces = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW 2097152 VMFS \"my vm_1-flat.vmdk\"\n"
	hostedFlat = "# Disk DescriptorFile\r\nversion=1\r\nCID=fffffffe\r\nparentCID=ffffffff\r\ncreateType=\"monolithicFlat\"\r\n\r\n# Extent description\r\nRW 4192256 FLAT \"disk-flat.vmdk\" 0\r\n"
	seSparse   = `# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=a5c61889
createType="seSparse"
parentFileNameHint="pgtest1.vmdk"
# Extent description
RW 12582912 SESPARSE "pgtest1-000001-sesparse.vmdk"

# The Disk Data Base
#DDB

ddb.grain = "8"
ddb.longContentID = "b3a2fd1e0b6e48d2f2b5d2f6fffffffe"
`
	vmfsSparse = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=a5c61889\ncreateType=\"vmfsSparse\"\nparentFileNameHint=\"pgtest1.vmdk\"\n# Extent description\nRW 12582912 VMFSSPARSE \"pgtest1-000001-delta.vmdk\"\n"
	twoGbSplit = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\nRW 4192256 FLAT \"disk-f001.vmdk\" 0\nRW 4192256 FLAT \"disk-f002.vmdk\" 0\n"
	rdm        = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfsPassthroughRawDeviceMap\"\n\nRW 2097152 VMFSRDM \"db-rdmp.vmdk\"\n"
)

func TestParseDescriptor(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		file     string
		sectors  int64
		wantErr  error // from ParseDescriptor, or else from FlatExtent
		errMatch string
	}{
		{name: "esxi thin vmfs", in: esxiThin, file: "pgtest1-flat.vmdk", sectors: 12582912},
		{name: "file name with spaces", in: esxiSpaces, file: "my vm_1-flat.vmdk", sectors: 2097152},
		{name: "hosted monolithic flat, crlf", in: hostedFlat, file: "disk-flat.vmdk", sectors: 4192256},
		{name: "sesparse snapshot delta", in: seSparse, wantErr: vmware.ErrUnsupportedDisk, errMatch: "SESPARSE"},
		{name: "vmfssparse snapshot delta", in: vmfsSparse, wantErr: vmware.ErrUnsupportedDisk, errMatch: "VMFSSPARSE"},
		{name: "split into extents", in: twoGbSplit, wantErr: vmware.ErrUnsupportedDisk, errMatch: "2 extents"},
		{name: "raw device mapping", in: rdm, wantErr: vmware.ErrUnsupportedDisk, errMatch: "raw device mapping"},
		{name: "flat with a parent", in: strings.Replace(esxiThin, "parentCID=ffffffff", "parentCID=12345678", 1), wantErr: vmware.ErrUnsupportedDisk, errMatch: "delta disk"},
		{name: "extent at an offset", in: strings.Replace(hostedFlat, `"disk-flat.vmdk" 0`, `"disk-flat.vmdk" 2048`, 1), wantErr: vmware.ErrUnsupportedDisk, errMatch: "sector 2048"},
		{name: "noaccess", in: strings.Replace(esxiThin, "RW 12582912", "NOACCESS 12582912", 1), wantErr: vmware.ErrUnsupportedDisk, errMatch: "NOACCESS"},
		{name: "extent outside the directory", in: strings.Replace(esxiThin, `"pgtest1-flat.vmdk"`, `"../other/x-flat.vmdk"`, 1), wantErr: vmware.ErrUnsupportedDisk, errMatch: "not a name next to"},
		{name: "absolute extent path", in: strings.Replace(esxiThin, `"pgtest1-flat.vmdk"`, `"/vmfs/volumes/ds/x-flat.vmdk"`, 1), wantErr: vmware.ErrUnsupportedDisk, errMatch: "not a name next to"},
		{name: "empty", in: "", wantErr: vmware.ErrBadDescriptor, errMatch: "header"},
		{name: "no extent", in: "# Disk DescriptorFile\nversion=1\ncreateType=\"vmfs\"\n", wantErr: vmware.ErrBadDescriptor, errMatch: "no extent"},
		{name: "binary sparse", in: "KDMV\x01\x00\x00\x00", wantErr: vmware.ErrBadDescriptor, errMatch: "binary sparse"},
		{name: "flat data", in: "\x00\x00\x00\x00\xeb\x63\x90", wantErr: vmware.ErrBadDescriptor, errMatch: "binary data"},
		{name: "too large", in: "# Disk DescriptorFile\n" + strings.Repeat("#", vmware.MaxDescriptorSize), wantErr: vmware.ErrBadDescriptor, errMatch: "more than"},
		{name: "html error page", in: "<html><body>404 Not Found</body></html>", wantErr: vmware.ErrBadDescriptor, errMatch: "before the"},
		{name: "unquoted extent file", in: strings.Replace(esxiThin, `"pgtest1-flat.vmdk"`, `pgtest1-flat.vmdk`, 1), wantErr: vmware.ErrBadDescriptor, errMatch: "no quoted file name"},
		{name: "bad sector count", in: strings.Replace(esxiThin, "RW 12582912", "RW 12x", 1), wantErr: vmware.ErrBadDescriptor, errMatch: "not a sector count"},
		{name: "missing type", in: strings.Replace(esxiThin, "RW 12582912 VMFS", "RW 12582912", 1), wantErr: vmware.ErrBadDescriptor, errMatch: "ACCESS SECTORS TYPE"},
		{name: "empty extent file", in: strings.Replace(esxiThin, `"pgtest1-flat.vmdk"`, `""`, 1), wantErr: vmware.ErrBadDescriptor, errMatch: "empty file name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := vmware.ParseDescriptor([]byte(tt.in))
			var e vmware.DescriptorExtent
			if err == nil {
				e, err = d.FlatExtent()
			}
			if !errors.Is(err, tt.wantErr) || (err != nil && !strings.Contains(err.Error(), tt.errMatch)) {
				t.Fatalf("error = %v, want %v saying %q", err, tt.wantErr, tt.errMatch)
			}
			if tt.wantErr != nil {
				return
			}
			if e.File != tt.file || e.Sectors != tt.sectors {
				t.Errorf("flat extent = %+v, want file %q of %d sectors", e, tt.file, tt.sectors)
			}
		})
	}
}
