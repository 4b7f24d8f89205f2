package sqlite

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// The parts of an erase (shapes/erase.go) that are SQLite's.

func (t *liteTx) Named(sh *shapes.Shape, user string, member bool) ([][]shapes.Value, error) {
	q := shapes.QuoteIdent
	cols := make([]string, len(sh.Columns()))
	for j, c := range sh.Columns() {
		cols[j] = valueExpr(c)
	}
	var where string
	if member {
		m := sh.Share().Members
		where = fmt.Sprintf("t.%s = ? AND %s", q(m.Member.Name), active(m, "t"))
	} else {
		where = fmt.Sprintf("t.%s = ? AND t.%s IS NOT NULL", q(sh.User.Name), q(sh.ScopeColumn().Name))
	}
	rows, err := t.tx.QueryContext(t.ctx, fmt.Sprintf("SELECT %s FROM %s AS t WHERE %s", strings.Join(cols, ", "), shapes.QuoteTable(sh.Schema, sh.Table), where), user)
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	var out [][]shapes.Value
	raw := make([]sql.RawBytes, len(cols))
	dest := make([]any, len(raw))
	for i := range raw {
		dest[i] = &raw[i]
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, classify(err)
		}
		vals := make([]shapes.Value, len(raw))
		for j, c := range sh.Columns() {
			vals[j] = shapes.Value{Null: true}
			if raw[j] != nil {
				vals[j] = shapes.ValueOf(c.Kind, append(make([]byte, 0, len(raw[j])), raw[j]...), parseTime)
			}
		}
		out = append(out, vals)
	}
	return out, classify(rows.Err())
}

func (t *liteTx) ScopesOf(m *shapes.Membership, user string) ([]shapes.ScopeOf, error) {
	q := shapes.QuoteIdent
	since := "NULL"
	if m.Joined != nil {
		since = "CAST(t." + q(m.Joined.Name) + " AS TEXT)"
	}
	rows, err := t.tx.QueryContext(t.ctx, fmt.Sprintf(`SELECT CAST(t.%s AS TEXT), 1, %s, NULL FROM %s AS t WHERE t.%s = ?1 AND %s
UNION ALL
SELECT scope, 0, joined, left_at FROM "%s" WHERE members = ?2 AND member = ?1
ORDER BY 1, 4`, q(m.Scope.Name), since, shapes.QuoteTable(m.Schema, m.Table), q(m.Member.Name), active(m, "t"), shapes.LeftTable), user, m.Table)
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	var out []shapes.ScopeOf
	for rows.Next() {
		var sc shapes.ScopeOf
		var since, until sql.NullString
		if err := rows.Scan(&sc.Scope, &sc.Active, &since, &until); err != nil {
			return nil, classify(err)
		}
		sc.Since, sc.Until = stampOf(since), stampOf(until)
		out = append(out, sc)
	}
	return out, classify(rows.Err())
}

// stampOf reads a stamp hypersync wrote; zero for null, unknownJoin or
// text it did not write.
func stampOf(s sql.NullString) time.Time {
	if !s.Valid || s.String == unknownJoin {
		return time.Time{}
	}
	if t, err := time.Parse(stampLayout, s.String); err == nil {
		return t
	}
	t, _ := parseTime([]byte(s.String))
	return t
}

func (t *liteTx) Forget(f shapes.Forget) (map[*shapes.Shape]int, error) {
	q := shapes.QuoteIdent
	out := map[*shapes.Shape]int{}
	exec := func(query string, args ...any) (int, error) {
		res, err := t.tx.ExecContext(t.ctx, query, args...)
		if err != nil {
			return 0, classify(err)
		}
		n, err := res.RowsAffected()
		return int(n), err
	}
	for _, sh := range f.Shapes {
		where := fmt.Sprintf("%s = ?", q(sh.User.Name))
		if sh.Share() != nil {
			where += fmt.Sprintf(" AND %s IS NULL", q(sh.ScopeColumn().Name))
		}
		n, err := exec(fmt.Sprintf("DELETE FROM %s WHERE %s", shapes.QuoteTable(sh.Schema, sh.Table), where), f.User)
		if err != nil {
			return nil, err
		}
		out[sh] = n
	}
	type stmt struct {
		sql  string
		args []any
	}
	// the cursor goes, and its stamp is kept under the hash (Forget.Stamp)
	var stamp sql.NullString
	if err := t.tx.QueryRowContext(t.ctx, `SELECT stamp FROM "`+shapes.CursorTable+`" WHERE user_id = ?`, f.User).Scan(&stamp); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, classify(err)
	}
	stmts := []stmt{{`DELETE FROM "` + shapes.CursorTable + `" WHERE user_id = ?`, []any{f.User}},
		{`DELETE FROM "` + shapes.RejectionsTable + `" WHERE user_id = ?`, []any{f.User}}}
	if f.Sharing {
		stmts = append(stmts, stmt{`DELETE FROM "` + shapes.LeftTable + `" WHERE member = ?`, []any{f.User}},
			stmt{`UPDATE "` + shapes.MovesTable + `" SET user_id = ? WHERE user_id = ?`, []any{shapes.ErasedAuthor, f.User}},
			stmt{`UPDATE "` + shapes.VersionsTable + `" SET user_id = ? WHERE user_id = ?`, []any{shapes.ErasedAuthor, f.User}})
	}
	for _, s := range stmts {
		if _, err := exec(s.sql, s.args...); err != nil {
			return nil, err
		}
	}
	if _, err := exec(`INSERT INTO "`+shapes.ErasedTable+`" (user_hash, at, stamp) VALUES (?, ?, ?)
		ON CONFLICT (user_hash) DO UPDATE SET stamp = CASE WHEN excluded.stamp > coalesce(stamp, '') THEN excluded.stamp ELSE stamp END`,
		f.Hash, time.Now().UTC().Format(stampLayout), stamp); err != nil {
		return nil, err
	}
	t.wrote = true
	return out, nil
}
