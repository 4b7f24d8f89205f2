package shapes

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// ErrUnavailable marks errors caused by the database being unreachable,
// overloaded or too slow. Callers answer 503 and the client retries.
var ErrUnavailable = errors.New("database unavailable")

// ErrSchemaChanged marks a statement that failed because a table no longer
// matches what was checked (a column or table dropped or renamed). The
// store checks its tables again on the next request.
var ErrSchemaChanged = errors.New("a table changed since it was checked")

// CursorTable is the table, created by hypersync, that holds each user's
// latest sync stamp. Its row per user is the lock that orders that user's
// pushes, and the watermark a pull reads.
const CursorTable = "hypersync_cursors"

// PulledRow is one row a pull returns. Its byte slices are only valid
// during the call that receives them.
type PulledRow struct {
	Shape *Shape
	// Payload is the row's fields as a JSON object, keyed by field name.
	Payload []byte
	// UpdatedAt is the client's updatedAt, RFC 3339 UTC with milliseconds.
	UpdatedAt []byte
}

// dialect is what differs between databases. Everything else, from change
// validation to statement planning, is shared.
type dialect interface {
	// inspect reads a table's columns and indexes; nil when it is missing.
	inspect(ctx context.Context, schema, table string) (*TableInfo, error)
	// createTypes maps create_table's field types to column types, and
	// gives the type of the bookkeeping timestamps.
	createTypes() (types map[string]string, stampType string)
	// ddl runs CREATE … IF NOT EXISTS statements, safely against other
	// instances doing the same.
	ddl(ctx context.Context, stmts ...string) error
	// ensureCursors creates the cursor table when it is missing.
	ensureCursors(ctx context.Context) error
	// push writes the rows of one push for user, setting results. It
	// returns the sync stamp it wrote.
	push(ctx context.Context, user string, rows []*row, results []Result) (time.Time, error)
	// pull streams user's rows of every shape stamped in (since, cursor]
	// and returns the cursor. With limit > 0, the cursor is the stamp of
	// about the limit-th row, so that a page holds every row of its last
	// stamp.
	pull(ctx context.Context, user string, since time.Time, limit int, shapes []*Shape, emit func(PulledRow) error) (PullResult, error)
	// ping checks that the database answers.
	ping(ctx context.Context) error
	close()
}

// Store serves the shapes of one configuration from one Database.
type Store struct {
	db      *Database
	configs []ShapeConfig
	logger  *zap.Logger

	mu     sync.Mutex
	shapes map[string]*Shape // nil until resolved
	order  []*Shape
}

// NewStore returns a Store for cfgs. It does not touch the database: call
// Check to resolve the shapes now, or let the first request do it.
func NewStore(db *Database, cfgs []ShapeConfig, logger *zap.Logger) (*Store, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	seen := map[string]bool{}
	for _, c := range cfgs {
		if err := c.Validate(); err != nil {
			return nil, err
		}
		if seen[c.Key] {
			return nil, fmt.Errorf("shape %q is configured twice", c.Key)
		}
		seen[c.Key] = true
	}
	return &Store{db: db, configs: cfgs, logger: logger}, nil
}

// Known returns the configured shape key equal to key, and whether there
// is one. The returned string is the configuration's own, not key, so
// that it can outlive a request whose body key points into.
func (s *Store) Known(key string) (string, bool) {
	for _, c := range s.configs {
		if c.Key == key {
			return c.Key, true
		}
	}
	return "", false
}

// Database returns the database the store uses.
func (s *Store) Database() *Database { return s.db }

// Check resolves every shape against its table, creating tables where a
// shape asks for it. A mismatch is a *SchemaError; a database that cannot
// be reached is ErrUnavailable.
func (s *Store) Check(ctx context.Context) error {
	_, err := s.resolved(ctx)
	return err
}

// Shapes returns the resolved shapes in configuration order, resolving
// them first if needed.
func (s *Store) Shapes(ctx context.Context) ([]*Shape, error) {
	_, err := s.resolved(ctx)
	return s.order, err
}

func (s *Store) resolved(ctx context.Context) (map[string]*Shape, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shapes != nil {
		return s.shapes, nil
	}
	d := s.db.d
	if err := d.ensureCursors(ctx); err != nil {
		return nil, fmt.Errorf("creating the cursor table %s: %w", CursorTable, err)
	}
	shapes := make(map[string]*Shape, len(s.configs))
	order := make([]*Shape, 0, len(s.configs))
	for _, cfg := range s.configs {
		cfg = cfg.WithDefaults()
		schema, table, _ := SplitTableName(cfg.Table)
		info, err := d.inspect(ctx, schema, table)
		if err != nil {
			return nil, fmt.Errorf("shape %q: reading table %s: %w", cfg.Key, cfg.Table, err)
		}
		if info == nil && cfg.CreateTable {
			types, stampType := d.createTypes()
			if err := d.ddl(ctx, CreateTableSQL(cfg, types, stampType)...); err != nil {
				return nil, fmt.Errorf("shape %q: creating table %s: %w", cfg.Key, cfg.Table, err)
			}
			s.logger.Info("created table", zap.String("shape", cfg.Key), zap.String("table", cfg.Table))
			if info, err = d.inspect(ctx, schema, table); err != nil {
				return nil, fmt.Errorf("shape %q: reading table %s: %w", cfg.Key, cfg.Table, err)
			}
		}
		sh, err := resolveShape(cfg, info)
		if err != nil {
			return nil, err
		}
		if !sh.SyncIndex {
			s.logger.Warn("no index leads with the user and sync-stamp columns; pulls will scan the table",
				zap.String("shape", sh.Config.Key),
				zap.String("create_index", s.db.IndexSQL(sh)))
		}
		shapes[cfg.Key] = sh
		order = append(order, sh)
	}
	s.shapes, s.order = shapes, order
	return shapes, nil
}

// Push applies changes for user and sets results[i] to the outcome of
// changes[i]. A change whose result is already Rejected is skipped, so the
// caller can reject changes before the store sees them. A change that
// fails validation or conversion is rejected alone. The error is set only
// when nothing could be done (ErrUnavailable, or a schema problem). Every
// change reported accepted was committed before Push returns. It returns
// the sync stamp written, zero when nothing was written.
func (s *Store) Push(ctx context.Context, user string, changes []Change, results []Result) (time.Time, error) {
	if len(results) != len(changes) {
		return time.Time{}, fmt.Errorf("push: %d results for %d changes", len(results), len(changes))
	}
	shapes, err := s.resolved(ctx)
	if err != nil {
		return time.Time{}, err
	}
	rows := prepare(shapes, changes, results)
	if c := s.logger.Check(zap.DebugLevel, "payload fields ignored"); c != nil {
		extra := 0
		for _, r := range rows {
			extra += r.shape.ExtraFields(changes[r.idx].Payload)
		}
		if extra > 0 {
			c.Write(zap.String("user", user), zap.Int("fields", extra))
		}
	}
	if len(rows) == 0 {
		return time.Time{}, nil
	}
	stamp, err := s.db.d.push(ctx, user, rows, results)
	s.recheckOn(err)
	return stamp, err
}

// recheckOn forgets the checked shapes when err says a table changed, so
// that the next request checks them again and the store recovers once the
// table is right, without a restart.
func (s *Store) recheckOn(err error) {
	if errors.Is(err, ErrSchemaChanged) {
		s.mu.Lock()
		s.shapes, s.order = nil, nil
		s.mu.Unlock()
	}
}

// PullResult ends a pull.
type PullResult struct {
	// Cursor is what the client sends as its next lastPull.
	Cursor time.Time
	// HasMore reports, for a pull with a limit, that rows stamped after
	// Cursor are waiting.
	HasMore bool
}

// Pull streams the user's rows written after since. With limit > 0 it
// stops after about limit rows: it may send more, but never splits the rows
// that one push stamped alike, so a page boundary never skips a row.
func (s *Store) Pull(ctx context.Context, user string, since time.Time, limit int, emit func(PulledRow) error) (PullResult, error) {
	if _, err := s.resolved(ctx); err != nil {
		return PullResult{}, err
	}
	s.mu.Lock()
	order := s.order
	s.mu.Unlock()
	res, err := s.db.d.pull(ctx, user, since, limit, order, emit)
	s.recheckOn(err)
	return res, err
}

// Database is a connection pool to one database. It is safe to share
// between Stores, and across config reloads.
type Database struct {
	d      dialect
	kind   string
	target string // the DSN without secrets, for logs
}

// Kind is "postgres" or "sqlite".
func (db *Database) Kind() string { return db.kind }

// String names the database without its password.
func (db *Database) String() string { return db.target }

// Ping checks that the database answers.
func (db *Database) Ping(ctx context.Context) error { return db.d.ping(ctx) }

// Destruct closes the pool. It satisfies caddy.Destructor.
func (db *Database) Destruct() error {
	db.d.close()
	return nil
}

// Options tune a Database.
type Options struct {
	Logger *zap.Logger
	// LockWait, when set, is told how long each push waited for its
	// user's sync stamp.
	LockWait func(time.Duration)
	// dial, when set, opens the database's network connections (tests
	// count round trips with it).
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// CheckDSN reports whether dsn names a database kind hypersync supports.
func CheckDSN(dsn string) error {
	for _, scheme := range []string{"postgres://", "postgresql://", "sqlite:"} {
		if strings.HasPrefix(dsn, scheme) {
			return nil
		}
	}
	return fmt.Errorf("unsupported database %q: use postgres://…, postgresql://… or sqlite:<path>", redactDSN(dsn))
}

// Open opens a pool for dsn without connecting. postgres:// and
// postgresql:// select PostgreSQL; sqlite:<path> selects an SQLite file.
func Open(dsn string, opts Options) (*Database, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return openPostgres(dsn, opts)
	case strings.HasPrefix(dsn, "sqlite:"):
		return openSQLite(dsn, opts)
	}
	return nil, CheckDSN(dsn)
}

// IndexSQL returns the statement that creates the index pulls need.
func (db *Database) IndexSQL(sh *Shape) string {
	return fmt.Sprintf("CREATE INDEX %s ON %s (%s, %s);", quoteIdent(sh.Table+"_"+sh.User.Name+"_"+sh.SyncedAt.Name+"_idx"),
		quoteTable(sh.Schema, sh.Table), quoteIdent(sh.User.Name), quoteIdent(sh.SyncedAt.Name))
}

// quoteIdent quotes an identifier. PostgreSQL and SQLite quote alike.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

func quoteTable(schema, table string) string {
	if schema == "" {
		return quoteIdent(table)
	}
	return pgx.Identifier{schema, table}.Sanitize()
}

// redactDSN hides the password of a URL-style DSN.
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		if i := strings.Index(dsn, "password="); i >= 0 {
			return dsn[:i] + "password=xxxxx"
		}
		return dsn
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.String()
}
