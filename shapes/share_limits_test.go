package shapes_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hypersync/hypersync/internal/codes"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// max_scopes_per_user bounds the scopes a user is an active member of, in
// one membership table: founding past it, and being added past it, are
// forbidden; a removal makes room again.
func TestMaxScopesPerUser(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		f.Store.MaxScopesPerUser = 3
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "A1", "alice", false), testkit.Member(2, "A2", "alice", false),
			testkit.Member(3, "A3", "alice", false), testkit.Member(4, "A4", "alice", false)), "applied,applied,applied,rejected:forbidden")
		testkit.WantOutcomes(t, f.Push("carol", testkit.Member(5, "C1", "carol", false), testkit.Member(6, "C2", "carol", false),
			testkit.Member(7, "C3", "carol", false)), "applied,applied,applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(8, "A1", "bob", false), testkit.Member(9, "A1", "carol", false)), "applied,rejected:forbidden")
		testkit.WantOutcomes(t, f.Push("carol", testkit.Member(10, "C3", "carol", true)), "applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(11, "A1", "carol", false)), "applied")
	})
}

// A flood of membership changes a user may not make (adding others to
// scopes that are not theirs, or to scopes nobody founded) takes no
// exclusive scope lock: it is refused without waiting on anyone, even
// while every scope lock is held in share mode by writes in flight, and
// it holds up nobody's writes.
func TestRefusedMembershipsTakeNoExclusiveLock(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "A", "alice", false)), "applied")
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
	defer tx.Rollback(ctx)
	// every scope lock of list_members, in share mode, as writes in flight hold them
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared(26745, k) FROM generate_series(0, 255) AS k`); err != nil {
		t.Fatal(err)
	}
	var flood []shapes.Change
	for i := 0; i < 1000; i++ {
		scope := "A"
		if i%2 == 1 {
			scope = fmt.Sprintf("random-%d", i)
		}
		flood = append(flood, testkit.Member(10+i, scope, fmt.Sprintf("victim%d", i), false))
	}
	done := make(chan []shapes.Result, 1)
	go func() {
		results := make([]shapes.Result, len(flood))
		if _, err := f.Store.Push(ctx, "mallory", flood, results); err != nil {
			t.Error(err)
		}
		done <- results
	}()
	select {
	case res := <-done:
		for i, r := range res {
			if r.Code != codes.Forbidden {
				t.Fatalf("change %d: %+v, want forbidden", i, r)
			}
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a push of refused memberships waited on scope locks held in share mode")
	}
	// a write into A takes A's lock in share mode beside them
	wrote := make(chan error, 1)
	go func() {
		results := make([]shapes.Result, 1)
		_, err := f.Store.Push(ctx, "alice", []shapes.Change{testkit.Todo(2000, "t1", "A", "milk")}, results)
		wrote <- err
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a member's write waited")
	}
}

// A founding of a scope something is in is refused without any exclusive
// lock too: it waits on no write in flight.
func TestRefusedFoundingTakesNoExclusiveLock(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	testkit.Exec(t, f.DSN, `INSERT INTO todos ("todoId", "listId", title, "userId") VALUES ('b1', 'L', 'from the backend', 'backend')`)
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
	defer tx.Rollback(ctx)
	// a write in flight into L holds its scope lock in share mode
	if _, err := tx.Exec(ctx, `UPDATE todos SET title = 'in flight' WHERE "todoId" = 'b1'`); err != nil {
		t.Fatal(err)
	}
	done := make(chan []shapes.Result, 1)
	go func() {
		results := make([]shapes.Result, 1)
		if _, err := f.Store.Push(ctx, "mallory", []shapes.Change{testkit.Member(10, "L", "mallory", false)}, results); err != nil {
			t.Error(err)
		}
		done <- results
	}()
	select {
	case res := <-done:
		testkit.WantOutcomes(t, res, "rejected:forbidden")
	case <-time.After(20 * time.Second):
		t.Fatal("a refused founding waited on a scope lock held in share mode")
	}
}

// max_scopes_per_user holds against pushes running at once: four pushes
// of 60 foundings each, released together, leave mallory in 100 scopes.
func TestMaxScopesPerUserUnderConcurrentPushes(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	f.Store.MaxScopesPerUser = 100
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
	// hold every scope lock, so that the four pushes pass their first
	// look and wait together for their locks
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared(26745, k) FROM generate_series(0, 255) AS k`); err != nil {
		t.Fatal(err)
	}
	const pushes, each = 4, 60
	var wg sync.WaitGroup
	for p := 0; p < pushes; p++ {
		var changes []shapes.Change
		for i := 0; i < each; i++ {
			changes = append(changes, testkit.Member(i, fmt.Sprintf("p%d-s%d", p, i), "mallory", false))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results := make([]shapes.Result, len(changes))
			if _, err := f.Store.Push(ctx, "mallory", changes, results); err != nil {
				t.Error(err)
			}
		}()
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		var waiting int
		testkit.Query(f.DSN, `SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`, func(scan func(...any) error) error { return scan(&waiting) })
		if waiting == pushes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d pushes wait", waiting)
		}
	}
	tx.Rollback(ctx)
	wg.Wait()
	var n int
	testkit.Query(f.DSN, `SELECT count(*) FROM list_members WHERE "memberId" = 'mallory' AND NOT deleted`, func(scan func(...any) error) error { return scan(&n) })
	if n != 100 {
		t.Errorf("mallory is an active member of %d scopes; max_scopes_per_user is 100", n)
	}
}
