package shapes

import (
	"context"
	"database/sql"
	"encoding/json"
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
)

// How pull completeness is kept on SQLite.
//
// All writes go through one connection, and pushes run one at a time under
// a mutex, so they commit in the order they take their stamps. A push
// stamps its rows with greatest(now, the user's previous stamp + 1 ms),
// kept in hypersync_cursors as on PostgreSQL. A pull reads the user's
// stamp S and the rows stamped in (lastPull, S] in one read transaction,
// which in WAL mode is one snapshot: every push stamped at or below S has
// committed in it, and none above S is visible. The clock is the Caddy
// process's, which is the only writer of the file. Several processes on
// one file are not supported.

// sqliteStampLayout is how SQLite stores every timestamp hypersync writes:
// fixed width, UTC, microseconds, so that text order is time order.
const sqliteStampLayout = "2006-01-02T15:04:05.000000Z"

// sqliteTime renders a stored timestamp as RFC 3339 UTC with milliseconds.
func sqliteTime(col string) string {
	return `strftime('%Y-%m-%dT%H:%M:%fZ', ` + col + `)`
}

type sqliteDB struct {
	path     string
	w        *sql.DB // the writer: one connection
	r        *sql.DB // readers
	mu       sync.Mutex
	now      func() time.Time
	logger   *zap.Logger
	lockWait func(time.Duration)
}

// DefaultSQLite is the database used when none is configured.
const DefaultSQLite = "sqlite:./hypersync.db"

func openSQLite(dsn string, opts Options) (*Database, error) {
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
	d := &sqliteDB{path: path, w: w, r: r, now: time.Now, logger: opts.Logger, lockWait: opts.LockWait}
	return &Database{d: d, kind: "sqlite", target: "sqlite:" + path}, nil
}

func (s *sqliteDB) close() {
	s.r.Close()
	s.w.Close()
}

func (s *sqliteDB) ping(ctx context.Context) error {
	return sqliteError(s.w.PingContext(ctx))
}

func (s *sqliteDB) ensureCursors(ctx context.Context) error {
	return s.ddl(ctx, `CREATE TABLE IF NOT EXISTS "`+CursorTable+`" (user_id TEXT PRIMARY KEY, stamp TEXT NOT NULL)`)
}

func (s *sqliteDB) inspect(ctx context.Context, schema, table string) (*TableInfo, error) {
	master := "sqlite_schema"
	if schema != "" {
		master = quoteIdent(schema) + ".sqlite_schema"
	}
	info := &TableInfo{Schema: schema}
	err := s.r.QueryRowContext(ctx, `SELECT name FROM `+master+` WHERE type = 'table' AND name = ? COLLATE NOCASE`, table).Scan(&info.Name)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return nil, nil // an unknown schema
		}
		return nil, sqliteError(err)
	}
	args := []any{info.Name}
	schemaArg := ""
	if schema != "" {
		schemaArg = ", ?"
		args = append(args, schema)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT name, type, "notnull", dflt_value IS NOT NULL, pk FROM pragma_table_info(?`+schemaArg+`) ORDER BY cid`, args...)
	if err != nil {
		return nil, sqliteError(err)
	}
	var pk []string
	var pkPos []int
	for rows.Next() {
		var c ColumnInfo
		var pos int
		if err := rows.Scan(&c.Name, &c.Type, &c.NotNull, &c.HasDefault, &pos); err != nil {
			rows.Close()
			return nil, sqliteError(err)
		}
		c.Kind, c.Bits = sqliteKind(c.Type)
		if pos > 0 {
			pk = append(pk, c.Name)
			pkPos = append(pkPos, pos)
		}
		info.Columns = append(info.Columns, c)
	}
	rows.Close()
	if len(pk) > 0 {
		ordered := make([]string, len(pk))
		for i, p := range pkPos {
			ordered[p-1] = pk[i]
		}
		info.Unique = append(info.Unique, ordered)
	}
	rows, err = s.r.QueryContext(ctx, `SELECT il.name, il."unique", il.partial, group_concat(coalesce(ii.name, ''), char(31))
		FROM pragma_index_list(?`+schemaArg+`) AS il, pragma_index_info(il.name`+schemaArg+`) AS ii
		GROUP BY il.name ORDER BY il.name`, append(args, args[1:]...)...)
	if err != nil {
		return nil, sqliteError(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, cols string
		var unique, partial bool
		if err := rows.Scan(&name, &unique, &partial, &cols); err != nil {
			return nil, sqliteError(err)
		}
		list := strings.Split(cols, "\x1f")
		if partial {
			continue
		}
		info.Indexes = append(info.Indexes, list)
		if unique && !containsEmpty(list) {
			info.Unique = append(info.Unique, list)
		}
	}
	return info, sqliteError(rows.Err())
}

func containsEmpty(list []string) bool {
	for _, s := range list {
		if s == "" {
			return true
		}
	}
	return false
}

// sqliteKind maps a declared column type onto a Kind, in the spirit of
// SQLite's own affinity rules, with names for the types SQLite lacks.
func sqliteKind(declared string) (Kind, int) {
	t := strings.ToUpper(declared)
	has := func(s string) bool { return strings.Contains(t, s) }
	switch {
	case has("BOOL"):
		return KindBool, 0
	case has("ARRAY"):
		return KindArray, 0
	case has("JSON"):
		return KindJSON, 0
	case has("TIMESTAMP"), has("DATETIME"):
		return KindTimestamp, 0
	case has("INT2"), has("SMALLINT"):
		return KindInt, 16
	case has("INT4"):
		return KindInt, 32
	case has("INT"):
		return KindInt, 64
	case has("CHAR"), has("CLOB"), has("TEXT"), has("UUID"), t == "DATE":
		return KindText, 0
	case has("REAL"), has("FLOA"), has("DOUB"):
		return KindFloat, 64
	case has("NUMERIC"), has("DECIMAL"):
		return KindNumeric, 0
	}
	return KindOther, 0
}

var sqliteCreateTypes = map[string]string{
	"text": "TEXT", "integer": "INTEGER", "real": "REAL",
	"boolean": "BOOLEAN", "timestamp": "TIMESTAMP", "json": "JSON",
}

func (*sqliteDB) createTypes() (map[string]string, string) { return sqliteCreateTypes, "TIMESTAMP" }

// ddl runs statements one after another: the single writer connection
// already keeps two of them from racing.
func (s *sqliteDB) ddl(ctx context.Context, stmts ...string) error {
	for _, stmt := range stmts {
		if _, err := s.w.ExecContext(ctx, stmt); err != nil {
			return sqliteError(err)
		}
	}
	return nil
}

// sqliteValue converts a checked JSON value into what SQLite stores:
// timestamps as fixed-width UTC text, numerics as numbers, JSON as text.
func sqliteValue(c *Column, raw json.RawMessage) (any, error) {
	v, err := c.goValue(raw)
	if err != nil {
		return nil, err
	}
	switch v := v.(type) {
	case time.Time:
		return v.UTC().Format(sqliteStampLayout), nil
	case json.Number:
		if n, err := v.Int64(); err == nil {
			return n, nil
		}
		return v.Float64()
	}
	return v, nil
}

var errOneByOne = errors.New("a change failed: redo the push one change at a time")

func (s *sqliteDB) push(ctx context.Context, user string, rows []*row, results []Result) (time.Time, error) {
	waited := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lockWait != nil {
		s.lockWait(time.Since(waited))
	}
	stamp, err := s.pushTx(ctx, user, rows, results, true)
	if errors.Is(err, errOneByOne) {
		// As on PostgreSQL: the fast path folded changes together, so redo
		// the push change by change and reject only the ones that fail.
		for _, r := range rows {
			results[r.idx] = Result{}
		}
		stamp, err = s.pushTx(ctx, user, rows, results, false)
	}
	return stamp, err
}

func (s *sqliteDB) pushTx(ctx context.Context, user string, rows []*row, results []Result, collapse bool) (time.Time, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return time.Time{}, sqliteError(err)
	}
	defer tx.Rollback()
	stamp := s.now().UTC().Truncate(time.Millisecond)
	var last string
	err = tx.QueryRowContext(ctx, `SELECT stamp FROM "`+CursorTable+`" WHERE user_id = ?`, user).Scan(&last)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, sqliteError(err)
	}
	if last != "" {
		prev, err := time.Parse(sqliteStampLayout, last)
		if err != nil {
			return time.Time{}, fmt.Errorf("sqlite: bad cursor %q for user: %w", last, err)
		}
		if next := prev.Add(time.Millisecond); !stamp.After(prev) {
			stamp = next
		}
	}
	stampText := stamp.Format(sqliteStampLayout)
	if _, err := tx.ExecContext(ctx, `INSERT INTO "`+CursorTable+`" (user_id, stamp) VALUES (?, ?)
		ON CONFLICT (user_id) DO UPDATE SET stamp = excluded.stamp`, user, stampText); err != nil {
		return time.Time{}, sqliteError(err)
	}
	for _, g := range plan(rows, collapse, results) {
		for _, r := range g.rows {
			res, err := s.apply(ctx, tx, user, r, stampText)
			if err != nil {
				if isSQLiteDataError(err) {
					if collapse {
						return time.Time{}, errOneByOne
					}
					results[r.idx] = rejected(CodeInvalidPayload, "%s", sqliteMessage(err))
					continue
				}
				return time.Time{}, sqliteError(err)
			}
			results[r.idx] = res
		}
	}
	if err := tx.Commit(); err != nil {
		return time.Time{}, sqliteError(err)
	}
	return stamp, nil
}

// apply writes one row: an update of the user's existing row when the
// change is newer, or an insert when there is no row with its key.
func (s *sqliteDB) apply(ctx context.Context, tx *sql.Tx, user string, r *row, stamp string) (Result, error) {
	sh := r.shape
	// Keys come first in sh.cols and are always present, so vals starts
	// with the key values, followed by the data values the payload carries.
	var cols, keyMatch, sets []string
	var vals []any
	for i := range sh.cols {
		if r.vals[i] == nil {
			continue
		}
		c := &sh.cols[i]
		v, err := sqliteValue(c, r.vals[i])
		if err != nil {
			return rejected(CodeInvalidPayload, "field %q: %v", c.Field, err), nil
		}
		q := quoteIdent(c.Name)
		cols = append(cols, q)
		vals = append(vals, v)
		if i < len(sh.Keys) {
			keyMatch = append(keyMatch, q+" = ?")
		} else {
			sets = append(sets, q+" = ?")
		}
	}
	keyVals, dataVals := vals[:len(sh.Keys)], vals[len(sh.Keys):]
	table := quoteTable(sh.Schema, sh.Table)
	userCol, upd, synced := quoteIdent(sh.User.Name), quoteIdent(sh.UpdatedAt.Name), quoteIdent(sh.SyncedAt.Name)
	updText := r.updatedAt.UTC().Format(sqliteStampLayout)
	where := strings.Join(keyMatch, " AND ")

	sets = append(sets, upd+" = ?", synced+" = ?")
	args := append(append([]any{}, dataVals...), updText, stamp)
	args = append(append(args, keyVals...), user, updText)
	res, err := tx.ExecContext(ctx, `UPDATE `+table+` SET `+strings.Join(sets, ", ")+
		` WHERE `+where+` AND `+userCol+` = ? AND (`+upd+` IS NULL OR ? > `+upd+`)`, args...)
	if err != nil {
		return Result{}, err
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return Result{Outcome: Applied}, nil
	}
	var owner sql.NullString
	err = tx.QueryRowContext(ctx, `SELECT `+userCol+` FROM `+table+` WHERE `+where, keyVals...).Scan(&owner)
	switch {
	case err == nil && owner.String != user:
		return rejected(CodeUserMismatch, "the row with this key belongs to another user"), nil
	case err == nil:
		return Result{Outcome: Stale}, nil
	case !errors.Is(err, sql.ErrNoRows):
		return Result{}, err
	}
	cols = append(cols, userCol, upd, synced)
	vals = append(vals, user, updText, stamp)
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ")
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+table+` (`+strings.Join(cols, ", ")+`) VALUES (`+marks+`)`, vals...); err != nil {
		return Result{}, err
	}
	return Result{Outcome: Applied}, nil
}

func (s *sqliteDB) pull(ctx context.Context, user string, since time.Time, limit int, shapes []*Shape, emit func(PulledRow) error) (PullResult, error) {
	res := PullResult{Cursor: time.Unix(0, 0).UTC()}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return res, sqliteError(err)
	}
	defer tx.Rollback()
	var stamp string
	err = tx.QueryRowContext(ctx, `SELECT stamp FROM "`+CursorTable+`" WHERE user_id = ?`, user).Scan(&stamp)
	if errors.Is(err, sql.ErrNoRows) {
		return res, nil // the user never pushed: nothing to pull
	}
	if err != nil {
		return res, sqliteError(err)
	}
	sinceText := since.UTC().Format(sqliteStampLayout)
	if limit > 0 {
		// The page ends at the stamp of the limit-th row, and holds every
		// row of that stamp.
		var parts []string
		var args []any
		for _, sh := range shapes {
			synced := quoteIdent(sh.SyncedAt.Name)
			// CAST: the driver would turn a TIMESTAMP column into a time.Time
			parts = append(parts, fmt.Sprintf(`SELECT CAST(%s AS TEXT) AS s FROM %s WHERE %s = ? AND %s > ? AND %s <= ?`,
				synced, quoteTable(sh.Schema, sh.Table), quoteIdent(sh.User.Name), synced, synced))
			args = append(args, user, sinceText, stamp)
		}
		var end string
		err := tx.QueryRowContext(ctx, `SELECT s FROM (`+strings.Join(parts, " UNION ALL ")+`) ORDER BY s LIMIT 1 OFFSET ?`,
			append(args, limit-1)...).Scan(&end)
		switch {
		case err == nil && end < stamp:
			stamp, res.HasMore = end, true
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return res, sqliteError(err)
		}
	}
	if res.Cursor, err = time.Parse(sqliteStampLayout, stamp); err != nil {
		return res, fmt.Errorf("sqlite: bad cursor %q: %w", stamp, err)
	}
	for _, sh := range shapes {
		rows, err := tx.QueryContext(ctx, sqlitePullSQL(sh), user, sinceText, stamp)
		if err != nil {
			return res, sqliteError(err)
		}
		for rows.Next() {
			var payload []byte
			var upd sql.NullString
			if err := rows.Scan(&payload, &upd); err != nil {
				rows.Close()
				return res, sqliteError(err)
			}
			row := PulledRow{Shape: sh, Payload: payload}
			if upd.Valid {
				row.UpdatedAt = []byte(upd.String)
			}
			if err := emit(row); err != nil {
				rows.Close()
				return res, err
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return res, sqliteError(err)
		}
	}
	return res, nil
}

func sqlitePullSQL(sh *Shape) string {
	if s, ok := sh.sql.Load("pull"); ok {
		return s.(string)
	}
	parts := make([]string, 0, 2*len(sh.cols)+1)
	for i, c := range sh.cols {
		prefix := ","
		if i == 0 {
			prefix = "{"
		}
		key, _ := json.Marshal(c.Field)
		parts = append(parts, quoteLiteral(prefix+string(key)+":"), "COALESCE("+sqliteValueExpr(c)+", 'null')")
	}
	parts = append(parts, "'}'")
	synced := "t." + quoteIdent(sh.SyncedAt.Name)
	q := fmt.Sprintf(`SELECT %s, %s FROM %s AS t WHERE t.%s = ? AND %s > ? AND %s <= ?`,
		strings.Join(parts, " || "), sqliteTime("t."+quoteIdent(sh.UpdatedAt.Name)),
		quoteTable(sh.Schema, sh.Table), quoteIdent(sh.User.Name), synced, synced)
	sh.sql.Store("pull", q)
	return q
}

func sqliteValueExpr(c Column) string {
	col := "t." + quoteIdent(c.Name)
	switch c.Kind {
	case KindBool:
		return "CASE WHEN " + col + " IS NULL THEN NULL WHEN " + col + " THEN 'true' ELSE 'false' END"
	case KindTimestamp:
		return `'"' || ` + sqliteTime(col) + ` || '"'`
	case KindJSON, KindArray:
		return "json(" + col + ")"
	}
	return "json_quote(" + col + ")"
}

// isSQLiteDataError reports a value or constraint the database refused.
func isSQLiteDataError(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_RANGE:
			return true
		}
	}
	return false
}

func sqliteMessage(err error) string {
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

// sqliteError marks errors that mean the file cannot be used right now.
func sqliteError(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
			sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PROTOCOL:
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		case sqlite3.SQLITE_ERROR:
			if msg := se.Error(); strings.Contains(msg, "no such column") || strings.Contains(msg, "no such table") {
				return fmt.Errorf("%w: %s", ErrSchemaChanged, msg)
			}
		}
	}
	return err
}

func isUUIDType(t string) bool { return strings.EqualFold(t, "uuid") }
