package shapes_test

import (
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
)

func TestPullCompletenessUnderConcurrency(t *testing.T) {
	check := func(t *testing.T, rep testkit.Report) {
		t.Log(rep)
		if rep.Checked < 1000 {
			t.Fatalf("only %d rows checked: the test did too little to mean anything", rep.Checked)
		}
		if rep.Misses != 0 {
			t.Fatalf("devices missed %d of %d final row versions", rep.Misses, rep.Checked)
		}
	}
	t.Run("postgres, two instances with their own pools", func(t *testing.T) {
		dsn := testkit.Postgres().Open(t, testkit.SeedTable)
		a := testkit.NewStore(t, testkit.OpenDB(t, dsn), testkit.TodosShape)
		b := testkit.NewStore(t, testkit.OpenDB(t, dsn), testkit.TodosShape)
		check(t, testkit.CompletenessRun(t, dsn, a, b))
	})
	t.Run("sqlite, two handlers in one process", func(t *testing.T) {
		dsn := testkit.SQLite().Open(t, testkit.SeedTable)
		db := testkit.OpenDB(t, dsn)
		check(t, testkit.CompletenessRun(t, dsn, testkit.NewStore(t, db, testkit.TodosShape), testkit.NewStore(t, db, testkit.TodosShape)))
	})
}
