package shapes_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

func TestPagedPull(t *testing.T) {
	lists := shapes.ShapeConfig{Key: "lists", KeyFields: []string{"listId"}, Fields: []string{"name"}}
	testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t, testkit.SeedDDL, `CREATE TABLE lists (listId text PRIMARY KEY, name text, userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz)`), testkit.TodosShape, lists)
		// Five pushes of 3, 4, 1, 5 and 2 changes, over both shapes. Each
		// push stamps its rows alike.
		pushOf := map[string]int{}
		n := 0
		for p, size := range []int{3, 4, 1, 5, 2} {
			var changes []shapes.Change
			for i := 0; i < size; i++ {
				n++
				if n%3 == 0 {
					changes = append(changes, testkit.Change("lists", testkit.At(n), fmt.Sprintf(`{"listId":"l%d","name":"list"}`, n)))
					pushOf[fmt.Sprintf("lists/l%d", n)] = p
				} else {
					changes = append(changes, testkit.Change("todos", testkit.At(n), fmt.Sprintf(`{"todoId":"t%d","title":"todo"}`, n)))
					pushOf[fmt.Sprintf("todos/t%d", n)] = p
				}
			}
			f.Push("alice", changes...)
			testkit.NextMillisecond()
		}
		_, full := f.Pull("alice", time.Unix(0, 0))

		for _, limit := range []int{1, 2, 4, 100} {
			t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
				seen := map[string]int{} // row -> page
				since := time.Unix(0, 0)
				pages := 0
				for {
					pages++
					if pages > 50 {
						t.Fatal("paging does not end")
					}
					var rows []string
					pulled, res, err := testkit.PullStore(f.Store, "alice", since, limit)
					if err != nil {
						t.Fatal(err)
					}
					for _, r := range pulled {
						key := map[string]string{"todos": "todoId", "lists": "listId"}[r.Shape]
						rows = append(rows, r.Shape+"/"+r.Payload[key].(string))
					}
					if len(rows) == 0 && res.HasMore {
						t.Fatal("an empty page says more is coming")
					}
					for _, r := range rows {
						if _, dup := seen[r]; dup {
							t.Fatalf("row %s came twice", r)
						}
						seen[r] = pages
					}
					if !res.Cursor.After(since) && res.HasMore {
						t.Fatalf("the cursor did not move: %v", res.Cursor)
					}
					since = res.Cursor
					if !res.HasMore {
						break
					}
				}
				if len(seen) != n {
					t.Fatalf("%d rows over %d pages, want %d", len(seen), pages, n)
				}
				if !since.Equal(full) {
					t.Fatalf("the last page ends at %v, the full pull at %v", since, full)
				}
				// one push, one page
				pageOfPush := map[int]int{}
				for r, page := range seen {
					p := pushOf[r]
					if prev, ok := pageOfPush[p]; ok && prev != page {
						t.Fatalf("push %d was split across pages %d and %d", p, prev, page)
					}
					pageOfPush[p] = page
				}
				if limit == 1 && pages != 5 {
					t.Fatalf("limit 1 took %d pages, want one per push (5)", pages)
				}
			})
		}
	})
}
