// Package testkit is the scaffolding of hypersync's tests, in one place:
// the databases every conformance test runs on, one DDL translator from
// PostgreSQL to SQLite, opening stores and handlers, the fixtures of the
// HyperSync README, and the two-instance convergence harness
// (converge.go).
package testkit

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/shapes"
	_ "github.com/hypersync/hypersync/shapes/postgres" // registers postgres:// DSNs
	_ "github.com/hypersync/hypersync/shapes/sqlite"   // registers sqlite: DSNs
)

// SeedDDL is the table of the HyperSync README, exactly as written there.
const SeedDDL = pgtest.TodosDDL

// SeedTable is the README's table with the index it recommends.
const SeedTable = pgtest.TodosDDL + ";\n" + pgtest.TodosIndex

// TodosShape maps the README's table.
var TodosShape = shapes.ShapeConfig{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title", "done", "deleted"}}

// Backend is one database the conformance tests run on.
type Backend struct {
	Name string
	// Open creates an empty database, runs the PostgreSQL DDL in it
	// (translated for SQLite) and returns its DSN.
	Open func(t testing.TB, ddl ...string) string
}

// Backends are PostgreSQL, PostgreSQL through pgx's simple protocol (as
// behind some connection poolers: pushes send typed slices instead of
// binary arrays), and SQLite.
func Backends() []Backend {
	return []Backend{Postgres(), PostgresSimple(), SQLite()}
}

// Postgres is a fresh database on the test server.
func Postgres() Backend {
	return Backend{Name: "postgres", Open: func(t testing.TB, ddl ...string) string {
		dsn := pgtest.NewDatabase(t)
		Exec(t, dsn, ddl...)
		return dsn
	}}
}

// PostgresSimple is Postgres with default_query_exec_mode=simple_protocol.
func PostgresSimple() Backend {
	return Backend{Name: "postgres-simple", Open: func(t testing.TB, ddl ...string) string {
		dsn := pgtest.NewDatabase(t)
		Exec(t, dsn, ddl...)
		return pgtest.WithParam(dsn, "default_query_exec_mode", "simple_protocol")
	}}
}

// SQLite is a fresh file in the test's temporary directory.
func SQLite() Backend {
	return Backend{Name: "sqlite", Open: func(t testing.TB, ddl ...string) string {
		dsn := "sqlite:" + filepath.Join(t.TempDir(), "test.db")
		Exec(t, dsn, ddl...)
		return dsn
	}}
}

// Stores are the two kinds of database, without the simple-protocol
// variant, for tests whose subject is not the driver.
func Stores() []Backend { return []Backend{Postgres(), SQLite()} }

// ForEachBackend runs f as a subtest on every backend.
func ForEachBackend(t *testing.T, f func(t *testing.T, b Backend)) { forEach(t, Backends(), f) }

// ForEachStore runs f as a subtest on PostgreSQL and on SQLite.
func ForEachStore(t *testing.T, f func(t *testing.T, b Backend)) { forEach(t, Stores(), f) }

func forEach(t *testing.T, bs []Backend, f func(t *testing.T, b Backend)) {
	for _, b := range bs {
		t.Run(b.Name, func(t *testing.T) { f(t, b) })
	}
}

// sqliteRewrites turn the PostgreSQL DDL of the tests into SQLite's, so
// that each test states its table once.
var sqliteRewrites = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`(?i)DEFAULT NOW\(\)`), "DEFAULT CURRENT_TIMESTAMP"},
	{regexp.MustCompile(`(?i)\btimestamptz\b`), "TIMESTAMP"},
	{regexp.MustCompile(`(?i)\bjsonb\b`), "JSON"},
	{regexp.MustCompile(`(?i)\btext\[\]`), "TEXT_ARRAY"},
	{regexp.MustCompile(`(?i)\bdouble precision\b`), "DOUBLE"},
	// PostgreSQL's integer is four bytes, and the range checks follow
	{regexp.MustCompile(`(?i)\binteger\b`), "INT4"},
}

// SQLiteDDL rewrites PostgreSQL DDL into SQLite's.
func SQLiteDDL(ddl string) string {
	for _, r := range sqliteRewrites {
		ddl = r.re.ReplaceAllString(ddl, r.with)
	}
	return ddl
}

// IsSQLite reports whether dsn is an SQLite file, and its path.
func IsSQLite(dsn string) (string, bool) { return strings.CutPrefix(dsn, "sqlite:") }

// Exec runs statements on either kind of database, translating them for
// SQLite.
func Exec(t testing.TB, dsn string, stmts ...string) {
	t.Helper()
	for _, stmt := range stmts {
		if err := ExecErr(dsn, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
}

// ExecErr runs one statement, translated for SQLite, and returns its
// error.
func ExecErr(dsn, stmt string) error {
	if _, ok := IsSQLite(dsn); ok {
		stmt = SQLiteDDL(stmt)
	}
	return ExecNative(dsn, stmt)
}

// ExecNative runs one statement as it is, on either kind of database: for
// SQL that hypersync printed for that database, which must run unchanged.
func ExecNative(dsn, stmt string) error {
	if path, ok := IsSQLite(dsn); ok {
		db, err := sql.Open("sqlite", path)
		if err != nil {
			return err
		}
		defer db.Close()
		_, err = db.Exec(stmt)
		return err
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, stmt)
	return err
}

// Conn is a connection to either kind of database, for tests that write
// as another client would (psql, a backend job, the sqlite3 shell).
type Conn struct {
	pg *pgx.Conn
	db *sql.DB
}

// Connect opens a Conn to dsn. Parameters are written $1, $2, … for both.
func Connect(t testing.TB, dsn string) *Conn {
	t.Helper()
	c := &Conn{}
	var err error
	if path, ok := IsSQLite(dsn); ok {
		c.db, err = sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
		if err == nil {
			c.db.SetMaxOpenConns(1)
		}
	} else {
		c.pg, err = pgx.Connect(context.Background(), dsn)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Exec runs one statement and returns how many rows it changed.
func (c *Conn) Exec(ctx context.Context, stmt string, args ...any) (int64, error) {
	if c.db != nil {
		res, err := c.db.ExecContext(ctx, stmt, args...)
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	}
	tag, err := c.pg.Exec(ctx, stmt, args...)
	return tag.RowsAffected(), err
}

// Close closes the connection.
func (c *Conn) Close() {
	if c.db != nil {
		c.db.Close()
	} else if c.pg != nil {
		c.pg.Close(context.Background())
	}
}

// Query runs a query on either kind of database and calls row for each
// result row, with a scan function.
func Query(dsn, query string, row func(scan func(...any) error) error) error {
	if path, ok := IsSQLite(dsn); ok {
		db, err := sql.Open("sqlite", path)
		if err != nil {
			return err
		}
		defer db.Close()
		rows, err := db.Query(query)
		if err != nil {
			return err
		}
		defer rows.Close()
		return eachRow(rows, row)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, query)
	if err != nil {
		return err
	}
	defer rows.Close()
	return eachRow(rows, row)
}

// eachRow calls row for each row of either driver's result.
func eachRow(rows interface {
	Next() bool
	Scan(...any) error
	Err() error
}, row func(scan func(...any) error) error) error {
	for rows.Next() {
		if err := row(rows.Scan); err != nil {
			return err
		}
	}
	return rows.Err()
}

// OpenDB opens dsn for the test.
func OpenDB(t testing.TB, dsn string) *shapes.Database {
	t.Helper()
	db, err := shapes.Open(dsn, shapes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Destruct() })
	return db
}

// NewStore makes a store of cfgs on db.
func NewStore(t testing.TB, db *shapes.Database, cfgs ...shapes.ShapeConfig) *shapes.Store {
	t.Helper()
	st, err := shapes.NewStore(db, cfgs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// Server serves a handler on loopback. The user is the X-Test-User header.
type Server struct {
	*httptest.Server
	Handler *handler.Handler
}

// NewServer serves store through a handler configured by cfg (its Store and
// Logger are set here when empty).
func NewServer(t testing.TB, store *shapes.Store, cfg handler.Config) *Server {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = store
	}
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	h, err := handler.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.Serve(w, r, r.Header.Get("X-Test-User"))
	}))
	t.Cleanup(srv.Close)
	return &Server{Server: srv, Handler: h}
}

// Fixture is a store opened on a test database.
type Fixture struct {
	T     *testing.T
	DSN   string
	DB    *shapes.Database
	Store *shapes.Store
}

// OpenStore opens dsn and checks a store of cfgs on it.
func OpenStore(t *testing.T, dsn string, cfgs ...shapes.ShapeConfig) *Fixture {
	t.Helper()
	db := OpenDB(t, dsn)
	st := NewStore(t, db, cfgs...)
	if err := st.Check(context.Background()); err != nil {
		t.Fatalf("check: %v", err)
	}
	return &Fixture{T: t, DSN: dsn, DB: db, Store: st}
}

// Push pushes changes for user and returns their results.
func (f *Fixture) Push(user string, changes ...shapes.Change) []shapes.Result {
	f.T.Helper()
	results := make([]shapes.Result, len(changes))
	if _, err := f.Store.Push(context.Background(), user, changes, results); err != nil {
		f.T.Fatalf("push: %v", err)
	}
	return results
}

// Pulled is one pulled row, its payload decoded from the JSON the wire
// carries.
type Pulled struct {
	Shape     string
	Payload   map[string]any
	UpdatedAt string
	// User is the change's userId: the row's author in a shared shape.
	User string
	// Raw is the payload as the wire carries it.
	Raw json.RawMessage
}

// Pull pulls the user's rows written after since, and the cursor.
func (f *Fixture) Pull(user string, since time.Time) ([]Pulled, time.Time) {
	f.T.Helper()
	rows, res, err := PullStore(f.Store, user, since, 0)
	if err != nil {
		f.T.Fatalf("pull: %v", err)
	}
	return rows, res.Cursor
}

// PullStore pulls from a store, encoding each row as the wire does.
func PullStore(st *shapes.Store, user string, since time.Time, limit int) ([]Pulled, shapes.PullResult, error) {
	var out []Pulled
	res, err := st.Pull(context.Background(), user, since, limit, func(r shapes.PulledRow) error {
		if r.Restart {
			out = out[:0]
			return nil
		}
		raw := handler.AppendRowPayload(nil, r, nil)
		p := Pulled{Shape: r.Shape.Config.Key, Raw: raw, User: user}
		if !r.User.Null && r.User.Text != nil {
			p.User = string(r.User.Text)
		}
		if !r.UpdatedAt.Null {
			p.UpdatedAt = string(handler.AppendTime(nil, r.UpdatedAt.Time))
		}
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.UseNumber()
		if err := dec.Decode(&p.Payload); err != nil {
			return fmt.Errorf("payload %s: %w", raw, err)
		}
		out = append(out, p)
		return nil
	})
	return out, res, err
}

// PullAll pulls everything and returns the rows by key field value.
func (f *Fixture) PullAll(user, keyField string) map[string]map[string]any {
	f.T.Helper()
	rows, _ := f.Pull(user, time.Unix(0, 0))
	out := map[string]map[string]any{}
	for _, r := range rows {
		out[fmt.Sprint(r.Payload[keyField])] = r.Payload
	}
	return out
}

// BaseTime is the client time the tests' changes start from.
var BaseTime = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

// At returns BaseTime plus n milliseconds.
func At(n int) time.Time { return BaseTime.Add(time.Duration(n) * time.Millisecond) }

var changeSeq int

// Change builds a change from a payload written as JSON.
func Change(shape string, updated time.Time, payload string) shapes.Change {
	changeSeq++
	return shapes.Change{ID: fmt.Sprintf("c%d", changeSeq), Shape: shape, UpdatedAt: updated, Payload: PayloadOf(payload)}
}

// PayloadOf decodes a payload written as JSON.
func PayloadOf(s string) shapes.Payload {
	var p map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		panic(err)
	}
	return shapes.PayloadOf(p)
}

// Outcomes renders results as "applied,rejected:user-mismatch,…".
func Outcomes(rs []shapes.Result) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.Outcome.String()
		if r.Code != "" {
			parts[i] += ":" + r.Code
		}
	}
	return strings.Join(parts, ",")
}

// WantOutcomes fails the test unless the results read want.
func WantOutcomes(t *testing.T, got []shapes.Result, want string) {
	t.Helper()
	if g := Outcomes(got); g != want {
		t.Fatalf("outcomes = %s, want %s (%+v)", g, want, got)
	}
}

// TypesDDL is a table with a column of each kind of type.
const TypesDDL = `CREATE TABLE things (
	id text PRIMARY KEY,
	t text, b boolean, i int4, big bigint, n numeric, d double precision,
	ts timestamptz, u uuid, j jsonb, tags text[],
	userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz)`

// ThingsShape maps TypesDDL, syncing every column.
var ThingsShape = shapes.ShapeConfig{Key: "things", KeyFields: []string{"id"}}

// FuzzShape is a shape with a column of every kind, resolved without a
// database, for the payload fuzz targets.
func FuzzShape(t testing.TB) *shapes.Shape {
	cols := []shapes.ColumnInfo{
		{Name: "id", Type: "text", Cast: "text", Kind: shapes.KindText, NotNull: true},
		{Name: "n", Type: "integer", Kind: shapes.KindInt, Bits: 32},
		{Name: "t", Type: "text", Kind: shapes.KindText, NotNull: true},
		{Name: "b", Type: "boolean", Kind: shapes.KindBool},
		{Name: "i", Type: "bigint", Kind: shapes.KindInt, Bits: 64},
		{Name: "f", Type: "double precision", Kind: shapes.KindFloat, Bits: 64},
		{Name: "r", Type: "real", Kind: shapes.KindFloat, Bits: 32},
		{Name: "num", Type: "numeric", Kind: shapes.KindNumeric},
		{Name: "ts", Type: "timestamp with time zone", Kind: shapes.KindTimestamp},
		{Name: "u", Type: "uuid", Kind: shapes.KindText},
		{Name: "j", Type: "jsonb", Kind: shapes.KindJSON},
		{Name: "a", Type: "text[]", Kind: shapes.KindArray},
		{Name: "o", Type: "inet", Kind: shapes.KindOther},
		{Name: "userId", Type: "text", Kind: shapes.KindText},
		{Name: "updatedAt", Type: "timestamp with time zone", Kind: shapes.KindTimestamp},
		{Name: "lastSyncAt", Type: "timestamp with time zone", Kind: shapes.KindTimestamp},
	}
	sh, err := shapes.Resolve(shapes.ShapeConfig{Key: "things", KeyFields: []string{"id", "n"}},
		&shapes.TableInfo{Name: "things", Columns: cols, Unique: [][]string{{"id", "n"}}})
	if err != nil {
		t.Fatal(err)
	}
	return sh
}

// FuzzRow validates payload against sh as a push does. It returns nil for
// a payload that is not a JSON object or that the validator rejects, and
// fails the test on a rejection without a message.
func FuzzRow(t *testing.T, sh *shapes.Shape, payload []byte) *shapes.Row {
	var p map[string]json.RawMessage
	if json.Unmarshal(payload, &p) != nil {
		return nil
	}
	r, err := sh.Row(shapes.Change{ID: "c", Shape: "things", UpdatedAt: time.Unix(1e9, 0), Payload: shapes.PayloadOf(p)})
	if err != nil {
		if err.Error() == "" {
			t.Fatal("rejection without a message")
		}
		return nil
	}
	return r
}

// NextMillisecond waits until the wall clock is in a later millisecond
// than when it was called: stamps taken after it differ from those taken
// before by the clock, not only by the +1 ms rule.
func NextMillisecond() {
	now := time.Now().Truncate(time.Millisecond)
	for !time.Now().Truncate(time.Millisecond).After(now) {
		time.Sleep(100 * time.Microsecond)
	}
}
