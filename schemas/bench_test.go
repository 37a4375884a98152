package schemas

import (
	"testing"
)

// benchEvents returns realistic payloads: the fixtures, with two disks
// where an event lists disks (a full and an incremental).
func benchEvents(tb testing.TB) []struct {
	name, subject string
	data          []byte
} {
	ev := fullEvents()
	second := DiskRef{Key: 2001, UUID: "6000c292-1c2d-4e5f-8a9b-0c1d2e3f4a5b", CapacityBytes: 1 << 30}
	st := ev[NameStarted].(*Started)
	st.Disks = append(st.Disks, DiskPlan{Disk: second, BackupType: TypeFull, Reason: ReasonNoBase, Target: testVMUUID + "/2001/job-7.qcow2"})
	co := ev[NameCompleted].(*Completed)
	co.Disks = append(co.Disks, DiskResult{Disk: second, ChangeID: "52 aa bb cc dd ee ff 00-11 22 33 44 55 66 77 88/4",
		BackupType: TypeFull, Reason: ReasonNoBase, BytesRead: 1 << 30, BytesWritten: 50 << 20,
		Target: testVMUUID + "/2001/job-7.qcow2", ActualSizeBytes: 53084160})
	pr := ev[NameProgress].(*Progress)
	pr.Disks = append(pr.Disks, DiskProgress{Disk: second, BytesDone: 0, BytesTotal: 1 << 30})
	var out []struct {
		name, subject string
		data          []byte
	}
	for _, name := range []string{NameChangeID, NameCompleted, NameStarted, NameProgress, NameFailed} {
		b, err := Marshal(ev[name])
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := Decode(subjectOf(name), b); err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
		out = append(out, struct {
			name, subject string
			data          []byte
		}{name, subjectOf(name), b})
	}
	return out
}

// BenchmarkDecode measures Decode (validation and unmarshal) of typical
// events; the catalog consumer's rate is bound by it.
func BenchmarkDecode(b *testing.B) {
	for _, ev := range benchEvents(b) {
		b.Run(ev.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(ev.data)))
			for b.Loop() {
				if _, err := Decode(ev.subject, ev.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkValidate measures Validate alone on the same events.
func BenchmarkValidate(b *testing.B) {
	for _, ev := range benchEvents(b) {
		b.Run(ev.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(ev.data)))
			for b.Loop() {
				if err := Validate(ev.subject, ev.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
