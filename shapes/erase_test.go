package shapes_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// eraseShapes are the list shapes and a per-user one.
func eraseShapes() []shapes.ShapeConfig {
	return append(testkit.ListShapes(), shapes.ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"body"}, CreateTable: true})
}

func noteChange(at int, id, body string) shapes.Change {
	return testkit.Change("notes", testkit.At(at), fmt.Sprintf(`{"noteId":%q,"body":%q}`, id, body))
}

// eraseStory is alice's data: list L with bob and carol (alice added
// them, so she authored their memberships), list M she left long ago with
// a todo of hers still in it, a todo of hers and one of bob's in L, a
// private todo and a note.
func eraseStory(t *testing.T, f *testkit.Fixture) {
	t.Helper()
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
		testkit.Member(3, "L", "carol", false), testkit.List(4, "L", "groceries"), testkit.Todo(5, "t1", "L", "milk"),
		testkit.Member(6, "M", "alice", false), testkit.Member(7, "M", "bob", false), testkit.Todo(8, "t3", "M", "eggs"),
		testkit.Todo(9, "p1", "", "own"), noteChange(10, "n1", "note")),
		"applied,applied,applied,applied,applied,applied,applied,applied,applied,applied")
	testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(11, "t2", "L", "bob's bread"), testkit.Member(12, "M", "alice", true)), "applied,applied")
}

// Erase: alice's private rows go, she leaves every list as a removal by
// push would (the other members receive the tombstone), the shared rows
// she wrote stay with their list under a placeholder author the members
// receive, her cursor and record go, and she is blocked until unblocked.
// A dry run changes nothing and reports the same.
func TestEraseEffects(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t), eraseShapes()...)
		eraseStory(t, f)
		bob := f.NewDevice("bob")
		bob.Sync()
		bob.WantLive(t, "list_members/L/alice", "list_members/L/bob", "list_members/L/carol", "lists/L", "todos/t1", "todos/t2",
			"list_members/M/bob", "todos/t3")
		if err := f.Store.RecordRejections(context.Background(), "alice", []shapes.Rejection{{ChangeID: "c1", Shape: "todos",
			Error: "forbidden", Message: "m", At: time.Now(), Last: time.Now(), Times: 1}}, 10); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()

		dry, err := f.Store.Erase(ctx, "alice", true)
		if err != nil {
			t.Fatal(err)
		}
		if rows, _ := f.Pull("alice", time.Unix(0, 0)); len(rows) == 0 {
			t.Fatal("a dry run erased alice")
		}
		if got := bob.Sync(); len(got) != 0 {
			t.Fatalf("a dry run sent bob %v", got)
		}
		rep, err := f.Store.Erase(ctx, "alice", false)
		if err != nil {
			t.Fatal(err)
		}
		want := `deleted map[list_members:0 lists:0 notes:1 todos:1] removed map[list_members:[L]] reauthored map[list_members:3 lists:1 todos:2] kept map[]`
		for name, r := range map[string]*shapes.EraseReport{"dry run": dry, "erase": rep} {
			if got := reportText(r); got != want {
				t.Errorf("%s reported\n%s\nwant\n%s", name, got, want)
			}
		}
		if !strings.Contains(strings.Join(rep.Poked, " "), "bob") || !strings.Contains(strings.Join(rep.Poked, " "), "carol") {
			t.Errorf("the erase poked %v; bob and carol are members of L", rep.Poked)
		}

		// bob's device: alice's membership tombstoned, her rows kept under
		// the placeholder, nothing names her
		got := bob.Sync()
		bob.WantLive(t, "list_members/L/bob", "list_members/L/carol", "lists/L", "todos/t1", "todos/t2", "list_members/M/bob", "todos/t3")
		authors := map[string]string{}
		for _, r := range got {
			authors[testkit.RowKey(r)] = r.User
		}
		for _, k := range []string{"list_members/L/alice", "list_members/L/bob", "list_members/L/carol", "list_members/M/bob", "lists/L", "todos/t1", "todos/t3"} {
			if a, ok := authors[k]; !ok || a != shapes.ErasedAuthor {
				t.Errorf("bob received %s by %q (received: %t), want the placeholder author", k, a, ok)
			}
		}
		for k, r := range bob.Rows {
			if r.User == "alice" {
				t.Errorf("bob's device still has alice as the author of %s", k)
			}
		}
		// the rows of the others stay theirs (bob's membership, written
		// again, brings him the list again)
		if a, ok := authors["todos/t2"]; ok && a != "bob" {
			t.Errorf("bob's own todo came with the author %q", a)
		}
		// the database keeps nothing of alice but the tombstoned membership
		left := map[string]int{}
		for table, where := range map[string]string{
			"todos": `"userId" = 'alice'`, "notes": `"userId" = 'alice'`, "lists": `"userId" = 'alice'`,
			"list_members":     `"userId" = 'alice' OR ("memberId" = 'alice' AND NOT deleted)`,
			shapes.CursorTable: `user_id = 'alice'`, shapes.RejectionsTable: `user_id = 'alice'`,
			shapes.LeftTable: `member = 'alice'`, shapes.VersionsTable: `user_id = 'alice'`, shapes.MovesTable: `user_id = 'alice'`,
		} {
			if err := testkit.Query(f.DSN, `SELECT count(*) FROM "`+table+`" WHERE `+where, func(scan func(...any) error) error {
				var n int
				err := scan(&n)
				left[table] = n
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		for table, n := range left {
			if n != 0 {
				t.Errorf("%s still holds %d rows of alice", table, n)
			}
		}

		// blocked: push, pull, and the record
		results := make([]shapes.Result, 1)
		if _, err := f.Store.Push(ctx, "alice", []shapes.Change{noteChange(20, "n2", "back")}, results); !errors.Is(err, shapes.ErrErased) {
			t.Errorf("a push by alice after the erase: %v", err)
		}
		if _, err := f.Store.Push(ctx, "alice", []shapes.Change{testkit.Todo(21, "t9", "L", "back")}, results); !errors.Is(err, shapes.ErrErased) {
			t.Errorf("a shared push by alice after the erase: %v", err)
		}
		if _, _, err := testkit.PullStore(f.Store, "alice", time.Unix(0, 0), 0); !errors.Is(err, shapes.ErrErased) {
			t.Errorf("a pull by alice after the erase: %v", err)
		}
		if _, _, err := testkit.PullStore(f.Store, "alice", time.Unix(0, 0), 10); !errors.Is(err, shapes.ErrErased) {
			t.Errorf("a paged pull by alice after the erase: %v", err)
		}
		if erased, err := f.Store.Erased(ctx, "alice"); err != nil || !erased {
			t.Errorf("Erased(alice) = %t, %v", erased, err)
		}
		if erased, err := f.Store.Erased(ctx, "bob"); err != nil || erased {
			t.Errorf("Erased(bob) = %t, %v", erased, err)
		}
		testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(30, "t4", "L", "bob goes on")), "applied")
		// the hash is kept, never the id
		if err := testkit.Query(f.DSN, `SELECT user_hash FROM "`+shapes.ErasedTable+`"`, func(scan func(...any) error) error {
			var h string
			if err := scan(&h); err != nil {
				return err
			}
			if strings.Contains(h, "alice") {
				t.Errorf("the block names alice: %q", h)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}

		if ok, err := f.Store.Unblock(ctx, "alice"); err != nil || !ok {
			t.Fatalf("unblock: %t, %v", ok, err)
		}
		testkit.WantOutcomes(t, f.Push("alice", noteChange(40, "n3", "a new start")), "applied")
		if rows, _ := f.Pull("alice", time.Unix(0, 0)); len(rows) != 1 {
			t.Errorf("alice, unblocked, pulls %v: want her one new note", rows)
		}
	})
}

// reportText writes a report with its maps sorted.
func reportText(r *shapes.EraseReport) string {
	for _, l := range r.Removed {
		sort.Strings(l)
	}
	return fmt.Sprintf("deleted %v removed %v reauthored %v kept %v", r.Deleted, r.Removed, r.Reauthored, r.Kept)
}

// An erase while members push into and pull from the lists she was in,
// on two instances: every puller ends holding exactly the final version
// of every todo its user can see, the ones she wrote (and the erase wrote
// again) among them.
func TestEraseUnderConcurrency(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		dsn := b.Open(t)
		stores := []*shapes.Store{testkit.OpenStore(t, dsn, testkit.ListShapes()...).Store}
		if _, lite := testkit.IsSQLite(dsn); lite {
			stores = append(stores, stores[0])
		} else {
			stores = append(stores, testkit.OpenStore(t, dsn, testkit.ListShapes()...).Store)
		}
		var urls []string
		for _, st := range stores {
			urls = append(urls, testkit.NewServer(t, st, handler.Config{Timeout: 30 * time.Second}).URL)
		}
		var rep *shapes.EraseReport
		run := testkit.ConvergeShared(t, testkit.SharedConvergence{Servers: urls, DSN: dsn, Pushers: 2, Pullers: 2, Duration: 3 * time.Second,
			Enough: func(w testkit.Work) bool { return w.Pushed >= 500 && w.Pulls >= 100 },
			Erase: func(user string) (err error) {
				rep, err = stores[0].Erase(context.Background(), user, false)
				return err
			}})
		t.Log(run)
		if rep == nil {
			t.Fatal("eve was never erased")
		}
		t.Logf("erase: %s", reportText(rep))
		if rep.Reauthored["todos"] == 0 || len(rep.Removed["list_members"]) != 2 {
			t.Fatalf("the erase had too little to do to judge: %s", reportText(rep))
		}
		if run.Checked < 400 || run.Misses > 0 || run.Leaks > 0 {
			t.Fatalf("%s", run)
		}
		if erased, err := stores[1].Erased(context.Background(), "eve"); err != nil || !erased {
			t.Fatalf("eve is not blocked: %t, %v", erased, err)
		}
	})
}

// The erase's writes reach the members' devices at their next sync
// because it stamps every member; with the fan-out off (each write
// stamping its own user alone) they do not: the proof that the test
// above can fail.
func TestEraseStampsTheMembers(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		for _, fanOut := range []bool{true, false} {
			f := testkit.OpenStore(t, b.Open(t), eraseShapes()...)
			if !fanOut {
				shapes.PerUserStampsOnly(f.Store)
			}
			eraseStory(t, f)
			bob := f.NewDevice("bob")
			bob.Sync()
			if _, err := f.Store.Erase(context.Background(), "alice", false); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, r := range bob.Sync() {
				got[testkit.RowKey(r)] = r.User
			}
			a, ok := got["todos/t1"]
			if received := ok && a == shapes.ErasedAuthor; received != fanOut {
				t.Errorf("fan-out %t: bob received alice's todo again: %t (%v)", fanOut, received, got)
			}
		}
	})
}

// TestUnblockKeepsTheCursorGrowing: erase deletes the user's cursor and
// unblock gives it back above the old one, so every row stamped after the
// unblock is above any lastPull handed out before the erase, and a
// standby behind the erase is waited for.
func TestUnblockKeepsTheCursorGrowing(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		// a cursor well ahead of the clock, as many stamps in one
		// millisecond make it
		ahead := time.Now().Add(time.Hour).UTC()
		for i := range 3 {
			testkit.WantOutcomes(t, f.Push("alice", testkit.Change("todos", ahead, fmt.Sprintf(`{"todoId":"t%d","title":"x","listId":null}`, i))), "applied")
		}
		testkit.Exec(t, f.DSN, fmt.Sprintf(`UPDATE hypersync_cursors SET stamp = '%s' WHERE user_id = 'alice'`, ahead.Format("2006-01-02T15:04:05.000000Z")))
		_, before := f.Pull("alice", time.Time{})
		ctx := context.Background()
		if _, err := f.Store.Erase(ctx, "alice", false); err != nil {
			t.Fatal(err)
		}
		if ok, err := f.Store.Unblock(ctx, "alice"); err != nil || !ok {
			t.Fatalf("unblock: %v %v", ok, err)
		}
		_, after := f.Pull("alice", time.Time{})
		if !after.After(before) {
			t.Fatalf("the cursor after erase and unblock, %v, is not above the one before, %v", after, before)
		}
	})
}

// TestEraseOnAnEarlierErasedTable: a SQLite file whose hypersync_erased
// an earlier build made, without the kept stamp, still erases and
// unblocks (the column is added at start-up).
func TestEraseOnAnEarlierErasedTable(t *testing.T) {
	dsn := testkit.SQLite().Open(t, `CREATE TABLE "hypersync_erased" (user_hash TEXT PRIMARY KEY, at TEXT NOT NULL)`)
	f := testkit.OpenStore(t, dsn, testkit.ListShapes()...)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(1, "t1", "", "milk")), "applied")
	ctx := context.Background()
	if _, err := f.Store.Erase(ctx, "alice", false); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.Store.Unblock(ctx, "alice"); err != nil || !ok {
		t.Fatalf("unblock: %v %v", ok, err)
	}
}
