package shapes

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Driver is one open database, as a database package (shapes/postgres,
// shapes/sqlite) provides it. It turns groups of rows into SQL and rows
// back into values; which rows to write, in what order, and what to do
// when a value is refused is the Store's business.
type Driver interface {
	// Inspect reads a table's columns and indexes; nil when it is missing.
	Inspect(ctx context.Context, schema, table string) (*TableInfo, error)
	// DDL runs CREATE … IF NOT EXISTS statements, safely against other
	// instances doing the same.
	DDL(ctx context.Context, stmts ...string) error
	// Write writes the groups of one push in one transaction, stamping
	// every applied row with one sync stamp for w.User, and sets each
	// row's Outcome. It returns the stamp. A value the database refuses
	// fails the whole write with ErrRefused, unless w.Isolated: then each
	// group holds one row, written on its own, and a refused row is marked
	// RowRefused while the others are written.
	Write(ctx context.Context, w Write) (time.Time, error)
	// Shared runs fn in one write transaction, marked as hypersync's own
	// for the stamping triggers, and commits. Where the database asks for
	// it (a deadlock, a serialization failure, ErrRetry) it runs fn again
	// from the start, a few times.
	Shared(ctx context.Context, fn func(Tx) error) error
	// Pull streams the rows of q.User in every shape of q.Shapes stamped in
	// (q.Since, cursor] and returns the cursor (see PullResult).
	Pull(ctx context.Context, q PullQuery, emit func(PulledRow) error) (PullResult, error)
	// Cursors reads the sync stamps of users; a user without one is left
	// out of the answer.
	Cursors(ctx context.Context, users []string) (map[string]time.Time, error)
	// Secret returns the database's secret named name, making it at
	// random the first time, safely against other instances doing the
	// same.
	Secret(ctx context.Context, name string) (string, error)
	// RecordRejections upserts refusals into the user's record (one entry
	// per changeId) and keeps its newest keep entries.
	RecordRejections(ctx context.Context, user string, recs []Rejection, keep int) error
	// Rejections reads the user's record, newest first.
	Rejections(ctx context.Context, user string) ([]Rejection, error)
	// Erased reports whether ErasedTable holds hash; Unblock deletes it
	// and reports whether it did.
	Erased(ctx context.Context, hash string) (bool, error)
	Unblock(ctx context.Context, hash, user string) (bool, error)
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	// Close closes the connections.
	Close()
}

// Write is one push's rows, planned into statements.
type Write struct {
	User     string
	Groups   []Group
	Isolated bool
	// Block is the user's keyed hash in ErasedTable: the write fails with
	// ErrErased when it is there, checked after the user's cursor is
	// locked, so that no push of an erased user commits after the erase.
	Block string
}

// PullQuery asks for one user's rows written after Since.
type PullQuery struct {
	User  string
	Since time.Time
	// Limit, when above 0, ends the page at the stamp of about the
	// Limit-th row, so that a page holds every row of its last stamp.
	Limit  int
	Shapes *ShapeSet
	// Block is the user's keyed hash in ErasedTable: the pull fails with
	// ErrErased when it is there.
	Block string
}

// PulledRow is one row a pull returns. It is only valid during the call
// that receives it.
type PulledRow struct {
	Shape *Shape
	// Values holds one value per column of Shape.Columns().
	Values []Value
	// UpdatedAt is the client's updatedAt.
	UpdatedAt Value
	// User is the row's author, for a shared shape; null means the user
	// pulling.
	User Value
	// Tombstone: send only the key fields, the scope field and the
	// tombstone set to true (move-out).
	Tombstone bool
	// Payload, when set, is the payload to send as it is, instead of
	// Values: a tombstone recorded when the row left a scope.
	Payload []byte
	// Restart voids every row emitted before it: the pull starts again
	// from its first row, elsewhere (a standby's pull cancelled halfway,
	// read again on the primary). A consumer that cannot take them back
	// (a part of the answer has left) returns an error.
	Restart bool
}

// Value is one column value of a pulled row, in the form every driver
// gives it, whatever the database:
//   - KindTimestamp: Time, or Text when the database's value is not a
//     time (PostgreSQL's infinity);
//   - KindText: the string itself;
//   - KindBool: "true" or "false";
//   - KindInt, KindFloat, KindNumeric: a JSON number, or NaN, Infinity or
//     -Infinity;
//   - KindJSON, KindArray, KindOther: JSON text.
type Value struct {
	Null bool
	Text []byte
	Time time.Time
}

// ValueOf builds the Value of a column read as text: null for nil, a time
// where parse reads one for a timestamp, and the text itself otherwise.
// Drivers read every kind but timestamps already in the form Value asks
// for.
func ValueOf(k Kind, text []byte, parse func([]byte) (time.Time, bool)) Value {
	if text == nil {
		return Value{Null: true}
	}
	if k == KindTimestamp {
		if t, ok := parse(text); ok {
			return Value{Time: t}
		}
	}
	return Value{Text: text}
}

// PullResult ends a pull.
type PullResult struct {
	// Cursor is what the client sends as its next lastPull.
	Cursor time.Time
	// HasMore reports, for a pull with a limit, that rows stamped after
	// Cursor are waiting.
	HasMore bool
}

// PoolStats are a connection pool's counters, for metrics.
type PoolStats struct {
	Acquired, Idle, Total int
	EmptyAcquires         int64
	EmptyAcquireWait      time.Duration
}

// Dialect describes one kind of database: how to recognise its DSNs, how
// to open it, and the types create_table uses.
type Dialect struct {
	// Name is the kind: "postgres", "sqlite".
	Name string
	// Prefixes are the DSN prefixes that select the dialect.
	Prefixes []string
	// Forms show the DSNs in messages: "postgres://…", "sqlite:<path>".
	Forms []string
	// FieldTypes maps create_table's portable types to column types.
	FieldTypes map[string]string
	// StampType is the column type of the bookkeeping timestamps, and
	// StampDefault the default create_table gives them, where the
	// stamping objects cannot fill them before NOT NULL is checked.
	StampType, StampDefault string
	// CursorDDL creates CursorTable when it is missing.
	CursorDDL string
	// TrustDDL creates KeysTable, RejectionsTable and ErasedTable when
	// they are missing.
	TrustDDL []string
	// SharingDDL creates the tables shared shapes need (MovesTable,
	// LeftTable, VersionsTable, ScopesTable) and their indexes when they
	// are missing.
	SharingDDL []string
	// LeftBackfill renders the statement that records in LeftTable the
	// removals a membership table holds that it lacks: those made before
	// hypersync kept LeftTable, so that their move-out is still sent.
	LeftBackfill func(m *Membership) string
	// Stamping renders the objects that stamp writes made outside
	// hypersync (see stamp.go), and the markers Inspect finds on a table
	// whose objects are current.
	Stamping func(t StampTarget) (ddl []string, markers []string)
	// Open opens a driver for dsn, without connecting.
	Open func(dsn string, opts Options) (Driver, error)
}

var (
	dialectsMu sync.RWMutex
	dialects   = map[string]*Dialect{}
)

// Register makes a dialect available to Open. Database packages call it
// from init, so that importing one is what makes its DSNs work.
func Register(d *Dialect) {
	dialectsMu.Lock()
	defer dialectsMu.Unlock()
	if _, dup := dialects[d.Name]; dup {
		panic("shapes: dialect " + d.Name + " registered twice")
	}
	dialects[d.Name] = d
}

// dialectOf returns the dialect whose prefix dsn has, or nil.
func dialectOf(dsn string) *Dialect {
	dialectsMu.RLock()
	defer dialectsMu.RUnlock()
	for _, d := range dialects {
		for _, p := range d.Prefixes {
			if strings.HasPrefix(dsn, p) {
				return d
			}
		}
	}
	return nil
}

// LookupDialect returns the registered dialect named name, or nil.
func LookupDialect(name string) *Dialect {
	dialectsMu.RLock()
	defer dialectsMu.RUnlock()
	return dialects[name]
}

// CheckDSN reports whether dsn names a database kind hypersync supports.
func CheckDSN(dsn string) error {
	if dialectOf(dsn) != nil {
		return nil
	}
	dialectsMu.RLock()
	names := make([]string, 0, len(dialects))
	for name := range dialects {
		names = append(names, name)
	}
	sort.Strings(names)
	var forms []string
	for _, name := range names {
		forms = append(forms, dialects[name].Forms...)
	}
	dialectsMu.RUnlock()
	use := strings.Join(forms, ", ")
	if n := len(forms); n > 1 {
		use = strings.Join(forms[:n-1], ", ") + " or " + forms[n-1]
	}
	return fmt.Errorf("unsupported database %q: use %s", RedactDSN(dsn), use)
}

// KindOf names the kind of database a DSN selects: "postgres",
// "sqlite", or "" when no registered kind has its prefix.
func KindOf(dsn string) string {
	if d := dialectOf(dsn); d != nil {
		return d.Name
	}
	return ""
}

// DefaultSQLite is the database used when none is configured.
const DefaultSQLite = "sqlite:./hypersync.db"

// Options tune a Database.
type Options struct {
	Logger *zap.Logger
	// LockWait, when set, is told how long each push waited for its
	// user's sync stamp.
	LockWait func(time.Duration)
	// Dial, when set, opens the database's network connections (tests
	// count round trips with it).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ReadReplicas are hot standbys of the database that pulls run on
	// (PostgreSQL only); ReadMaxLag is how long a pull waits for one to
	// hold what the user's cursor asks, before it reads the primary
	// (DefaultReadMaxLag when 0).
	ReadReplicas []string
	ReadMaxLag   time.Duration
	// PullTarget, when set, is told where each pull ran ("primary", or
	// a standby's host:port) and, when a standby was to answer it and
	// did not, why: "down", "lag" or "conflict".
	PullTarget func(target, fallback string)
}

// DefaultReadMaxLag is how long a pull waits for a standby to catch up
// with the user's cursor before it reads the primary.
const DefaultReadMaxLag = 2 * time.Second

// ReplicaState is what an instance knows of one standby, for metrics and
// the health answer.
type ReplicaState struct {
	// Target is the standby's host:port.
	Target string
	// Up: pulls go to it.
	Up bool
	// Lag is how far its replay is behind, in seconds, as last measured.
	Lag float64
	// Err is why it is not used, and BytesBehind how much WAL it has not
	// replayed (CheckReplicas only).
	Err         error
	BytesBehind uint64
}

// Database is an open database. It is safe to share between Stores, and
// across config reloads.
type Database struct {
	keys    secrets
	d       Driver
	dialect *Dialect
	target  string // the DSN without secrets, for logs
}

// Open opens dsn without connecting. The dialect is chosen by the DSN's
// prefix, among the database packages the program imports.
func Open(dsn string, opts Options) (*Database, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	dl := dialectOf(dsn)
	if dl == nil {
		return nil, CheckDSN(dsn)
	}
	return OpenDialect(dl, dsn, opts)
}

// OpenDialect opens dsn with the given dialect, whatever its prefix.
func OpenDialect(dl *Dialect, dsn string, opts Options) (*Database, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	d, err := dl.Open(dsn, opts)
	if err != nil {
		return nil, err
	}
	return &Database{d: d, dialect: dl, target: RedactDSN(dsn)}, nil
}

// Kind is the dialect's name: "postgres" or "sqlite".
func (db *Database) Kind() string { return db.dialect.Name }

// String names the database without its password.
func (db *Database) String() string { return db.target }

// Driver returns the database's driver.
func (db *Database) Driver() Driver { return db.d }

// Cursors reads the sync stamps of users, for live sync: a user without
// one is left out.
func (db *Database) Cursors(ctx context.Context, users []string) (map[string]time.Time, error) {
	return db.d.Cursors(ctx, users)
}

// Ping checks that the database answers.
func (db *Database) Ping(ctx context.Context) error { return db.d.Ping(ctx) }

// Stats returns the pool's counters, when the driver keeps a pool.
func (db *Database) Stats() (PoolStats, bool) {
	if p, ok := db.d.(interface{ Stats() PoolStats }); ok {
		return p.Stats(), true
	}
	return PoolStats{}, false
}

// VerifyReplicas checks that each read replica that answers is a hot
// standby of the database: in recovery, and of its system identifier. One
// that does not answer is left to be tried later.
func (db *Database) VerifyReplicas(ctx context.Context) error {
	if v, ok := db.d.(interface{ VerifyReplicas(context.Context) error }); ok {
		return v.VerifyReplicas(ctx)
	}
	return nil
}

// CheckReplicas probes every read replica now, for caddy hypersync check:
// one that does not answer, is not in recovery, or follows another
// primary has Err set.
func (db *Database) CheckReplicas(ctx context.Context) []ReplicaState {
	if r, ok := db.d.(interface {
		CheckReplicas(context.Context) []ReplicaState
	}); ok {
		return r.CheckReplicas(ctx)
	}
	return nil
}

// Replicas reports the read replicas' states; nil without any.
func (db *Database) Replicas() []ReplicaState {
	if r, ok := db.d.(interface{ Replicas() []ReplicaState }); ok {
		return r.Replicas()
	}
	return nil
}

// Destruct closes the database. It satisfies caddy.Destructor.
func (db *Database) Destruct() error {
	db.d.Close()
	return nil
}

// RedactDSN hides the password of a DSN.
func RedactDSN(dsn string) string {
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
