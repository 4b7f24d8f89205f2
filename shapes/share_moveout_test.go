package shapes_test

import (
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
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
			testkit.Todo(5, "t1", "L", "edited later"), testkit.Todo(6, "t2", "L", "moved later")), "applied,applied,applied,applied,applied,applied")
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
		testkit.Exec(t, f.DSN, `UPDATE todos SET title = 'from the backend' WHERE "todoId" = 't1'`)
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
