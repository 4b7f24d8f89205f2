package shapes_test

// The locks and stamps that keep pulls of shared scopes complete.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
	"github.com/jackc/pgx/v5"
)

// A write from outside hypersync into a shared row, still uncommitted
// while another member pushes and pulls, reaches that member once it
// commits: the stamping trigger locks their cursor too.
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
	waitForLockWait(t, f.DSN, "transactionid")
	select {
	case <-pushed:
		t.Fatal("bob's push did not wait for the outside write that can be seen by him")
	default:
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
// that has not committed, and then stamps the new member's cursor too, so
// that the new member's cursor is never below the stamp of a row they can
// see. (Without the lock the writer would read the members before the
// change.)
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
	waitForLockWait(t, f.DSN, "advisory")
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
// database waits for a lock of the type locktype (pg_locks).
func waitForLockWait(t *testing.T, dsn, locktype string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		waiting := 0
		if err := testkit.Query(dsn, `SELECT count(*) FROM pg_locks WHERE locktype = '`+locktype+`' AND NOT granted`,
			func(scan func(...any) error) error { return scan(&waiting) }); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a minute, no session waits for a lock of type %s", locktype)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A member of 20 lists of 900 members each pushes one todo into each: one
// push stamps 18,001 cursors, within SQLite's bound on variables.
func TestSharedPushStampsManyMembers(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		var changes []shapes.Change
		for s := 0; s < 20; s++ {
			changes = append(changes, testkit.Member(s, fmt.Sprintf("L%d", s), "alice", false))
		}
		f.Push("alice", changes...)
		c := testkit.Connect(t, f.DSN)
		// setup only: the memberships go in without the stamping trigger
		if _, ok := testkit.IsSQLite(f.DSN); !ok {
			c.Exec(context.Background(), `SET hypersync.writer = 'hypersync'`)
		} else if _, err := c.Exec(context.Background(), `DROP TRIGGER "hypersync_stamp_list_members_insert"`); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(context.Background(), `INSERT INTO list_members ("listId", "memberId", deleted, "userId", "updatedAt", "lastSyncAt", "scopedAt")
			WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM g WHERE n < 18000)
			SELECT 'L' || (n % 20), 'm' || n, false, 'alice', '2026-11-25T10:00:00Z', '2026-11-25T10:00:00Z', '2026-11-25T10:00:00Z' FROM g`); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		defer func() { t.Logf("push took %v", time.Since(start)) }()
		changes = nil
		for s := 0; s < 20; s++ {
			changes = append(changes, testkit.Todo(100+s, fmt.Sprintf("t%d", s), fmt.Sprintf("L%d", s), "x"))
		}
		results := make([]shapes.Result, len(changes))
		if _, err := f.Store.Push(context.Background(), "alice", changes, results); err != nil {
			t.Fatalf("push into 20 lists of 900 members: %v", err)
		}
	})
}

// A push that inserts a row another transaction inserted meanwhile runs
// again from the start, and commits nothing of its first attempt: here t9
// was inserted into M by a backend while alice's push waited, so t9 is
// forbidden, and t5, which her push writes, is applied and reported, and
// pokes the list's members.
func TestRowInsertedMeanwhileRunsThePushAgain(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false)), "applied,applied")
	testkit.WantOutcomes(t, f.Push("carol", testkit.Member(3, "M", "carol", false)), "applied")
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
	if _, err := tx.Exec(ctx, `INSERT INTO todos ("todoId", "listId", title, "userId") VALUES ('t9', 'M', 'backend', 'backend')`); err != nil {
		t.Fatal(err)
	}
	poked := commits(f)
	done := make(chan []shapes.Result, 1)
	go func() {
		results := make([]shapes.Result, 2)
		if _, err := f.Store.Push(ctx, "alice", []shapes.Change{testkit.Todo(10, "t5", "L", "alice's"), testkit.Todo(11, "t9", "L", "alice's too")}, results); err != nil {
			t.Error(err)
		}
		done <- results
	}()
	waitForLockWait(t, f.DSN, "transactionid")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.WantOutcomes(t, <-done, "applied,rejected:forbidden")
	if len(*poked) == 0 {
		t.Error("t5 was committed, but the push was reported committed to nobody")
	}
}
