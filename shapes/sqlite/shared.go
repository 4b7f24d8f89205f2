package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// How pull completeness is kept for shared scopes on SQLite.
//
// The file's write lock serialises every writer, hypersync's pushes (one
// at a time on the writer connection, in an IMMEDIATE transaction) and
// other processes alike, so nothing changes between what a push reads and
// what it writes: the stored rows, their scopes and the scopes' members
// are those its transaction read. A push into shared shapes sets the
// cursor of everyone who can see a touched scope before or after it to one
// stamp above each of their previous stamps (Stamp), and stamps its rows
// with it. For each of those users the push is then one more push of
// their own, committed in stamp order, and the argument of write.go holds
// for every member: a pull's snapshot holds every row visible to the user
// stamped at or below the cursor it reads. Scope locks are not needed.

// Shared runs fn in one IMMEDIATE transaction on the writer connection.
func (s *driver) Shared(ctx context.Context, fn func(shapes.Tx) error) error {
	waited := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lockWait != nil {
		s.lockWait(time.Since(waited))
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return classify(err)
	}
	defer tx.Rollback()
	t := &liteTx{ctx: ctx, tx: tx, s: s, stmts: map[string]*sql.Stmt{}}
	defer t.close()
	if err := fn(t); err != nil {
		return classify(err)
	}
	if !t.wrote {
		// nothing applied: the cursors stamped stay as they were (the
		// deferred rollback), so that nobody is poked for this push
		return nil
	}
	return classify(tx.Commit())
}

type liteTx struct {
	wrote bool // a row was applied
	ctx   context.Context
	tx    *sql.Tx
	s     *driver
	stamp string
	stmts map[string]*sql.Stmt // prepared on the transaction's connection
}

func (t *liteTx) close() {
	for _, st := range t.stmts {
		st.Close()
	}
}

// stmt prepares text once per transaction.
func (t *liteTx) stmt(text string) (*sql.Stmt, error) {
	if st := t.stmts[text]; st != nil {
		return st, nil
	}
	st, err := t.tx.PrepareContext(t.ctx, text)
	if err != nil {
		return nil, classify(err)
	}
	t.stmts[text] = st
	return st, nil
}

func keyWhere(sh *shapes.Shape) string {
	var w []string
	for _, k := range sh.Keys {
		w = append(w, shapes.QuoteIdent(k.Name)+" = ?")
	}
	return strings.Join(w, " AND ")
}

func (t *liteTx) Stored(sh *shapes.Shape, rows []*shapes.Row) ([]*shapes.Stored, error) {
	q := shapes.QuoteIdent
	tomb := "0"
	if c, ok := sh.TombColumn(); ok {
		tomb = "coalesce(" + q(c.Name) + ", 0)"
	}
	st, err := t.stmt(fmt.Sprintf(`SELECT CAST(%s AS TEXT), CAST(%s AS TEXT), %s, %s, %s FROM %s WHERE %s`,
		q(sh.ScopeColumn().Name), q(sh.User.Name), timeExpr(q(sh.UpdatedAt.Name)), tomb, timeExpr(q(sh.Share().ScopedAt.Name)), shapes.QuoteTable(sh.Schema, sh.Table), keyWhere(sh)))
	if err != nil {
		return nil, err
	}
	out := make([]*shapes.Stored, len(rows))
	for i, r := range rows {
		vals, err := appendValues(nil, sh, r)
		if err != nil {
			return nil, err
		}
		var scope, user, upd, scoped sql.NullString
		var tomb bool
		err = st.QueryRowContext(t.ctx, vals[:len(sh.Keys)]...).Scan(&scope, &user, &upd, &tomb, &scoped)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, classify(err)
		}
		stored := &shapes.Stored{Scope: scope.String, ScopeNull: !scope.Valid, User: user.String, Tomb: tomb}
		if upd.Valid {
			stored.UpdatedAt, _ = parseTime([]byte(upd.String))
		}
		if scoped.Valid {
			stored.ScopedAt, _ = parseTime([]byte(scoped.String))
		}
		out[i] = stored
	}
	return out, nil
}

// LockScopes has nothing to do: the file's write lock, held since the
// transaction began, keeps every other writer out.
func (t *liteTx) LockScopes(*shapes.Membership, []string, []bool) error { return nil }

func (t *liteTx) Members(m *shapes.Membership, scopes []string) ([]shapes.Member, error) {
	q := shapes.QuoteIdent
	tomb := "0"
	if m.Tomb != nil {
		tomb = "coalesce(" + q(m.Tomb.Name) + ", 0)"
	}
	args := make([]any, len(scopes))
	for i, s := range scopes {
		args[i] = s
	}
	// each membership row under the scope text it was asked for: the
	// database's equality decides which rows are a scope's
	rows, err := t.tx.QueryContext(t.ctx, fmt.Sprintf(`WITH v(s) AS (VALUES %s) SELECT v.s, CAST(m.%s AS TEXT), %s FROM v JOIN %s AS m ON m.%s = v.s WHERE m.%s IS NOT NULL`,
		strings.TrimSuffix(strings.Repeat("(?), ", len(scopes)), ", "), q(m.Member.Name), tomb, shapes.QuoteTable(m.Schema, m.Table), q(m.Scope.Name),
		q(m.Member.Name)), args...)
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	var out []shapes.Member
	for rows.Next() {
		var mem shapes.Member
		if err := rows.Scan(&mem.Scope, &mem.User, &mem.Removed); err != nil {
			return nil, classify(err)
		}
		out = append(out, mem)
	}
	return out, classify(rows.Err())
}

func (t *liteTx) Stamp(users []string) (time.Time, error) {
	// the users as one JSON array: a scope of many members would pass
	// SQLite's limit of bound variables
	list, err := json.Marshal(users)
	if err != nil {
		return time.Time{}, err
	}
	var last sql.NullString
	if err := t.tx.QueryRowContext(t.ctx, `SELECT max(stamp) FROM "`+shapes.CursorTable+`" WHERE user_id IN (SELECT value FROM json_each(?))`, string(list)).Scan(&last); err != nil {
		return time.Time{}, classify(err)
	}
	stamp := t.s.now().UTC().Truncate(time.Millisecond)
	if last.Valid {
		prev, err := time.Parse(stampLayout, last.String)
		if err != nil {
			return time.Time{}, fmt.Errorf("sqlite: bad cursor %q: %w", last.String, err)
		}
		if !stamp.After(prev) {
			stamp = prev.Add(time.Millisecond)
		}
	}
	t.stamp = stamp.Format(stampLayout)
	if _, err := t.tx.ExecContext(t.ctx, `INSERT INTO "`+shapes.CursorTable+`" (user_id, stamp) SELECT value, ? FROM json_each(?) WHERE 1
		ON CONFLICT (user_id) DO UPDATE SET stamp = excluded.stamp`, t.stamp, string(list)); err != nil {
		return time.Time{}, classify(err)
	}
	return stamp, nil
}

// Write writes one group a row at a time: an update of the stored row,
// else an insert. A per-user shape's update must find the user's own
// older row, and a row not written is told stale or foreign by what is
// stored; a shared shape's rows were decided by the policy, and are
// updated whoever wrote them last.
func (t *liteTx) Write(user string, g shapes.Group, isolated bool) (err error) {
	defer func() { t.wrote = t.wrote || err == nil && applied([]shapes.Group{g}) }()
	sh := g.Shape
	c := columnsOf(sh, g.Mask)
	where := strings.Join(suffixed(c.keys, " = ?"), " AND ")
	sets := append(suffixed(c.data, " = ?"), c.upd+" = ?", c.synced+" = ?")
	cols := c.all
	owner := " AND " + c.user + " = ?"
	sc := sh.Share()
	enter := -1 // the column whose new value decides whether the row enters a scope
	if sc != nil {
		owner = ""
		sets = append(sets, c.user+" = ?")
		scoped := shapes.QuoteIdent(sc.ScopedAt.Name)
		switch tomb, ok := sh.TombColumn(); {
		case sh.IsMembership() && ok && g.Mask.Has(sc.Tomb):
			// a member who comes back enters the scope again
			t := shapes.QuoteIdent(tomb.Name)
			sets = append(sets, scoped+" = CASE WHEN coalesce("+t+", 0) AND NOT coalesce(?, 0) THEN ? ELSE "+scoped+" END")
			enter = sc.Tomb
		case !sh.IsMembership() && g.Mask.Has(sc.Scope):
			scope := shapes.QuoteIdent(sh.ScopeColumn().Name)
			sets = append(sets, scoped+" = CASE WHEN "+scope+" IS NOT ? THEN ? ELSE "+scoped+" END")
			enter = sc.Scope
		}
		cols = append(cols, scoped)
	}
	update, err := t.stmt(`UPDATE ` + c.table + ` SET ` + strings.Join(sets, ", ") + ` WHERE ` + where + owner +
		` AND (` + c.upd + ` IS NULL OR ? > ` + c.upd + `)`)
	if err != nil {
		return err
	}
	insert, err := t.stmt(`INSERT INTO ` + c.table + ` (` + strings.Join(cols, ", ") + `) VALUES ` + placeholders(len(cols), 1))
	if err != nil {
		return err
	}
	lookup, err := t.stmt(`SELECT ` + c.user + ` FROM ` + c.table + ` WHERE ` + where)
	if err != nil {
		return err
	}
	for _, r := range g.Rows {
		vals, err := appendValues(nil, sh, r)
		if err != nil {
			return err
		}
		keys := vals[:len(sh.Keys)]
		upd := r.UpdatedAt.UTC().Format(stampLayout)
		args := append(append([]any{}, vals[len(keys):]...), upd, t.stamp)
		if sc != nil {
			args = append(args, user)
			if enter >= 0 {
				args = append(args, valueOf(sh, vals, g.Mask, enter), t.stamp)
			}
		}
		args = append(args, keys...)
		if sc == nil {
			args = append(args, user)
		}
		res, err := update.ExecContext(t.ctx, append(args, upd)...)
		if err != nil {
			return classify(err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			r.Outcome = shapes.RowApplied
			continue
		}
		var stored sql.NullString
		err = lookup.QueryRowContext(t.ctx, keys...).Scan(&stored)
		switch {
		case err == nil && sc == nil && stored.String != user:
			r.Outcome = shapes.RowForeign
			continue
		case err == nil:
			r.Outcome = shapes.RowStale
			continue
		case !errors.Is(err, sql.ErrNoRows):
			return classify(err)
		}
		ins := append(vals, user, upd, t.stamp)
		if sc != nil {
			ins = append(ins, t.stamp)
		}
		if _, err := insert.ExecContext(t.ctx, ins...); err != nil {
			return classify(err)
		}
		r.Outcome = shapes.RowApplied
	}
	return nil
}

// valueOf is column col's value among vals, the values of the columns
// that mask carries.
func valueOf(sh *shapes.Shape, vals []any, m shapes.Mask, col int) any {
	j := 0
	for i := range sh.Columns() {
		if !m.Has(i) {
			continue
		}
		if i == col {
			return vals[j]
		}
		j++
	}
	return nil
}

func (t *liteTx) Moves(moves []shapes.Move) error {
	for _, mv := range moves {
		var to any
		if !mv.ToNull {
			to = mv.To
		}
		if _, err := t.tx.ExecContext(t.ctx, `INSERT INTO "`+shapes.MovesTable+`" (shape, scope, new_scope, user_id, updated_at, stamp, from_scoped_at, payload)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, mv.Shape.Config.Key, mv.From, to, mv.User, mv.UpdatedAt.UTC().Format(stampLayout), mv.Stamp.UTC().Format(stampLayout),
			mv.FromScopedAt.UTC().Format(stampLayout), string(mv.Payload)); err != nil {
			return classify(err)
		}
	}
	return nil
}
