package shapes_test

import (
	"strings"
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
)

// Founding a scope is only for a scope that nothing is, or ever was, in:
// the founder would receive everything in it. Each case leaves scope L
// with something in it, or with the trace of something, and no
// membership row; mallory's founding is forbidden and she pulls nothing
// of L.
func TestFoundingOnlyAScopeNothingWasIn(t *testing.T) {
	cases := []struct {
		name string
		// setup leaves L without memberships, as a backend or an admin
		// would; sql runs on the test's database
		setup func(t *testing.T, f *testkit.Fixture)
	}{
		{"rows a backend wrote before any membership", func(t *testing.T, f *testkit.Fixture) {
			testkit.Exec(t, f.DSN, `INSERT INTO todos ("todoId", "listId", title, "userId") VALUES ('b1', 'L', 'from the backend', 'backend')`)
		}},
		{"memberships deleted, rows left", func(t *testing.T, f *testkit.Fixture) {
			testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Todo(2, "t1", "L", "alice's")), "applied,applied")
			testkit.Exec(t, f.DSN, `DELETE FROM list_members WHERE "listId" = 'L'`)
		}},
		{"memberships and rows deleted", func(t *testing.T, f *testkit.Fixture) {
			testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Todo(2, "t1", "L", "alice's")), "applied,applied")
			testkit.Exec(t, f.DSN, `DELETE FROM todos WHERE "listId" = 'L'`, `DELETE FROM list_members WHERE "listId" = 'L'`)
		}},
		{"rows deleted by a backend that never had members", func(t *testing.T, f *testkit.Fixture) {
			testkit.Exec(t, f.DSN, `INSERT INTO todos ("todoId", "listId", title, "userId") VALUES ('b1', 'L', 'from the backend', 'backend')`,
				`DELETE FROM todos WHERE "todoId" = 'b1'`)
		}},
		{"a row moved out of it", func(t *testing.T, f *testkit.Fixture) {
			testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "M", "alice", false)), "applied")
			testkit.Exec(t, f.DSN, `INSERT INTO todos ("todoId", "listId", title, "userId") VALUES ('b1', 'L', 'from the backend', 'backend')`,
				`UPDATE todos SET "listId" = 'M' WHERE "todoId" = 'b1'`)
		}},
		{"every member removed", func(t *testing.T, f *testkit.Fixture) {
			testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Todo(2, "t1", "L", "alice's")), "applied,applied")
			testkit.WantOutcomes(t, f.Push("alice", testkit.Member(3, "L", "alice", true)), "applied")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
				f := sharedLists(t, b)
				c.setup(t, f)
				testkit.WantOutcomes(t, f.Push("mallory", testkit.Member(10, "L", "mallory", false)), "rejected:forbidden")
				for _, r := range f.NewDevice("mallory").Sync() {
					if r.Payload["listId"] == "L" {
						t.Errorf("mallory pulled %s", r.Raw)
					}
				}
			})
		})
	}
	// and a scope nothing was ever in is still founded, with its rows
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.Exec(t, f.DSN, `INSERT INTO todos ("todoId", "listId", title, "userId") VALUES ('b1', 'L', 'from the backend', 'backend')`)
		testkit.WantOutcomes(t, f.Push("mallory", testkit.Member(10, "N", "mallory", false), testkit.Todo(11, "m1", "N", "mine")), "applied,applied")
		var got []string
		for _, r := range f.NewDevice("mallory").Sync() {
			got = append(got, testkit.RowKey(r))
		}
		if strings.Join(got, " ") != "todos/m1 list_members/N/mallory" && strings.Join(got, " ") != "list_members/N/mallory todos/m1" {
			t.Fatalf("mallory pulled %v, want her new list", got)
		}
	})
}
