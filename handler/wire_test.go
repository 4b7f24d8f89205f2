package handler

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/hypersync/hypersync/shapes"
)

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", `quo"te`, `back\\slash`, "tab\tnew\nline\rcr", "ctl\x01\x1f", "é 用户 🚀", "\u2028"} {
		var got string
		out := AppendJSONString(nil, []byte(s))
		if err := json.Unmarshal(out, &got); err != nil || got != s {
			t.Errorf("%q -> %s -> %q (%v)", s, out, got, err)
		}
	}
}

func TestAppendValueSpecialNumbers(t *testing.T) {
	for in, want := range map[string]string{"NaN": `"NaN"`, "Infinity": `"Infinity"`, "-Infinity": `"-Infinity"`, "-1.5": "-1.5", "1e+300": "1e+300"} {
		if got := string(appendValue(nil, shapes.KindFloat, shapes.Value{Text: []byte(in)})); got != want {
			t.Errorf("%s -> %s, want %s", in, got, want)
		}
	}
}

// A timestamp a driver could not read as a time (PostgreSQL's infinity)
// goes out as the string it is; every other one in TimeLayout.
func TestAppendValueTimestamps(t *testing.T) {
	cases := []struct {
		v    shapes.Value
		want string
	}{
		{shapes.Value{Time: time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.UTC)}, `"2026-11-25T10:00:00.123Z"`},
		{shapes.Value{Time: time.Date(2026, 11, 25, 12, 0, 0, 5e8, time.FixedZone("", 7200))}, `"2026-11-25T10:00:00.500Z"`},
		{shapes.Value{Text: []byte("infinity")}, `"infinity"`},
		{shapes.Value{Null: true}, `null`},
	}
	for _, c := range cases {
		if got := string(appendValue(nil, shapes.KindTimestamp, c.v)); got != c.want {
			t.Errorf("%+v -> %s, want %s", c.v, got, c.want)
		}
	}
}

// AppendTime writes what TimeLayout says, for every kind of time.
func TestAppendTimeIsTimeLayout(t *testing.T) {
	times := []time.Time{time.Unix(0, 0), time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-5, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 25, 12, 0, 0, 5e8, time.FixedZone("", 7200)), time.Date(1969, 12, 31, 23, 59, 59, 999500000, time.UTC)}
	for i := 0; i < 2000; i++ {
		times = append(times, time.Unix(int64(i)*7919*86400+int64(i)*104729, int64(i)*1234567))
	}
	for _, tm := range times {
		if got, want := string(AppendTime(nil, tm)), tm.UTC().Format(TimeLayout); got != want {
			t.Fatalf("%v: %s, want %s", tm, got, want)
		}
	}
}
