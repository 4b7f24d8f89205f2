// Package sqlite is hypersync's embedded SQLite driver: it turns the groups
// of rows a shapes.Store plans into SQL on one file, and pulled rows back
// into values. Importing it registers sqlite:<path> DSNs with package
// shapes.
//
// Files: sqlite.go opens the file and classifies errors; inspect.go reads
// the schema; write.go holds the stamp scheme and the upserts; pull.go
// reads pulls.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/hypersync/hypersync/shapes"
)

var dialect = &shapes.Dialect{
	Name:     "sqlite",
	Forms:    []string{"sqlite:<path>"},
	Prefixes: []string{"sqlite:"},
	FieldTypes: map[string]string{
		"text": "TEXT", "integer": "INTEGER", "real": "REAL",
		"boolean": "BOOLEAN", "timestamp": "TIMESTAMP", "json": "JSON",
	},
	StampType: "TIMESTAMP",
	// AFTER triggers stamp a row once it is in: an insert that leaves the
	// columns out needs a value to pass NOT NULL first.
	StampDefault: " DEFAULT CURRENT_TIMESTAMP",
	CursorDDL:    `CREATE TABLE IF NOT EXISTS "` + shapes.CursorTable + `" (user_id TEXT PRIMARY KEY, stamp TEXT NOT NULL)`,
	TrustDDL:     trustDDL,
	SharingDDL:   append(append([]string{}, sharingDDL...), addColumn(shapes.MovesTable, "row_key TEXT")),
	LeftBackfill: leftBackfill,
	Stamping:     stamping,
	Open: func(dsn string, opts shapes.Options) (shapes.Driver, error) {
		if len(opts.ReadReplicas) > 0 {
			return nil, fmt.Errorf("read_database is for PostgreSQL: SQLite, a file on this machine, has no standbys")
		}
		return open(dsn, opts)
	},
}

// sharingDDL creates the tables shared shapes need, as the stamping
// objects print them. A moves table made before it kept row_key (the
// row's key, keyExpr; null in moves recorded before) gets it when hypersync
// starts (SharingDDL): SQLite cannot add a column only if it is missing.
var sharingDDL = []string{`CREATE TABLE IF NOT EXISTS "` + shapes.MovesTable + `" (shape TEXT NOT NULL, scope TEXT NOT NULL, new_scope TEXT,
		user_id TEXT NOT NULL, updated_at TEXT NOT NULL, stamp TEXT NOT NULL, from_scoped_at TEXT, payload TEXT NOT NULL, row_key TEXT)`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.MovesTable + `_scope_idx" ON "` + shapes.MovesTable + `" (shape, scope, stamp)`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.LeftTable + `" (members TEXT NOT NULL, scope TEXT NOT NULL, member TEXT NOT NULL,
		joined TEXT NOT NULL, left_at TEXT NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.LeftTable + `_member_idx" ON "` + shapes.LeftTable + `" (member, left_at)`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.LeftTable + `_scope_idx" ON "` + shapes.LeftTable + `" (members, scope, left_at)`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.VersionsTable + `" (shape TEXT NOT NULL, row_key TEXT NOT NULL, updated_at TEXT, user_id TEXT, stamp TEXT NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.VersionsTable + `_key_idx" ON "` + shapes.VersionsTable + `" (shape, row_key, stamp)`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.ScopesTable + `" (members TEXT NOT NULL, scope TEXT NOT NULL, PRIMARY KEY (members, scope))`,
}

// leftBackfill records the removals m holds that LeftTable lacks.
func leftBackfill(m *shapes.Membership) string {
	q := shapes.QuoteIdent
	joined := "'" + unknownJoin + "'"
	if m.Joined != nil {
		joined = "coalesce(m." + q(m.Joined.Name) + ", '" + unknownJoin + "')"
	}
	return fmt.Sprintf(`INSERT INTO "%[1]s" (members, scope, member, joined, left_at)
SELECT %[2]s, CAST(m.%[3]s AS TEXT), CAST(m.%[4]s AS TEXT), %[5]s, m.%[6]s FROM %[7]s AS m
WHERE m.%[8]s AND m.%[4]s IS NOT NULL AND m.%[6]s IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "%[1]s" AS h
	WHERE h.members = %[2]s AND h.scope = CAST(m.%[3]s AS TEXT) AND h.member = CAST(m.%[4]s AS TEXT) AND h.left_at = m.%[6]s)`,
		shapes.LeftTable, quoteLiteral(m.Table), q(m.Scope.Name), q(m.Member.Name), joined, q(m.Stamp.Name),
		shapes.QuoteTable(m.Schema, m.Table), q(m.Tomb.Name))
}

func init() { shapes.Register(dialect) }

// stampLayout is how SQLite stores every timestamp hypersync writes: fixed
// width, UTC, microseconds, so that text order is time order.
const stampLayout = "2006-01-02T15:04:05.000000Z"

type driver struct {
	path     string
	w        *sql.DB // the writer: one connection
	r        *sql.DB // readers
	mu       sync.Mutex
	now      func() time.Time
	logger   *zap.Logger
	lockWait func(time.Duration)

	cursorOnce sync.Once
	cursor     cursorStmts
	cursorErr  error
}

func open(dsn string, opts shapes.Options) (*driver, error) {
	path := strings.TrimPrefix(dsn, "sqlite:")
	path = strings.TrimPrefix(path, "//")
	if path == "" {
		return nil, fmt.Errorf("sqlite: no file path in %q (want sqlite:./data/hypersync.db)", dsn)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("sqlite: creating %s: %w", dir, err)
		}
	}
	base := "file:" + (&url.URL{Path: path}).EscapedPath() +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"
	w, err := sql.Open("sqlite", base+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("sqlite: opening %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	r, err := sql.Open("sqlite", base+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: opening %s: %w", path, err)
	}
	r.SetMaxOpenConns(8)
	return &driver{path: path, w: w, r: r, now: time.Now, logger: opts.Logger, lockWait: opts.LockWait}, nil
}

func (s *driver) Close() {
	s.r.Close()
	s.w.Close()
}

func (s *driver) Ping(ctx context.Context) error {
	return classify(s.w.PingContext(ctx))
}

// DDL runs statements one after another: the single writer connection
// already keeps two of them from racing.
func (s *driver) DDL(ctx context.Context, stmts ...string) error {
	for _, stmt := range stmts {
		_, err := s.w.ExecContext(ctx, stmt)
		if err != nil && strings.HasPrefix(stmt, addColumnPrefix) && strings.Contains(err.Error(), "duplicate column name") {
			continue // SQLite has no ADD COLUMN IF NOT EXISTS: the column is there
		}
		if err != nil {
			return classify(err)
		}
	}
	return nil
}

// addColumn adds a column to a table of hypersync's own, unless it has it.
func addColumn(table, column string) string {
	return addColumnPrefix + `"` + table + `" ADD COLUMN ` + column
}

const addColumnPrefix = "ALTER TABLE "

// refusedByValue reports an error that a value in the statement caused.
func refusedByValue(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_RANGE:
			return true
		}
	}
	return false
}

// refusal is the message of a refused value, without the driver's prefix.
func refusal(err error) string {
	var se *sqlite.Error
	if errors.As(err, &se) {
		msg := se.Error()
		if i := strings.Index(msg, ": "); i >= 0 && strings.HasPrefix(msg, "constraint failed") {
			return msg[i+2:]
		}
		return msg
	}
	return err.Error()
}

// classify marks errors: ErrUnavailable when the file cannot be used right
// now, ErrSchemaChanged when a table no longer matches, a
// *shapes.RefusedError when a value was refused.
func classify(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, shapes.ErrRefused) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %v", shapes.ErrUnavailable, err)
	}
	if refusedByValue(err) {
		return &shapes.RefusedError{Message: refusal(err)}
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
			sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PROTOCOL:
			return fmt.Errorf("%w: %v", shapes.ErrUnavailable, err)
		case sqlite3.SQLITE_ERROR:
			if msg := se.Error(); strings.Contains(msg, "no such column") || strings.Contains(msg, "has no column named") ||
				strings.Contains(msg, "no such table") {
				return fmt.Errorf("%w: %s", shapes.ErrSchemaChanged, msg)
			}
		}
	}
	return err
}
