package shapes_test

import (
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// cursorOf reads a user's cursor as the database keeps it: "" when the
// user has none (no cursor row, or one at -infinity, which every reader
// takes for none).
func cursorOf(t *testing.T, f *testkit.Fixture, user string) string {
	t.Helper()
	var s string
	if err := testkit.Query(f.DSN, `SELECT CAST(stamp AS TEXT) FROM hypersync_cursors WHERE user_id = '`+user+`' AND CAST(stamp AS TEXT) <> '-infinity'`,
		func(scan func(...any) error) error { return scan(&s) }); err != nil {
		t.Fatal(err)
	}
	return s
}

// commits counts the pushes the store reports committed (what live sync
// pokes for), and the users they name.
func commits(f *testkit.Fixture) *[]string {
	var users []string
	f.Store.OnCommit = func(u []string, _ time.Time) { users = append(users, u...) }
	return &users
}

// A push that changes nothing (every change refused, or stale) stamps
// nobody and is reported to nobody: the 1.0.0 client resends a refused
// change at every sync, and a poke for it would make the device sync again
// at once, forever. Per-user shapes: a key of another user, a stale
// change, a bad value; a user with no cursor gets none.
func TestPushThatChangesNothingStampsNobody(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t, testkit.SeedTable), testkit.TodosShape)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Change("todos", testkit.At(10), `{"todoId":"t1","title":"a"}`)), "applied")
		before := cursorOf(t, f, "alice")
		poked := commits(f)
		cases := []struct {
			user, want string
			change     shapes.Change
		}{
			{"bob", "rejected:user-mismatch", testkit.Change("todos", testkit.At(20), `{"todoId":"t1","title":"bob's"}`)},
			{"alice", "stale", testkit.Change("todos", testkit.At(5), `{"todoId":"t1","title":"older"}`)},
			{"alice", "rejected:invalid-payload", testkit.Change("todos", testkit.At(30), `{"todoId":"t2","title":7}`)},
			{"alice", "stale,rejected:invalid-payload", testkit.Change("todos", testkit.At(5), `{"todoId":"t1","title":"older"}`)},
		}
		for _, c := range cases {
			changes := []shapes.Change{c.change}
			if c.want == "stale,rejected:invalid-payload" {
				changes = append(changes, testkit.Change("todos", testkit.At(31), `{"todoId":"t3","done":"no"}`))
			}
			testkit.WantOutcomes(t, f.Push(c.user, changes...), c.want)
		}
		if after := cursorOf(t, f, "alice"); after != before {
			t.Errorf("alice's cursor moved from %s to %s by pushes that changed nothing", before, after)
		}
		if c := cursorOf(t, f, "bob"); c != "" {
			t.Errorf("bob, whose only change was refused, has a cursor %s", c)
		}
		if len(*poked) != 0 {
			t.Errorf("pushes that changed nothing were reported committed for %v", *poked)
		}
		// and a push that applies a change is reported, as before
		testkit.WantOutcomes(t, f.Push("alice", testkit.Change("todos", testkit.At(40), `{"todoId":"t1","title":"newer"}`)), "applied")
		if after := cursorOf(t, f, "alice"); after == before || len(*poked) != 1 {
			t.Errorf("an applied push: cursor %s (was %s), reported for %v", after, before, *poked)
		}
	})
}

// The same in shared shapes: a push of forbidden and stale changes moves
// no member's cursor, makes none for a stranger, and is reported to
// nobody.
func TestSharedPushThatChangesNothingStampsNobody(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		before := map[string]string{}
		for _, u := range []string{"alice", "bob", "carol"} {
			before[u] = cursorOf(t, f, u)
		}
		poked := commits(f)
		wantUnchanged(t, f, "mallory", "rejected:forbidden,rejected:forbidden", testkit.Todo(10, "c1", "C", "x"), testkit.Member(11, "C", "mallory", false))
		wantUnchanged(t, f, "bob", "stale,rejected:forbidden", testkit.Todo(1, "a1", "A", "older"), testkit.Todo(12, "c1", "C", "x"))
		wantUnchanged(t, f, "alice", "rejected:user-mismatch", testkit.Todo(13, "p1", "", "carol's private, by alice"))
		for u, c := range before {
			if after := cursorOf(t, f, u); after != c {
				t.Errorf("%s's cursor moved from %s to %s", u, c, after)
			}
		}
		if c := cursorOf(t, f, "mallory"); c != "" {
			t.Errorf("mallory, all of whose changes were refused, has a cursor %s", c)
		}
		if len(*poked) != 0 {
			t.Errorf("pushes that changed nothing were reported committed for %v", *poked)
		}
	})
}

// A stranger's push that is wholly forbidden stamps no member of the
// scopes it names.
func TestSharedForbiddenPushStampsNobody(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		cursor := func() string {
			var s string
			testkit.Query(f.DSN, `SELECT CAST(stamp AS TEXT) FROM hypersync_cursors WHERE user_id = 'carol'`, func(scan func(...any) error) error { return scan(&s) })
			return s
		}
		before := cursor()
		testkit.NextMillisecond()
		wantUnchanged(t, f, "mallory", "rejected:forbidden,rejected:forbidden", testkit.Todo(10, "c1", "C", "x"), testkit.Member(11, "C", "mallory", false))
		if after := cursor(); after != before {
			t.Errorf("carol's cursor moved from %s to %s by mallory's forbidden push", before, after)
		}
	})
}
