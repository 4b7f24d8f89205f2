package shapes_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// A member removed, a row moved away while they were out, and the member
// added again: their device, which last pulled before the removal, gets
// the tombstone of the row that left (it holds it), and the rows still in
// the list.
func TestReAddedMemberGetsTombstoneOfRowThatLeft(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
			testkit.Member(3, "M", "alice", false), testkit.Todo(4, "t1", "L", "moves"), testkit.Todo(5, "t2", "L", "stays")),
			"applied,applied,applied,applied,applied")
		bob := f.NewDevice("bob")
		bob.Sync()
		bob.WantLive(t, "list_members/L/alice", "list_members/L/bob", "todos/t1", "todos/t2")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(10, "L", "bob", true)), "applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(11, "t1", "M", "moves")), "applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(12, "L", "bob", false)), "applied")
		bob.Sync()
		bob.WantLive(t, "list_members/L/alice", "list_members/L/bob", "todos/t2")
		// and the same when the row moved by a write from outside hypersync
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(20, "L", "bob", true)), "applied")
		testkit.Exec(t, f.DSN, `UPDATE todos SET "listId" = 'M' WHERE "todoId" = 't2'`)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(22, "L", "bob", false)), "applied")
		bob.Sync()
		bob.WantLive(t, "list_members/L/alice", "list_members/L/bob")
	})
}

// A removed member learns nothing written after their removal: the
// tombstone their device receives carries the updatedAt and author of the
// last version they could see, the same before and after others edit the
// row (by push, and from outside hypersync), and the device applies it.
// Pulls from the epoch bring them nothing of the list.
func TestMoveOutTellsNothingAfterTheRemoval(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
			testkit.Member(3, "L", "carol", false), testkit.Member(4, "M", "alice", false),
			testkit.Todo(5, "t1", "L", "edited later"), testkit.Todo(6, "t2", "L", "moved later"), testkit.Todo(7, "t3", "L", "edited from outside")),
			"applied,applied,applied,applied,applied,applied,applied")
		phone, laptop := f.NewDevice("bob"), f.NewDevice("bob")
		phone.Sync()
		laptop.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(10, "L", "bob", true)), "applied")
		tombstones := func(d *testkit.Device) map[string]string {
			out := map[string]string{}
			for _, r := range d.Sync() {
				out[testkit.RowKey(r)] = r.UpdatedAt + " by " + r.User
			}
			return out
		}
		first := tombstones(phone)
		phone.WantLive(t)
		// carol edits t1 twice and moves t2; a backend edits t1 too
		testkit.WantOutcomes(t, f.Push("carol", testkit.Todo(20, "t1", "L", "carol's edit")), "applied")
		testkit.Exec(t, f.DSN, `UPDATE todos SET title = 'from the backend' WHERE "todoId" = 't1'`,
			`UPDATE todos SET title = 'from the backend', "userId" = 'backend' WHERE "todoId" = 't3'`)
		later := testkit.Change("todos", time.Now().Add(time.Minute), `{"todoId":"t1","listId":"L","title":"carol again"}`)
		testkit.WantOutcomes(t, f.Push("carol", later), "applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(22, "t2", "M", "moved later")), "applied")
		second := tombstones(laptop)
		laptop.WantLive(t)
		for k, v := range first {
			if second[k] != v {
				t.Errorf("%s: the tombstone said %q right after the removal, and %q after later edits", k, v, second[k])
			}
		}
		if len(second) != len(first) {
			t.Errorf("tombstones after the edits %v, right after the removal %v", second, first)
		}
		for _, r := range f.NewDevice("bob").Sync() {
			if r.Payload["listId"] == "L" {
				t.Errorf("a pull from the epoch by bob, removed, brought %s", r.Raw)
			}
		}
	})
}

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
// they pulled: the removal brings the row's tombstone all the same.
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

// An outside UPDATE of a membership row that is already removed (a
// backend job touching rows, a no-op re-tombstone) keeps its stamp: the
// removed member's next pull sends nothing of the scope, not even
// tombstones of rows created after they left.
func TestSharedOutsideRetouchOfRemovedMemberSendsNothing(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		bob := f.NewDevice("bob")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "A", "alice", false), testkit.Member(2, "A", "bob", false), testkit.Todo(3, "a1", "A", "before")), "applied,applied,applied")
		bob.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(4, "A", "bob", true)), "applied")
		bob.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(5, "secret-after-bob-left", "A", "after")), "applied")
		if got := bob.Sync(); len(got) != 0 {
			t.Fatalf("bob got %v", got)
		}
		// a backend job re-asserts the removal
		testkit.Exec(t, f.DSN, `UPDATE list_members SET deleted = true WHERE "memberId" = 'bob'`)
		for _, r := range bob.Sync() {
			if r.Payload["todoId"] == "secret-after-bob-left" {
				t.Fatalf("bob, removed before it was created, receives %s (user %s)", r.Raw, r.User)
			}
		}
	})
}

var _ = strings.Join

// A uuid key sent in upper case is stored and pulled in lower case, and a
// move's tombstone carries it so too, for devices to find the row.
func TestSharedMoveTombstoneKeyIsCanonical(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	cfgs := testkit.ListShapes()
	cfgs[1].FieldTypes = nil
	cfgs[1].CreateTable = false
	testkit.Exec(t, dsn, `CREATE TABLE todos ("todoId" uuid PRIMARY KEY, "listId" text, title text, done boolean, deleted boolean,
		"userId" text NOT NULL, "updatedAt" timestamptz NOT NULL, "lastSyncAt" timestamptz NOT NULL DEFAULT now(), "scopedAt" timestamptz NOT NULL DEFAULT now())`)
	f := testkit.OpenStore(t, dsn, cfgs...)
	bob := f.NewDevice("bob")
	const id = "0F8FAD5B-D9CB-469F-A165-70867728950E"
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "A", "alice", false), testkit.Member(2, "A", "bob", false),
		testkit.Member(3, "B", "alice", false), testkit.Todo(4, id, "A", "x")), "applied,applied,applied,applied")
	bob.Sync()
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(5, id, "B", "x")), "applied")
	for _, r := range bob.Sync() {
		t.Logf("bob got %s", r.Raw)
	}
	bob.WantLive(t, "list_members/A/alice", "list_members/A/bob")
}

// listsAndNotes opens the lists example with a per-user shape beside it.
func listsAndNotes(t *testing.T, b testkit.Backend) *testkit.Fixture {
	t.Helper()
	cfgs := append(testkit.ListShapes(), shapes.ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"body"}, CreateTable: true})
	return testkit.OpenStore(t, b.Open(t), cfgs...)
}

func note(at int, id, body string) shapes.Change {
	return testkit.Change("notes", testkit.At(at), fmt.Sprintf(`{"noteId":%q,"body":%q}`, id, body))
}

// A push that removes a member, or moves a row away, beside a per-user row
// written twice (which takes a second stamp, the pusher's alone): the
// removal and the move are recorded at the stamp every member's cursor
// took, so the removed member gets the move-out, with the version they saw
// last, and the member who cannot see the new scope gets the tombstone.
func TestRemovalAndMoveBesidePerUserRowWrittenTwice(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := listsAndNotes(t, b)
		testkit.WantOutcomes(t, f.Push("carol", testkit.Member(1, "L", "carol", false), testkit.Member(2, "L", "bob", false),
			testkit.Member(4, "L", "alice", false), testkit.Member(5, "M", "carol", false), testkit.Todo(3, "t1", "L", "v0"),
			testkit.Todo(6, "t2", "L", "moves")), "applied,applied,applied,applied,applied,applied")
		bob, alice := f.NewDevice("bob"), f.NewDevice("alice")
		bob.Sync()
		alice.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(10, "L", "bob", true), testkit.Todo(20, "t1", "L", "written with the removal"),
			note(11, "n1", "a"), note(12, "n1", "b")), "applied,applied,applied,applied")
		for _, r := range bob.Sync() {
			if testkit.RowKey(r) == "todos/t1" && (r.UpdatedAt != "2026-11-25T10:00:00.003Z" || r.User != "carol") {
				t.Errorf("bob's tombstone of t1 tells %s by %s, want the version he saw: 2026-11-25T10:00:00.003Z by carol", r.UpdatedAt, r.User)
			}
		}
		bob.WantLive(t)
		testkit.WantOutcomes(t, f.Push("carol", testkit.Todo(21, "t2", "M", "moves"), note(22, "n2", "a"), note(23, "n2", "b")), "applied,applied,applied")
		alice.Sync()
		alice.WantLive(t, "list_members/L/alice", "list_members/L/carol", "notes/body=b,noteId=n1", "todos/t1")
	})
}

// A member removed and added again in one push never left: a later move of
// a row away sends its tombstone once, not once per made-up membership.
func TestRemoveAndReAddInOnePushSendsMoveOnce(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
			testkit.Member(3, "M", "alice", false), testkit.Todo(4, "t1", "L", "v0")), "applied,applied,applied,applied")
		bob := f.NewDevice("bob")
		bob.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(10, "L", "bob", true), testkit.Member(11, "L", "bob", false)), "applied,applied")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(12, "t1", "M", "v0")), "applied")
		n := 0
		for _, r := range bob.Sync() {
			if testkit.RowKey(r) == "todos/t1" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("bob's pull carries t1's tombstone %d times, want once", n)
		}
		bob.WantLive(t, "list_members/L/alice", "list_members/L/bob")
	})
}

// A scope whose members have all left, written from outside hypersync (an
// edit, a move): the members removed before still get a tombstone of what
// they held, with the version they saw last.
func TestOutsideWriteInScopeWithoutMembers(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
			testkit.Todo(3, "t1", "L", "v0"), testkit.Todo(4, "t2", "L", "v0")), "applied,applied,applied,applied")
		bob := f.NewDevice("bob")
		bob.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(10, "L", "bob", true), testkit.Member(11, "L", "alice", true)), "applied,applied")
		testkit.Exec(t, f.DSN, `UPDATE todos SET title = 'after', "userId" = 'backend' WHERE "todoId" = 't1'`,
			`UPDATE todos SET "listId" = 'Y' WHERE "todoId" = 't2'`)
		for _, r := range bob.Sync() {
			if testkit.RowKey(r) == "todos/t1" && (r.UpdatedAt != "2026-11-25T10:00:00.003Z" || r.User != "alice") {
				t.Errorf("bob's tombstone of t1 tells %s by %s, written after his removal; want 2026-11-25T10:00:00.003Z by alice", r.UpdatedAt, r.User)
			}
		}
		bob.WantLive(t)
	})
}

// A move and then, in the same push, a change that names no scope: the
// row stays where the move put it, and the move is recorded, so a member
// of the old scope who cannot see the new one gets the tombstone.
func TestMoveThenPartialChangeInOnePush(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "carol", false),
			testkit.Member(3, "M", "alice", false), testkit.Todo(4, "t1", "L", "v0"), testkit.Todo(5, "t2", "L", "v0")),
			"applied,applied,applied,applied,applied")
		carol := f.NewDevice("carol")
		carol.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(10, "t1", "M", "moved"),
			testkit.Change("todos", testkit.At(11), `{"todoId":"t1","title":"moved and renamed"}`),
			testkit.Todo(12, "t2", "", "made private"),
			testkit.Change("todos", testkit.At(13), `{"todoId":"t2","title":"private and renamed"}`)), "applied,applied,applied,applied")
		var where string
		testkit.Query(f.DSN, `SELECT "listId" || '/' || coalesce((SELECT "listId" FROM todos WHERE "todoId" = 't2'), 'private') FROM todos WHERE "todoId" = 't1'`,
			func(scan func(...any) error) error { return scan(&where) })
		if where != "M/private" {
			t.Fatalf("t1 and t2 are in %s, want M and private", where)
		}
		carol.Sync()
		carol.WantLive(t, "list_members/L/alice", "list_members/L/carol")
	})
}
