package shapes_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// Permissions follow the order in which the server applies membership
// changes, not device clocks. Bob, a member, dates his own membership 23
// hours ahead; alice removes him a moment later, with her own clock: the
// removal wins, bob can neither read nor write the list, his device gets
// the move-out, and alice's device applies her removal as the newer
// version. Alice can add him again later, with her clock, too.
func TestMembershipFollowsServerOrder(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false), testkit.Todo(3, "t1", "L", "milk")),
			"applied,applied,applied")
		bob, alice := f.NewDevice("bob"), f.NewDevice("alice")
		bob.Sync()
		ahead := int((23 * time.Hour) / time.Millisecond)
		testkit.WantOutcomes(t, f.Push("bob", testkit.Member(ahead, "L", "bob", false)), "applied")
		alice.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(10, "L", "bob", true)), "applied")
		testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(11, "t1", "L", "bob was here")), "rejected:forbidden")
		bob.Sync()
		bob.WantLive(t)
		alice.Sync()
		if m := alice.Rows["list_members/L/bob"]; m.Payload["deleted"] != true {
			t.Fatalf("alice's device holds bob's membership %s, want her removal", m.Raw)
		}
		// added again by alice's clock, which is behind bob's
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(20, "L", "bob", false)), "applied")
		bob.Sync()
		bob.WantLive(t, "list_members/L/alice", "list_members/L/bob", "todos/t1")
		testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(21, "t1", "L", "bob again")), "applied")
		// a change that changes nobody's membership is last-write-wins:
		// alice's older re-add is stale, and writes nothing
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(19, "L", "bob", false)), "stale")
	})
}

// A push of one row a thousand times (new changeIds, rising updatedAt)
// into a scope of a thousand members stamps each member once: its round
// trips to PostgreSQL do not grow with the changes. Before, every change
// after the first took a stamp of every member: the push took over 10 s
// and answered 503.
func TestPushOfOneRowManyTimesStampsOnce(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	f := testkit.OpenStore(t, dsn, testkit.ListShapes()...)
	var members []shapes.Change
	members = append(members, testkit.Member(0, "L", "alice", false))
	for i := 1; i < 1000; i++ {
		members = append(members, testkit.Member(i, "L", fmt.Sprintf("m%04d", i), false))
	}
	testkit.WantOutcomes(t, f.Push("alice", members[:1]...), "applied")
	f.Push("alice", members[1:]...)
	db, turns, err := testkit.OpenCountingRoundTrips(dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Destruct() })
	st := testkit.NewStore(t, db, testkit.ListShapes()...)
	if err := st.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	at := 2000
	push := func(n int) (int64, time.Duration) {
		var changes []shapes.Change
		for i := 0; i < n; i++ {
			at++
			changes = append(changes, testkit.Todo(at, "t1", "L", fmt.Sprintf("version %d", i)))
		}
		results := make([]shapes.Result, n)
		before, start := turns(), time.Now()
		if _, err := st.Push(context.Background(), "alice", changes, results); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		for i, r := range results {
			if r.Outcome != shapes.Applied {
				t.Fatalf("change %d: %+v", i, r)
			}
		}
		return turns() - before, took
	}
	one, _ := push(1)
	many, took := push(1000)
	t.Logf("1 change: %d round trips; 1,000 changes of one row: %d round trips, %v", one, many, took)
	if many > one+1 {
		t.Fatalf("1,000 changes of one row took %d round trips, one change %d: want no more", many, one)
	}
}

// A shared push that keeps conflicting with concurrent writers is
// ErrUnavailable after its retries (503 with Retry-After), as a per-user
// push is: one policy for both.
func TestSharedPushThatKeepsConflictingIsUnavailable(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	testkit.Exec(t, f.DSN, `CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'made to conflict' USING ERRCODE = '40P01'; END $$`,
		`CREATE TRIGGER conflict BEFORE INSERT OR UPDATE ON todos FOR EACH ROW EXECUTE FUNCTION conflict()`)
	results := make([]shapes.Result, 2)
	_, err := f.Store.Push(context.Background(), "alice", []shapes.Change{testkit.Member(1, "L", "alice", false), testkit.Todo(2, "t1", "L", "x")}, results)
	if !errors.Is(err, shapes.ErrUnavailable) {
		t.Fatalf("push = %v, want ErrUnavailable", err)
	}
}

// A member who dates their own membership at the end of time can still be
// removed: the removal applies in server order, dated at the end of time
// too (the latest updatedAt every store and the wire can carry), which
// devices apply as a tie. They can then neither read nor write the list.
func TestMemberDatedAtTheEndOfTimeCanBeRemoved(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
			testkit.Todo(3, "t1", "L", "v0")), "applied,applied,applied")
		end := time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC)
		testkit.WantOutcomes(t, f.Push("bob", testkit.Change("list_members", end, `{"listId":"L","memberId":"bob","deleted":false}`)), "applied")
		alice := f.NewDevice("alice")
		alice.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(10, "L", "bob", true)), "applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(11, "t2", "L", "after bob's removal")), "applied")
		for _, r := range f.NewDevice("bob").Sync() {
			if testkit.RowKey(r) == "todos/t2" {
				t.Errorf("bob, removed, still receives rows of L: %s", r.Raw)
			}
		}
		testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(12, "t3", "L", "bob writes on")), "rejected:forbidden")
		alice.Sync()
		if got := alice.Rows["list_members/L/bob"]; got.Payload["deleted"] != true {
			t.Errorf("alice's device still shows bob as a member: %s at %s", got.Raw, got.UpdatedAt)
		}
	})
}
