package shapes_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// BenchmarkSharedPush: a push of 300 new todos into one list of ten
// members, against a push of 300 new rows of a shape without sharing, in
// one process on PostgreSQL (go test ./shapes -run '^$' -bench SharedPush).
func BenchmarkSharedPush(b *testing.B) {
	dsn := pgtest.NewDatabase(b)
	st := testkit.NewStore(b, testkit.OpenDB(b, dsn), append(testkit.ListShapes(),
		shapes.ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"title", "done", "deleted"}, CreateTable: true,
			FieldTypes: map[string]string{"done": "boolean", "deleted": "boolean"}})...)
	ctx := context.Background()
	push := func(user string, changes []shapes.Change) {
		results := make([]shapes.Result, len(changes))
		if _, err := st.Push(ctx, user, changes, results); err != nil {
			b.Fatal(err)
		}
		for _, r := range results {
			if r.Outcome != shapes.Applied {
				b.Fatalf("%+v", r)
			}
		}
	}
	var members []shapes.Change
	for i := 0; i < 10; i++ {
		members = append(members, testkit.Member(i, "S", fmt.Sprintf("m%d", i), false))
	}
	push("m0", members)
	n := 0
	for _, shared := range []bool{true, false} {
		b.Run(fmt.Sprintf("shared=%v", shared), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				changes := make([]shapes.Change, 300)
				for j := range changes {
					n++
					if shared {
						changes[j] = testkit.Todo(n, fmt.Sprintf("t%d", n), "S", "Buy milk and bread for the week")
					} else {
						changes[j] = testkit.Change("notes", testkit.At(n), fmt.Sprintf(`{"noteId":"n%d","title":"Buy milk and bread for the week","done":false,"deleted":false}`, n))
					}
				}
				push("m0", changes)
			}
		})
	}
}

// BenchmarkPushOneRowManyTimes: a push of one row 1,000 times (new
// changeIds, rising updatedAt) into a scope of 1,000 members, on each
// store: the push stamps each member once, whatever the number of changes
// (go test ./shapes -run '^$' -bench OneRowManyTimes -benchtime 5x).
func BenchmarkPushOneRowManyTimes(b *testing.B) {
	for _, backend := range testkit.Stores() {
		b.Run(backend.Name, func(b *testing.B) {
			st := testkit.NewStore(b, testkit.OpenDB(b, backend.Open(b)), testkit.ListShapes()...)
			ctx := context.Background()
			push := func(changes []shapes.Change) {
				results := make([]shapes.Result, len(changes))
				if _, err := st.Push(ctx, "m0000", changes, results); err != nil {
					b.Fatal(err)
				}
				for _, r := range results {
					if r.Outcome != shapes.Applied {
						b.Fatalf("%+v", r)
					}
				}
			}
			var members []shapes.Change
			for i := 0; i < 1000; i++ {
				members = append(members, testkit.Member(i, "L", fmt.Sprintf("m%04d", i), false))
			}
			push(members[:1])
			push(members[1:])
			at := 1000
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				changes := make([]shapes.Change, 1000)
				for j := range changes {
					at++
					changes[j] = testkit.Todo(at, "t1", "L", fmt.Sprintf("version %d", j))
				}
				push(changes)
			}
		})
	}
}
