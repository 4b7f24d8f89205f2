package shapes

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/hypersync/hypersync/internal/pgtest"
)

// backendCase is one database the conformance suite runs on.
type backendCase struct {
	name string
	// open creates an empty database, runs ddl in it and returns a DSN.
	open func(t *testing.T, ddl ...string) string
}

func backends() []backendCase {
	return []backendCase{
		{name: "postgres", open: func(t *testing.T, ddl ...string) string {
			dsn := pgtest.NewDatabase(t)
			pgtest.Exec(t, dsn, ddl...)
			return dsn
		}},
		// pgx's simple protocol, as behind some connection poolers: pushes
		// send typed slices instead of binary arrays
		{name: "postgres-simple", open: func(t *testing.T, ddl ...string) string {
			dsn := pgtest.NewDatabase(t)
			pgtest.Exec(t, dsn, ddl...)
			return pgtest.WithParam(dsn, "default_query_exec_mode", "simple_protocol")
		}},
		{name: "sqlite", open: func(t *testing.T, ddl ...string) string {
			path := filepath.Join(t.TempDir(), "test.db")
			db, err := sql.Open("sqlite", path)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			for _, stmt := range ddl {
				if _, err := db.Exec(sqliteDDL(stmt)); err != nil {
					t.Fatalf("sqlite: %s: %v", sqliteDDL(stmt), err)
				}
			}
			return "sqlite:" + path
		}},
	}
}

// sqliteDDL rewrites the PostgreSQL DDL of these tests into SQLite's, so
// each test states its table once. SQLite has no schemas: CREATE SCHEMA
// becomes ATTACH of an in-memory database, which is what a schema is there.
func sqliteDDL(ddl string) string {
	r := strings.NewReplacer(
		"DEFAULT NOW()", "DEFAULT CURRENT_TIMESTAMP",
		"timestamptz", "TIMESTAMP",
		"jsonb", "JSON",
		"text[]", "TEXT_ARRAY",
		"double precision", "DOUBLE",
	)
	return r.Replace(ddl)
}

// forEachBackend runs f as a subtest on every database.
func forEachBackend(t *testing.T, f func(t *testing.T, b backendCase)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// seedDDL is the table of the HyperSync README, as written there.
const seedDDL = pgtest.TodosDDL

var todosShape = ShapeConfig{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title", "done", "deleted"}}

type fixture struct {
	t     *testing.T
	dsn   string
	db    *Database
	store *Store
}

func openStore(t *testing.T, dsn string, cfgs ...ShapeConfig) *fixture {
	t.Helper()
	db, err := Open(dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Destruct() })
	st, err := NewStore(db, cfgs, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Check(context.Background()); err != nil {
		t.Fatalf("check: %v", err)
	}
	return &fixture{t: t, dsn: dsn, db: db, store: st}
}

func (f *fixture) push(user string, changes ...Change) []Result {
	f.t.Helper()
	results := make([]Result, len(changes))
	if _, err := f.store.Push(context.Background(), user, changes, results); err != nil {
		f.t.Fatalf("push: %v", err)
	}
	return results
}

type pulled struct {
	Shape     string
	Payload   map[string]any
	UpdatedAt string
}

func (f *fixture) pull(user string, since time.Time) ([]pulled, time.Time) {
	f.t.Helper()
	var out []pulled
	res, err := f.store.Pull(context.Background(), user, since, 0, func(r PulledRow) error {
		p := pulled{Shape: r.Shape.Config.Key, UpdatedAt: string(r.UpdatedAt)}
		dec := json.NewDecoder(strings.NewReader(string(r.Payload)))
		dec.UseNumber()
		if err := dec.Decode(&p.Payload); err != nil {
			return fmt.Errorf("payload %s: %w", r.Payload, err)
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		f.t.Fatalf("pull: %v", err)
	}
	return out, res.Cursor
}

// pullAll pulls everything and returns the rows by key field value.
func (f *fixture) pullAll(user, keyField string) map[string]map[string]any {
	f.t.Helper()
	rows, _ := f.pull(user, time.Unix(0, 0))
	out := map[string]map[string]any{}
	for _, r := range rows {
		out[fmt.Sprint(r.Payload[keyField])] = r.Payload
	}
	return out
}

var baseTime = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

// at returns baseTime plus n milliseconds.
func at(n int) time.Time { return baseTime.Add(time.Duration(n) * time.Millisecond) }

var changeSeq int

// change builds a change from a payload written as JSON.
func change(shape string, updated time.Time, payload string) Change {
	changeSeq++
	var p map[string]json.RawMessage
	if err := json.Unmarshal([]byte(payload), &p); err != nil {
		panic(err)
	}
	return Change{ID: fmt.Sprintf("c%d", changeSeq), Shape: shape, UpdatedAt: updated, Payload: PayloadOf(p)}
}

func outcomes(rs []Result) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.Outcome.String()
		if r.Code != "" {
			parts[i] += ":" + r.Code
		}
	}
	return strings.Join(parts, ",")
}

func wantOutcomes(t *testing.T, got []Result, want string) {
	t.Helper()
	if g := outcomes(got); g != want {
		t.Fatalf("outcomes = %s, want %s (%+v)", g, want, got)
	}
}

func jsonReader(raw []byte) *strings.Reader { return strings.NewReader(string(raw)) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
