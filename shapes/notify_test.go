package shapes_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes/postgres"
)

// The stamping triggers notify live streams only while an instance with
// live sync on listens (it keeps hypersync_live.live_until ahead): with
// live sync off everywhere, an outside write sends nothing, so its commit
// takes no cluster-wide notify lock, and PREPARE TRANSACTION, which a
// transaction that notified cannot do, works. Once an instance listens,
// the same write notifies, with its stamp.
func TestTriggersNotifyOnlyWhileLiveSyncListens(t *testing.T) {
	for _, kind := range []string{"per-user", "shared"} {
		t.Run(kind, func(t *testing.T) {
			var dsn string
			var f *testkit.Fixture
			insert := `INSERT INTO todos (todoId, title, userId) VALUES ('%s', 'from psql', 'alice')`
			if kind == "shared" {
				dsn = testkit.Postgres().Open(t)
				f = testkit.OpenStore(t, dsn, testkit.ListShapes()...)
				testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false)), "applied")
				insert = `INSERT INTO todos ("todoId", "listId", title, "userId") VALUES ('%s', 'L', 'from psql', 'backend')`
			} else {
				dsn = testkit.Postgres().Open(t, testkit.SeedTable)
				f = testkit.OpenStore(t, dsn, testkit.TodosShape)
				d, err := f.DB.Diagnose(context.Background(), testkit.TodosShape)
				if err != nil {
					t.Fatal(err)
				}
				testkit.Exec(t, dsn, d.Fix...)
			}
			ctx := context.Background()
			listener, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer listener.Close(ctx)
			if _, err := listener.Exec(ctx, `LISTEN hypersync_poke`); err != nil {
				t.Fatal(err)
			}
			heard := func(wait time.Duration) string {
				wctx, cancel := context.WithTimeout(ctx, wait)
				defer cancel()
				n, err := listener.WaitForNotification(wctx)
				if err != nil {
					return ""
				}
				return n.Payload
			}
			// live sync off: no instance says it listens
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			for _, stmt := range []string{`BEGIN`, strings.Replace(insert, "%s", "p1", 1), `PREPARE TRANSACTION 'outside'`, `COMMIT PREPARED 'outside'`} {
				if _, err := conn.Exec(ctx, stmt); err != nil {
					t.Fatalf("%s, with live sync off: %v", stmt, err)
				}
			}
			if p := heard(500 * time.Millisecond); p != "" {
				t.Fatalf("with live sync off, an outside write notified %s", p)
			}
			// an instance with live sync on
			testkit.Exec(t, dsn, postgres.LiveRefreshSQL)
			testkit.Exec(t, dsn, strings.Replace(insert, "%s", "p2", 1))
			if p := heard(5 * time.Second); !strings.Contains(p, `"u"`) || !strings.Contains(p, `"s"`) {
				t.Fatalf("with live sync on, the outside write notified %q, want keys and a stamp", p)
			}
		})
	}
}
