package handler_test

import (
	"strings"
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
)

// A column dropped while Caddy runs: the request that meets it answers
// schema-mismatch, and the next one checks the table again and works,
// without a restart.
func TestTableChangedUnderARunningHandler(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, nil) // no fields listed: every column is synced
		if a := e.push("alice", todo("c1", "alice", "2026-11-25T10:00:00.000Z", `{"todoId":"t1","title":"x","done":true}`)); a.status != 201 {
			t.Fatalf("push: %d %s", a.status, a.body)
		}
		testkit.Exec(t, dsn, `ALTER TABLE todos DROP COLUMN description`)
		a := e.push("alice", todo("c2", "alice", "2026-11-25T10:00:01.000Z", `{"todoId":"t2","title":"y","description":"gone"}`))
		if a.status != 500 || a.json(t)["error"] != "schema-mismatch" {
			t.Fatalf("push after the drop: %d %s, want 500 schema-mismatch", a.status, a.body)
		}
		a = e.push("alice", todo("c3", "alice", "2026-11-25T10:00:02.000Z", `{"todoId":"t3","title":"z","description":"ignored now"}`))
		if a.status != 201 || !strings.Contains(a.body, `"acceptedChanges":["c3"]`) {
			t.Fatalf("the next push: %d %s, want it accepted against the table as it is now", a.status, a.body)
		}
		a = e.pull("alice", "")
		if a.status != 200 || !strings.Contains(a.body, `"todoId":"t3"`) || strings.Contains(a.body, "description") {
			t.Fatalf("pull: %d %s", a.status, a.body)
		}
	})
}
