// Package postgres is hypersync's PostgreSQL driver: it turns the groups
// of rows a shapes.Store plans into SQL, and pulled rows back into values.
// Importing it registers the postgres:// and postgresql:// DSNs with
// package shapes.
//
// Files: postgres.go opens the pool and maps errors; inspect.go reads the
// catalog; write.go holds the stamp scheme and the upserts; pgarray.go
// sends a push's columns as binary arrays; pull.go reads pulls.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/hypersync/hypersync/shapes"
)

var dialect = &shapes.Dialect{
	Name:     "postgres",
	Forms:    []string{"postgres://…", "postgresql://…"},
	Prefixes: []string{"postgres://", "postgresql://"},
	FieldTypes: map[string]string{
		"text": "text", "integer": "bigint", "real": "double precision",
		"boolean": "boolean", "timestamp": "timestamptz", "json": "jsonb",
	},
	StampType: "timestamptz",
	CursorDDL: `CREATE TABLE IF NOT EXISTS "` + shapes.CursorTable + `" (
		user_id text PRIMARY KEY,
		stamp timestamptz NOT NULL)`,
	TrustDDL:     trustDDL,
	SharingDDL:   sharingDDL,
	LeftBackfill: leftBackfill,
	Stamping:     stamping,
	Open:         func(dsn string, opts shapes.Options) (shapes.Driver, error) { return open(dsn, opts, config{}) },
}

// sharingDDL creates the tables shared shapes need.
var sharingDDL = []string{`CREATE TABLE IF NOT EXISTS "` + shapes.MovesTable + `" (
		shape text NOT NULL,
		scope text NOT NULL,
		new_scope text,
		user_id text NOT NULL,
		updated_at timestamptz NOT NULL,
		stamp timestamptz NOT NULL,
		from_scoped_at timestamptz,
		payload text NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.MovesTable + `_scope_idx" ON "` + shapes.MovesTable + `" (shape, scope, stamp)`,
	// the row's key (keyExpr), for the version a removed member saw
	// last; null in moves recorded before it was kept
	`ALTER TABLE "` + shapes.MovesTable + `" ADD COLUMN IF NOT EXISTS row_key text`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.LeftTable + `" (
		members text NOT NULL,
		scope text NOT NULL,
		member text NOT NULL,
		joined timestamptz NOT NULL,
		left_at timestamptz NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.LeftTable + `_member_idx" ON "` + shapes.LeftTable + `" (member, left_at)`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.LeftTable + `_scope_idx" ON "` + shapes.LeftTable + `" (members, scope, left_at)`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.VersionsTable + `" (
		shape text NOT NULL,
		row_key text NOT NULL,
		updated_at timestamptz,
		user_id text,
		stamp timestamptz NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.VersionsTable + `_key_idx" ON "` + shapes.VersionsTable + `" (shape, row_key, stamp)`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.ScopesTable + `" (
		members text NOT NULL,
		scope text NOT NULL,
		PRIMARY KEY (members, scope))`,
}

// leftBackfill records the removals m holds that LeftTable lacks.
func leftBackfill(m *shapes.Membership) string {
	q := shapes.QuoteIdent
	joined := "'-infinity'::timestamptz"
	if m.Joined != nil {
		joined = "coalesce(m." + q(m.Joined.Name) + "::timestamptz, '-infinity')"
	}
	return fmt.Sprintf(`INSERT INTO "%[1]s" (members, scope, member, joined, left_at)
SELECT %[2]s, m.%[3]s::text, m.%[4]s::text, %[5]s, m.%[6]s FROM %[7]s AS m
WHERE m.%[8]s AND m.%[4]s IS NOT NULL AND m.%[6]s IS NOT NULL AND NOT EXISTS (SELECT FROM "%[1]s" AS h
	WHERE h.members = %[2]s AND h.scope = m.%[3]s::text AND h.member = m.%[4]s::text AND h.left_at = m.%[6]s)`,
		shapes.LeftTable, quoteLiteral(m.Table), q(m.Scope.Name), q(m.Member.Name), joined, q(m.Stamp.Name),
		shapes.QuoteTable(m.Schema, m.Table), q(m.Tomb.Name))
}

func init() { shapes.Register(dialect) }

// config holds what only this package's tests set.
type config struct {
	// naiveStamps switches on the broken scheme of the reference server
	// (see write.go), to prove that the concurrency test catches it.
	naiveStamps bool
	// noStandbyFloor lets a pull read a standby whatever it has replayed
	// (replica.go), to prove that the tests of standby pulls catch it.
	noStandbyFloor bool
}

type driver struct {
	pool       *pgxpool.Pool
	binary     bool // arguments travel as encodedArrays (see pgarray.go)
	logger     *zap.Logger
	lockWait   func(time.Duration)
	replicas   *replicaSet // the standbys pulls run on; nil without any
	pullTarget func(target, fallback string)
	config
}

// poolConfig parses dsn into a pool's configuration, with the session
// settings every connection of hypersync's has.
func poolConfig(dsn string, opts shapes.Options) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parsing the PostgreSQL DSN %s: %w", shapes.RedactDSN(dsn), err)
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		// room for the handler's default push and pull budgets (8 + 8)
		cfg.MaxConns = 20
	}
	cfg.ConnConfig.RuntimeParams["timezone"] = "UTC"
	cfg.ConnConfig.RuntimeParams["datestyle"] = "ISO, MDY" // the timestamp text parseTime reads
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "hypersync"
	}
	if opts.Dial != nil {
		cfg.ConnConfig.DialFunc = opts.Dial
	}
	if binaryMode(cfg.ConnConfig.DefaultQueryExecMode) {
		cfg.AfterConnect = func(_ context.Context, c *pgx.Conn) error {
			registerEncodedArrays(c.TypeMap())
			return nil
		}
	}
	return cfg, nil
}

func open(dsn string, opts shapes.Options, c config) (*driver, error) {
	cfg, err := poolConfig(dsn, opts)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the PostgreSQL pool: %w", err)
	}
	p := &driver{pool: pool, binary: binaryMode(cfg.ConnConfig.DefaultQueryExecMode), logger: opts.Logger, lockWait: opts.LockWait,
		pullTarget: opts.PullTarget, config: c}
	if len(opts.ReadReplicas) > 0 {
		if p.replicas, err = openReplicas(p, opts); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return p, nil
}

func (p *driver) Close() {
	if p.replicas != nil {
		p.replicas.close()
	}
	p.pool.Close()
}

func (p *driver) Ping(ctx context.Context) error { return pgError(p.pool.Ping(ctx)) }

// Stats reports the pool's counters.
func (p *driver) Stats() shapes.PoolStats {
	st := p.pool.Stat()
	return shapes.PoolStats{Acquired: int(st.AcquiredConns()), Idle: int(st.IdleConns()), Total: int(st.TotalConns()),
		EmptyAcquires: st.EmptyAcquireCount(), EmptyAcquireWait: st.EmptyAcquireWaitTime()}
}

// ddlLock is the advisory lock that serialises hypersync's own DDL.
const ddlLock = 0x6879_7065_7273_796e // "hypersyn"

// DDL runs CREATE … IF NOT EXISTS statements in one transaction, under an
// advisory lock. Without it, instances starting together against a fresh
// database race: CREATE TABLE IF NOT EXISTS checks before it inserts into
// the catalog, and the loser fails with a duplicate type or key.
func (p *driver) DDL(ctx context.Context, stmts ...string) error {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return pgError(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(ddlLock)); err != nil {
		return pgError(err)
	}
	for _, stmt := range stmts {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return pgError(err)
		}
	}
	return pgError(tx.Commit(ctx))
}

// refusedByValue reports an error that a value in the statement caused:
// class 22 (data exception: a type, range or encoding error), 23 (a
// constraint) and 54 (a program limit, such as an index row over the btree
// limit of 2,704 bytes, which a long key makes).
func refusedByValue(pgErr *pgconn.PgError) bool {
	switch pgErr.Code[:2] {
	case "22", "23", "54":
		return true
	}
	return false
}

// pgError classifies an error: ErrUnavailable when the database cannot be
// used right now, ErrSchemaChanged when a table no longer matches, and a
// *shapes.RefusedError when a value was refused. Others pass through.
func pgError(err error) error {
	if err == nil || errors.Is(err, shapes.ErrUnavailable) || errors.Is(err, shapes.ErrRefused) || errors.Is(err, context.Canceled) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if strings.Contains(pgErr.Message, shapes.ErasedMarker) {
			return shapes.ErrErased // erasedSQL
		}
		if strings.Contains(pgErr.Message, notStandbyMarker) {
			return errNotStandby // standbyCheck
		}
		if refusedByValue(pgErr) {
			return &shapes.RefusedError{Message: pgErr.Message}
		}
		switch pgErr.Code[:2] {
		case "08", "53", "57", "58", "XX":
			return fmt.Errorf("%w: %v", shapes.ErrUnavailable, err)
		case "42":
			// undefined column or table, wrong type: the table changed
			return fmt.Errorf("%w: %s", shapes.ErrSchemaChanged, pgErr.Message)
		}
		return err
	}
	var netErr net.Error
	var connErr *pgconn.ConnectError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr), errors.As(err, &connErr),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), pgconn.SafeToRetry(err),
		strings.Contains(err.Error(), "conn closed"), strings.Contains(err.Error(), "closed pool"):
		return fmt.Errorf("%w: %v", shapes.ErrUnavailable, err)
	}
	return err
}
