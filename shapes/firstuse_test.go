package shapes_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/hypersync/hypersync/shapes"

	"github.com/hypersync/hypersync/internal/pgtest"
)

// Several instances starting at once against a fresh database all create
// the cursor table and, with create_table, the shape's table. PostgreSQL's
// CREATE TABLE IF NOT EXISTS is not safe against itself under concurrency
// (it can fail with "type already exists"), so none of them may fail.
func TestConcurrentFirstChecks(t *testing.T) {
	cfg := shapes.ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"body"}, CreateTable: true}
	for round := 0; round < 10; round++ {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			dsn := pgtest.NewDatabase(t)
			const instances = 8
			stores := make([]*shapes.Store, instances)
			for i := range stores {
				db, err := shapes.Open(dsn, shapes.Options{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = db.Destruct() })
				if err := db.Ping(context.Background()); err != nil {
					t.Fatal(err)
				}
				if stores[i], err = shapes.NewStore(db, []shapes.ShapeConfig{cfg}, nil); err != nil {
					t.Fatal(err)
				}
			}
			start := make(chan struct{})
			errs := make(chan error, instances)
			var wg sync.WaitGroup
			for _, st := range stores {
				wg.Add(1)
				go func(st *shapes.Store) {
					defer wg.Done()
					<-start
					errs <- st.Check(context.Background())
				}(st)
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("an instance failed its first check: %v", err)
				}
			}
		})
	}
}
