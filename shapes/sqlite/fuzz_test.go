package sqlite_test

import (
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes/sqlite"
)

// FuzzPayload: whatever the validator accepts, SQLite's conversion takes.
func FuzzPayload(f *testing.F) {
	sh := testkit.FuzzShape(f)
	f.Add([]byte(`{"id":"a","n":1,"t":"x","num":123456789012345678901234567890.5,"ts":"2026-01-02T03:04:05.678+02:00"}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		r := testkit.FuzzRow(t, sh, payload)
		if r == nil {
			return
		}
		if err := sqlite.Values(sh, r); err != nil {
			t.Fatalf("accepted %s, which SQLite cannot take: %v", payload, err)
		}
	})
}
