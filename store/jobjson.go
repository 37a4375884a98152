package store

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// appendJob appends j as JSON: the same document json.Marshal writes for a
// Job, field for field, minus encoding/json's optional escapes (<, >, &,
// U+2028, U+2029), so json.Unmarshal gives back what it gives for
// json.Marshal's output. Apply encodes a job record per job per batch, and
// reflection made json.Marshal about a fifth of Apply's work.
// TestAppendJobMatchesMarshal holds the two together on random jobs whose
// every field, present or future, is filled by reflection. ok is false when a time is outside
// what JSON's RFC 3339 allows (years 0 to 9999); use json.Marshal then,
// which returns the error.
func appendJob(b []byte, j *backup.Job) (_ []byte, ok bool) {
	b = append(b, `{"job_id":`...)
	b = appendString(b, j.ID)
	b = append(b, `,"status":`...)
	b = appendString(b, j.Status)
	b = append(b, `,"vm":`...)
	b = appendVM(b, &j.VM)
	b = appendOmitEmpty(b, `,"repository":`, j.Repository)
	b = appendOmitEmpty(b, `,"requested_type":`, j.RequestedType)
	b = appendOmitEmpty(b, `,"requested_by":`, j.RequestedBy)
	if j.RequestSeq != 0 {
		b = append(b, `,"request_seq":`...)
		b = strconv.AppendUint(b, j.RequestSeq, 10)
	}
	b = appendOmitEmpty(b, `,"agent":`, j.Agent)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(j.Attempt), 10)
	b = append(b, `,"failed_attempts":`...)
	b = strconv.AppendInt(b, int64(j.FailedAttempts), 10)
	if b, ok = appendTimeField(b, `,"created_at":`, j.CreatedAt, false); !ok {
		return b, false
	}
	if b, ok = appendTimeField(b, `,"started_at":`, j.StartedAt, true); !ok {
		return b, false
	}
	if b, ok = appendTimeField(b, `,"finished_at":`, j.FinishedAt, true); !ok {
		return b, false
	}
	if f := j.Failure; f != nil {
		b = append(b, `,"failure":{"reason":`...)
		b = appendString(b, f.Reason)
		b = append(b, `,"message":`...)
		b = appendString(b, f.Message)
		b = append(b, `,"retryable":`...)
		b = strconv.AppendBool(b, f.Retryable)
		b = append(b, `,"attempt":`...)
		b = strconv.AppendInt(b, int64(f.Attempt), 10)
		b = append(b, '}')
	}
	b = append(b, `,"disks":`...)
	if j.Disks == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range j.Disks {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendDisk(b, &j.Disks[i])
		}
		b = append(b, ']')
	}
	if p := j.Progress; p != nil {
		b = append(b, `,"progress":{"event_id":`...)
		b = appendString(b, p.EventID)
		b = append(b, `,"attempt":`...)
		b = strconv.AppendInt(b, int64(p.Attempt), 10)
		b = append(b, `,"seq":`...)
		b = strconv.AppendInt(b, p.Seq, 10)
		b = append(b, `,"bytes_done":`...)
		b = strconv.AppendInt(b, p.BytesDone, 10)
		b = append(b, `,"bytes_total":`...)
		b = strconv.AppendInt(b, p.BytesTotal, 10)
		if b, ok = appendTimeField(b, `,"time":`, p.Time, false); !ok {
			return b, false
		}
		b = append(b, '}')
	}
	if j.Prune != nil {
		// Rare (a job the hub prunes): json.Marshal is fast enough.
		v, err := json.Marshal(j.Prune)
		if err != nil {
			return b, false
		}
		b = append(b, `,"prune":`...)
		b = append(b, v...)
	}
	if j.Verification != nil {
		v, err := json.Marshal(j.Verification)
		if err != nil {
			return b, false
		}
		b = append(b, `,"verification":`...)
		b = append(b, v...)
	}
	b = append(b, `,"event_ids":`...)
	if j.EventIDs == nil {
		b = append(b, "null"...)
	} else {
		b = appendStrings(b, j.EventIDs)
	}
	if len(j.PoisonedEventIDs) > 0 {
		b = append(b, `,"poisoned_event_ids":`...)
		b = appendStrings(b, j.PoisonedEventIDs)
	}
	return append(b, '}'), true
}

// appendStrings appends ss as a JSON array of strings.
func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

func appendVM(b []byte, vm *schemas.VMRef) []byte {
	b = append(b, '{')
	sep := false
	for _, f := range [...]struct{ name, v string }{{`"name":`, vm.Name}, {`"uuid":`, vm.UUID}, {`"moref":`, vm.Moref}} {
		if f.v == "" {
			continue
		}
		if sep {
			b = append(b, ',')
		}
		sep = true
		b = append(b, f.name...)
		b = appendString(b, f.v)
	}
	return append(b, '}')
}

func appendDisk(b []byte, d *backup.Disk) []byte {
	b = append(b, `{"disk":{"key":`...)
	b = strconv.AppendInt(b, int64(d.Disk.Key), 10)
	b = append(b, `,"uuid":`...)
	b = appendString(b, d.Disk.UUID)
	b = append(b, `,"capacity_bytes":`...)
	b = strconv.AppendInt(b, d.Disk.CapacityBytes, 10)
	b = append(b, '}')
	b = appendOmitEmpty(b, `,"backup_type":`, d.BackupType)
	b = appendOmitEmpty(b, `,"reason":`, d.Reason)
	b = appendOmitEmpty(b, `,"base_change_id":`, d.BaseChangeID)
	b = appendOmitEmpty(b, `,"change_id":`, d.ChangeID)
	b = append(b, `,"bytes_read":`...)
	b = strconv.AppendInt(b, d.BytesRead, 10)
	b = append(b, `,"bytes_written":`...)
	b = strconv.AppendInt(b, d.BytesWritten, 10)
	b = appendOmitEmpty(b, `,"target":`, d.Target)
	b = appendOmitEmpty(b, `,"backing":`, d.Backing)
	b = append(b, `,"actual_size_bytes":`...)
	b = strconv.AppendInt(b, d.ActualSizeBytes, 10)
	b = appendOmitEmpty(b, `,"manifest_sha256":`, d.ManifestSHA256)
	b = appendOmitEmpty(b, `,"verified":`, d.Verified)
	return append(b, '}')
}

// appendTimeField appends name and t as time.Time.MarshalJSON does
// (RFC 3339 with nanoseconds); with omitZero a zero t writes nothing.
func appendTimeField(b []byte, name string, t time.Time, omitZero bool) ([]byte, bool) {
	if omitZero && t.IsZero() {
		return b, true
	}
	if y := t.Year(); y < 0 || y > 9999 {
		return b, false
	}
	if _, off := t.Zone(); off%60 != 0 || off <= -24*3600 || off >= 24*3600 {
		return b, false // leave the odd zone offsets to MarshalJSON
	}
	b = append(b, name...)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), true
}

const hexDigits = "0123456789abcdef"

// appendOmitEmpty appends name (`,"key":`) and s, unless s is empty (a
// field tagged omitempty).
func appendOmitEmpty(b []byte, name, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, name...), s)
}

// appendString appends s as a JSON string: quote, backslash and control
// characters escaped, invalid UTF-8 replaced by U+FFFD as json.Marshal
// does.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
