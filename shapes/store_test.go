package shapes_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

func TestSchemaCheck(t *testing.T) {
	cases := []struct {
		name    string
		ddl     string
		shape   shapes.ShapeConfig
		wantErr string // substring; empty means the check passes
		pgOnly  string // why the case cannot exist on SQLite
	}{
		{"seed README table with folded column names", testkit.SeedDDL, testkit.TodosShape, "", ""},
		{"fields default to every non-bookkeeping column", testkit.SeedDDL, shapes.ShapeConfig{Key: "todos", KeyFields: []string{"todoId"}}, "", ""},
		{"missing table", testkit.SeedDDL, shapes.ShapeConfig{Key: "notes", KeyFields: []string{"id"}},
			`shape "notes", table notes: table does not exist`, ""},
		{"field without a column", testkit.SeedDDL, shapes.ShapeConfig{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title", "colour"}},
			`column colour: no column for field "colour"`, ""},
		{"key that is not unique", testkit.SeedDDL, shapes.ShapeConfig{Key: "todos", KeyFields: []string{"title"}},
			`column title: the key columns are not the table's primary key or a unique constraint`, ""},
		{"missing user column", `CREATE TABLE t (id text PRIMARY KEY, owner text, updatedAt timestamptz, lastSyncAt timestamptz)`,
			shapes.ShapeConfig{Key: "t", KeyFields: []string{"id"}}, `column userId: no column for user_column "userId"`, ""},
		{"user column named explicitly", `CREATE TABLE t (id text PRIMARY KEY, owner text, updatedAt timestamptz, lastSyncAt timestamptz)`,
			shapes.ShapeConfig{Key: "t", KeyFields: []string{"id"}, UserColumn: "owner"}, "", ""},
		{"updated_at that is not a timestamp", `CREATE TABLE t (id text PRIMARY KEY, userId text, updatedAt text, lastSyncAt timestamptz)`,
			shapes.ShapeConfig{Key: "t", KeyFields: []string{"id"}}, `updated_at_column must be a timestamp, but its type is`, ""},
		{"synced_at missing", `CREATE TABLE t (id text PRIMARY KEY, userId text, updatedAt timestamptz)`,
			shapes.ShapeConfig{Key: "t", KeyFields: []string{"id"}}, `no column for synced_at_column "lastSyncAt"`, ""},
		{"field matching two columns by case", `CREATE TABLE t (id text PRIMARY KEY, "Title" text, "TITLE" text, userId text, updatedAt timestamptz, lastSyncAt timestamptz)`,
			shapes.ShapeConfig{Key: "t", KeyFields: []string{"id"}, Fields: []string{"title"}}, `matches several columns when case is ignored`,
			"SQLite column names are case-insensitive: such a table cannot exist"},
		{"schema-qualified table", `CREATE SCHEMA app; CREATE TABLE app.todos (id text PRIMARY KEY, title text, userId text, updatedAt timestamptz, lastSyncAt timestamptz)`,
			shapes.ShapeConfig{Key: "todos", Table: "app.todos", KeyFields: []string{"id"}}, "",
			"SQLite has no schemas"},
		{"composite key on a unique constraint", `CREATE TABLE t (list text, pos int, title text, userId text, updatedAt timestamptz, lastSyncAt timestamptz, UNIQUE (pos, list))`,
			shapes.ShapeConfig{Key: "t", KeyFields: []string{"list", "pos"}}, "", ""},
		{"partial unique index is not a key", `CREATE TABLE t (id text, userId text, updatedAt timestamptz, lastSyncAt timestamptz); CREATE UNIQUE INDEX t_id ON t (id) WHERE id <> ''`,
			shapes.ShapeConfig{Key: "t", KeyFields: []string{"id"}}, `not the table's primary key or a unique constraint`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, b := range testkit.Backends() {
				t.Run(b.Name, func(t *testing.T) {
					if b.Name == "sqlite" && tc.pgOnly != "" {
						t.Skip(tc.pgOnly)
					}
					dsn := b.Open(t, tc.ddl)
					db, err := shapes.Open(dsn, shapes.Options{})
					if err != nil {
						t.Fatal(err)
					}
					defer db.Destruct()
					st, err := shapes.NewStore(db, []shapes.ShapeConfig{tc.shape}, nil)
					if err != nil {
						t.Fatal(err)
					}
					err = st.Check(context.Background())
					switch {
					case tc.wantErr == "" && err != nil:
						t.Fatalf("check failed: %v", err)
					case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
						t.Fatalf("check error = %v, want it to contain %q", err, tc.wantErr)
					}
					var se *shapes.SchemaError
					if tc.wantErr != "" && !errors.As(err, &se) {
						t.Fatalf("error %v is not a *SchemaError", err)
					}
					if tc.wantErr != "" && !strings.HasPrefix(err.Error(), fmt.Sprintf("shape %q, table ", tc.shape.Key)) {
						t.Fatalf("error %q does not start by naming the shape and table", err)
					}
				})
			}
		})
	}
}

func TestSyncIndexDetection(t *testing.T) {
	testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t, testkit.SeedDDL), testkit.TodosShape)
		resolved, _ := f.Store.Shapes(context.Background())
		if resolved[0].SyncIndex {
			t.Fatal("the seed table has no (userId, lastSyncAt) index, but one was reported")
		}
		f2 := testkit.OpenStore(t, b.Open(t, testkit.SeedDDL, `CREATE INDEX todos_sync ON todos (userId, lastSyncAt)`), testkit.TodosShape)
		resolved, _ = f2.Store.Shapes(context.Background())
		if !resolved[0].SyncIndex {
			t.Fatal("the (userId, lastSyncAt) index was not found")
		}
		if got := strings.ToLower(shapes.IndexSQL(resolved[0])); !strings.Contains(got, `("userid", "lastsyncat")`) {
			t.Fatalf("IndexSQL = %s", got)
		}
	})
}

func TestPushRules(t *testing.T) {
	type step struct {
		user    string
		changes []shapes.Change
		want    string // outcomes
	}
	type rowWant map[string]map[string]any // key -> fields to compare
	cases := []struct {
		name  string
		steps []step
		user  string // whose rows to check
		want  rowWant
	}{
		{name: "a new row is inserted",
			steps: []step{{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"a","done":false,"deleted":false}`)}, "applied"}},
			user:  "alice", want: rowWant{"t1": {"title": "a", "done": false}}},
		{name: "a newer change wins",
			steps: []step{
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"old"}`)}, "applied"},
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(2), `{"todoId":"t1","title":"new"}`)}, "applied"}},
			user: "alice", want: rowWant{"t1": {"title": "new"}}},
		{name: "an older change is accepted but loses",
			steps: []step{
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(2), `{"todoId":"t1","title":"new"}`)}, "applied"},
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"old"}`)}, "stale"}},
			user: "alice", want: rowWant{"t1": {"title": "new"}}},
		{name: "a tie keeps the stored row",
			steps: []step{
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"first"}`)}, "applied"},
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"second"}`)}, "stale"}},
			user: "alice", want: rowWant{"t1": {"title": "first"}}},
		{name: "another user's row is never modified",
			steps: []step{
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"alice's"}`)}, "applied"},
				{"bob", []shapes.Change{testkit.Change("todos", testkit.At(5), `{"todoId":"t1","title":"bob's"}`)}, "rejected:user-mismatch"}},
			user: "alice", want: rowWant{"t1": {"title": "alice's"}}},
		{name: "a partial payload updates only its fields",
			steps: []step{
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"keep me","done":false,"deleted":false}`)}, "applied"},
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(2), `{"todoId":"t1","done":true}`)}, "applied"}},
			user: "alice", want: rowWant{"t1": {"title": "keep me", "done": true, "deleted": false}}},
		// Without the NOT NULL title, a partial change takes PostgreSQL's
		// update-then-insert statement: its outcomes too must be exact.
		{name: "a stale partial payload loses, alone in its push",
			steps: []step{
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(5), `{"todoId":"t1","title":"keep me","done":false}`)}, "applied"},
				{"alice", []shapes.Change{
					testkit.Change("todos", testkit.At(2), `{"todoId":"t1","done":true}`),
					testkit.Change("todos", testkit.At(6), `{"todoId":"t2","title":"x"}`),
				}, "stale,applied"}},
			user: "alice", want: rowWant{"t1": {"title": "keep me", "done": false}, "t2": {"title": "x"}}},
		{name: "a partial payload for another user's row is rejected",
			steps: []step{
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"alice's","done":false}`)}, "applied"},
				{"bob", []shapes.Change{testkit.Change("todos", testkit.At(5), `{"todoId":"t1","done":true}`)}, "rejected:user-mismatch"}},
			user: "alice", want: rowWant{"t1": {"title": "alice's", "done": false}}},
		{name: "a new row from a partial payload takes the column defaults",
			steps: []step{{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"x"}`)}, "applied"}},
			user:  "alice", want: rowWant{"t1": {"title": "x", "done": false, "deleted": false}}},
		{name: "a new row missing a required field is rejected alone",
			steps: []step{{"alice", []shapes.Change{
				testkit.Change("todos", testkit.At(1), `{"todoId":"t1","done":true}`),
				testkit.Change("todos", testkit.At(1), `{"todoId":"t2","title":"fine"}`)}, "rejected:invalid-payload,applied"}},
			user: "alice", want: rowWant{"t2": {"title": "fine"}}},
		{name: "a payload without its key is rejected",
			steps: []step{{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"title":"x"}`)}, "rejected:invalid-payload"}},
			user:  "alice", want: rowWant{}},
		{name: "a null key is rejected",
			steps: []step{{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":null,"title":"x"}`)}, "rejected:invalid-payload"}},
			user:  "alice", want: rowWant{}},
		{name: "an unknown shape rejects only its own changes",
			steps: []step{{"alice", []shapes.Change{
				testkit.Change("nope", testkit.At(1), `{"todoId":"t1"}`),
				testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"x"}`)}, "rejected:unknown-shape,applied"}},
			user: "alice", want: rowWant{"t1": {"title": "x"}}},
		{name: "fields that are not configured are ignored",
			steps: []step{{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"x","colour":"red"}`)}, "applied"}},
			user:  "alice", want: rowWant{"t1": {"title": "x", "colour": nil}}},
		{name: "bookkeeping fields in a payload are never taken",
			steps: []step{{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1),
				`{"todoId":"t1","title":"x","userId":"mallory","updatedAt":"2099-01-01T00:00:00Z","lastSyncAt":"2099-01-01T00:00:00Z"}`)}, "applied"}},
			user: "alice", want: rowWant{"t1": {"title": "x", "userId": nil}}},
		{name: "a value the column cannot take is rejected alone",
			steps: []step{{"alice", []shapes.Change{
				testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"x","done":"banana"}`),
				testkit.Change("todos", testkit.At(1), `{"todoId":"t2","title":"y","done":true}`)}, "rejected:invalid-payload,applied"}},
			user: "alice", want: rowWant{"t2": {"title": "y", "done": true}}},
		{name: "null into a NOT NULL column is rejected",
			steps: []step{{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":null}`)}, "rejected:invalid-payload"}},
			user:  "alice", want: rowWant{}},
		{name: "the same row twice in one push: the newest wins",
			steps: []step{{"alice", []shapes.Change{
				testkit.Change("todos", testkit.At(3), `{"todoId":"t1","title":"newest"}`),
				testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"oldest"}`),
				testkit.Change("todos", testkit.At(2), `{"todoId":"t1","title":"middle"}`)}, "applied,superseded,superseded"}},
			user: "alice", want: rowWant{"t1": {"title": "newest"}}},
		{name: "partial changes to one row in one push apply in order",
			steps: []step{{"alice", []shapes.Change{
				testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"a","done":false,"deleted":false}`),
				testkit.Change("todos", testkit.At(2), `{"todoId":"t1","done":true}`),
				testkit.Change("todos", testkit.At(3), `{"todoId":"t1","title":"b"}`)}, "applied,applied,applied"}},
			user: "alice", want: rowWant{"t1": {"title": "b", "done": true}}},
		{name: "in one push, a partial change older than the stored row loses",
			steps: []step{
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(5), `{"todoId":"t1","title":"stored","done":false,"deleted":false}`)}, "applied"},
				{"alice", []shapes.Change{
					testkit.Change("todos", testkit.At(4), `{"todoId":"t1","title":"old title"}`),
					testkit.Change("todos", testkit.At(6), `{"todoId":"t1","done":true}`)}, "stale,applied"}},
			user: "alice", want: rowWant{"t1": {"title": "stored", "done": true}}},
		{name: "equal updatedAt twice in one push keeps the first",
			steps: []step{{"alice", []shapes.Change{
				testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"first"}`),
				testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"second"}`)}, "applied,stale"}},
			user: "alice", want: rowWant{"t1": {"title": "first"}}},
		{name: "a change to another user's key inside a mixed push",
			steps: []step{
				{"alice", []shapes.Change{testkit.Change("todos", testkit.At(1), `{"todoId":"a1","title":"alice"}`)}, "applied"},
				{"bob", []shapes.Change{
					testkit.Change("todos", testkit.At(2), `{"todoId":"a1","title":"bob"}`),
					testkit.Change("todos", testkit.At(2), `{"todoId":"b1","title":"bob"}`)}, "rejected:user-mismatch,applied"}},
			user: "bob", want: rowWant{"b1": {"title": "bob"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
				f := testkit.OpenStore(t, b.Open(t, testkit.SeedDDL), testkit.TodosShape)
				for i, s := range tc.steps {
					got := f.Push(s.user, s.changes...)
					if o := testkit.Outcomes(got); o != s.want {
						t.Fatalf("step %d: outcomes = %s, want %s (%+v)", i, o, s.want, got)
					}
				}
				rows := f.PullAll(tc.user, "todoId")
				if len(rows) != len(tc.want) {
					t.Fatalf("%s has %d rows, want %d: %v", tc.user, len(rows), len(tc.want), rows)
				}
				for key, fields := range tc.want {
					row, ok := rows[key]
					if !ok {
						t.Fatalf("row %s missing: %v", key, rows)
					}
					for field, want := range fields {
						got, has := row[field]
						if want == nil {
							if has {
								t.Errorf("row %s: field %s = %v, want it absent", key, field, got)
							}
							continue
						}
						if got != want {
							t.Errorf("row %s: field %s = %#v, want %#v", key, field, got, want)
						}
					}
				}
			})
		})
	}
}

func TestPullAnswers(t *testing.T) {
	testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t, testkit.SeedDDL), testkit.TodosShape)
		epoch := time.Unix(0, 0)

		rows, cursor := f.Pull("alice", epoch)
		if len(rows) != 0 || !cursor.Equal(epoch) {
			t.Fatalf("empty pull = %v, cursor %v; want nothing and the epoch", rows, cursor)
		}

		f.Push("alice", testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"a","done":false,"deleted":false}`))
		f.Push("bob", testkit.Change("todos", testkit.At(1), `{"todoId":"t2","title":"b","done":false,"deleted":false}`))
		rows, c1 := f.Pull("alice", epoch)
		if len(rows) != 1 || rows[0].Payload["todoId"] != "t1" {
			t.Fatalf("alice pulled %v, want only t1", rows)
		}
		if rows[0].UpdatedAt != "2026-11-25T10:00:00.001Z" {
			t.Fatalf("updatedAt = %q, want RFC 3339 UTC with milliseconds", rows[0].UpdatedAt)
		}
		if keys := len(rows[0].Payload); keys != 4 {
			t.Fatalf("payload has %d fields, want todoId, title, done, deleted: %v", keys, rows[0].Payload)
		}
		if c1.Nanosecond()%int(time.Millisecond) != 0 {
			t.Fatalf("cursor %v is not a whole millisecond", c1)
		}
		if d := time.Since(c1); d < -time.Minute || d > time.Minute {
			t.Fatalf("cursor %v is not the database's time", c1)
		}

		rows, c2 := f.Pull("alice", c1)
		if len(rows) != 0 || !c2.Equal(c1) {
			t.Fatalf("pull at the cursor = %v, %v; want nothing, same cursor", rows, c2)
		}
		f.Push("alice", testkit.Change("todos", testkit.At(2), `{"todoId":"t1","done":true}`))
		rows, c3 := f.Pull("alice", c2)
		if len(rows) != 1 || rows[0].Payload["done"] != true || !c3.After(c2) {
			t.Fatalf("pull after a push = %v, %v; want t1 done, a later cursor", rows, c3)
		}
		// An old row uploaded late (the README's offline device) is still
		// pulled: the cursor follows the server's stamp, not updatedAt.
		f.Push("alice", testkit.Change("todos", testkit.BaseTime.Add(-24*time.Hour), `{"todoId":"t3","title":"late","done":false,"deleted":false}`))
		rows, _ = f.Pull("alice", c3)
		if len(rows) != 1 || rows[0].Payload["todoId"] != "t3" {
			t.Fatalf("late upload not pulled: %v", rows)
		}
		// A cursor from the future (another user's, or from a database
		// since restored from a backup) is answered from the epoch, with a
		// cursor that is not from the future.
		rows, c4 := f.Pull("alice", time.Now().Add(time.Hour))
		if len(rows) != 2 || c4.After(time.Now().Add(time.Minute)) {
			t.Fatalf("future lastPull = %v, %v; want every row, from the epoch", rows, c4)
		}
		// and the cursor handed out passes the test on the next pull
		if rows, c5 := f.Pull("alice", c4); len(rows) != 0 || !c5.Equal(c4) {
			t.Fatalf("pull at the handed-out cursor = %v, %v; want nothing", rows, c5)
		}
	})
}

func TestStampsIncreasePerUser(t *testing.T) {
	testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t, testkit.SeedDDL), testkit.TodosShape)
		var last time.Time
		for i := 0; i < 20; i++ {
			results := make([]shapes.Result, 1)
			stamp, err := f.Store.Push(context.Background(), "alice",
				[]shapes.Change{testkit.Change("todos", testkit.At(i+1), `{"todoId":"t1","title":"x"}`)}, results)
			if err != nil {
				t.Fatal(err)
			}
			if !stamp.After(last) {
				t.Fatalf("push %d: stamp %v is not after %v", i, stamp, last)
			}
			last = stamp
		}
	})
}
