package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// How pull completeness is kept on SQLite.
//
// All writes go through one connection, and pushes run one at a time under
// a mutex, so they commit in the order they take their stamps. A push
// stamps its rows with greatest(now, the user's previous stamp + 1 ms),
// kept in hypersync_cursors as on PostgreSQL. A pull reads the user's
// stamp S and the rows stamped in (lastPull, S] in one read transaction,
// which in WAL mode is one snapshot (pull.go): every push stamped at or
// below S has committed in it, and none above S is visible. The clock is
// the Caddy process's, which is the only writer of the file. Several
// processes on one file are not supported.

// The statements this driver caches per shape and mask. opUpsert+k is the
// upsert of 2^k rows (maxChunkLog bounds k).
const (
	opWrite shapes.Op = iota
	opPull
	opUpsert
)

// maxChunkLog: an upsert statement writes at most 2^6 = 64 rows, so that a
// mask needs at most seven statement sizes and its arguments stay far
// below SQLite's limit of 32,766.
const maxChunkLog = 6

// writeStmts are the prepared statements that write rows of one shape and
// mask. They are prepared on the writer connection outside any
// transaction, and used inside one through tx.StmtContext, which reuses
// the connection's prepared statement: a push of 300 rows prepares
// nothing.
//
// A mask that is insertable is written by upserts of many rows at once
// (upsertStmt), which costs SQLite far less than a statement per row.
// Otherwise an insert would fail on a missing NOT NULL column before
// SQLite looks for the conflict, and each row is written on its own:
// update updates the user's older row, and insert inserts a row when none
// has the key.
type writeStmts struct {
	update, insert *sql.Stmt
	// owner reads the user, updatedAt and sync stamp of the row with a
	// key, to tell an applied row from a stale one or another user's.
	owner *sql.Stmt
}

func (w *writeStmts) Close() error {
	for _, st := range []*sql.Stmt{w.update, w.insert, w.owner} {
		if st != nil {
			st.Close()
		}
	}
	return nil
}

// prepare builds and prepares the per-row statements of one shape and
// mask. Arguments: insert takes the present columns in Columns() order,
// then the user, updatedAt and the sync stamp; update takes the data
// columns, updatedAt and the stamp, then the keys, the user and updatedAt
// again; owner takes the keys.
func (s *driver) prepare(ctx context.Context, sh *shapes.Shape, m shapes.Mask) (*writeStmts, error) {
	c := columnsOf(sh, m)
	table, user, upd, synced := c.table, c.user, c.upd, c.synced
	where := strings.Join(suffixed(c.keys, " = ?"), " AND ")
	sets := suffixed(c.data, " = ?")
	cols := c.all
	w := &writeStmts{}
	targets := []**sql.Stmt{&w.owner}
	// CAST: the driver would turn a TIMESTAMP column into a time.Time
	texts := []string{`SELECT ` + user + `, CAST(` + upd + ` AS TEXT), CAST(` + synced + ` AS TEXT) FROM ` + table + ` WHERE ` + where}
	if !sh.Insertable(m) {
		targets = append(targets, &w.update, &w.insert)
		texts = append(texts, `UPDATE `+table+` SET `+strings.Join(append(sets, upd+" = ?", synced+" = ?"), ", ")+
			` WHERE `+where+` AND `+user+` = ? AND (`+upd+` IS NULL OR ? > `+upd+`)`,
			`INSERT INTO `+table+` (`+strings.Join(cols, ", ")+`) VALUES `+placeholders(len(cols), 1))
	}
	for i, text := range texts {
		st, err := s.w.PrepareContext(ctx, text)
		if err != nil {
			w.Close()
			return nil, classify(err)
		}
		*targets[i] = st
	}
	return w, nil
}

// columns are the quoted names a shape's statements for one mask use.
type columns struct {
	table, user, upd, synced string
	keys, data               []string // the present key and data columns
	all                      []string // keys, data, then user, upd and synced
}

func columnsOf(sh *shapes.Shape, m shapes.Mask) columns {
	q := shapes.QuoteIdent
	c := columns{table: shapes.QuoteTable(sh.Schema, sh.Table), user: q(sh.User.Name), upd: q(sh.UpdatedAt.Name), synced: q(sh.SyncedAt.Name)}
	for i, col := range sh.Columns() {
		if !m.Has(i) {
			continue
		}
		if i < len(sh.Keys) {
			c.keys = append(c.keys, q(col.Name))
		} else {
			c.data = append(c.data, q(col.Name))
		}
	}
	c.all = append(append(append([]string{}, c.keys...), c.data...), c.user, c.upd, c.synced)
	return c
}

// suffixed returns each name followed by suffix.
func suffixed(names []string, suffix string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = n + suffix
	}
	return out
}

// placeholders is n rows of width parameters: (?, ?), (?, ?).
func placeholders(width, n int) string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?, ", width), ", ") + ")"
	return strings.TrimSuffix(strings.Repeat(row+", ", n), ", ")
}

// upsertStmt prepares the upsert of 2^k rows of one shape and mask:
// INSERT … VALUES (…), … ON CONFLICT DO UPDATE … WHERE the stored row is
// the user's and older. The planner puts at most one row per key in a
// group, so no two rows of one statement touch one stored row. Arguments:
// per row, the present columns, the user, updatedAt and the sync stamp.
func (s *driver) upsertStmt(ctx context.Context, sh *shapes.Shape, m shapes.Mask, k int) (*sql.Stmt, error) {
	v, err := sh.Statement(shapes.StatementKey{Op: opUpsert + shapes.Op(k), Mask: m}, func() (any, error) {
		c := columnsOf(sh, m)
		var sets []string
		for _, name := range append(append([]string{}, c.data...), c.upd, c.synced) {
			sets = append(sets, name+" = excluded."+name)
		}
		text := `INSERT INTO ` + c.table + ` AS t (` + strings.Join(c.all, ", ") + `) VALUES ` +
			placeholders(len(c.all), 1<<k) + ` ON CONFLICT (` + strings.Join(c.keys, ", ") + `) DO UPDATE SET ` + strings.Join(sets, ", ") +
			` WHERE t.` + c.user + ` = excluded.` + c.user + ` AND (t.` + c.upd + ` IS NULL OR excluded.` + c.upd + ` > t.` + c.upd + `)`
		st, err := s.w.PrepareContext(ctx, text)
		return st, classify(err)
	})
	if err != nil {
		return nil, err
	}
	return v.(*sql.Stmt), nil
}

// cursorStmts read and write a user's sync stamp.
type cursorStmts struct{ get, set *sql.Stmt }

// cursorStatements prepares the cursor statements once the cursor table
// exists. Callers hold s.mu.
func (s *driver) cursorStatements(ctx context.Context) (cursorStmts, error) {
	if s.cursor.get != nil {
		return s.cursor, nil
	}
	get, err := s.w.PrepareContext(ctx, `SELECT stamp FROM "`+shapes.CursorTable+`" WHERE user_id = ?`)
	if err != nil {
		return cursorStmts{}, classify(err)
	}
	set, err := s.w.PrepareContext(ctx, `INSERT INTO "`+shapes.CursorTable+`" (user_id, stamp) VALUES (?, ?)
		ON CONFLICT (user_id) DO UPDATE SET stamp = excluded.stamp`)
	if err != nil {
		get.Close()
		return cursorStmts{}, classify(err)
	}
	s.cursor = cursorStmts{get, set}
	return s.cursor, nil
}

// chunks splits n rows into upserts of 2^k rows, largest first: 300 rows
// are 64+64+64+64+32+8+4.
func chunks(n int) []int {
	var ks []int
	for n > 0 {
		k := min(bits.Len(uint(n))-1, maxChunkLog)
		ks = append(ks, k)
		n -= 1 << k
	}
	return ks
}

// groupStmts are the statements one group is written with.
type groupStmts struct {
	rows    *writeStmts
	upserts []*sql.Stmt // per chunk, for an insertable mask
}

// Write writes the groups of one push in one transaction. A statement
// that fails changes nothing (SQLite undoes a failed statement alone), so
// an isolated write, whose groups hold one row each, marks the row refused
// and goes on.
func (s *driver) Write(ctx context.Context, w shapes.Write) (time.Time, error) {
	waited := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lockWait != nil {
		s.lockWait(time.Since(waited))
	}
	// Prepared before the transaction: it holds the only connection.
	cur, err := s.cursorStatements(ctx)
	if err != nil {
		return time.Time{}, err
	}
	stmts := make([]groupStmts, len(w.Groups))
	for i, g := range w.Groups {
		v, err := g.Shape.Statement(shapes.StatementKey{Op: opWrite, Mask: g.Mask}, func() (any, error) { return s.prepare(ctx, g.Shape, g.Mask) })
		if err != nil {
			return time.Time{}, err
		}
		stmts[i].rows = v.(*writeStmts)
		if g.Shape.Insertable(g.Mask) {
			for _, k := range chunks(len(g.Rows)) {
				st, err := s.upsertStmt(ctx, g.Shape, g.Mask, k)
				if err != nil {
					return time.Time{}, err
				}
				stmts[i].upserts = append(stmts[i].upserts, st)
			}
		}
	}

	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return time.Time{}, classify(err)
	}
	defer tx.Rollback()
	if err := blocked(ctx, tx, w.Block); err != nil {
		return time.Time{}, err
	}
	stamp, err := s.stamp(ctx, tx, cur, w.User)
	if err != nil {
		return time.Time{}, err
	}
	gw := groupWriter{ctx: ctx, tx: tx, user: w.User, stamp: stamp.Format(stampLayout)}
	// A group that writes a row again (a later change to it in the same
	// push) takes the next millisecond as its stamp, written to the cursor
	// first: the row's stamp then changes and equals the cursor, which is
	// how the stamping triggers (stamp.go) know the write is hypersync's.
	type rowKey struct {
		shape *shapes.Shape
		key   string
	}
	written := map[rowKey]bool{}
	for i, g := range w.Groups {
		again := false
		for _, r := range g.Rows {
			k := rowKey{g.Shape, r.Key()}
			again = again || written[k]
			written[k] = true
		}
		if again {
			stamp = stamp.Add(time.Millisecond)
			gw.stamp = stamp.Format(stampLayout)
			if _, err := tx.StmtContext(ctx, cur.set).ExecContext(ctx, w.User, gw.stamp); err != nil {
				return time.Time{}, classify(err)
			}
		}
		err := gw.write(g, stmts[i])
		if err == nil {
			continue
		}
		err = classify(err)
		var refused *shapes.RefusedError
		if !errors.As(err, &refused) || !w.Isolated {
			return time.Time{}, err
		}
		g.Rows[0].Outcome, g.Rows[0].Refusal = shapes.RowRefused, refused.Message
	}
	if !applied(w.Groups) {
		// nothing changed: the cursor stays where it was (the deferred
		// rollback), so that nobody is stamped or poked for this push
		return time.Time{}, nil
	}
	if err := tx.Commit(); err != nil {
		return time.Time{}, classify(err)
	}
	return stamp, nil
}

// applied reports whether any row of groups was applied.
func applied(groups []shapes.Group) bool {
	for _, g := range groups {
		for _, r := range g.Rows {
			if r.Outcome == shapes.RowApplied {
				return true
			}
		}
	}
	return false
}

// stamp takes the push's sync stamp: greatest(now, previous + 1 ms).
func (s *driver) stamp(ctx context.Context, tx *sql.Tx, cur cursorStmts, user string) (time.Time, error) {
	stamp := s.now().UTC().Truncate(time.Millisecond)
	var last string
	err := tx.StmtContext(ctx, cur.get).QueryRowContext(ctx, user).Scan(&last)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, classify(err)
	}
	if last != "" {
		prev, err := time.Parse(stampLayout, last)
		if err != nil {
			return time.Time{}, fmt.Errorf("sqlite: bad cursor %q for user: %w", last, err)
		}
		if !stamp.After(prev) {
			stamp = prev.Add(time.Millisecond)
		}
	}
	if _, err := tx.StmtContext(ctx, cur.set).ExecContext(ctx, user, stamp.Format(stampLayout)); err != nil {
		return time.Time{}, classify(err)
	}
	return stamp, nil
}

// groupWriter writes groups inside the push's transaction. Its argument
// slice is reused from statement to statement.
type groupWriter struct {
	ctx         context.Context
	tx          *sql.Tx
	user, stamp string
	args        []any
	upd         []string // per row of the chunk, its updatedAt as stored
}

// write writes one group and sets its rows' outcomes.
func (gw *groupWriter) write(g shapes.Group, st groupStmts) error {
	if st.upserts == nil {
		for _, r := range g.Rows {
			if err := gw.writeRow(g.Shape, r, st.rows); err != nil {
				return err
			}
		}
		return nil
	}
	owner := gw.tx.StmtContext(gw.ctx, st.rows.owner)
	rows := g.Rows
	for _, upsert := range st.upserts {
		n := 1
		for n*2 <= len(rows) && n < 1<<maxChunkLog {
			n *= 2
		}
		chunk := rows[:n]
		rows = rows[n:]
		gw.args, gw.upd = gw.args[:0], gw.upd[:0]
		for _, r := range chunk {
			var err error
			if gw.args, err = appendValues(gw.args, g.Shape, r); err != nil {
				return err
			}
			upd := r.UpdatedAt.UTC().Format(stampLayout)
			gw.upd = append(gw.upd, upd)
			gw.args = append(gw.args, gw.user, upd, gw.stamp)
		}
		res, err := gw.tx.StmtContext(gw.ctx, upsert).ExecContext(gw.ctx, gw.args...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); int(n) == len(chunk) {
			for _, r := range chunk {
				r.Outcome = shapes.RowApplied
			}
			continue
		}
		// Some rows lost: find which, by what the statement left.
		for i, r := range chunk {
			if err := gw.outcome(owner, g.Shape, r, gw.upd[i], len(chunk) == 1); err != nil {
				return err
			}
		}
	}
	return nil
}

// outcome reads back the row r wrote or lost to, after an upsert that did
// not write every row of its chunk (lost: of a chunk of one, that row). A
// row was applied if it now carries r's user and updatedAt and a stamp of
// this push: at least the push's own, which a stamping trigger fired by a
// second write of the row in this push may have raised. No other row can
// pass for it: the planner gives a push's changes to one row strictly
// rising updatedAts, one per round. Else the row was stale, or another
// user's.
func (gw *groupWriter) outcome(owner *sql.Stmt, sh *shapes.Shape, r *shapes.Row, upd string, lost bool) error {
	keys, err := appendValues(nil, sh, r)
	if err != nil {
		return err
	}
	var user, storedUpd, synced sql.NullString
	if err := owner.QueryRowContext(gw.ctx, keys[:len(sh.Keys)]...).Scan(&user, &storedUpd, &synced); err != nil {
		return err
	}
	switch {
	case user.String != gw.user:
		r.Outcome = shapes.RowForeign
	case !lost && storedUpd.String == upd && synced.String >= gw.stamp:
		r.Outcome = shapes.RowApplied
	default:
		r.Outcome = shapes.RowStale
	}
	return nil
}

// writeRow writes one row of a mask that is not insertable: an update of
// the user's older row, or an insert when no row has the key.
func (gw *groupWriter) writeRow(sh *shapes.Shape, r *shapes.Row, st *writeStmts) error {
	vals, err := appendValues(gw.args[:0], sh, r)
	if err != nil {
		return err
	}
	// Keys come first in Columns and are always present, so vals starts
	// with the key values, followed by the data values the payload carries.
	keys := vals[:len(sh.Keys)]
	upd := r.UpdatedAt.UTC().Format(stampLayout)
	args := append(append(append([]any{}, vals[len(keys):]...), upd, gw.stamp), keys...)
	res, err := gw.tx.StmtContext(gw.ctx, st.update).ExecContext(gw.ctx, append(args, gw.user, upd)...)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 1 {
		r.Outcome = shapes.RowApplied
		return nil
	}
	var owner, storedUpd, synced sql.NullString
	err = gw.tx.StmtContext(gw.ctx, st.owner).QueryRowContext(gw.ctx, keys...).Scan(&owner, &storedUpd, &synced)
	switch {
	case err == nil && owner.String != gw.user:
		r.Outcome = shapes.RowForeign
		return nil
	case err == nil:
		r.Outcome = shapes.RowStale
		return nil
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	if _, err := gw.tx.StmtContext(gw.ctx, st.insert).ExecContext(gw.ctx, append(vals, gw.user, upd, gw.stamp)...); err != nil {
		return err
	}
	r.Outcome = shapes.RowApplied
	return nil
}

// appendValues appends the values of the columns r carries, in Columns()
// order, converted for SQLite. A value that does not convert is refused.
func appendValues(dst []any, sh *shapes.Shape, r *shapes.Row) ([]any, error) {
	cols := sh.Columns()
	for i := range cols {
		if r.Vals[i] == nil {
			continue
		}
		v, err := value(&cols[i], r.Vals[i])
		if err != nil {
			return nil, &shapes.RefusedError{Message: fmt.Sprintf("field %q: %v", cols[i].Field, err)}
		}
		dst = append(dst, v)
	}
	return dst, nil
}

// value converts a checked JSON value into what SQLite stores: timestamps
// as fixed-width UTC text, numerics as numbers, JSON as text.
func value(c *shapes.Column, raw json.RawMessage) (any, error) {
	v, err := c.GoValue(raw)
	if err != nil {
		return nil, err
	}
	switch v := v.(type) {
	case time.Time:
		return v.UTC().Format(stampLayout), nil
	case json.Number:
		if n, err := v.Int64(); err == nil {
			return n, nil
		}
		return v.Float64()
	}
	return v, nil
}
