package shapes_test

import (
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
)

// FuzzPayload feeds arbitrary payloads to the validator. It must never
// panic, a rejection has a message, and an accepted payload carries every
// key field. The database packages' FuzzPayload check that what it accepts
// they can write.
func FuzzPayload(f *testing.F) {
	sh := testkit.FuzzShape(f)
	f.Add([]byte(`{"id":"a","n":1,"t":"x","ts":"2026-01-02T03:04:05Z","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","a":["x"],"j":{"k":[1]}}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		r := testkit.FuzzRow(t, sh, payload)
		if r == nil {
			return
		}
		for i := range sh.Keys {
			if !r.Mask().Has(i) || r.Vals[i] == nil {
				t.Fatalf("accepted %s without key field %s", payload, sh.Keys[i].Field)
			}
		}
		if len(r.Vals) != len(sh.Columns()) {
			t.Fatalf("row has %d values for %d columns", len(r.Vals), len(sh.Columns()))
		}
	})
}
