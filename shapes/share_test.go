package shapes_test

import (
	"time"

	"testing"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/shapes"

	"github.com/hypersync/hypersync/internal/testkit"
)

// sharedLists opens the sharing issue's three shapes on an empty database.
func sharedLists(t *testing.T, b testkit.Backend) *testkit.Fixture {
	t.Helper()
	return testkit.OpenStore(t, b.Open(t), testkit.ListShapes()...)
}

// TestSharedListLifecycle walks the story: alice founds a list
// offline and shares it in one push, bob sees it, edits it, is removed,
// and then sees nothing more of it; carol never sees anything.
func TestSharedListLifecycle(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		alice, bob, carol := f.NewDevice("alice"), f.NewDevice("bob"), f.NewDevice("carol")

		// Offline: a list, alice as its first member, bob invited, two
		// todos. One push, in an order where the todos come first.
		testkit.WantOutcomes(t, f.Push("alice",
			testkit.Todo(1, "t1", "L", "milk"),
			testkit.List(2, "L", "groceries"),
			testkit.Member(3, "L", "alice", false),
			testkit.Member(4, "L", "bob", false),
			testkit.Todo(5, "t2", "L", "eggs"),
		), "applied,applied,applied,applied,applied")
		all := []string{"lists/L", "todos/t1", "todos/t2", "list_members/L/alice", "list_members/L/bob"}
		alice.Sync()
		alice.WantLive(t, all...)
		bob.Sync()
		bob.WantLive(t, all...)
		carol.Sync()
		carol.WantLive(t)

		// bob edits a todo; alice sees the edit, authored by bob.
		testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(10, "t1", "L", "oat milk")), "applied")
		got := alice.Sync()
		if len(got) != 1 || got[0].Payload["title"] != "oat milk" || got[0].User != "bob" {
			t.Fatalf("alice pulled %+v, want bob's edit of t1", got)
		}

		// alice removes bob: bob's next pull brings tombstones of
		// everything in the list, with nothing else of the rows.
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(20, "L", "bob", true)), "applied")
		got = bob.Sync()
		bob.WantLive(t)
		for _, r := range got {
			if r.Shape == "todos" && (r.Payload["title"] != nil || len(r.Payload) != 3) {
				t.Fatalf("move-out sent %s, want only the key, the scope and the tombstone", r.Raw)
			}
		}
		if n := len(got); n != 5 {
			t.Fatalf("move-out sent %d changes, want one per row of the list (5): %+v", n, got)
		}
		// Once: the next pull brings nothing, even after new writes.
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(30, "t3", "L", "bread"), testkit.Todo(31, "t1", "L", "soy milk")), "applied,applied")
		if got := bob.Sync(); len(got) != 0 {
			t.Fatalf("bob, removed, pulled %+v", got)
		}
		if _, ok := bob.Rows["todos/t3"]; ok {
			t.Fatal("a row created after bob left reached him")
		}
		// And bob can no longer write into it.
		testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(40, "t1", "L", "beer"), testkit.Todo(41, "t9", "L", "chips")),
			"rejected:forbidden,rejected:forbidden")
		alice.Sync()
		if alice.Rows["todos/t1"].Payload["title"] != "soy milk" {
			t.Fatalf("alice holds %v", alice.Rows["todos/t1"].Payload)
		}
		carol.Sync()
		carol.WantLive(t)

		// bob re-invited: move-in brings every row again, whatever its stamp.
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(50, "L", "bob", false)), "applied")
		bob.Sync()
		bob.WantLive(t, append(all, "todos/t3")...)
		if bob.Rows["todos/t1"].Payload["title"] != "soy milk" {
			t.Fatalf("bob holds %v after move-in", bob.Rows["todos/t1"].Payload)
		}
	})
}

// TestSharedMoveBetweenScopes: a row that moves from one list to another
// reaches the new list's members, and is a tombstone, once, for the old
// list's members who cannot see the new one.
func TestSharedMoveBetweenScopes(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice",
			testkit.Member(1, "A", "alice", false), testkit.Member(2, "A", "bob", false),
			testkit.Member(3, "B", "alice", false), testkit.Member(4, "B", "carol", false),
			testkit.Todo(5, "t1", "A", "milk"),
		), "applied,applied,applied,applied,applied")
		bob, carol := f.NewDevice("bob"), f.NewDevice("carol")
		bob.Sync()
		carol.Sync()
		bob.WantLive(t, "list_members/A/alice", "list_members/A/bob", "todos/t1")
		carol.WantLive(t, "list_members/B/alice", "list_members/B/carol")

		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(10, "t1", "B", "milk")), "applied")
		got := bob.Sync()
		if len(got) != 1 || got[0].Payload["deleted"] != true || got[0].Payload["listId"] != "A" || got[0].Payload["title"] != nil {
			t.Fatalf("bob pulled %+v, want t1's tombstone in list A", got)
		}
		bob.WantLive(t, "list_members/A/alice", "list_members/A/bob")
		carol.Sync()
		carol.WantLive(t, "list_members/B/alice", "list_members/B/carol", "todos/t1")
		if got := bob.Sync(); len(got) != 0 {
			t.Fatalf("the tombstone came again: %+v", got)
		}
		// Made private by its author: a tombstone for everyone else.
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(20, "t1", "", "milk")), "applied")
		carol.Sync()
		carol.WantLive(t, "list_members/B/alice", "list_members/B/carol")
		alice := f.NewDevice("alice")
		alice.Sync()
		if alice.Rows["todos/t1"].Payload["title"] != "milk" {
			t.Fatalf("alice lost her now private row: %v", alice.Rows)
		}
	})
}

// sharedRun runs the shared convergence on two stores of one database
// (two instances; on SQLite, two handlers of one store, since one process
// owns the file).
func sharedRun(t *testing.T, b testkit.Backend, perUserOnly bool) testkit.SharedReport {
	t.Helper()
	dsn := b.Open(t)
	stores := []*shapes.Store{testkit.OpenStore(t, dsn, testkit.ListShapes()...).Store}
	if _, lite := testkit.IsSQLite(dsn); lite {
		stores = append(stores, stores[0])
	} else {
		stores = append(stores, testkit.OpenStore(t, dsn, testkit.ListShapes()...).Store)
	}
	var urls []string
	for _, st := range stores {
		if perUserOnly {
			shapes.PerUserStampsOnly(st)
		}
		urls = append(urls, testkit.NewServer(t, st, handler.Config{Timeout: 30 * time.Second}).URL)
	}
	rep := testkit.ConvergeShared(t, testkit.SharedConvergence{Servers: urls, DSN: dsn, Pushers: 2, Pullers: 2, SQLWriter: true, Duration: 4 * time.Second,
		Enough: func(w testkit.Work) bool { return w.Pushed >= 600 && w.Pulls >= 100 && w.SQLWrites >= 40 }})
	t.Log(rep)
	return rep
}

// TestSharedPullCompletenessUnderConcurrency: members push into shared
// lists while others pull and memberships change, on two instances; at the
// end every puller holds exactly the final version of every todo its user
// can see, and nothing alive that it cannot.
func TestSharedPullCompletenessUnderConcurrency(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		rep := sharedRun(t, b, false)
		if rep.Checked < 500 || rep.Pushed < 300 {
			t.Fatalf("the run did too little to judge: %s", rep)
		}
		if rep.Misses > 0 || rep.Leaks > 0 {
			t.Fatalf("%s", rep)
		}
	})
}

// TestSharedConcurrencyCheckCatchesPerUserStamps: the same run with the
// fan-out switched off, each push stamping only its own user's cursor as
// before sharing, must lose rows: the proof that the test above can fail.
func TestSharedConcurrencyCheckCatchesPerUserStamps(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		// a row lost, or a removed member left holding a row alive
		if rep := sharedRun(t, b, true); rep.Misses == 0 && rep.Leaks == 0 {
			t.Fatalf("per-user stamps lost nothing: %s", rep)
		}
	})
}

// TestSharedOutsideWrites: rows and memberships written straight into the
// database, as psql or a backend job would, reach every member, with
// move-in, move-out and moves, through the stamping triggers hypersync
// creates with the tables.
func TestSharedOutsideWrites(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
			testkit.Member(3, "M", "alice", false), testkit.Todo(4, "t1", "L", "milk")), "applied,applied,applied,applied")
		alice, bob, carol := f.NewDevice("alice"), f.NewDevice("bob"), f.NewDevice("carol")
		for _, d := range []*testkit.Device{alice, bob, carol} {
			d.Sync()
		}
		sql := func(stmt string) {
			t.Helper()
			if err := testkit.ExecNative(f.DSN, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
		sql(`INSERT INTO todos ("todoId", "listId", title, "userId") VALUES ('t2', 'L', 'from psql', 'backend')`)
		sql(`UPDATE todos SET title = 'fixed by an admin' WHERE "todoId" = 't1'`)
		for _, d := range []*testkit.Device{alice, bob} {
			d.Sync()
			if d.Rows["todos/t2"].Payload["title"] != "from psql" || d.Rows["todos/t1"].Payload["title"] != "fixed by an admin" {
				t.Fatalf("%s holds %v and %v", d.User, d.Rows["todos/t2"].Payload, d.Rows["todos/t1"].Payload)
			}
			if d.Rows["todos/t1"].UpdatedAt <= "2026-11-25T10:00:00.004Z" {
				t.Fatalf("the admin's fix kept updatedAt %s: devices would ignore it", d.Rows["todos/t1"].UpdatedAt)
			}
		}
		carol.Sync()
		carol.WantLive(t)

		// carol added by the backend: move-in
		sql(`INSERT INTO list_members ("listId", "memberId", deleted, "userId") VALUES ('L', 'carol', false, 'backend')`)
		carol.Sync()
		carol.WantLive(t, "list_members/L/alice", "list_members/L/bob", "list_members/L/carol", "todos/t1", "todos/t2")

		// bob removed by the backend: move-out
		sql(`UPDATE list_members SET deleted = true WHERE "memberId" = 'bob'`)
		bob.Sync()
		bob.WantLive(t)

		// t1 moved to M by the backend: a tombstone for carol, the row for alice
		sql(`UPDATE todos SET "listId" = 'M' WHERE "todoId" = 't1'`)
		carol.Sync()
		carol.WantLive(t, "list_members/L/alice", "list_members/L/carol", "todos/t2")
		alice.Sync()
		if alice.Rows["todos/t1"].Payload["listId"] != "M" {
			t.Fatalf("alice holds %v", alice.Rows["todos/t1"].Payload)
		}
	})
}
