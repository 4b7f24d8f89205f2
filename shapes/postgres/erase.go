package postgres

import (
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/hypersync/hypersync/shapes"
)

// The parts of an erase (shapes/erase.go) that are PostgreSQL's.

func (t *pgTx) Named(sh *shapes.Shape, user string, member bool) ([][]shapes.Value, error) {
	q := shapes.QuoteIdent
	cols := make([]string, len(sh.Columns()))
	for j, c := range sh.Columns() {
		cols[j] = textExpr(c)
	}
	var where string
	if member {
		m := sh.Share().Members
		where = fmt.Sprintf("t.%s = $1 AND %s", q(m.Member.Name), active(m, "t"))
	} else {
		where = fmt.Sprintf("t.%s = $1 AND t.%s IS NOT NULL", q(sh.User.Name), q(sh.ScopeColumn().Name))
	}
	var out [][]shapes.Value
	t.queue(fmt.Sprintf("SELECT %s FROM %s AS t WHERE %s", strings.Join(cols, ", "), shapes.QuoteTable(sh.Schema, sh.Table), where),
		[]any{user}, func(br pgx.BatchResults) error {
			res, err := br.Query()
			if err != nil {
				return err
			}
			defer res.Close()
			for res.Next() {
				raw := res.RawValues()
				vals := make([]shapes.Value, len(raw))
				for j, c := range sh.Columns() {
					vals[j] = shapes.Value{Null: true}
					if raw[j] != nil {
						vals[j] = shapes.ValueOf(c.Kind, append(make([]byte, 0, len(raw[j])), raw[j]...), parseTime)
					}
				}
				out = append(out, vals)
			}
			return res.Err()
		})
	return out, pgError(t.flush())
}

func (t *pgTx) ScopesOf(m *shapes.Membership, user string) ([]shapes.ScopeOf, error) {
	q := shapes.QuoteIdent
	since := "NULL::timestamptz"
	if m.Joined != nil {
		since = "t." + q(m.Joined.Name) + "::timestamptz"
	}
	sql := fmt.Sprintf(`SELECT t.%s::text, true, %s, NULL::timestamptz FROM %s AS t WHERE t.%s = $1 AND %s`,
		q(m.Scope.Name), since, shapes.QuoteTable(m.Schema, m.Table), q(m.Member.Name), active(m, "t"))
	// a membership table is there only when sharing's tables are
	sql += `
UNION ALL
SELECT scope, false, joined, left_at FROM "` + shapes.LeftTable + `" WHERE members = ` + quoteLiteral(m.Table) + ` AND member = $1::text`
	var out []shapes.ScopeOf
	t.queue(sql+" ORDER BY 1, 4 NULLS LAST", []any{user}, func(br pgx.BatchResults) error {
		res, err := br.Query()
		if err != nil {
			return err
		}
		var sc shapes.ScopeOf
		var since, until pgtype.Timestamptz
		_, err = pgx.ForEachRow(res, []any{&sc.Scope, &sc.Active, &since, &until}, func() error {
			sc.Since, sc.Until = finite(since), finite(until)
			out = append(out, sc)
			return nil
		})
		return err
	})
	return out, pgError(t.flush())
}

// finite is a timestamp's time, zero for null or an infinity.
func finite(ts pgtype.Timestamptz) time.Time {
	if ts.Valid && ts.InfinityModifier == pgtype.Finite {
		return ts.Time
	}
	return time.Time{}
}

func (t *pgTx) Forget(f shapes.Forget) (map[*shapes.Shape]int, error) {
	q := shapes.QuoteIdent
	out := map[*shapes.Shape]int{}
	for _, sh := range f.Shapes {
		where := fmt.Sprintf("%s = $1", q(sh.User.Name))
		if sh.Share() != nil {
			where += fmt.Sprintf(" AND %s IS NULL", q(sh.ScopeColumn().Name))
		}
		t.queue(fmt.Sprintf("WITH gone AS (DELETE FROM %s WHERE %s RETURNING 1) SELECT count(*)::int FROM gone", shapes.QuoteTable(sh.Schema, sh.Table), where),
			[]any{f.User}, func(br pgx.BatchResults) error {
				var n int32
				err := br.QueryRow().Scan(&n)
				out[sh] = int(n)
				return err
			})
	}
	t.queue(`DELETE FROM "`+shapes.RejectionsTable+`" WHERE user_id = $1`, []any{f.User}, nil)
	if f.Sharing {
		t.queue(`DELETE FROM "`+shapes.LeftTable+`" WHERE member = $1`, []any{f.User}, nil)
		t.queue(`UPDATE "`+shapes.MovesTable+`" SET user_id = $2 WHERE user_id = $1`, []any{f.User, shapes.ErasedAuthor}, nil)
		t.queue(`UPDATE "`+shapes.VersionsTable+`" SET user_id = $2 WHERE user_id = $1`, []any{f.User, shapes.ErasedAuthor}, nil)
	}
	// the cursor goes, and its stamp is kept under the hash (Forget.Stamp)
	t.queue(`WITH gone AS (DELETE FROM "`+shapes.CursorTable+`" WHERE user_id = $1 RETURNING stamp)
INSERT INTO "`+shapes.ErasedTable+`" AS e (user_hash, at, stamp) VALUES ($2, now(), (SELECT stamp FROM gone WHERE stamp > '-infinity'))
ON CONFLICT (user_hash) DO UPDATE SET stamp = greatest(e.stamp, excluded.stamp)`, []any{f.User, f.Hash}, nil)
	return out, pgError(t.flush())
}
