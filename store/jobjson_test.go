package store

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
)

// TestAppendJobMatchesMarshal fills random jobs by reflection (so a field
// added to Job, Disk, Failure, Progress or the schemas refs is filled too)
// and checks that json.Unmarshal reads appendJob's output exactly as it
// reads json.Marshal's.
func TestAppendJobMatchesMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		var j backup.Job
		fillRandom(rng, reflect.ValueOf(&j).Elem(), 0)
		want, err := json.Marshal(&j)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := appendJob(nil, &j)
		if !ok {
			continue // odd time: Apply uses json.Marshal
		}
		if !json.Valid(got) {
			t.Fatalf("job %d: invalid JSON %s", i, got)
		}
		var a, b backup.Job
		if err := json.Unmarshal(want, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(got, &b); err != nil {
			t.Fatalf("job %d: %v in %s", i, err, got)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("job %d decodes differently:\njson.Marshal: %s\nappendJob:    %s", i, want, got)
		}
	}
}

// TestAppendJobFallsBack: times RFC 3339 writes oddly are left to
// json.Marshal.
func TestAppendJobFallsBack(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2025, 1, 1, 0, 0, 0, 0, time.FixedZone("lmt", 561)),
		time.Date(2025, 1, 1, 0, 0, 0, 0, time.FixedZone("far", 25*3600)),
	} {
		if _, ok := appendJob(nil, &backup.Job{CreatedAt: tm}); ok {
			t.Errorf("appendJob took created_at %v", tm)
		}
	}
}

// fillRandom sets v to random values: strings with quotes, escapes, control
// characters and invalid UTF-8, times with zone offsets, nil and empty
// slices and pointers.
func fillRandom(rng *rand.Rand, v reflect.Value, depth int) {
	if v.Type() == reflect.TypeFor[time.Time]() {
		var tm time.Time
		if rng.IntN(5) > 0 {
			tm = time.Unix(rng.Int64N(1<<34), rng.Int64N(1e9))
			switch rng.IntN(3) {
			case 0:
				tm = tm.UTC()
			case 1:
				tm = tm.In(time.FixedZone("", (rng.IntN(47)-23)*3600+rng.IntN(2)*1800))
			}
		}
		v.Set(reflect.ValueOf(tm))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(randString(rng))
	case reflect.Bool:
		v.SetBool(rng.IntN(2) == 0)
	case reflect.Int, reflect.Int32, reflect.Int64:
		n := rng.Int64()
		if v.Kind() == reflect.Int32 {
			n = int64(rng.Int32())
		}
		if rng.IntN(2) == 0 {
			n = -n
		}
		if rng.IntN(4) == 0 {
			n = 0
		}
		v.SetInt(n)
	case reflect.Uint64:
		switch rng.IntN(3) {
		case 0:
			v.SetUint(0)
		case 1:
			v.SetUint(rng.Uint64())
		default:
			v.SetUint(uint64(rng.Uint32()))
		}
	case reflect.Pointer:
		if rng.IntN(3) == 0 || depth > 3 {
			return
		}
		p := reflect.New(v.Type().Elem())
		fillRandom(rng, p.Elem(), depth+1)
		v.Set(p)
	case reflect.Slice:
		switch rng.IntN(4) {
		case 0:
			return // nil
		case 1:
			v.Set(reflect.MakeSlice(v.Type(), 0, 0))
			return
		}
		s := reflect.MakeSlice(v.Type(), 1+rng.IntN(3), 3)
		for i := range s.Len() {
			fillRandom(rng, s.Index(i), depth+1)
		}
		v.Set(s)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fillRandom(rng, v.Field(i), depth+1)
			}
		}
	default:
		panic("fill: add a case for " + v.Type().String())
	}
}

func randString(rng *rand.Rand) string {
	pieces := []string{"", "a", "vm-01", `"`, `\`, "\n", "\t", "\r", "\x00", "\x1f", "\x7f", "<&>",
		"é", "日本", "\u2028", "\xff", "\xe2\x82", "😀", "52 de 4c 0b/17", " "}
	var b strings.Builder
	for range rng.IntN(6) {
		b.WriteString(pieces[rng.IntN(len(pieces))])
	}
	return b.String()
}
