package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// TestSecretRace: instances that make a database's secret at the same
// time all get the one that was stored (a loser's first statement finds
// no row: its snapshot predates the winner's commit).
func TestSecretRace(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	testkit.OpenStore(t, dsn, testkit.ListShapes()...)
	var dbs []*shapes.Database
	for range 4 {
		dbs = append(dbs, testkit.OpenDB(t, dsn))
	}
	for i := range 40 {
		name := fmt.Sprintf("race-%d", i)
		got := make([]string, len(dbs))
		errs := make([]error, len(dbs))
		var wg sync.WaitGroup
		for j, db := range dbs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[j], errs[j] = db.Driver().Secret(context.Background(), name)
			}()
		}
		wg.Wait()
		for j := range dbs {
			if errs[j] != nil || got[j] != got[0] {
				t.Fatalf("%s: instance %d got %q (%v), instance 0 %q", name, j, got[j], errs[j], got[0])
			}
		}
	}
}
