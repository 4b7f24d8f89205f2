package shapes_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// A pull that runs while the store forgets its shapes (because a push met
// a changed table) works on one set of shapes from start to end: it never
// answers with no rows and an advanced cursor, which would make the
// client skip those rows for good.
func TestPullDuringRecheckSeesEveryShape(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		lists := shapes.ShapeConfig{Key: "lists", KeyFields: []string{"listId"}, Fields: []string{"name"}}
		f := testkit.OpenStore(t, b.Open(t, testkit.SeedTable,
			`CREATE TABLE lists (listId text PRIMARY KEY, name text, userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz)`),
			testkit.TodosShape, lists)
		testkit.WantOutcomes(t, f.Push("alice",
			testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"a","done":false,"deleted":false}`),
			testkit.Change("lists", testkit.At(1), `{"listId":"l1","name":"groceries"}`)), "applied,applied")

		var wg sync.WaitGroup
		var done atomic.Bool
		var pulls, bad atomic.Int64
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Until the pulls end: the race needs a forget between a
			// pull's taking the shapes and its reading them.
			for i := 0; i < 1e9 && !done.Load(); i++ {
				f.Store.ForgetShapes()
			}
		}()
		const pullers = 12
		deadline := time.Now().Add(4 * time.Second)
		errs := make(chan error, pullers+1)
		for p := 0; p < pullers; p++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 20000 && time.Now().Before(deadline); i++ {
					rows, res, err := testkit.PullStore(f.Store, "alice", time.Unix(0, 0), 0)
					pulls.Add(1)
					if err != nil {
						errs <- err
						return
					}
					if len(rows) != 2 && res.Cursor.After(time.Unix(0, 0)) {
						if bad.Add(1) == 1 {
							errs <- fmt.Errorf("a pull answered %d rows with cursor %v, want both rows", len(rows), res.Cursor)
						}
					}
				}
			}()
		}
		time.Sleep(10 * time.Millisecond)
		for time.Now().Before(deadline) && pulls.Load() < 200000 {
			time.Sleep(10 * time.Millisecond)
		}
		done.Store(true)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		t.Logf("%d pulls while the shapes were forgotten and checked again; %d bad", pulls.Load(), bad.Load())
	})
}
