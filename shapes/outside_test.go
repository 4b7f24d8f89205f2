package shapes_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// stampedStore opens the README's table with the stamping objects that
// Diagnose prints, run as an admin would run them.
func stampedStore(t *testing.T, b testkit.Backend) *testkit.Fixture {
	t.Helper()
	f := testkit.OpenStore(t, stampedTable(t, b), testkit.TodosShape)
	if list, _ := f.Store.Shapes(context.Background()); !list[0].Stamped {
		t.Fatal("the store does not see the stamping objects")
	}
	return f
}

// stampedTable makes the README's table and runs the SQL Diagnose gives for
// its missing stamping objects.
func stampedTable(t *testing.T, b testkit.Backend) string {
	t.Helper()
	dsn := b.Open(t, testkit.SeedTable)
	db := testkit.OpenDB(t, dsn)
	// Diagnose's fix needs the cursor table, which a store's first check makes.
	if err := testkit.NewStore(t, db, testkit.TodosShape).Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	d, err := db.Diagnose(context.Background(), testkit.TodosShape)
	if err != nil {
		t.Fatal(err)
	}
	if !d.OK || len(d.Warnings) == 0 || len(d.Fix) == 0 {
		t.Fatalf("a table without stamping objects: %+v, want a warning and the SQL that fixes it", d)
	}
	for _, stmt := range d.Fix {
		if err := testkit.ExecNative(dsn, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	if d, err = db.Diagnose(context.Background(), testkit.TodosShape); err != nil || len(d.Warnings) > 0 || len(d.Fix) > 0 {
		t.Fatalf("after the fix: %+v, %v", d, err)
	}
	return dsn
}

// pullOne pulls alice's rows after since and returns them by todoId.
func pullOne(t *testing.T, f *testkit.Fixture, since time.Time) (map[string]testkit.Pulled, time.Time) {
	t.Helper()
	rows, cursor := f.Pull("alice", since)
	out := map[string]testkit.Pulled{}
	for _, r := range rows {
		out[r.Payload["todoId"].(string)] = r
	}
	return out, cursor
}

// A row that another client writes straight into the table reaches the
// owner's devices with the same completeness as a push, and keeps
// last-write-wins working: an update that leaves updatedAt as it was, or
// moves it back, gets a newer one.
func TestOutsideWritesReachDevices(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := stampedStore(t, b)
		ctx := context.Background()
		sql := testkit.Connect(t, f.DSN)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"pushed","done":false,"deleted":false}`)), "applied")
		_, cursor := pullOne(t, f, time.Unix(0, 0))

		// hypersync's own writes skip the trigger: the row carries the push's stamp
		var rawStamp, rawCursor string
		if err := testkit.Query(f.DSN, `SELECT CAST(lastSyncAt AS TEXT), (SELECT CAST(stamp AS TEXT) FROM hypersync_cursors WHERE user_id = 'alice') FROM todos WHERE todoId = 't1'`,
			func(scan func(...any) error) error { return scan(&rawStamp, &rawCursor) }); err != nil || rawStamp != rawCursor {
			t.Fatalf("after a push, the row's stamp %q and the cursor %q differ (%v)", rawStamp, rawCursor, err)
		}

		steps := []struct {
			name, stmt string
			key        string
			title      string
			newer      time.Time // the updatedAt the row must have passed
			exactly    string    // or the updatedAt it must have
		}{
			{"an insert without updatedAt or stamp", `INSERT INTO todos (todoId, title, userId) VALUES ('t2', 'from psql', 'alice')`, "t2", "from psql", testkit.BaseTime, ""},
			{"an update that leaves updatedAt alone", `UPDATE todos SET title = 'fixed by an admin' WHERE todoId = 't1'`, "t1", "fixed by an admin", testkit.At(1), ""},
			{"an update that moves updatedAt back", `UPDATE todos SET title = 'from a backup', updatedAt = '2000-01-01T00:00:00Z' WHERE todoId = 't1'`, "t1", "from a backup", testkit.At(1), ""},
			{"an update with a later updatedAt keeps it", `UPDATE todos SET title = 'scheduled', updatedAt = '2030-01-01T00:00:00Z' WHERE todoId = 't2'`, "t2", "scheduled", time.Time{}, "2030-01-01T00:00:00.000Z"},
		}
		last := map[string]string{}
		for _, s := range steps {
			if _, err := sql.Exec(ctx, s.stmt); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			got, next := pullOne(t, f, cursor)
			row, ok := got[s.key]
			if !ok || row.Payload["title"] != s.title {
				t.Fatalf("%s: the next pull brought %+v, want %s titled %q", s.name, got, s.key, s.title)
			}
			upd, err := time.Parse(time.RFC3339Nano, row.UpdatedAt)
			switch {
			case err != nil:
				t.Fatalf("%s: updatedAt %q: %v", s.name, row.UpdatedAt, err)
			case s.exactly != "" && row.UpdatedAt != s.exactly:
				t.Fatalf("%s: updatedAt %s, want %s", s.name, row.UpdatedAt, s.exactly)
			case s.exactly == "" && (!upd.After(s.newer) || last[s.key] != "" && row.UpdatedAt <= last[s.key]):
				t.Fatalf("%s: updatedAt %s is not newer than %v and the previous version's %s", s.name, row.UpdatedAt, s.newer, last[s.key])
			}
			last[s.key] = row.UpdatedAt
			if !next.After(cursor) {
				t.Fatalf("%s: the cursor did not move: %v", s.name, next)
			}
			cursor = next
		}
		// last-write-wins against the outside writes: an old change loses
		testkit.WantOutcomes(t, f.Push("alice", testkit.Change("todos", testkit.At(2), `{"todoId":"t1","title":"late"}`)), "stale")
		if got, _ := pullOne(t, f, time.Unix(0, 0)); got["t1"].Payload["title"] != "from a backup" || got["t2"].Payload["title"] != "scheduled" {
			t.Fatalf("final rows %+v", got)
		}
	})
}

// Without the stamping objects, an outside update is never pulled: the
// check above would catch their absence.
func TestOutsideWritesWithoutStampingAreMissed(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t, testkit.SeedTable), testkit.TodosShape)
		if list, _ := f.Store.Shapes(context.Background()); list[0].Stamped {
			t.Fatal("a table without stamping objects is reported stamped")
		}
		testkit.WantOutcomes(t, f.Push("alice", testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"pushed","done":false,"deleted":false}`)), "applied")
		_, cursor := pullOne(t, f, time.Unix(0, 0))
		testkit.Exec(t, f.DSN, `UPDATE todos SET title = 'fixed by an admin' WHERE todoId = 't1'`)
		if got, _ := pullOne(t, f, cursor); len(got) != 0 {
			t.Fatalf("an unstamped outside write was pulled: %+v", got)
		}
	})
}

// create_table makes the stamping objects with the table.
func TestCreateTableStamps(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		cfg := shapes.ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"body"}, CreateTable: true}
		f := testkit.OpenStore(t, b.Open(t), cfg)
		if list, _ := f.Store.Shapes(context.Background()); !list[0].Stamped {
			t.Fatal("create_table made no stamping objects")
		}
		testkit.Exec(t, f.DSN, `INSERT INTO notes ("noteId", body, "userId") VALUES ('n1', 'from psql', 'alice')`)
		rows, _ := f.Pull("alice", time.Unix(0, 0))
		if len(rows) != 1 || !strings.Contains(string(rows[0].Raw), "from psql") || rows[0].UpdatedAt == "" {
			t.Fatalf("pulled %+v", rows)
		}
	})
}

// The completeness run with a client writing the table directly besides the
// devices: every device ends with every row, in its final version, on two
// instances on PostgreSQL and on SQLite. Without the stamping objects the
// same run misses rows, which is what makes this one mean something.
func TestOutsideWritesUnderConcurrency(t *testing.T) {
	run := func(t *testing.T, dsn string, two bool) testkit.Report {
		a := testkit.NewStore(t, testkit.OpenDB(t, dsn), testkit.TodosShape)
		// hypersync is up before the SQL writer starts: its first check
		// makes the cursor table and puts an SQLite file in WAL mode, which
		// an outside writer racing it could otherwise see fail as busy.
		if err := a.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
		b := a
		if two {
			b = testkit.NewStore(t, testkit.OpenDB(t, dsn), testkit.TodosShape)
		}
		cfg := handler.Config{Timeout: 30 * time.Second}
		s1, s2 := testkit.NewServer(t, a, cfg), testkit.NewServer(t, b, cfg)
		return testkit.Converge(t, testkit.Convergence{Servers: []string{s1.URL, s2.URL}, DSN: dsn,
			Users: []string{"alice", "bob", "carol"}, Devices: 2, Keys: 40, SQLWriter: true, Duration: 4 * time.Second,
			Skews:  []time.Duration{0, -2 * time.Second, 1500 * time.Millisecond},
			Enough: func(w testkit.Work) bool { return w.SQLWrites >= 40 && w.Pushed >= 300 }})
	}
	for _, b := range testkit.Stores() {
		t.Run(b.Name, func(t *testing.T) {
			rep := run(t, stampedTable(t, b), b.Name == "postgres")
			t.Log(rep)
			if rep.SQLWrites < 20 || rep.Checked < 100 {
				t.Fatalf("the run did too little to mean anything: %v", rep)
			}
			if rep.Misses != 0 {
				t.Fatalf("%d misses with the stamping objects installed", rep.Misses)
			}
		})
		t.Run(b.Name+" without stamping", func(t *testing.T) {
			rep := run(t, b.Open(t, testkit.SeedTable), b.Name == "postgres")
			t.Log(rep)
			if rep.Misses == 0 {
				t.Fatal("no misses without the stamping objects: the run cannot tell whether they work")
			}
		})
	}
}

// Outside writes in the corners the stamping objects must get right.
func TestOutsideWriteCorners(t *testing.T) {
	ctx := context.Background()
	t.Run("postgres: timestamp(3) without time zone, written from another time zone", func(t *testing.T) {
		// format_type spells such a column timestamp(3) without time zone;
		// the trigger must store UTC in it, whatever the writer's zone
		b := testkit.Postgres()
		dsn := b.Open(t, `CREATE TABLE todos (todoId text PRIMARY KEY, title text, userId text NOT NULL,
			updatedAt timestamp(3), lastSyncAt timestamp(3))`, `CREATE INDEX todos_sync ON todos (userId, lastSyncAt)`)
		shape := shapes.ShapeConfig{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title"}}
		db := testkit.OpenDB(t, dsn)
		if err := testkit.NewStore(t, db, shape).Check(ctx); err != nil {
			t.Fatal(err)
		}
		d, err := db.Diagnose(ctx, shape)
		if err != nil {
			t.Fatal(err)
		}
		for _, stmt := range d.Fix {
			if err := testkit.ExecNative(dsn, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
		f := testkit.OpenStore(t, dsn, shape)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"pushed"}`)), "applied")
		_, cursor := pullOne(t, f, time.Unix(0, 0))
		sql := testkit.Connect(t, dsn)
		if _, err := sql.Exec(ctx, `SET TIME ZONE 'America/New_York'`); err != nil {
			t.Fatal(err)
		}
		before := time.Now().UTC().Truncate(time.Millisecond)
		if _, err := sql.Exec(ctx, `INSERT INTO todos (todoId, title, userId) VALUES ('t2', 'from New York', 'alice')`); err != nil {
			t.Fatal(err)
		}
		got, _ := pullOne(t, f, cursor)
		upd, _ := time.Parse(time.RFC3339Nano, got["t2"].UpdatedAt)
		if got["t2"].Payload["title"] != "from New York" || upd.Before(before) || upd.After(before.Add(time.Minute)) {
			t.Fatalf("pulled %+v, want t2 with an updatedAt of about %v", got, before)
		}
	})
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := stampedStore(t, b)
		sql := testkit.Connect(t, f.DSN)
		t.Run("an owner without a cursor, a row without a stamp", func(t *testing.T) {
			if _, err := sql.Exec(ctx, `INSERT INTO todos (todoId, title, userId, lastSyncAt) VALUES ('n1', 'seeded', 'newcomer', NULL)`); err != nil {
				t.Fatal(err)
			}
			if rows, _ := f.Pull("newcomer", time.Unix(0, 0)); len(rows) != 1 {
				t.Fatalf("the newcomer pulled %+v", rows)
			}
		})
		t.Run("a row without an owner is refused by the table, not by the trigger", func(t *testing.T) {
			_, err := sql.Exec(ctx, `INSERT INTO todos (todoId, title, userId) VALUES ('x1', 'nobody', NULL)`)
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), "null") || strings.Contains(err.Error(), "hypersync_cursors") {
				t.Fatalf("insert without an owner: %v, want the table's NOT NULL", err)
			}
		})
		t.Run("a paged pull goes through a bulk write", func(t *testing.T) {
			if _, err := sql.Exec(ctx, `INSERT INTO todos (todoId, title, userId)
				SELECT 'bulk-' || g, 'bulk', 'bulker' FROM (WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 500) SELECT g FROM s) AS r`); err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			since := time.Unix(0, 0)
			for page := 0; ; page++ {
				if page > 20 {
					t.Fatalf("paging does not end: %d rows seen", len(seen))
				}
				rows, res, err := testkit.PullStore(f.Store, "bulker", since, 100)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range rows {
					seen[r.Payload["todoId"].(string)] = true
				}
				since = res.Cursor.Truncate(time.Millisecond) // as the client keeps it
				if !res.HasMore {
					break
				}
			}
			if len(seen) != 500 {
				t.Fatalf("%d of 500 rows pulled", len(seen))
			}
		})
		t.Run("a push that writes a row twice stays hypersync's", func(t *testing.T) {
			// two partial changes to one row: two statement rounds
			testkit.WantOutcomes(t, f.Push("alice",
				testkit.Change("todos", testkit.At(10), `{"todoId":"p1","title":"first","done":false,"deleted":false}`),
				testkit.Change("todos", testkit.At(10).Add(300*time.Microsecond), `{"todoId":"p1","done":true}`)), "applied,applied")
			var upd, synced, cursor string
			if err := testkit.Query(f.DSN, `SELECT CAST(updatedAt AS TEXT), CAST(lastSyncAt AS TEXT), (SELECT CAST(stamp AS TEXT) FROM hypersync_cursors WHERE user_id = 'alice') FROM todos WHERE todoId = 'p1'`,
				func(scan func(...any) error) error { return scan(&upd, &synced, &cursor) }); err != nil {
				t.Fatal(err)
			}
			if synced != cursor {
				t.Fatalf("the row's stamp %s is not the cursor %s: the trigger took hypersync's write for another's", synced, cursor)
			}
			if !strings.Contains(upd, "10:00:00.010") {
				t.Fatalf("updatedAt %s, want the second change's", upd)
			}
		})
	})
}
