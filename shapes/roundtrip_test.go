package shapes_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// A push costs the same few round trips whatever its size: the database
// work is set-based, never one statement per change.
func TestPushAndPullRoundTrips(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, testkit.SeedTable)
	db, turns, err := testkit.OpenCountingRoundTrips(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Destruct()
	store, err := shapes.NewStore(db, []shapes.ShapeConfig{{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title", "done", "deleted"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := store.Check(ctx); err != nil {
		t.Fatal(err)
	}
	push := func(n, round int) int64 {
		changes := make([]shapes.Change, n)
		for i := range changes {
			changes[i] = shapes.Change{ID: fmt.Sprint(i), Shape: "todos", UpdatedAt: time.Now(),
				Payload: testkit.PayloadOf(fmt.Sprintf(`{"todoId":"k%d-%d","title":"x","done":false,"deleted":false}`, round, i))}
		}
		before := turns()
		results := make([]shapes.Result, n)
		if _, err := store.Push(ctx, "alice", changes, results); err != nil {
			t.Fatal(err)
		}
		return turns() - before
	}
	pull := func() int64 {
		before := turns()
		if _, err := store.Pull(ctx, "alice", time.Unix(0, 0), 0, func(shapes.PulledRow) error { return nil }); err != nil {
			t.Fatal(err)
		}
		return turns() - before
	}
	first := push(1, 0)
	one := push(1, 1)
	three := push(300, 2)
	thousand := push(1000, 3)
	firstPull := pull()
	nextPull := pull()
	t.Logf("round trips: first push %d (prepares its statements), push of 1: %d, of 300: %d, of 1000: %d; first pull %d, pull %d",
		first, one, three, thousand, firstPull, nextPull)
	if one != three || three != thousand || one > 2 {
		t.Fatalf("push round trips grow with the batch: 1 → %d, 300 → %d, 1000 → %d", one, three, thousand)
	}
	if nextPull > 1 {
		t.Fatalf("a pull takes %d round trips, want 1", nextPull)
	}
}
