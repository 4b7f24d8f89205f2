package shapes_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// Explain gives each reason, and says the user receives a row exactly
// when a pull from the epoch sends it.
func TestExplainReasons(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t), eraseShapes()...)
		eraseStory(t, f)
		testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(20, "pb", "", "bob's own")), "applied")
		testkit.WantOutcomes(t, f.Push("carol", testkit.Member(21, "K", "carol", false), testkit.Todo(22, "tk", "K", "carol's list")), "applied,applied")
		ctx := context.Background()
		epoch, _ := f.Pull("alice", time.Unix(0, 0))
		pulled := map[string]bool{}
		for _, r := range epoch {
			pulled[testkit.RowKey(r)] = true
		}
		for _, c := range []struct {
			shape, key, reason, scope string
			receives, since, until    bool
			pulledAs                  string
		}{
			{"todos", `{"todoId":"p1"}`, shapes.ReasonOwner, "", true, false, false, "todos/p1"},
			{"notes", `{"noteId":"n1"}`, shapes.ReasonOwner, "", true, false, false, "notes/body=note,noteId=n1"},
			{"todos", `{"todoId":"t1"}`, shapes.ReasonMember, "L", true, true, false, "todos/t1"},
			{"list_members", `{"listId":"L","memberId":"bob"}`, shapes.ReasonMember, "L", true, true, false, "list_members/L/bob"},
			{"todos", `{"todoId":"t3"}`, shapes.ReasonRemoved, "M", false, true, true, "todos/t3"},
			{"todos", `{"todoId":"tk"}`, shapes.ReasonNotMember, "K", false, false, false, "todos/tk"},
			{"todos", `{"todoId":"pb"}`, shapes.ReasonOtherOwner, "", false, false, false, "todos/pb"},
			{"todos", `{"todoId":"nothing"}`, shapes.ReasonNoRow, "", false, false, false, "todos/nothing"},
		} {
			ex, err := f.Store.Explain(ctx, "alice", c.shape, testkit.PayloadOf(c.key))
			if err != nil {
				t.Fatalf("%s %s: %v", c.shape, c.key, err)
			}
			if ex.Reason != c.reason || ex.Receives != c.receives || ex.Scope != c.scope || ex.Since.IsZero() == c.since || ex.Until.IsZero() == c.until {
				t.Errorf("%s %s: %+v, want reason %s, receives %t, scope %q, since %t, until %t", c.shape, c.key, ex, c.reason, c.receives, c.scope, c.since, c.until)
			}
			if pulled[c.pulledAs] != ex.Receives {
				t.Errorf("%s %s: receives %t, but a pull from the epoch sends it: %t (%v)", c.shape, c.key, ex.Receives, pulled[c.pulledAs], pulled)
			}
		}
		if _, err := f.Store.Explain(ctx, "alice", "todos", testkit.PayloadOf(`{"title":"x"}`)); err == nil {
			t.Error("a key without its key field was explained")
		}
		if _, err := f.Store.Explain(ctx, "alice", "nope", testkit.PayloadOf(`{"todoId":"x"}`)); err == nil {
			t.Error("a shape that is not configured was explained")
		}

		in, err := f.Store.Inspect(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		counts := map[string]int{}
		for _, r := range epoch {
			counts[r.Shape]++
		}
		for _, c := range in.Shapes {
			if c.Rows != counts[c.Shape] {
				t.Errorf("inspect counts %d rows of %s; a pull sends %d", c.Rows, c.Shape, counts[c.Shape])
			}
		}
		var scopes []string
		for _, sc := range in.Scopes {
			scopes = append(scopes, strings.TrimPrefix(sc.Table, "public.")+"/"+sc.Scope+map[bool]string{true: " active", false: " removed"}[sc.Active])
		}
		if got := strings.Join(scopes, " "); got != "list_members/L active list_members/M removed" {
			t.Errorf("scopes %s", got)
		}
		if in.Cursor.IsZero() {
			t.Error("alice has no cursor")
		}
	})
}
