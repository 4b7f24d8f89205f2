package shapes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// How pull completeness is kept on PostgreSQL.
//
// Every push first upserts the user's row in hypersync_cursors, setting
//
//	stamp = greatest(clock_timestamp() truncated to ms, previous stamp + 1 ms)
//
// and writes that stamp as the sync stamp of every row it applies, all in
// one transaction. The row lock on the cursor row is held until commit, so
// one user's pushes commit one at a time, in stamp order, whatever Caddy
// instance runs them. Stamps come from the database's clock, never the
// client's or Caddy's, and strictly increase per user even if that clock
// steps back.
//
// A pull reads the committed cursor stamp S and the rows stamped in
// (lastPull, S] in one statement, hence in one snapshot. A push that has
// not committed is invisible to that snapshot, and its stamp is above S
// because stamps are taken in lock order. Every push with a stamp at or
// below S committed before the push that wrote S did, so the snapshot sees
// it. The answer is therefore exactly the user's rows stamped in
// (lastPull, S], and S is returned as syncedAt. Stamps are whole
// milliseconds, so the client's millisecond truncation of syncedAt loses
// nothing and repeats nothing. The pull takes no lock and never waits.

const pgStampSQL = `INSERT INTO ` + `"` + CursorTable + `"` + ` AS c (user_id, stamp)
VALUES ($1, date_trunc('milliseconds', clock_timestamp()))
ON CONFLICT (user_id) DO UPDATE
SET stamp = greatest(date_trunc('milliseconds', clock_timestamp()), c.stamp + interval '1 millisecond')
RETURNING stamp`

// naiveStamps switches on the broken scheme of the reference server, where
// a push stamps rows with its transaction's start time and a pull answers
// with the current time. Only tests set it, to prove that the concurrency
// test catches the rows that scheme loses.
var naiveStamps bool

const pgNaiveStampSQL = `INSERT INTO "` + CursorTable + `" AS c (user_id, stamp) VALUES ($1, now())
ON CONFLICT (user_id) DO UPDATE SET stamp = now() RETURNING stamp`

const pgTimeFormat = `'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'`

type postgres struct {
	pool     *pgxpool.Pool
	binary   bool // arguments travel as encodedArrays (see pgarray.go)
	logger   *zap.Logger
	lockWait func(time.Duration)
}

func openPostgres(dsn string, opts Options) (*Database, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parsing the PostgreSQL DSN %s: %w", redactDSN(dsn), err)
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		// room for the handler's default push and pull budgets (8 + 8)
		cfg.MaxConns = 20
	}
	cfg.ConnConfig.RuntimeParams["timezone"] = "UTC"
	cfg.ConnConfig.RuntimeParams["datestyle"] = "ISO, MDY" // the timestamp text appendPGTime reads
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "hypersync"
	}
	if opts.dial != nil {
		cfg.ConnConfig.DialFunc = opts.dial
	}
	binary := binaryMode(cfg.ConnConfig.DefaultQueryExecMode)
	if binary {
		cfg.AfterConnect = func(_ context.Context, c *pgx.Conn) error {
			registerEncodedArrays(c.TypeMap())
			return nil
		}
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the PostgreSQL pool: %w", err)
	}
	return &Database{d: &postgres{pool: pool, binary: binary, logger: opts.Logger, lockWait: opts.LockWait}, kind: "postgres", target: redactDSN(dsn)}, nil
}

func (p *postgres) close() { p.pool.Close() }

func (p *postgres) ping(ctx context.Context) error { return pgError(p.pool.Ping(ctx)) }

// Pool exposes the pgx pool of a PostgreSQL database, or nil.
func (db *Database) Pool() *pgxpool.Pool {
	if p, ok := db.d.(*postgres); ok {
		return p.pool
	}
	return nil
}

func (p *postgres) ensureCursors(ctx context.Context) error {
	return p.ddl(ctx, `CREATE TABLE IF NOT EXISTS "`+CursorTable+`" (
		user_id text PRIMARY KEY,
		stamp timestamptz NOT NULL)`)
}

// pgDDLLock is the advisory lock that serialises hypersync's own DDL.
const pgDDLLock = 0x6879_7065_7273_796e // "hypersyn"

// ddl runs CREATE … IF NOT EXISTS statements in one transaction, under an
// advisory lock. Without it, instances starting together against a fresh
// database race: CREATE TABLE IF NOT EXISTS checks before it inserts into
// the catalog, and the loser fails with a duplicate type or key.
func (p *postgres) ddl(ctx context.Context, stmts ...string) error {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return pgError(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(pgDDLLock)); err != nil {
		return pgError(err)
	}
	for _, stmt := range stmts {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return pgError(err)
		}
	}
	return pgError(tx.Commit(ctx))
}

func (p *postgres) inspect(ctx context.Context, schema, table string) (*TableInfo, error) {
	name := quoteTable(schema, table)
	var oid uint32
	info := &TableInfo{}
	err := p.pool.QueryRow(ctx, `SELECT c.oid, n.nspname, c.relname FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')`, name).Scan(&oid, &info.Schema, &info.Name)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, pgError(err)
	}
	rows, err := p.pool.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), format_type(a.atttypid, NULL), b.typname, b.typcategory,
			a.attnotnull, a.atthasdef OR a.attidentity <> '', a.attgenerated <> ''
		FROM pg_attribute a
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, pgError(err)
	}
	for rows.Next() {
		var c ColumnInfo
		var typname, category string
		var generated bool
		if err := rows.Scan(&c.Name, &c.Type, &c.Cast, &typname, &category, &c.NotNull, &c.HasDefault, &generated); err != nil {
			rows.Close()
			return nil, pgError(err)
		}
		if generated {
			continue // computed by the database: never synced from clients
		}
		c.Kind, c.Bits = pgKind(typname, category)
		info.Columns = append(info.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, pgError(err)
	}
	rows, err = p.pool.Query(ctx, `SELECT i.indisunique AND i.indimmediate AND i.indexprs IS NULL AND i.indpred IS NULL,
			array_agg(a.attname ORDER BY k.ord)
		FROM pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1 AND i.indpred IS NULL
		GROUP BY i.indexrelid, i.indisunique, i.indimmediate, i.indexprs, i.indpred`, oid)
	if err != nil {
		return nil, pgError(err)
	}
	for rows.Next() {
		var unique bool
		var cols []string
		if err := rows.Scan(&unique, &cols); err != nil {
			rows.Close()
			return nil, pgError(err)
		}
		info.Indexes = append(info.Indexes, cols)
		if unique {
			info.Unique = append(info.Unique, cols)
		}
	}
	return info, pgError(rows.Err())
}

func pgKind(typname, category string) (Kind, int) {
	switch typname {
	case "bool":
		return KindBool, 0
	case "int2":
		return KindInt, 16
	case "int4":
		return KindInt, 32
	case "int8":
		return KindInt, 64
	case "float4":
		return KindFloat, 32
	case "float8":
		return KindFloat, 64
	case "numeric":
		return KindNumeric, 0
	case "timestamptz", "timestamp":
		return KindTimestamp, 0
	case "json", "jsonb":
		return KindJSON, 0
	case "text", "varchar", "bpchar", "name", "citext", "uuid", "date", "time", "timetz", "interval", "inet", "cidr", "macaddr":
		return KindText, 0
	}
	if category == "A" {
		return KindArray, 0
	}
	return KindOther, 0
}

var pgCreateTypes = map[string]string{
	"text": "text", "integer": "bigint", "real": "double precision",
	"boolean": "boolean", "timestamp": "timestamptz", "json": "jsonb",
}

func (*postgres) createTypes() (map[string]string, string) { return pgCreateTypes, "timestamptz" }

// CreateTableSQL renders the CREATE TABLE and CREATE INDEX statements for a
// create_table shape, mapping portable field types through types.
func CreateTableSQL(cfg ShapeConfig, types map[string]string, stampType string) []string {
	cfg = cfg.WithDefaults()
	schema, table, _ := SplitTableName(cfg.Table)
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s (\n", quoteTable(schema, table))
	col := func(name, typ, extra string) {
		fmt.Fprintf(&b, "\t%s %s%s,\n", quoteIdent(name), typ, extra)
	}
	typeOf := func(f string) string {
		if t := cfg.FieldTypes[f]; t != "" {
			return types[t]
		}
		return types["text"]
	}
	for _, f := range cfg.KeyFields {
		col(f, typeOf(f), " NOT NULL")
	}
	for _, f := range cfg.Fields {
		col(f, typeOf(f), "")
	}
	col(cfg.UserColumn, types["text"], " NOT NULL")
	col(cfg.UpdatedAtColumn, stampType, " NOT NULL")
	col(cfg.SyncedAtColumn, stampType, " NOT NULL")
	keys := make([]string, len(cfg.KeyFields))
	for i, k := range cfg.KeyFields {
		keys[i] = quoteIdent(k)
	}
	fmt.Fprintf(&b, "\tPRIMARY KEY (%s)\n)", strings.Join(keys, ", "))
	index := fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s ON %s (%s, %s)",
		quoteIdent(table+"_"+cfg.UserColumn+"_"+cfg.SyncedAtColumn+"_idx"), quoteTable(schema, table),
		quoteIdent(cfg.UserColumn), quoteIdent(cfg.SyncedAtColumn))
	return []string{b.String(), index}
}

// upsertSQL builds the statement that writes one group: rows of one shape
// carrying the same columns (arguments: groupArgs). It returns one row per
// change that was not applied: its position in the group, and whether the
// stored row belongs to another user (else it was stale).
//
// When the group carries every NOT NULL column that has no default, it is
// one INSERT … ON CONFLICT DO UPDATE, which finds existing rows through the
// key's unique index, as a hand-written upsert would. Otherwise an insert
// could fail on a missing column before PostgreSQL looks for the conflict,
// so existing rows are updated and missing ones inserted by two parts of
// one statement (upsertSplitSQL).
func (p *postgres) upsertSQL(sh *Shape, mask string) string {
	if s, ok := sh.sql.Load(mask); ok {
		return s.(string)
	}
	var s string
	if sh.insertable(mask) {
		s = upsertConflictSQL(sh, mask)
	} else {
		s = upsertSplitSQL(sh, mask)
	}
	sh.sql.Store(mask, s)
	return s
}

// upsertParts are the pieces both statement forms are built from.
type upsertParts struct {
	table, user, upd, synced string
	lead                     string   // the column leading the key's unique index
	cols, keyCols, dataCols  []string // quoted names of the columns present
}

func partsOf(sh *Shape, mask string) upsertParts {
	u := upsertParts{table: quoteTable(sh.Schema, sh.Table), user: quoteIdent(sh.User.Name),
		upd: quoteIdent(sh.UpdatedAt.Name), synced: quoteIdent(sh.SyncedAt.Name), lead: quoteIdent(sh.KeyLead.Name)}
	for i, c := range sh.cols {
		if mask[i] != '1' {
			continue
		}
		q := quoteIdent(c.Name)
		u.cols = append(u.cols, q)
		if i < len(sh.Keys) {
			u.keyCols = append(u.keyCols, q)
		} else {
			u.dataCols = append(u.dataCols, q)
		}
	}
	return u
}

func prefixed(prefix string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = prefix + n
	}
	return out
}

func matching(a, b string, names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = a + n + " = " + b + n
	}
	return strings.Join(out, " AND ")
}

// pgInput is the head of both statement forms: the CTE input, one row per
// change with the columns of mask, from one array per column ($2 on, see
// groupArgs), and the CTE stamp. $1 is the user.
func pgInput(sh *Shape, mask string) string {
	var arrays, names, exprs []string
	n := 2
	for i, c := range sh.cols {
		if mask[i] != '1' {
			continue
		}
		v := fmt.Sprintf("c%d", i)
		arrays = append(arrays, fmt.Sprintf("$%d::%s", n, pgArrayType(c.Kind)))
		names = append(names, v)
		exprs = append(exprs, pgCastExpr(c, "v."+v)+" AS "+quoteIdent(c.Name))
		n++
	}
	arrays = append(arrays, fmt.Sprintf("$%d::timestamptz[]", n))
	names = append(names, "upd")
	exprs = append(exprs, "v.upd::"+sh.UpdatedAt.Cast+" AS "+quoteIdent(sh.UpdatedAt.Name), "$1::text AS "+quoteIdent(sh.User.Name))
	return fmt.Sprintf(`WITH input AS MATERIALIZED (
	SELECT v.ord, %s
	FROM unnest(%s) WITH ORDINALITY AS v(%s, ord)
), stamp AS (
	SELECT stamp FROM "`+CursorTable+`" WHERE user_id = $1
)`, strings.Join(exprs, ", "), strings.Join(arrays, ", "), strings.Join(names, ", "))
}

// pgArrayType is the array a column's values travel in.
func pgArrayType(k Kind) string {
	switch k {
	case KindBool:
		return "bool[]"
	case KindInt:
		return "int8[]"
	case KindFloat:
		return "float8[]"
	case KindTimestamp:
		return "timestamptz[]"
	}
	return "text[]"
}

// pgCastExpr turns an array element into the column's type. JSON arrays
// become PostgreSQL arrays element by element.
func pgCastExpr(c Column, v string) string {
	if c.Kind == KindArray {
		return "CASE WHEN " + v + " IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(" + v + "::jsonb))::" + c.Cast + " END"
	}
	return v + "::" + c.Cast
}

// groupArgs are the arguments of a group's statement: the user, one array
// per present column, and the updatedAt array.
func (p *postgres) groupArgs(user string, g group) ([]any, error) {
	return groupArgs(user, g, p.binary)
}

// groupArgs builds the arguments, as encodedArrays when binary
// (binaryColumn), else as typed slices for pgx to encode (typedColumn).
func groupArgs(user string, g group, binary bool) ([]any, error) {
	column, stamps := typedColumn, typedStamps
	if binary {
		column, stamps = binaryColumn, binaryStamps
	}
	args := []any{user}
	for i := range g.shape.cols {
		if g.mask[i] != '1' {
			continue
		}
		c := &g.shape.cols[i]
		arr, err := column(c, g.rows, i)
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", c.Field, err)
		}
		args = append(args, arr)
	}
	return append(args, stamps(g.rows)), nil
}

// typedColumn is column i of rows as a typed slice. It holds pgtype
// values, which carry NULL without a pointer per value.
func typedColumn(c *Column, rows []*row, i int) (any, error) {
	switch c.Kind {
	case KindBool:
		return fillArray(rows, i, func(raw []byte) (pgtype.Bool, error) { return pgtype.Bool{Bool: raw[0] == 't', Valid: true}, nil })
	case KindInt:
		return fillArray(rows, i, func(raw []byte) (pgtype.Int8, error) {
			v, err := strconv.ParseInt(string(raw), 10, 64)
			return pgtype.Int8{Int64: v, Valid: true}, err
		})
	case KindFloat:
		return fillArray(rows, i, func(raw []byte) (pgtype.Float8, error) {
			v, err := strconv.ParseFloat(string(raw), 64)
			return pgtype.Float8{Float64: v, Valid: true}, err
		})
	case KindTimestamp:
		return fillArray(rows, i, func(raw []byte) (pgtype.Timestamptz, error) {
			v, err := timeValue(raw)
			return pgtype.Timestamptz{Time: v, Valid: true}, err
		})
	}
	return fillArray(rows, i, func(raw []byte) (pgtype.Text, error) {
		v, err := c.textValue(raw)
		return pgtype.Text{String: v, Valid: true}, err
	})
}

func typedStamps(rows []*row) any {
	upd := make([]time.Time, len(rows))
	for j, r := range rows {
		upd[j] = r.updatedAt
	}
	return upd
}

// fillArray builds the argument array of column i: one element per row,
// NULL (the zero value) where the value is JSON null.
func fillArray[T any](rows []*row, i int, conv func([]byte) (T, error)) ([]T, error) {
	a := make([]T, len(rows))
	for j, r := range rows {
		raw := bytes.TrimSpace(r.vals[i])
		if len(raw) == 0 || raw[0] == 'n' {
			continue
		}
		v, err := conv(raw)
		if err != nil {
			return nil, err
		}
		a[j] = v
	}
	return a, nil
}

func upsertConflictSQL(sh *Shape, mask string) string {
	u := partsOf(sh, mask)
	insertCols := append(append([]string{}, u.cols...), u.user, u.upd)
	sets := make([]string, 0, len(u.dataCols)+2)
	for _, c := range append(append([]string{}, u.dataCols...), u.upd, u.synced) {
		sets = append(sets, c+" = EXCLUDED."+c)
	}
	// The owner of a row that was not applied is looked up per row, through
	// the key's index, and only for those rows. When every row was applied,
	// as is usual, the one-time filter skips the anti-join altogether
	// (0.15 ms of a 2.4 ms 300-row push, measured).
	return pgInput(sh, mask) + fmt.Sprintf(`, up AS (
	INSERT INTO %[1]s AS t (%[2]s, %[3]s)
	SELECT %[4]s, stamp.stamp FROM input, stamp ORDER BY %[5]s
	ON CONFLICT (%[6]s) DO UPDATE SET %[7]s
	WHERE t.%[8]s = EXCLUDED.%[8]s AND (t.%[9]s IS NULL OR EXCLUDED.%[9]s > t.%[9]s)
	RETURNING %[10]s
)
SELECT input.ord::int4, (SELECT cur.%[8]s FROM %[1]s AS cur WHERE %[12]s) IS DISTINCT FROM input.%[8]s
FROM input WHERE (SELECT count(*) FROM up) < (SELECT count(*) FROM input) AND NOT EXISTS (SELECT FROM up WHERE %[13]s)`,
		u.table, strings.Join(insertCols, ", "), u.synced, strings.Join(prefixed("input.", insertCols), ", "),
		strings.Join(prefixed("input.", u.keyCols), ", "), strings.Join(u.keyCols, ", "), strings.Join(sets, ", "),
		u.user, u.upd, strings.Join(prefixed("t.", u.keyCols), ", "), u.keyCols[0],
		matching("cur.", "input.", u.keyCols), matching("up.", "input.", u.keyCols))
}

// upsertSplitSQL updates the user's existing rows and inserts missing ones,
// in two parts of one statement. Both read the snapshot taken before the
// statement, so a row is either updated or inserted, never both. An insert
// that loses a race with another user's insert of the same key does nothing,
// and is reported as that user's row.
//
// Every read of the table is narrowed by "lead = ANY(the batch's keys)",
// which the key's index serves. Left to a join, the planner may scan the
// whole table, and a cached plan keeps doing so as the table grows.
func upsertSplitSQL(sh *Shape, mask string) string {
	u := partsOf(sh, mask)
	sets := make([]string, 0, len(u.dataCols)+2)
	for _, c := range u.dataCols {
		sets = append(sets, c+" = input."+c)
	}
	sets = append(sets, u.upd+" = input."+u.upd, u.synced+" = stamp.stamp")
	insertCols := append(append([]string{}, u.cols...), u.user, u.upd)
	return pgInput(sh, mask) + fmt.Sprintf(`, upd AS (
	UPDATE %[1]s AS t SET %[2]s
	FROM input, stamp
	WHERE t.%[15]s = ANY (ARRAY(SELECT input.%[15]s FROM input)) AND %[3]s
		AND t.%[4]s = input.%[4]s AND (t.%[5]s IS NULL OR input.%[5]s > t.%[5]s)
	RETURNING input.ord
), ins AS (
	INSERT INTO %[1]s AS t (%[6]s, %[7]s)
	SELECT %[8]s, stamp.stamp FROM input, stamp
	WHERE NOT EXISTS (SELECT FROM %[1]s AS t WHERE t.%[15]s = ANY (ARRAY(SELECT input.%[15]s FROM input)) AND %[3]s)
	ORDER BY %[9]s
	ON CONFLICT (%[10]s) DO NOTHING
	RETURNING %[11]s
)
SELECT input.ord::int4, (SELECT cur.%[4]s FROM %[1]s AS cur WHERE %[13]s) IS DISTINCT FROM input.%[4]s
FROM input
WHERE (SELECT count(*) FROM upd) + (SELECT count(*) FROM ins) < (SELECT count(*) FROM input)
	AND NOT EXISTS (SELECT FROM upd WHERE upd.ord = input.ord) AND NOT EXISTS (SELECT FROM ins WHERE %[14]s)`,
		u.table, strings.Join(sets, ", "), matching("t.", "input.", u.keyCols), u.user, u.upd,
		strings.Join(insertCols, ", "), u.synced, strings.Join(prefixed("input.", insertCols), ", "),
		strings.Join(prefixed("input.", u.keyCols), ", "), strings.Join(u.keyCols, ", "),
		strings.Join(prefixed("t.", u.keyCols), ", "), u.keyCols[0],
		matching("cur.", "input.", u.keyCols), matching("ins.", "input.", u.keyCols), u.lead)
}

func (p *postgres) push(ctx context.Context, user string, rows []*row, results []Result) (time.Time, error) {
	for attempt := 0; ; attempt++ {
		stamp, err := p.pushBatch(ctx, user, rows, results)
		if err == nil {
			return stamp, nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			switch pgErr.Code[:2] {
			case "40": // serialization failure or deadlock: run it again
				if attempt < 3 {
					continue
				}
			case "22", "23": // a value the database refused: find which
				for _, r := range rows {
					results[r.idx] = Result{}
				}
				return p.pushOneByOne(ctx, user, rows, results)
			}
		}
		return time.Time{}, pgError(err)
	}
}

// pushBatch writes every row in one round trip: a pipeline of the cursor
// upsert and one statement per group, run as one implicit transaction.
func (p *postgres) pushBatch(ctx context.Context, user string, rows []*row, results []Result) (time.Time, error) {
	groups := plan(rows, true, results)
	b := &pgx.Batch{}
	if naiveStamps {
		b.Queue(pgNaiveStampSQL, user)
	} else {
		b.Queue(pgStampSQL, user)
	}
	for _, g := range groups {
		args, err := p.groupArgs(user, g)
		if err != nil {
			return time.Time{}, err
		}
		b.Queue(p.upsertSQL(g.shape, g.mask), args...)
	}
	sent := time.Now()
	br := p.pool.SendBatch(ctx, b)
	var stamp time.Time
	if err := br.QueryRow().Scan(&stamp); err != nil {
		br.Close()
		return time.Time{}, err
	}
	if p.lockWait != nil {
		p.lockWait(time.Since(sent))
	}
	for _, g := range groups {
		if err := readOutcomes(br, g, results); err != nil {
			br.Close()
			return time.Time{}, err
		}
	}
	// Close sends nothing new: it waits for the Sync that commits the
	// implicit transaction, so accepted changes are durable once it returns.
	return stamp, br.Close()
}

func readOutcomes(q interface {
	Query() (pgx.Rows, error)
}, g group, results []Result) error {
	rows, err := q.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	for _, r := range g.rows {
		results[r.idx] = Result{Outcome: Applied}
	}
	for rows.Next() {
		var ord int32
		var foreign bool
		if err := rows.Scan(&ord, &foreign); err != nil {
			return err
		}
		r := g.rows[ord-1]
		if foreign {
			results[r.idx] = rejected(CodeUserMismatch, "the row with this key belongs to another user")
		} else {
			results[r.idx] = Result{Outcome: Stale}
		}
	}
	return rows.Err()
}

// pushOneByOne is the slow path taken when the database refused a value:
// it writes each change in its own savepoint and rejects only the changes
// that fail.
func (p *postgres) pushOneByOne(ctx context.Context, user string, rows []*row, results []Result) (time.Time, error) {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return time.Time{}, pgError(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var stamp time.Time
	if err := tx.QueryRow(ctx, pgStampSQL, user).Scan(&stamp); err != nil {
		return time.Time{}, pgError(err)
	}
	for _, g := range plan(rows, false, results) {
		for _, r := range g.rows {
			one := group{shape: g.shape, mask: g.mask, rows: []*row{r}}
			sp, err := tx.Begin(ctx)
			if err != nil {
				return time.Time{}, pgError(err)
			}
			err = readOutcomes(queryFunc(func() (pgx.Rows, error) {
				args, err := p.groupArgs(user, one)
				if err != nil {
					return nil, err
				}
				return sp.Query(ctx, p.upsertSQL(g.shape, g.mask), args...)
			}), one, results)
			if err == nil {
				err = sp.Commit(ctx)
			}
			if err != nil {
				_ = sp.Rollback(ctx)
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && (pgErr.Code[:2] == "22" || pgErr.Code[:2] == "23") {
					results[r.idx] = rejected(CodeInvalidPayload, "%s", pgErr.Message)
					continue
				}
				return time.Time{}, pgError(err)
			}
		}
	}
	return stamp, pgError(tx.Commit(ctx))
}

type queryFunc func() (pgx.Rows, error)

func (f queryFunc) Query() (pgx.Rows, error) { return f() }

// pullSQL builds the statement that reads a user's cursor and every
// shape's rows stamped in ($2, cursor], in one snapshot. Each result row is
// (shape index, payload JSON, updatedAt); the row with index -1 carries the
// cursor in its third column.
//
// With a limit ($3), the page ends at the stamp of the limit-th row in
// stamp order, and holds every row up to that stamp; the -1 row's second
// column says whether rows are left beyond it.
func (p *postgres) pullSQL(shapes []*Shape, limited bool) string {
	// The statement is cached on the first shape: masks never spell "pull".
	key := "pull"
	if limited {
		key = "pull-limited"
	}
	if len(shapes) > 0 && !naiveStamps {
		if s, ok := shapes[0].sql.Load(key); ok {
			return s.(string)
		}
	}
	var b strings.Builder
	switch {
	case naiveStamps:
		b.WriteString(`WITH c AS (SELECT now() AS stamp WHERE $1::text IS NOT NULL)
SELECT -1, NULL::text, to_char((SELECT stamp FROM c) AT TIME ZONE 'UTC', ` + pgTimeFormat + `)`)
	case limited:
		var stamps []string
		for _, sh := range shapes {
			synced := quoteIdent(sh.SyncedAt.Name)
			stamps = append(stamps, fmt.Sprintf(`SELECT t.%s AS s FROM %s AS t, last WHERE t.%s = $1 AND t.%s > $2 AND t.%s <= last.stamp`,
				synced, quoteTable(sh.Schema, sh.Table), quoteIdent(sh.User.Name), synced, synced))
		}
		b.WriteString(`WITH last AS (SELECT stamp FROM "` + CursorTable + `" WHERE user_id = $1),
c AS (SELECT coalesce((SELECT s FROM (` + strings.Join(stamps, " UNION ALL ") + `) AS page ORDER BY s OFFSET $3::int - 1 LIMIT 1),
	(SELECT stamp FROM last)) AS stamp)
SELECT -1, ((SELECT stamp FROM c) < (SELECT stamp FROM last))::text, to_char((SELECT stamp FROM c) AT TIME ZONE 'UTC', ` + pgTimeFormat + `)`)
	default:
		b.WriteString(`WITH c AS (SELECT stamp FROM "` + CursorTable + `" WHERE user_id = $1)
SELECT -1, NULL::text, to_char((SELECT stamp FROM c) AT TIME ZONE 'UTC', ` + pgTimeFormat + `)`)
	}
	width := 0
	for _, sh := range shapes {
		width = max(width, len(sh.cols))
	}
	b.WriteString(strings.Repeat(", NULL::text", width))
	for i, sh := range shapes {
		cols := make([]string, width)
		for j := range cols {
			if j < len(sh.cols) {
				cols[j] = pgTextExpr(sh.cols[j])
			} else {
				cols[j] = "NULL::text"
			}
		}
		fmt.Fprintf(&b, `
UNION ALL
SELECT %d, NULL::text, t.%s::text, %s
FROM %s AS t, c WHERE t.%s = $1 AND t.%s > $2 AND t.%s <= c.stamp`,
			i, quoteIdent(sh.UpdatedAt.Name), strings.Join(cols, ", "), quoteTable(sh.Schema, sh.Table),
			quoteIdent(sh.User.Name), quoteIdent(sh.SyncedAt.Name), quoteIdent(sh.SyncedAt.Name))
	}
	s := b.String()
	if len(shapes) > 0 {
		shapes[0].sql.Store(key, s)
	}
	return s
}

// pgTextExpr reads a column as text for the pull, which turns it into
// JSON in Go (appendPGValue): building JSON inside PostgreSQL measured
// three to four times slower than reading the plain columns.
func pgTextExpr(c Column) string {
	col := "t." + quoteIdent(c.Name)
	switch c.Kind {
	case KindArray, KindOther:
		return "to_json(" + col + ")::text" // JSON already
	}
	return col + "::text"
}

// appendPGValue appends a column's text, as PostgreSQL sends it, as JSON.
func appendPGValue(buf []byte, k Kind, v []byte) []byte {
	if v == nil {
		return append(buf, "null"...)
	}
	switch k {
	case KindBool, KindInt, KindJSON, KindArray, KindOther:
		return append(buf, v...) // true/false, digits, or JSON text
	case KindFloat, KindNumeric:
		if len(v) > 0 && (v[0] == 'N' || v[0] == 'I' || v[0] == '-' && len(v) > 1 && v[1] == 'I') {
			return AppendJSONString(buf, v) // NaN and Infinity are not JSON numbers
		}
		return append(buf, v...)
	case KindTimestamp:
		buf = append(buf, '"')
		buf = appendPGTime(buf, v)
		return append(buf, '"')
	}
	return AppendJSONString(buf, v)
}

// appendPGTime rewrites a timestamp as PostgreSQL writes it in the UTC
// session ("2026-11-25 10:00:00.123456+00") into the client's form
// ("2026-11-25T10:00:00.123Z"), without parsing it into a time.
func appendPGTime(buf []byte, v []byte) []byte {
	if len(v) >= 19 && v[4] == '-' && v[7] == '-' && v[10] == ' ' && v[13] == ':' && v[16] == ':' {
		rest := v[19:]
		var frac [3]byte
		frac[0], frac[1], frac[2] = '0', '0', '0'
		if len(rest) > 0 && rest[0] == '.' {
			rest = rest[1:]
			n := 0
			for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
				if n < 3 {
					frac[n] = rest[n]
				}
				n++
			}
			rest = rest[n:]
		}
		if len(rest) == 0 || string(rest) == "+00" {
			buf = append(buf, v[:10]...)
			buf = append(buf, 'T')
			buf = append(buf, v[11:19]...)
			buf = append(buf, '.', frac[0], frac[1], frac[2], 'Z')
			return buf
		}
	}
	// anything else (infinity, BC dates, years past 9999) goes through time
	if t, err := time.Parse("2006-01-02 15:04:05.999999999Z07", string(v)); err == nil {
		return AppendTime(buf, t)
	}
	return append(buf, v...)
}

// quoteLiteral quotes a string constant. Field names come from the
// configuration, never from requests.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// textFormats asks for every column of the pull as text (pgx repeats the
// last format for the remaining columns).
var textFormats = pgx.QueryResultFormats{pgx.TextFormatCode}

func (p *postgres) pull(ctx context.Context, user string, since time.Time, limit int, shapes []*Shape, emit func(PulledRow) error) (PullResult, error) {
	args := []any{textFormats, user, since}
	if limit > 0 {
		args = append(args, limit)
	}
	rows, err := p.pool.Query(ctx, p.pullSQL(shapes, limit > 0), args...)
	if err != nil {
		return PullResult{}, pgError(err)
	}
	defer rows.Close()
	res := PullResult{Cursor: time.Unix(0, 0).UTC()}
	var payload, upd []byte // reused for every row
	for rows.Next() {
		raw := rows.RawValues()
		idx, err := strconv.Atoi(string(raw[0]))
		if err != nil {
			return PullResult{}, fmt.Errorf("pull: bad shape index %q", raw[0])
		}
		if idx < 0 {
			res.HasMore = string(raw[1]) == "true"
			if raw[2] != nil {
				if res.Cursor, err = ParseTime(string(raw[2])); err != nil {
					return PullResult{}, fmt.Errorf("pull: bad cursor %q: %w", raw[2], err)
				}
			}
			continue
		}
		sh := shapes[idx]
		payload = append(payload[:0], '{')
		for j, c := range sh.cols {
			if j > 0 {
				payload = append(payload, ',')
			}
			payload = append(payload, sh.fieldKeys[j]...)
			payload = appendPGValue(payload, c.Kind, raw[3+j])
		}
		payload = append(payload, '}')
		row := PulledRow{Shape: sh, Payload: payload}
		if raw[2] != nil {
			upd = appendPGTime(upd[:0], raw[2])
			row.UpdatedAt = upd
		}
		if err := emit(row); err != nil {
			return PullResult{}, err
		}
	}
	if err := rows.Err(); err != nil {
		return PullResult{}, pgError(err)
	}
	return res, nil
}

// pgError marks errors that mean the database cannot be used right now
// with ErrUnavailable, and passes others through.
func pgError(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || errors.Is(err, context.Canceled) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", "53", "57", "58", "XX":
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		case "42":
			// undefined column or table, wrong type: the table changed
			return fmt.Errorf("%w: %s", ErrSchemaChanged, pgErr.Message)
		}
		return err
	}
	var netErr net.Error
	var connErr *pgconn.ConnectError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr), errors.As(err, &connErr),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), pgconn.SafeToRetry(err),
		strings.Contains(err.Error(), "conn closed"), strings.Contains(err.Error(), "closed pool"):
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return err
}
