package shapes_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// Cases an independent review of the sharing rules found, each a test
// that failed before its fix.

// Removing one who is not a member changes nothing: neither a removed
// member removed again nor a stranger "removed" receives move-out of the
// rows created since.
func TestSharedRemovingANonMemberSendsNothing(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
			testkit.Todo(3, "t1", "L", "milk")), "applied,applied,applied")
		bob, carol := f.NewDevice("bob"), f.NewDevice("carol")
		bob.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(10, "L", "bob", true)), "applied")
		bob.Sync()
		bob.WantLive(t)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(20, "secret", "L", "s")), "applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(21, "L", "bob", true), testkit.Member(22, "L", "carol", true)), "stale,stale")
		testkit.NextMillisecond()
		testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(30, "pb", "", "x")), "applied")
		testkit.WantOutcomes(t, f.Push("carol", testkit.Todo(31, "pc", "", "x")), "applied")
		for _, d := range []*testkit.Device{bob, carol} {
			for _, r := range d.Sync() {
				if r.Payload["listId"] == "L" {
					t.Errorf("%s got %s of list L", d.User, r.Raw)
				}
			}
		}
	})
}

// A member removed, and then the row moved away (or made private) before
// they pulled: the removal still brings its tombstone.
func TestSharedRemovalThenMoveSendsTombstone(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice",
			testkit.Member(1, "A", "alice", false), testkit.Member(2, "A", "bob", false), testkit.Member(3, "B", "alice", false),
			testkit.Todo(4, "t1", "A", "milk"), testkit.Todo(5, "t2", "A", "eggs")), "applied,applied,applied,applied,applied")
		bob := f.NewDevice("bob")
		bob.Sync()
		bob.WantLive(t, "list_members/A/alice", "list_members/A/bob", "todos/t1", "todos/t2")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(10, "A", "bob", true)), "applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(11, "t1", "B", "milk"), testkit.Todo(12, "t2", "", "eggs")), "applied,applied")
		bob.Sync()
		bob.WantLive(t)
	})
}

// A scope whose database equality is wider than its text (numeric: 1.0 =
// 1.00) could be founded again by a stranger: such a scope column is
// refused.
func TestSharedScopeColumnMustCompareByText(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		dsn := b.Open(t,
			`CREATE TABLE list_members (listId numeric NOT NULL, memberId text NOT NULL, deleted boolean,
				userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz, scopedAt timestamptz, PRIMARY KEY (listId, memberId))`)
		db := testkit.OpenDB(t, dsn)
		st := testkit.NewStore(t, db, shapes.ShapeConfig{Key: "list_members", KeyFields: []string{"listId", "memberId"}, Fields: []string{"deleted"},
			Share: &shapes.ShareConfig{Field: "listId", Via: "list_members", Member: "memberId"}})
		var se *shapes.SchemaError
		if err := st.Check(context.Background()); !asSchemaError(err, &se) || se.Role != shapes.RoleScope {
			t.Fatalf("check = %v, want the scope column refused", err)
		}
	})
}

func asSchemaError(err error, se **shapes.SchemaError) bool {
	e, ok := err.(*shapes.SchemaError)
	*se = e
	return ok
}

// One who joins a scope after a row left it receives nothing of that row;
// one removed in the push that creates a row receives nothing of it.
func TestSharedLateJoinerGetsNoTombstoneOfEarlierMoves(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice",
			testkit.Member(1, "A", "alice", false), testkit.Member(2, "B", "alice", false), testkit.Member(3, "A", "dave", false),
			testkit.Todo(4, "t1", "A", "secret")), "applied,applied,applied,applied")
		dave := f.NewDevice("dave")
		dave.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(5, "t1", "B", "secret")), "applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(6, "A", "carol", false)), "applied")
		carol := f.NewDevice("carol")
		for _, r := range carol.Sync() {
			if r.Payload["todoId"] == "t1" {
				t.Errorf("carol, who joined A after t1 left it, got %s", r.Raw)
			}
		}
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(7, "A", "dave", true), testkit.Todo(8, "t5", "A", "after")), "applied,applied")
		for _, r := range dave.Sync() {
			if r.Payload["todoId"] == "t5" {
				t.Errorf("dave got %s, created with his removal", r.Raw)
			}
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

// A write from outside hypersync into a shared row, still uncommitted
// while another member pushes and pulls, reaches that member once it
// commits: the stamping trigger locked their cursor too.
func TestSharedOutsideWriteReachesEveryMember(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
		testkit.Todo(3, "t1", "L", "milk")), "applied,applied,applied")
	bob := f.NewDevice("bob")
	bob.Sync()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE todos SET title = 'from the backend' WHERE "todoId" = 't1'`); err != nil {
		t.Fatal(err)
	}
	pushed := make(chan []shapes.Result)
	go func() {
		results := make([]shapes.Result, 1)
		_, err := f.Store.Push(ctx, "bob", []shapes.Change{testkit.Todo(10, "p1", "", "mine")}, results)
		if err != nil {
			t.Error(err)
		}
		pushed <- results
	}()
	// bob's push waits on his cursor, which the open transaction holds
	select {
	case <-pushed:
		t.Fatal("bob's push did not wait for the outside write that can be seen by him")
	case <-time.After(200 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.WantOutcomes(t, <-pushed, "applied")
	bob.Sync()
	if got := bob.Rows["todos/t1"].Payload["title"]; got != "from the backend" {
		t.Fatalf("bob holds t1 %q, want the outside write", got)
	}
}

// The scope lock: a write into a scope waits for a membership change of it
// that has not committed, and then stamps the new member's cursor too.
// Without the lock, the writer reads the members before the change, and
// the new member's cursor stays below the row's stamp: a pull of theirs
// could pass the row while it commits.
func TestSharedWriteWaitsForMembershipChange(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "X", "alice", false), testkit.Member(2, "X", "wendy", false)), "applied,applied")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// a backend adds jack, and has not committed yet
	if _, err := tx.Exec(ctx, `INSERT INTO list_members ("listId", "memberId", deleted, "userId") VALUES ('X', 'jack', false, 'backend')`); err != nil {
		t.Fatal(err)
	}
	done := make(chan []shapes.Result)
	go func() {
		results := make([]shapes.Result, 1)
		if _, err := f.Store.Push(ctx, "wendy", []shapes.Change{testkit.Todo(3, "t1", "X", "milk")}, results); err != nil {
			t.Error(err)
		}
		done <- results
	}()
	// the push waits on the scope lock the backend's insert holds: commit
	// only once it does, or the test would pass without the lock
	waitForLockWait(t, f.DSN)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.WantOutcomes(t, <-done, "applied")
	var cursor, stamp time.Time
	if err := testkit.Query(f.DSN, `SELECT (SELECT stamp FROM hypersync_cursors WHERE user_id = 'jack'), (SELECT "lastSyncAt" FROM todos WHERE "todoId" = 't1')`,
		func(scan func(...any) error) error { return scan(&cursor, &stamp) }); err != nil {
		t.Fatal(err)
	}
	if cursor.Before(stamp) {
		t.Fatalf("jack's cursor %v is below the stamp %v of a row he can see", cursor, stamp)
	}
}

// waitForLockWait waits, for at most a minute, until a session of the
// database waits for an advisory lock.
func waitForLockWait(t *testing.T, dsn string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		waiting := 0
		if err := testkit.Query(dsn, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`,
			func(scan func(...any) error) error { return scan(&waiting) }); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("after a minute, no session waits for a scope lock")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
