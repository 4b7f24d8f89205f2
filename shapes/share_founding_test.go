package shapes_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
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
		{"its tables truncated", func(t *testing.T, f *testkit.Fixture) {
			testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Todo(2, "t1", "L", "alice's")), "applied,applied")
			if _, sqlite := testkit.IsSQLite(f.DSN); sqlite {
				testkit.Exec(t, f.DSN, `DELETE FROM todos`, `DELETE FROM list_members`) // SQLite's TRUNCATE
			} else {
				testkit.Exec(t, f.DSN, `TRUNCATE todos, list_members`)
			}
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

// The database refuses a founding membership (a foreign key to lists,
// which memberships are written before): the rest of the push is decided
// again without it, and the list is not left without members for a
// stranger to found.
func TestSharedRefusedMembershipIsDecidedAgain(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	testkit.Exec(t, f.DSN, `ALTER TABLE list_members ADD FOREIGN KEY ("listId") REFERENCES lists ("listId")`)
	testkit.WantOutcomes(t, f.Push("alice",
		testkit.Todo(1, "t1", "L", "secret"),
		testkit.List(2, "L", "groceries"),
		testkit.Member(3, "L", "alice", false)), "rejected:forbidden,rejected:forbidden,rejected:invalid-payload")
	// nothing of L was written, so there is nothing for a stranger to find
	testkit.WantOutcomes(t, f.Push("mallory", testkit.Member(4, "L", "mallory", false)), "rejected:invalid-payload")
	for _, r := range f.NewDevice("mallory").Sync() {
		t.Errorf("mallory pulled %s", r.Raw)
	}
	if rows := rowsOf(t, f, "alice"); len(rows) != 0 {
		t.Errorf("alice's refused push left rows: %+v", rows)
	}
}

// Many memberships the database refuses (scopes too long for the key's
// index) beside good ones: every refused one is rejected alone, and the
// good ones are applied, in one decision again, not one per refusal.
func TestSharedManyRefusedMemberships(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	var changes []shapes.Change
	const n = 100
	for i := 0; i < n; i++ {
		changes = append(changes, testkit.Member(i, fmt.Sprintf("ok%d", i), "alice", false))
	}
	for i := 0; i < n; i++ {
		changes = append(changes, testkit.Member(n+i, fmt.Sprintf("%d", i)+randomText(9000), "alice", false))
	}
	start := time.Now()
	res := f.Push("alice", changes...)
	t.Logf("%d good and %d refused memberships: %v", n, n, time.Since(start))
	want := strings.TrimSuffix(strings.Repeat("applied,", n)+strings.Repeat("rejected:invalid-payload,", n), ",")
	testkit.WantOutcomes(t, res, want)
}

// randomText is n random letters and digits, which no compressor shrinks.
func randomText(n int) string {
	b := make([]byte, n)
	x := uint64(88172645463325252)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[x%62]
	}
	return string(b)
}
