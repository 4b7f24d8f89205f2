package postgres_test

import (
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
	"github.com/hypersync/hypersync/shapes/postgres"
)

// FuzzPayload: whatever the validator accepts, the arguments of a push can
// carry, as binary arrays and as typed slices.
func FuzzPayload(f *testing.F) {
	sh := testkit.FuzzShape(f)
	f.Add([]byte(`{"id":"a","n":1,"t":"x","f":-0.0,"r":3.4e38,"ts":"0001-01-01T00:00:00Z","num":1e-20,"o":{"x":1}}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		r := testkit.FuzzRow(t, sh, payload)
		if r == nil {
			return
		}
		g := shapes.Group{Shape: sh, Mask: r.Mask(), Rows: []*shapes.Row{r}}
		for _, binary := range []bool{false, true} {
			if err := postgres.GroupArgs("alice", g, binary); err != nil {
				t.Fatalf("accepted %s, which PostgreSQL arguments (binary %v) cannot carry: %v", payload, binary, err)
			}
		}
	})
}
