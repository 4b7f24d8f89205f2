package postgres_test

import (
	"testing"
	"time"

	"github.com/hypersync/hypersync/shapes/postgres"
)

// Timestamps as PostgreSQL writes them become the times the wire carries,
// in UTC, truncated to the millisecond as the client truncates.
func TestParsePGTime(t *testing.T) {
	cases := map[string]string{
		"2026-11-25 10:00:00+00":        "2026-11-25T10:00:00.000Z",
		"2026-11-25 10:00:00.1+00":      "2026-11-25T10:00:00.100Z",
		"2026-11-25 10:00:00.123456+00": "2026-11-25T10:00:00.123Z",
		"2026-11-25 10:00:00.9999+00":   "2026-11-25T10:00:00.999Z", // truncated, as the client truncates
		"2026-11-25 10:00:00.12":        "2026-11-25T10:00:00.120Z", // timestamp without time zone
		"2026-11-25 12:00:00.5+02":      "2026-11-25T10:00:00.500Z", // a session not in UTC
	}
	for in, want := range cases {
		got, ok := postgres.ParseTime([]byte(in))
		if !ok || got.Format("2006-01-02T15:04:05.000Z07:00") != want || got.Location() != time.UTC {
			t.Errorf("%q -> %v (%v), want %q", in, got, ok, want)
		}
	}
	if _, ok := postgres.ParseTime([]byte("infinity")); ok {
		t.Error("infinity parsed as a time: it must go out as the text it is")
	}
}
