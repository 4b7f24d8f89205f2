package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/hypersync/hypersync/shapes"
)

// How pull completeness is kept for shared scopes on PostgreSQL.
//
// A push into a shared shape runs in one transaction that takes its locks
// in one order: the stored rows it names (FOR UPDATE), then the scopes
// those rows are in or enter (advisory locks: share mode for a write into
// the scope, exclusive for a change of its membership), then the cursors
// of everyone who can see a touched scope before or after the push,
// sorted by user id. Only then does it take its stamp, above every one of
// those cursors, and set them all to it.
//
// A row's scope cannot change under the push (its row lock), nor can the
// members of that scope (the scope lock: a membership change holds it
// exclusively until commit). So the cursors the push locks are those of
// every user who can see any row it writes, and each of those users sees
// the push as one more push of their own: its stamp is above their
// previous stamps, and their cursor is locked until it commits. The
// per-user argument of write.go then holds for every member m: every write
// visible to m with a stamp at or below S_m committed before S_m did, so
// one snapshot holding S_m holds them all. A membership change locks the
// cursors of the members before and after it, and so is ordered the same
// way for everyone it concerns, the new or removed member included: a
// pull's move-in and move-out (pull.go) read the membership row in the
// same snapshot as the rows.
//
// Deadlocks: hypersync's shared pushes take rows, scopes, cursors in that
// order. A per-user push takes its cursor then its rows, and a stamping
// trigger its row then cursors; a cycle between them needs two writers on
// one row, and PostgreSQL ends one, which Shared retries.

// The advisory lock key of a scope: the membership table and the scope's
// canonical text (the value cast to the column's type and back).
func scopeLockKey(m *shapes.Membership, scope string) string {
	return fmt.Sprintf("hashtextextended(%s || %s::%s::text, 0)", quoteLiteral(m.QualifiedName()+":"), scope, m.Scope.Cast)
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Shared runs fn in one transaction, again from the start after a
// deadlock, a serialization failure or shapes.ErrRetry.
func (p *driver) Shared(ctx context.Context, fn func(shapes.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := p.shared(ctx, fn)
		var pgErr *pgconn.PgError
		retry := errors.Is(err, shapes.ErrRetry) || (errors.As(err, &pgErr) && pgErr.Code[:2] == "40")
		if retry && attempt < 5 {
			continue
		}
		return pgError(err)
	}
}

func (p *driver) shared(ctx context.Context, fn func(shapes.Tx) error) error {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, markWriterSQL); err != nil {
		return err
	}
	if err := fn(&pgTx{ctx: ctx, tx: tx, p: p}); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

type pgTx struct {
	ctx context.Context
	tx  pgx.Tx
	p   *driver
}

// keyArgs are the key values of rows as text arrays, one per key column.
func keyArgs(sh *shapes.Shape, rows []*shapes.Row) ([]any, error) {
	args := make([]any, len(sh.Keys))
	for i := range sh.Keys {
		c := sh.Columns()[i]
		vals := make([]string, len(rows))
		for j, r := range rows {
			v, err := c.TextValue(trimmed(r.Vals[i]))
			if err != nil {
				return nil, &shapes.RefusedError{Message: fmt.Sprintf("field %q: %v", c.Field, err)}
			}
			vals[j] = v
		}
		args[i] = vals
	}
	return args, nil
}

func (t *pgTx) Stored(sh *shapes.Shape, rows []*shapes.Row) ([]*shapes.Stored, error) {
	args, err := keyArgs(sh, rows)
	if err != nil {
		return nil, err
	}
	q := shapes.QuoteIdent
	var arrays, names, match, order []string
	for i, k := range sh.Keys {
		arrays = append(arrays, fmt.Sprintf("$%d::text[]", i+1))
		names = append(names, fmt.Sprintf("k%d", i))
		match = append(match, fmt.Sprintf("t.%s = v.k%d::%s", q(k.Name), i, k.Cast))
		order = append(order, "t."+q(k.Name))
	}
	tomb := "false"
	if c, ok := sh.TombColumn(); ok {
		tomb = "coalesce(t." + q(c.Name) + ", false)"
	}
	sql := fmt.Sprintf(`SELECT v.ord::int4, t.%s::text, t.%s::text, t.%s::timestamptz, %s, t.%s::timestamptz
FROM unnest(%s) WITH ORDINALITY AS v(%s, ord) JOIN %s AS t ON %s
ORDER BY %s FOR UPDATE OF t`, q(sh.ScopeColumn().Name), q(sh.User.Name), q(sh.UpdatedAt.Name), tomb, q(sh.Share().ScopedAt.Name),
		strings.Join(arrays, ", "), strings.Join(names, ", "), shapes.QuoteTable(sh.Schema, sh.Table),
		strings.Join(match, " AND "), strings.Join(order, ", "))
	res, err := t.tx.Query(t.ctx, sql, args...)
	if err != nil {
		return nil, pgError(err)
	}
	defer res.Close()
	out := make([]*shapes.Stored, len(rows))
	for res.Next() {
		var ord int32
		var scope, user pgtype.Text
		var upd, scoped pgtype.Timestamptz
		var st shapes.Stored
		if err := res.Scan(&ord, &scope, &user, &upd, &st.Tomb, &scoped); err != nil {
			return nil, pgError(err)
		}
		st.Scope, st.ScopeNull, st.User = scope.String, !scope.Valid, user.String
		if upd.Valid && upd.InfinityModifier == pgtype.Finite {
			st.UpdatedAt = upd.Time
		} else if upd.InfinityModifier == pgtype.Infinity {
			st.UpdatedAt = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
		}
		if scoped.Valid && scoped.InfinityModifier == pgtype.Finite {
			st.ScopedAt = scoped.Time
		}
		out[ord-1] = &st
	}
	return out, pgError(res.Err())
}

func (t *pgTx) LockScopes(m *shapes.Membership, scopes []string, exclusive []bool) error {
	if len(scopes) == 0 {
		return nil
	}
	// Volatile functions in a target list run after the sort, so the
	// locks are taken in key order, which every shared push follows.
	sql := fmt.Sprintf(`SELECT count(*) FROM (
	SELECT CASE WHEN x THEN pg_advisory_xact_lock(k)::text ELSE pg_advisory_xact_lock_shared(k)::text END
	FROM (SELECT %s AS k, bool_or(e) AS x FROM unnest($1::text[], $2::bool[]) AS v(s, e) GROUP BY 1) AS keys
	ORDER BY k) AS locked`, scopeLockKey(m, "v.s"))
	_, err := t.tx.Exec(t.ctx, sql, scopes, exclusive)
	return pgError(err)
}

func (t *pgTx) Members(m *shapes.Membership, scopes []string) ([]shapes.Member, error) {
	q := shapes.QuoteIdent
	tomb := "false"
	if m.Tomb != nil {
		tomb = "coalesce(m." + q(m.Tomb.Name) + ", false)"
	}
	// each membership row under the scope text it was asked for: the
	// database's equality decides which rows are a scope's
	sql := fmt.Sprintf(`SELECT v.s, m.%s::text, %s FROM unnest($1::text[]) AS v(s) JOIN %s AS m ON m.%s = v.s::%s WHERE m.%s IS NOT NULL`,
		q(m.Member.Name), tomb, shapes.QuoteTable(m.Schema, m.Table), q(m.Scope.Name), m.Scope.Cast, q(m.Member.Name))
	res, err := t.tx.Query(t.ctx, sql, scopes)
	if err != nil {
		return nil, pgError(err)
	}
	defer res.Close()
	var out []shapes.Member
	for res.Next() {
		var mem shapes.Member
		if err := res.Scan(&mem.Scope, &mem.User, &mem.Removed); err != nil {
			return nil, pgError(err)
		}
		out = append(out, mem)
	}
	return out, pgError(res.Err())
}

// Stamp locks the cursors of users in id order and sets them all to one
// stamp above each. A cursor that does not exist yet is created first;
// the insert locks it like the others.
func (t *pgTx) Stamp(users []string) (time.Time, error) {
	if t.p.naiveStamps {
		var s time.Time
		err := t.tx.QueryRow(t.ctx, naiveStampSQL, users[0]).Scan(&s)
		return s, pgError(err)
	}
	if _, err := t.tx.Exec(t.ctx, `INSERT INTO "`+shapes.CursorTable+`" (user_id, stamp)
SELECT u, '-infinity' FROM unnest($1::text[]) AS u ORDER BY u ON CONFLICT (user_id) DO NOTHING`, users); err != nil {
		return time.Time{}, pgError(err)
	}
	var prev pgtype.Timestamptz
	if err := t.tx.QueryRow(t.ctx, `SELECT max(stamp) FROM (SELECT stamp FROM "`+shapes.CursorTable+`"
WHERE user_id = ANY ($1::text[]) ORDER BY user_id FOR UPDATE) AS locked`, users).Scan(&prev); err != nil {
		return time.Time{}, pgError(err)
	}
	var s time.Time
	err := t.tx.QueryRow(t.ctx, `UPDATE "`+shapes.CursorTable+`"
SET stamp = greatest(date_trunc('milliseconds', clock_timestamp()), $2::timestamptz + interval '1 millisecond')
WHERE user_id = ANY ($1::text[]) RETURNING stamp`, users, prev).Scan(&s)
	return s, pgError(err)
}

func (t *pgTx) Write(user string, g shapes.Group, isolated bool) error {
	args, err := t.p.groupArgs(user, g)
	if err != nil {
		return err
	}
	q := pgx.Tx(t.tx)
	if isolated {
		sp, err := t.tx.Begin(t.ctx)
		if err != nil {
			return pgError(err)
		}
		q = sp
	}
	if g.New {
		var n int
		if err = q.QueryRow(t.ctx, insertSharedSQL(g.Shape, g.Mask), args...).Scan(&n); err == nil && n < len(g.Rows) {
			err = shapes.ErrRetry
		}
		for _, r := range g.Rows {
			r.Outcome = shapes.RowApplied
		}
	} else {
		var rows pgx.Rows
		if rows, err = q.Query(t.ctx, upsertSQL(g.Shape, g.Mask), args...); err == nil {
			err = readOutcomes(rows, g)
		}
	}
	if isolated {
		if err == nil {
			err = q.Commit(t.ctx)
		} else {
			_ = q.Rollback(t.ctx)
		}
	}
	return pgError(err)
}

func (t *pgTx) Moves(moves []shapes.Move) error {
	n := len(moves)
	shape, from, to, user, payload := make([]string, n), make([]string, n), make([]pgtype.Text, n), make([]string, n), make([]string, n)
	upd, stamp, scoped := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	for i, mv := range moves {
		shape[i], from[i], user[i], payload[i] = mv.Shape.Config.Key, mv.From, mv.User, string(mv.Payload)
		to[i] = pgtype.Text{String: mv.To, Valid: !mv.ToNull}
		upd[i], stamp[i], scoped[i] = mv.UpdatedAt, mv.Stamp, mv.FromScopedAt
	}
	_, err := t.tx.Exec(t.ctx, `INSERT INTO "`+shapes.MovesTable+`" (shape, scope, new_scope, user_id, updated_at, stamp, from_scoped_at, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::text[])`,
		shape, from, to, user, upd, stamp, scoped, payload)
	return pgError(err)
}

// insertSharedSQL inserts rows of a shared shape that did not exist when
// the push locked its rows, and counts those it inserted: a row another
// transaction inserted since is left alone (Write then asks for a retry).
func insertSharedSQL(sh *shapes.Shape, m shapes.Mask) string {
	s, _ := sh.Statement(shapes.StatementKey{Op: opInsertShared, Mask: m}, func() (any, error) {
		u := partsOf(sh, m)
		cols := append(append([]string{}, u.cols...), u.user, u.upd)
		return inputSQL(sh, m) + fmt.Sprintf(`, ins AS (
	INSERT INTO %s AS t (%s, %s, %s)
	SELECT %s, stamp.stamp, stamp.stamp FROM input, stamp ORDER BY %s
	ON CONFLICT (%s) DO NOTHING
	RETURNING 1
)
SELECT count(*)::int FROM ins`, u.table, strings.Join(cols, ", "), u.synced, u.scoped, strings.Join(prefixed("input.", cols), ", "),
			strings.Join(prefixed("input.", u.keyCols), ", "), strings.Join(u.keyCols, ", ")), nil
	})
	return s.(string)
}
