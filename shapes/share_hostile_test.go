package shapes_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// hostileLists opens the list shapes with alice and bob in list A, carol
// alone in list C, a todo in each, and a private todo of carol.
func hostileLists(t *testing.T, b testkit.Backend) *testkit.Fixture {
	t.Helper()
	f := sharedLists(t, b)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "A", "alice", false), testkit.Member(2, "A", "bob", false), testkit.Todo(3, "a1", "A", "alice's")),
		"applied,applied,applied")
	testkit.WantOutcomes(t, f.Push("carol", testkit.Member(1, "C", "carol", false), testkit.Todo(3, "c1", "C", "carol's"), testkit.Todo(4, "p1", "", "carol's private")),
		"applied,applied,applied")
	return f
}

// tables renders every row of the shared tables, to compare before and
// after a hostile push.
func tables(t *testing.T, f *testkit.Fixture) string {
	t.Helper()
	var rows []string
	for _, q := range []string{
		`SELECT "todoId", coalesce("listId", '-'), coalesce(title, '-'), "userId", CAST("updatedAt" AS TEXT), CAST("lastSyncAt" AS TEXT) FROM todos`,
		`SELECT "listId", "memberId", CAST(deleted AS TEXT), "userId", CAST("updatedAt" AS TEXT), CAST("lastSyncAt" AS TEXT) FROM list_members`,
	} {
		err := testkit.Query(f.DSN, q, func(scan func(...any) error) error {
			var a, b, c, d, e, g string
			if err := scan(&a, &b, &c, &d, &e, &g); err != nil {
				return err
			}
			rows = append(rows, strings.Join([]string{a, b, c, d, e, g}, "|"))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(rows)
	return strings.Join(rows, "\n")
}

// wantUnchanged pushes changes as user, wants the outcomes, and wants
// the tables unchanged.
func wantUnchanged(t *testing.T, f *testkit.Fixture, user, outcomes string, changes ...shapes.Change) {
	t.Helper()
	before := tables(t, f)
	testkit.WantOutcomes(t, f.Push(user, changes...), outcomes)
	if after := tables(t, f); after != before {
		t.Fatalf("a rejected push changed rows:\nbefore\n%s\nafter\n%s", before, after)
	}
}

// The hostile cases of shared scopes, each on both stores: every one
// asserts the exact code and that nobody's rows changed.

func TestSharedHostileWriteIntoForeignScope(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		wantUnchanged(t, f, "alice", "rejected:forbidden,rejected:forbidden,rejected:forbidden",
			testkit.Todo(10, "c1", "C", "alice was here"),                                           // edit a row of C
			testkit.Todo(11, "new", "C", "alice was here"),                                          // create a row in C
			testkit.Change("todos", testkit.At(12), `{"todoId":"c1","title":"partial, no listId"}`)) // a payload without the scope
	})
}

func TestSharedHostileMoveIntoForeignScope(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		wantUnchanged(t, f, "alice", "rejected:forbidden", testkit.Todo(10, "a1", "C", "pushed to carol"))
	})
}

func TestSharedHostileMoveForeignRowIntoOwnScope(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		// another user's private row is theirs, as in a shape without share
		wantUnchanged(t, f, "alice", "rejected:forbidden,rejected:user-mismatch,rejected:user-mismatch",
			testkit.Todo(10, "c1", "A", "taken"),    // carol's shared row
			testkit.Todo(11, "p1", "A", "taken"),    // carol's private row
			testkit.Todo(12, "p1", "", "taken too")) // carol's private row, kept private
	})
}

func TestSharedHostileAddSelfToExistingScope(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		wantUnchanged(t, f, "alice", "rejected:forbidden,rejected:forbidden",
			testkit.Member(10, "C", "alice", false),
			testkit.Member(11, "C", "bob", false))
		// a scope whose members all left cannot be founded again
		testkit.WantOutcomes(t, f.Push("carol", testkit.Member(20, "C", "carol", true)), "applied")
		wantUnchanged(t, f, "alice", "rejected:forbidden", testkit.Member(21, "C", "alice", false))
		// and the rows of C stay out of alice's sight
		for _, r := range rowsOf(t, f, "alice") {
			if r.Payload["listId"] == "C" || r.Payload["todoId"] == "c1" {
				t.Fatalf("alice sees %s", r.Raw)
			}
		}
	})
}

func TestSharedHostileRemoveMemberOfForeignScope(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		wantUnchanged(t, f, "alice", "rejected:forbidden", testkit.Member(10, "C", "carol", true))
		wantUnchanged(t, f, "carol", "rejected:forbidden,rejected:forbidden", testkit.Member(10, "A", "bob", true), testkit.Member(11, "A", "alice", true))
	})
}

func TestSharedHostileScopeValues(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		wantUnchanged(t, f, "alice", "rejected:invalid-payload,rejected:invalid-payload,rejected:invalid-payload,rejected:invalid-payload",
			testkit.Change("todos", testkit.At(10), `{"todoId":"e1","listId":"","title":"empty scope"}`),
			testkit.Change("list_members", testkit.At(11), `{"listId":"","memberId":"alice","deleted":false}`),
			testkit.Change("todos", testkit.At(12), `{"todoId":"e2","listId":5,"title":"a number for a text scope"}`),
			testkit.Change("list_members", testkit.At(13), `{"listId":null,"memberId":"alice","deleted":false}`))
		// An unusual string is a scope like any other: founded by its
		// first member, and nobody else's business.
		odd := `L'; DROP TABLE todos; --\"列表🙂`
		testkit.WantOutcomes(t, f.Push("alice",
			testkit.Change("list_members", testkit.At(20), fmt.Sprintf(`{"listId":%q,"memberId":"alice","deleted":false}`, odd)),
			testkit.Change("todos", testkit.At(21), fmt.Sprintf(`{"todoId":"o1","listId":%q,"title":"odd"}`, odd))), "applied,applied")
		got := map[string]bool{}
		for _, r := range rowsOf(t, f, "alice") {
			got[fmt.Sprint(r.Payload["listId"])] = true
		}
		if !got[odd] {
			t.Fatalf("alice does not see her list %q: %v", odd, got)
		}
		for _, user := range []string{"bob", "carol"} {
			for _, r := range rowsOf(t, f, user) {
				if r.Payload["listId"] == odd {
					t.Fatalf("%s sees %s", user, r.Raw)
				}
			}
		}
	})
}

func TestSharedHostileMemberIDs(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		ids := []string{`o'brien "the quote"`, `émilie 🙂`, `a\b`, `alice `}
		var changes []shapes.Change
		for i, id := range ids {
			changes = append(changes, testkit.Change("list_members", testkit.At(10+i), fmt.Sprintf(`{"listId":"A","memberId":%q,"deleted":false}`, id)))
		}
		testkit.WantOutcomes(t, f.Push("alice", changes...), "applied,applied,applied,applied")
		for _, id := range ids {
			seen := false
			for _, r := range rowsOf(t, f, id) {
				seen = seen || r.Payload["todoId"] == "a1"
				if r.Payload["listId"] == "C" {
					t.Fatalf("%q sees %s", id, r.Raw)
				}
			}
			if !seen {
				t.Fatalf("member %q does not see the list's todo", id)
			}
		}
		// "alice " is not alice: a near-miss id gets nothing of C
		wantUnchanged(t, f, "alice ", "rejected:forbidden", testkit.Todo(30, "c1", "C", "near miss"))
	})
}

func TestSharedHostileMixedBatch(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		before := tables(t, f)
		testkit.WantOutcomes(t, f.Push("bob",
			testkit.Todo(10, "a1", "A", "bob's edit"),
			testkit.Todo(11, "c1", "C", "bob was here"),
			testkit.Todo(12, "a2", "A", "bob's new"),
			testkit.Member(13, "C", "bob", false),
			testkit.Todo(14, "a1", "C", "moved away"),
			testkit.Member(15, "A", "dave", false),
		), "applied,rejected:forbidden,applied,rejected:forbidden,rejected:forbidden,applied")
		after := tables(t, f)
		// only A changed: a1 edited, a2 new, dave a member
		for _, line := range strings.Split(before, "\n") {
			if !strings.HasPrefix(line, "a1|") && !strings.Contains(after, line) {
				t.Fatalf("row %q changed:\n%s", line, after)
			}
		}
		for _, want := range []string{"a1|A|bob's edit|bob|", "a2|A|bob's new|bob|", "A|dave|"} {
			if !strings.Contains(after, want) {
				t.Fatalf("missing %q in\n%s", want, after)
			}
		}
	})
}

// rowsOf pulls everything user can see.
func rowsOf(t *testing.T, f *testkit.Fixture, user string) []testkit.Pulled {
	t.Helper()
	rows, _ := f.Pull(user, time.Unix(0, 0))
	return rows
}
