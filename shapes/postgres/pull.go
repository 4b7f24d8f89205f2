package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hypersync/hypersync/shapes"
)

// pullSQL builds the statement that reads a user's cursor and every
// shape's rows stamped in ($2, cursor], in one snapshot (see write.go for
// why that is complete). Each result row is (shape index, has-more,
// updatedAt, the shape's columns as text); the row with index -1 carries
// the cursor in its third column.
//
// With a limit ($3), the page ends at the stamp of the limit-th row in
// stamp order, and holds every row up to that stamp; the -1 row's second
// column says whether rows are left beyond it.
func (p *driver) pullSQL(set *shapes.ShapeSet, limited bool) string {
	if p.naiveStamps {
		return buildPullSQL(set.Shapes, limited, true)
	}
	op := opPull
	if limited {
		op = opPullPage
	}
	s, _ := set.Statement(shapes.StatementKey{Op: op}, func() (any, error) { return buildPullSQL(set.Shapes, limited, false), nil })
	return s.(string)
}

func buildPullSQL(shapeList []*shapes.Shape, limited, naive bool) string {
	sql := buildPullBody(shapeList, limited, naive)
	if naive {
		return sql
	}
	// every use of lastPull reads it through w (sinceCTE), but w itself
	sql = strings.ReplaceAll(sql, "$2", "(SELECT since FROM w)")
	return strings.ReplaceAll(sql, lastPullParam, "$2")
}

// lastPullParam stands for $2 in sinceCTE until buildPullSQL has read
// every other $2 through it.
const lastPullParam = "{lastPull}"

// sinceCTE is the CTE w holding the lastPull a pull reads from: $2, or
// the epoch when $2 is later than the user's cursor (in the CTE cursor):
// later than anything the server can have handed this user, a cursor from
// another user, or from a database since restored from a backup. Every
// syncedAt a pull answers is at or below the cursor, which only grows, so
// no cursor the server handed out fails the test.
func sinceCTE(cursor string) string {
	return `w AS (SELECT CASE WHEN ` + lastPullParam + `::timestamptz > coalesce((SELECT stamp FROM ` + cursor + `), 'epoch') THEN 'epoch'::timestamptz ELSE ` + lastPullParam + `::timestamptz END AS since)`
}

// erasedCheck is erasedSQL as an expression of the pull's statement, the
// hash in param: null, or a failure when the user is erased.
func erasedCheck(param string) string {
	return `(SELECT CAST('` + shapes.ErasedMarker + ` ' || e.user_hash AS int) FROM "` + shapes.ErasedTable + `" AS e WHERE e.user_hash = ` + param + `::text)::text`
}

// standbyCheck is an expression of the pull's statement, the flag in
// param: null, or a failure carrying notStandbyMarker when the flag is set
// and the server is not in recovery. A pull meant for a standby that was
// promoted fails in its own statement, not a probe's second later: a
// promoted server takes writes the primary never sees, and its cursors
// could hand a device a syncedAt above rows it will never have.
func standbyCheck(param string) string {
	return `(SELECT CAST('` + notStandbyMarker + ` ' || pg_is_in_recovery()::text AS int) WHERE ` + param + `::boolean AND NOT pg_is_in_recovery())::text`
}

// notStandbyMarker marks standbyCheck's failure (pgError).
const notStandbyMarker = "hypersync-read-database-not-in-recovery"

func buildPullBody(shapeList []*shapes.Shape, limited, naive bool) string {
	q := shapes.QuoteIdent
	var b strings.Builder
	switch {
	case naive:
		// the reference's syncedAt: the time of the pull
		b.WriteString(`WITH c AS (SELECT now() AS stamp WHERE $1::text IS NOT NULL)
SELECT -1, NULL::text, (SELECT stamp FROM c)::text`)
	case limited:
		var stamps []string
		for _, sh := range shapeList {
			for _, src := range visible(sh, "last") {
				stamps = append(stamps, fmt.Sprintf(`SELECT t.%s AS s FROM %s`, q(sh.SyncedAt.Name), src))
			}
		}
		b.WriteString(`WITH last AS (SELECT stamp FROM "` + shapes.CursorTable + `" WHERE user_id = $1 AND stamp > '-infinity' AND stamp >= $5::timestamptz),
` + sinceCTE("last") + `,
c AS (SELECT coalesce((SELECT s FROM (` + strings.Join(stamps, " UNION ALL ") + `) AS page ORDER BY s OFFSET $3::int - 1 LIMIT 1),
	(SELECT stamp FROM last)) AS stamp)
SELECT -1, coalesce(` + erasedCheck("$4") + `, ` + standbyCheck("$6") + `, ((SELECT stamp FROM c) < (SELECT stamp FROM last))::text), (SELECT stamp FROM c)::text`)
	default:
		b.WriteString(`WITH c AS (SELECT stamp FROM "` + shapes.CursorTable + `" WHERE user_id = $1 AND stamp > '-infinity' AND stamp >= $4::timestamptz),
` + sinceCTE("c") + `
SELECT -1, coalesce(` + erasedCheck("$3") + `, ` + standbyCheck("$5") + `), (SELECT stamp FROM c)::text`)
	}
	width := 0
	for _, sh := range shapeList {
		width = max(width, len(sh.Columns()))
	}
	b.WriteString(strings.Repeat(", NULL::text", width+1))
	for i, sh := range shapeList {
		cols := make([]string, width)
		for j := range cols {
			if j < len(sh.Columns()) {
				cols[j] = textExpr(sh.Columns()[j])
			} else {
				cols[j] = "NULL::text"
			}
		}
		user := "NULL::text"
		if sh.Share() != nil {
			user = "t." + q(sh.User.Name) + "::text"
		}
		for _, src := range visible(sh, "c") {
			fmt.Fprintf(&b, "\nUNION ALL\nSELECT %d, NULL::text, t.%s::text, %s, %s\nFROM %s", i, q(sh.UpdatedAt.Name), strings.Join(cols, ", "), user, src)
		}
		if sh.Share() != nil {
			sharedBranches(&b, i, sh, width)
		}
	}
	return b.String()
}

// visible returns the FROM and WHERE of the rows the user $1 sees in sh
// stamped in ($2, cutoff.stamp], the table aliased t. A shared shape's
// rows are the user's private ones and those of the scopes they are a
// member of.
func visible(sh *shapes.Shape, cutoff string) []string {
	q := shapes.QuoteIdent
	table, synced := shapes.QuoteTable(sh.Schema, sh.Table), "t."+q(sh.SyncedAt.Name)
	window := fmt.Sprintf("%[1]s > $2 AND %[1]s <= %[2]s.stamp", synced, cutoff)
	if sh.Share() == nil {
		return []string{fmt.Sprintf("%s AS t, %s WHERE t.%s = $1 AND %s", table, cutoff, q(sh.User.Name), window)}
	}
	m := sh.Share().Members
	return []string{
		fmt.Sprintf("%s AS t, %s WHERE t.%s = $1 AND t.%s IS NULL AND %s", table, cutoff, q(sh.User.Name), q(sh.ScopeColumn().Name), window),
		fmt.Sprintf("%s AS m JOIN %s AS t ON t.%s = m.%s, %s WHERE m.%s = $1 AND %s AND %s",
			shapes.QuoteTable(m.Schema, m.Table), table, q(sh.ScopeColumn().Name), q(m.Scope.Name), cutoff, q(m.Member.Name), active(m, "m"), window),
	}
}

// active is the condition that membership row alias is not removed.
func active(m *shapes.Membership, alias string) string {
	if m.Tomb == nil {
		return "true"
	}
	return "NOT coalesce(" + alias + "." + shapes.QuoteIdent(m.Tomb.Name) + ", false)"
}

// sharedBranches adds the parts of the pull that membership changes
// bring, in the same snapshot as the rest (see shapes/pullshared.go for
// what each sends, and why):
//   - move-in: every row of a scope whose membership row for the user
//     was written in ($2, c.stamp], whatever the row's own stamp (the
//     rows stamped after $2 the visible part brings already);
//   - move-out (flag 't'): for a removal of the user in the window from
//     a scope they were a member of at $2, and are not now, the tombstone
//     form of every row that has been in the scope since before $2, with
//     the updatedAt and author of its version before the removal;
//   - moves (flag 'p', the payload in the first column): the tombstone of
//     every row that left, in the window, a scope the user was a member
//     of at $2 and had been in it since before $2, for a scope the user
//     cannot see now; for a membership that ended in the window, also the
//     moves after its end.
func sharedBranches(b *strings.Builder, i int, sh *shapes.Shape, width int) {
	q := shapes.QuoteIdent
	sc := sh.Share()
	m := sc.Members
	table, members := shapes.QuoteTable(sh.Schema, sh.Table), shapes.QuoteTable(m.Schema, m.Table)
	mstamp, synced := "m."+q(m.Stamp.Name), "t."+q(sh.SyncedAt.Name)
	cols := make([]string, width)
	tombCols := make([]string, width)
	for j := range cols {
		cols[j], tombCols[j] = "NULL::text", "NULL::text"
		if j < len(sh.Columns()) {
			cols[j] = textExpr(sh.Columns()[j])
			if j < len(sh.Keys) || j == sc.Scope {
				tombCols[j] = cols[j]
			}
		}
	}
	fmt.Fprintf(b, "\nUNION ALL\nSELECT %d, NULL::text, t.%s::text, %s, t.%s::text\nFROM %s AS m JOIN %s AS t ON t.%s = m.%s, c WHERE m.%s = $1 AND %s > $2 AND %s <= c.stamp AND %s AND %s <= $2",
		i, q(sh.UpdatedAt.Name), strings.Join(cols, ", "), q(sh.User.Name), members, table, q(sh.ScopeColumn().Name), q(m.Scope.Name),
		q(m.Member.Name), mstamp, mstamp, active(m, "m"), synced)
	if sc.Tomb < 0 {
		return
	}
	notMember := func(scope string) string {
		return fmt.Sprintf("NOT EXISTS (SELECT FROM %s AS a WHERE a.%s = %s::%s AND a.%s = $1 AND %s)",
			members, q(m.Scope.Name), scope, m.Scope.Cast, q(m.Member.Name), active(m, "a"))
	}
	// the version of row alias as of before stamp: the row itself when it
	// was written before, else the newest version kept from before
	asOf := func(alias, key, stamp string) string {
		return fmt.Sprintf(`LEFT JOIN LATERAL (SELECT v.updated_at, v.user_id FROM "%s" AS v
	WHERE v.shape = %s AND v.row_key = %s AND v.stamp < %s ORDER BY v.stamp DESC LIMIT 1) AS o ON %s.%s >= %s`,
			shapes.VersionsTable, quoteLiteral(sh.Config.Key), key, stamp, alias, q(sh.SyncedAt.Name), stamp)
	}
	upd, user := "t."+q(sh.UpdatedAt.Name), "t."+q(sh.User.Name)
	fmt.Fprintf(b, `
UNION ALL
SELECT %[1]d, 't', (CASE WHEN %[2]s < h.left_at THEN %[3]s::timestamptz ELSE coalesce(o.updated_at, %[3]s::timestamptz) END)::text, %[4]s,
	CASE WHEN %[2]s < h.left_at THEN %[5]s::text ELSE coalesce(o.user_id, %[5]s::text) END
FROM "%[6]s" AS h JOIN %[7]s AS t ON t.%[8]s = h.scope::%[9]s
%[10]s, c
WHERE h.members = %[11]s AND h.member = $1 AND h.joined <= $2 AND h.left_at > $2 AND h.left_at <= c.stamp
	AND t.%[12]s <= $2 AND %[13]s`,
		i, synced, upd, strings.Join(tombCols, ", "), user, shapes.LeftTable, table, q(sh.ScopeColumn().Name), sh.ScopeColumn().Cast,
		asOf("t", rowKeyOf(sh, "t"), "h.left_at"), quoteLiteral(m.Table), q(sc.ScopedAt.Name), notMember("h.scope"))
	// the periods of the user's memberships: the current one (since they
	// last joined), and those that ended
	joined := "'-infinity'::timestamptz"
	if m.Joined != nil {
		joined = "a." + q(m.Joined.Name) + "::timestamptz"
	}
	periods := fmt.Sprintf(`(SELECT a.%[1]s::text AS scope, %[2]s AS joined, 'infinity'::timestamptz AS left_at FROM %[3]s AS a WHERE a.%[4]s = $1 AND %[5]s
	UNION ALL SELECT h.scope, h.joined, h.left_at FROM "%[6]s" AS h WHERE h.members = %[7]s AND h.member = $1)`,
		q(m.Scope.Name), joined, members, q(m.Member.Name), active(m, "a"), shapes.LeftTable, quoteLiteral(m.Table))
	fmt.Fprintf(b, `
UNION ALL
SELECT %[1]d, 'p', (CASE WHEN p.left_at > mv.stamp OR mv.row_key IS NULL THEN mv.updated_at ELSE coalesce(o.updated_at, mv.updated_at) END)::text, mv.payload%[2]s,
	CASE WHEN p.left_at > mv.stamp OR mv.row_key IS NULL THEN mv.user_id ELSE coalesce(o.user_id, mv.user_id) END
FROM "%[3]s" AS mv JOIN %[4]s AS p ON p.scope = mv.scope
LEFT JOIN LATERAL (SELECT v.updated_at, v.user_id FROM "%[5]s" AS v
	WHERE v.shape = mv.shape AND v.row_key = mv.row_key AND v.stamp < p.left_at ORDER BY v.stamp DESC LIMIT 1) AS o ON p.left_at <= mv.stamp, c
WHERE mv.shape = %[6]s AND mv.stamp > $2 AND (mv.stamp <= c.stamp OR p.left_at <= c.stamp) AND coalesce(mv.from_scoped_at, '-infinity') <= $2
	AND p.joined <= $2 AND p.left_at > $2
	AND NOT (mv.new_scope IS NULL AND mv.user_id = $1) AND %[7]s`,
		i, strings.Repeat(", NULL::text", width-1), shapes.MovesTable, periods, shapes.VersionsTable, quoteLiteral(sh.Config.Key), notMember("mv.new_scope"))
}

// textExpr reads a column as text for the pull. Building JSON inside
// PostgreSQL measured three to four times slower than reading the plain
// columns and writing the JSON in Go. Types without a JSON form of their
// own (arrays, and types hypersync does not know) are read as JSON.
func textExpr(c shapes.Column) string {
	col := "t." + shapes.QuoteIdent(c.Name)
	switch c.Kind {
	case shapes.KindArray, shapes.KindOther:
		return "to_json(" + col + ")::text"
	}
	return col + "::text"
}

// textFormats asks for every column of the pull as text (pgx repeats the
// last format for the remaining columns).
var textFormats = pgx.QueryResultFormats{pgx.TextFormatCode}

// Pull reads one user's rows in one statement and one snapshot: on the
// primary, or on a standby (replica.go).
func (p *driver) Pull(ctx context.Context, q shapes.PullQuery, emit func(shapes.PulledRow) error) (shapes.PullResult, error) {
	if p.replicas != nil {
		return p.replicas.pull(ctx, p, q, emit)
	}
	res, _, err := p.pullOn(ctx, p.pool, false, q, time.Time{}, emit)
	if err == nil && p.pullTarget != nil {
		p.pullTarget("primary", "")
	}
	return res, err
}

// errBehind: the standby's snapshot lacks the user's cursor as need says
// it must be; the pull sent nothing.
var errBehind = errors.New("the standby is behind the user's cursor")

// pullOn runs the pull statement on pool. With need set, the statement
// reads nothing unless the user's cursor there is at or after need, and
// pullOn then fails with errBehind. It reports whether it emitted a row.
func (p *driver) pullOn(ctx context.Context, pool *pgxpool.Pool, standby bool, q shapes.PullQuery, need time.Time, emit func(shapes.PulledRow) error) (shapes.PullResult, bool, error) {
	args := []any{textFormats, q.User, q.Since}
	if q.Limit > 0 {
		args = append(args, q.Limit)
	}
	if !p.naiveStamps {
		floor := pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
		if !need.IsZero() {
			floor = pgtype.Timestamptz{Time: need, Valid: true}
		}
		args = append(args, q.Block, floor, standby)
	}
	rows, err := pool.Query(ctx, p.pullSQL(q.Shapes, q.Limit > 0), args...)
	if err != nil {
		return shapes.PullResult{}, false, pgError(err)
	}
	defer rows.Close()
	res := shapes.PullResult{Cursor: time.Unix(0, 0).UTC()}
	emitted := false
	var vals []shapes.Value // reused for every row
	for rows.Next() {
		raw := rows.RawValues()
		idx, err := strconv.Atoi(string(raw[0]))
		if err != nil {
			return shapes.PullResult{}, emitted, fmt.Errorf("pull: bad shape index %q", raw[0])
		}
		if idx < 0 {
			res.HasMore = string(raw[1]) == "true"
			if raw[2] != nil {
				var ok bool
				if res.Cursor, ok = parseTime(raw[2]); !ok {
					return shapes.PullResult{}, emitted, fmt.Errorf("pull: bad cursor %q", raw[2])
				}
			} else if !need.IsZero() {
				return shapes.PullResult{}, false, errBehind
			}
			continue
		}
		sh := q.Shapes.Shapes[idx]
		row := shapes.PulledRow{Shape: sh, UpdatedAt: shapes.ValueOf(shapes.KindTimestamp, raw[2], parseTime),
			User: shapes.ValueOf(shapes.KindText, raw[len(raw)-1], nil)}
		switch string(raw[1]) {
		case "p":
			row.Payload = raw[3]
		case "t":
			row.Tombstone = true
		}
		cols := sh.Columns()
		vals = vals[:0]
		if row.Payload == nil {
			for j, c := range cols {
				vals = append(vals, shapes.ValueOf(c.Kind, raw[3+j], parseTime))
			}
		}
		row.Values = vals
		emitted = true
		if err := emit(row); err != nil {
			return shapes.PullResult{}, emitted, err
		}
	}
	if err := rows.Err(); err != nil {
		return shapes.PullResult{}, emitted, pgError(err)
	}
	return res, emitted, nil
}

// parseTime reads a timestamp as PostgreSQL writes it in the session's ISO
// datestyle ("2026-11-25 10:00:00.123456+00"), without time.Parse in the
// common UTC case. It reports false for what is not a time (infinity).
func parseTime(v []byte) (time.Time, bool) {
	if len(v) >= 19 && v[4] == '-' && v[7] == '-' && v[10] == ' ' && v[13] == ':' && v[16] == ':' {
		rest := v[19:]
		nanos, scale := 0, 100_000_000
		if len(rest) > 0 && rest[0] == '.' {
			rest = rest[1:]
			n := 0
			for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
				nanos += int(rest[n]-'0') * scale
				scale /= 10
				n++
			}
			rest = rest[n:]
		}
		if len(rest) == 0 || string(rest) == "+00" {
			year, ok1 := digits(v[0:4])
			month, ok2 := digits(v[5:7])
			day, ok3 := digits(v[8:10])
			hour, ok4 := digits(v[11:13])
			minute, ok5 := digits(v[14:16])
			sec, ok6 := digits(v[17:19])
			if ok1 && ok2 && ok3 && ok4 && ok5 && ok6 {
				return time.Date(year, time.Month(month), day, hour, minute, sec, nanos, time.UTC), true
			}
		}
	}
	// other offsets, BC dates, years past 9999
	t, err := time.Parse("2006-01-02 15:04:05.999999999Z07", string(v))
	return t.UTC(), err == nil
}

func digits(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// Cursors reads the sync stamps of users.
func (p *driver) Cursors(ctx context.Context, users []string) (map[string]time.Time, error) {
	rows, err := p.pool.Query(ctx, `SELECT user_id, stamp FROM "`+shapes.CursorTable+`" WHERE user_id = ANY ($1::text[]) AND stamp > '-infinity'`, users)
	if err != nil {
		return nil, pgError(err)
	}
	out := make(map[string]time.Time, len(users))
	var user string
	var stamp time.Time
	_, err = pgx.ForEachRow(rows, []any{&user, &stamp}, func() error {
		out[user] = stamp
		return nil
	})
	return out, pgError(err)
}
