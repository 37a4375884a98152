package vmware

import (
	"bufio"
	"bytes"
	"fmt"
	"path"
	"strconv"
	"strings"
)

// MaxDescriptorSize is the largest disk descriptor ParseDescriptor reads.
// Real ones are well under 2 KiB; a larger "descriptor" is a data file
// named by mistake.
const MaxDescriptorSize = 64 << 10

// Descriptor is the part of a VMDK text descriptor ("[ds] vm/vm.vmdk")
// a reader of the disk needs: what kind of disk it is and its extents.
type Descriptor struct {
	CreateType string // "vmfs", "monolithicFlat", "seSparse", "vmfsSparse", …
	ParentCID  string // "ffffffff" for a disk without a parent
	Extents    []DescriptorExtent
}

// DescriptorExtent is one extent line: ACCESS SECTORS TYPE "FILE" [OFFSET].
type DescriptorExtent struct {
	Access  string // RW, RDONLY or NOACCESS
	Sectors int64  // size in 512-byte sectors
	Type    string // VMFS, FLAT, SESPARSE, VMFSSPARSE, VMFSRDM, …
	File    string // relative to the descriptor's directory
	Offset  int64  // FLAT only: where the extent starts in File, in sectors
}

// noParent is the parentCID of a disk that is not a delta of another.
const noParent = "ffffffff"

// ParseDescriptor reads a VMDK text descriptor. It checks the format only
// (the "# Disk DescriptorFile" header, well-formed extent lines); what can
// be read is FlatExtent's business. Errors wrap ErrBadDescriptor.
func ParseDescriptor(data []byte) (Descriptor, error) {
	bad := func(format string, a ...any) (Descriptor, error) {
		return Descriptor{}, fmt.Errorf("parse vmdk descriptor: %w: %s", ErrBadDescriptor, fmt.Sprintf(format, a...))
	}
	if len(data) > MaxDescriptorSize {
		return bad("%d bytes, more than a descriptor's %d (a data file?)", len(data), MaxDescriptorSize)
	}
	if bytes.HasPrefix(data, []byte("KDMV")) || bytes.HasPrefix(data, []byte("COWD")) {
		return bad("a binary sparse extent, not a text descriptor")
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return bad("binary data, not a text descriptor")
	}
	d := Descriptor{ParentCID: noParent}
	sawHeader := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "#"):
			if strings.EqualFold(strings.TrimSpace(strings.TrimPrefix(line, "#")), "Disk DescriptorFile") {
				sawHeader = true
			}
			continue
		}
		if !sawHeader {
			return bad("line %d %q comes before the \"# Disk DescriptorFile\" header", n, clip(line))
		}
		if key, val, ok := strings.Cut(line, "="); ok && !isAccess(firstField(line)) {
			val = strings.Trim(strings.TrimSpace(val), `"`)
			switch strings.ToLower(strings.TrimSpace(key)) {
			case "createtype":
				d.CreateType = val
			case "parentcid":
				d.ParentCID = strings.ToLower(val)
			}
			continue
		}
		e, err := parseExtentLine(line)
		if err != nil {
			return bad("line %d: %v", n, err)
		}
		d.Extents = append(d.Extents, e)
	}
	if err := sc.Err(); err != nil {
		return bad("%v", err)
	}
	if !sawHeader {
		return bad("no \"# Disk DescriptorFile\" header")
	}
	if len(d.Extents) == 0 {
		return bad("no extent line")
	}
	return d, nil
}

func parseExtentLine(line string) (DescriptorExtent, error) {
	// ACCESS SECTORS TYPE "FILE" [OFFSET]; FILE may hold spaces.
	q1 := strings.IndexByte(line, '"')
	q2 := strings.LastIndexByte(line, '"')
	if q1 < 0 || q2 == q1 {
		return DescriptorExtent{}, fmt.Errorf("extent %q: no quoted file name", clip(line))
	}
	head := strings.Fields(line[:q1])
	if len(head) != 3 {
		return DescriptorExtent{}, fmt.Errorf("extent %q: want ACCESS SECTORS TYPE \"FILE\"", clip(line))
	}
	e := DescriptorExtent{Access: head[0], Type: strings.ToUpper(head[2]), File: line[q1+1 : q2]}
	if !isAccess(e.Access) {
		return e, fmt.Errorf("extent %q: access %q is not RW, RDONLY or NOACCESS", clip(line), e.Access)
	}
	n, err := strconv.ParseInt(head[1], 10, 64)
	if err != nil || n < 0 {
		return e, fmt.Errorf("extent %q: size %q is not a sector count", clip(line), head[1])
	}
	e.Sectors = n
	if tail := strings.TrimSpace(line[q2+1:]); tail != "" {
		off, err := strconv.ParseInt(tail, 10, 64)
		if err != nil || off < 0 {
			return e, fmt.Errorf("extent %q: offset %q is not a sector count", clip(line), tail)
		}
		e.Offset = off
	}
	if e.File == "" {
		return e, fmt.Errorf("extent %q: empty file name", clip(line))
	}
	return e, nil
}

// FlatExtent returns the one flat extent of a disk that can be read as
// it is, byte for byte: a VMFS or FLAT extent at offset 0 of its file,
// readable, of a disk with no parent. Everything else — sparse and
// seSparse deltas (a snapshot's disk while a later snapshot exists), RDMs,
// vSAN objects, disks split into several extents — returns
// ErrUnsupportedDisk naming what it is.
func (d Descriptor) FlatExtent() (DescriptorExtent, error) {
	unsupported := func(format string, a ...any) (DescriptorExtent, error) {
		return DescriptorExtent{}, fmt.Errorf("read disk through its flat file: %w: %s", ErrUnsupportedDisk, fmt.Sprintf(format, a...))
	}
	if len(d.Extents) != 1 {
		return unsupported("%d extents (createType %q); only single-extent flat disks can be read", len(d.Extents), d.CreateType)
	}
	e := d.Extents[0]
	switch e.Type {
	case "VMFS", "FLAT":
	case "SESPARSE", "VMFSSPARSE", "SPARSE", "VSANSPARSE":
		return unsupported("a %s extent (createType %q, a snapshot delta or sparse disk)", e.Type, d.CreateType)
	case "VMFSRDM", "VMFSRAW":
		return unsupported("a raw device mapping (%s)", e.Type)
	default:
		return unsupported("extent type %s (createType %q)", e.Type, d.CreateType)
	}
	if d.ParentCID != noParent {
		return unsupported("a delta disk (parentCID %s)", d.ParentCID)
	}
	if e.Access == "NOACCESS" {
		return unsupported("extent %q is NOACCESS", e.File)
	}
	if e.Offset != 0 {
		return unsupported("extent %q starts at sector %d of its file", e.File, e.Offset)
	}
	if path.IsAbs(e.File) || strings.Contains(e.File, "..") || strings.ContainsAny(e.File, "\x00\r\n?#") {
		return unsupported("extent file %q is not a name next to the descriptor", e.File)
	}
	return e, nil
}

func isAccess(s string) bool { return s == "RW" || s == "RDONLY" || s == "NOACCESS" }

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
