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
	wrote bool      // a row was applied
	last  time.Time // the stamp taken last
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
	// a per-user shape's rows (for inspect) are private: no scope
	scope, scoped := "NULL", "NULL"
	if sh.Share() != nil {
		scope, scoped = q(sh.ScopeColumn().Name), timeExpr(q(sh.Share().ScopedAt.Name))
	}
	st, err := t.stmt(fmt.Sprintf(`SELECT CAST(%s AS TEXT), CAST(%s AS TEXT), %s, %s, %s, CAST(%s AS TEXT) FROM %s WHERE %s`,
		scope, q(sh.User.Name), timeExpr(q(sh.UpdatedAt.Name)), tomb, scoped, q(sh.SyncedAt.Name),
		shapes.QuoteTable(sh.Schema, sh.Table), keyWhere(sh)))
	if err != nil {
		return nil, err
	}
	out := make([]*shapes.Stored, len(rows))
	for i, r := range rows {
		vals, err := appendValues(nil, sh, r)
		if err != nil {
			return nil, err
		}
		var scope, user, upd, scoped, synced sql.NullString
		var tomb bool
		err = st.QueryRowContext(t.ctx, vals[:len(sh.Keys)]...).Scan(&scope, &user, &upd, &tomb, &scoped, &synced)
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
		if synced.Valid {
			stored.Synced, _ = time.Parse(stampLayout, synced.String)
		}
		out[i] = stored
	}
	return out, nil
}

// LockMembers has nothing to do: the file's write lock, held since the
// transaction began, keeps every other writer out.
func (t *liteTx) LockMembers(*shapes.Membership, []string) error { return nil }

// LockScopes has nothing to do: the file's write lock, held since the
// transaction began, keeps every other writer out.
func (t *liteTx) LockScopes(*shapes.Membership, []string, []bool) error { return nil }

func (t *liteTx) Members(m *shapes.Membership, scopes []string) (map[string]*shapes.ScopeState, error) {
	q := shapes.QuoteIdent
	table := shapes.QuoteTable(m.Schema, m.Table)
	list, err := json.Marshal(scopes)
	if err != nil {
		return nil, err
	}
	// each scope under the text it was asked for: the database's equality
	// decides which rows are a scope's; one row per active member, or one
	// with no member
	rows, err := t.tx.QueryContext(t.ctx, fmt.Sprintf(`SELECT v.value, CAST(a.%[1]s AS TEXT),
	EXISTS (SELECT 1 FROM %[2]s AS e WHERE e.%[3]s = v.value),
	(SELECT max(h.left_at) FROM "%[5]s" AS h WHERE h.members = ?2 AND h.scope = v.value)
FROM json_each(?1) AS v LEFT JOIN %[2]s AS a ON a.%[3]s = v.value AND %[4]s AND a.%[1]s IS NOT NULL`,
		q(m.Member.Name), table, q(m.Scope.Name), active(m, "a"), shapes.LeftTable), string(list), m.Table)
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	out := make(map[string]*shapes.ScopeState, len(scopes))
	for rows.Next() {
		var scope string
		var member, left sql.NullString
		var ever bool
		if err := rows.Scan(&scope, &member, &ever, &left); err != nil {
			return nil, classify(err)
		}
		st := out[scope]
		if st == nil {
			st = &shapes.ScopeState{Ever: ever}
			if left.Valid {
				st.LastLeft, _ = time.Parse(stampLayout, left.String)
			}
			out[scope] = st
		}
		if member.Valid {
			st.Active = append(st.Active, member.String)
		}
	}
	return out, classify(rows.Err())
}

func (t *liteTx) Memberships(m *shapes.Membership, users []string) (map[string]int, error) {
	q := shapes.QuoteIdent
	list, err := json.Marshal(users)
	if err != nil {
		return nil, err
	}
	rows, err := t.tx.QueryContext(t.ctx, fmt.Sprintf(`SELECT CAST(a.%[1]s AS TEXT), count(*) FROM %[2]s AS a WHERE a.%[1]s IN (SELECT value FROM json_each(?)) AND %[3]s GROUP BY 1`,
		q(m.Member.Name), shapes.QuoteTable(m.Schema, m.Table), active(m, "a")), string(list))
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var u string
		var n int
		if err := rows.Scan(&u, &n); err != nil {
			return nil, classify(err)
		}
		out[u] = n
	}
	return out, classify(rows.Err())
}

func (t *liteTx) Used(m *shapes.Membership, scopes []string) (map[string]bool, error) {
	q := shapes.QuoteIdent
	var probes, shapeKeys []string
	for _, sh := range m.Shared {
		shapeKeys = append(shapeKeys, sh.Config.Key)
		probes = append(probes, fmt.Sprintf(`EXISTS (SELECT 1 FROM %s AS t WHERE t.%s = v.value)`, shapes.QuoteTable(sh.Schema, sh.Table), q(sh.ScopeColumn().Name)))
	}
	probes = append(probes, `EXISTS (SELECT 1 FROM "`+shapes.MovesTable+`" AS mv WHERE mv.shape IN (SELECT value FROM json_each(?2)) AND mv.scope = v.value)`,
		`EXISTS (SELECT 1 FROM "`+shapes.ScopesTable+`" AS r WHERE r.members = ?3 AND r.scope = v.value)`)
	list, err := json.Marshal(scopes)
	if err != nil {
		return nil, err
	}
	keys, err := json.Marshal(shapeKeys)
	if err != nil {
		return nil, err
	}
	rows, err := t.tx.QueryContext(t.ctx, `SELECT v.value FROM json_each(?1) AS v WHERE `+strings.Join(probes, " OR "), string(list), string(keys), m.Table)
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var sc string
		if err := rows.Scan(&sc); err != nil {
			return nil, classify(err)
		}
		out[sc] = true
	}
	return out, classify(rows.Err())
}

// Blocked checks at once: the transaction holds the file's write lock,
// which an erase holds until it commits.
func (t *liteTx) Blocked(hash string) error { return blocked(t.ctx, t.tx, hash) }

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
	if !t.last.IsZero() && !stamp.After(t.last) {
		stamp = t.last.Add(time.Millisecond) // above any stamp the push took before
	}
	if last.Valid {
		prev, err := time.Parse(stampLayout, last.String)
		if err != nil {
			return time.Time{}, fmt.Errorf("sqlite: bad cursor %q: %w", last.String, err)
		}
		if !stamp.After(prev) {
			stamp = prev.Add(time.Millisecond)
		}
	}
	t.last, t.stamp = stamp, stamp.Format(stampLayout)
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
	// a shared row: the policy decided last-write-wins (pushshared.go)
	lww := ` AND (` + c.upd + ` IS NULL OR ? > ` + c.upd + `)`
	if sc != nil {
		lww = ` AND ? IS NOT NULL`
	}
	update, err := t.stmt(`UPDATE ` + c.table + ` SET ` + strings.Join(sets, ", ") + ` WHERE ` + where + owner + lww)
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

// keyExpr is the text that names a row by its key in the moves and
// versions tables, from the key values: the value as text, or a JSON
// array of them for a key of several columns. The stamping triggers and
// pulls compute the same.
func keyExpr(vals []string) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = "CAST(" + v + " AS TEXT)"
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return "json_array(" + strings.Join(parts, ", ") + ")"
}

// rowKeyOf is keyExpr of the key columns of the row alias.
func rowKeyOf(sh *shapes.Shape, alias string) string {
	vals := make([]string, len(sh.Keys))
	for i, k := range sh.Keys {
		vals[i] = alias + "." + shapes.QuoteIdent(k.Name)
	}
	return keyExpr(vals)
}

func (t *liteTx) Moves(moves []shapes.Move) error {
	for _, mv := range moves {
		var to any
		if !mv.ToNull {
			to = mv.To
		}
		vals, err := appendValues(nil, mv.Shape, mv.Row)
		if err != nil {
			return err
		}
		params := make([]string, len(mv.Shape.Keys))
		for i := range params {
			params[i] = fmt.Sprintf("?%d", 9+i)
		}
		args := append([]any{mv.Shape.Config.Key, mv.From, to, mv.User, mv.UpdatedAt.UTC().Format(stampLayout), mv.Stamp.UTC().Format(stampLayout),
			mv.FromScopedAt.UTC().Format(stampLayout), string(mv.Payload)}, vals[:len(mv.Shape.Keys)]...)
		if _, err := t.tx.ExecContext(t.ctx, `INSERT INTO "`+shapes.MovesTable+`" (shape, scope, new_scope, user_id, updated_at, stamp, from_scoped_at, payload, row_key)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, `+keyExpr(params)+`)`, args...); err != nil {
			return classify(err)
		}
	}
	return nil
}

func (t *liteTx) Archive(sh *shapes.Shape, rows []*shapes.Row) error {
	q := shapes.QuoteIdent
	st, err := t.stmt(fmt.Sprintf(`INSERT INTO "%s" (shape, row_key, updated_at, user_id, stamp)
SELECT ?, %s, %s, CAST(%s AS TEXT), %s FROM %s WHERE %s`, shapes.VersionsTable, rowKeyOf(sh, shapes.QuoteTable(sh.Schema, sh.Table)),
		q(sh.UpdatedAt.Name), q(sh.User.Name), q(sh.SyncedAt.Name), shapes.QuoteTable(sh.Schema, sh.Table), keyWhere(sh)))
	if err != nil {
		return err
	}
	for _, r := range rows {
		vals, err := appendValues(nil, sh, r)
		if err != nil {
			return err
		}
		if _, err := st.ExecContext(t.ctx, append([]any{sh.Config.Key}, vals[:len(sh.Keys)]...)...); err != nil {
			return classify(err)
		}
	}
	return nil
}

func (t *liteTx) Leave(m *shapes.Membership, leaves []shapes.Leave) error {
	for _, l := range leaves {
		joined := unknownJoin
		if !l.Joined.IsZero() {
			joined = l.Joined.UTC().Format(stampLayout)
		}
		if _, err := t.tx.ExecContext(t.ctx, `INSERT INTO "`+shapes.LeftTable+`" (members, scope, member, joined, left_at) VALUES (?, ?, ?, ?, ?)`,
			m.Table, l.Scope, l.Member, joined, l.Stamp.UTC().Format(stampLayout)); err != nil {
			return classify(err)
		}
	}
	return nil
}
