package postgres_test

import (
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
	"github.com/hypersync/hypersync/shapes/postgres"
)

// The completeness run against the reference's scheme (stamp = now() of
// the push transaction, syncedAt = now() of the pull) must find missed
// rows, otherwise TestPullCompletenessUnderConcurrency proves nothing.
func TestConcurrencyCheckCatchesNaiveStamps(t *testing.T) {
	naive := func(t *testing.T, dsn string) *shapes.Store {
		db, err := shapes.OpenDialect(postgres.NaiveDialect(), dsn, shapes.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Destruct() })
		return testkit.NewStore(t, db, testkit.TodosShape)
	}
	for attempt := 1; attempt <= 3; attempt++ {
		dsn := testkit.Postgres().Open(t, testkit.SeedTable)
		rep := testkit.CompletenessRun(t, dsn, naive(t, dsn), naive(t, dsn))
		t.Logf("attempt %d: naive stamps: %v", attempt, rep)
		if rep.Misses > 0 {
			return
		}
	}
	t.Fatal("the concurrency check found no missed rows with naive now() stamps: it cannot catch the checkpoint bug")
}
