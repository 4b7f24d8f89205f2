package sqlite_test

import (
	"testing"
	"time"

	"github.com/hypersync/hypersync/shapes/sqlite"
)

// The pull's fast timestamp reader agrees with time.Parse, and refuses
// what is not a time.
func TestParseTime(t *testing.T) {
	for _, in := range []string{"2026-11-25T10:00:00.123Z", "1970-01-01T00:00:00.000Z", "0001-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z", "2024-02-29T12:34:56.789Z"} {
		want, _ := time.Parse("2006-01-02T15:04:05.000Z", in)
		if got, ok := sqlite.ParseTime([]byte(in)); !ok || !got.Equal(want) || got.Location() != time.UTC {
			t.Errorf("%s -> %v %v, want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"2026-13-25T10:00:00.123Z", "2026-11-25T10:0x:00.123Z", "", "not a time"} {
		if got, ok := sqlite.ParseTime([]byte(in)); ok {
			t.Errorf("%q -> %v, want a refusal", in, got)
		}
	}
}
