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

// Pull reads one user's rows in one read transaction, which in WAL mode is
// one snapshot (see write.go for why that is complete).
func (s *driver) Pull(ctx context.Context, q shapes.PullQuery, emit func(shapes.PulledRow) error) (shapes.PullResult, error) {
	res := shapes.PullResult{Cursor: time.Unix(0, 0).UTC()}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return res, classify(err)
	}
	defer tx.Rollback()
	if err := blocked(ctx, tx, q.Block); err != nil {
		return res, err
	}
	var stamp string
	err = tx.QueryRowContext(ctx, `SELECT stamp FROM "`+shapes.CursorTable+`" WHERE user_id = ?`, q.User).Scan(&stamp)
	if errors.Is(err, sql.ErrNoRows) {
		return res, nil // the user never pushed: nothing to pull
	}
	if err != nil {
		return res, classify(err)
	}
	since := q.Since.UTC().Format(stampLayout)
	if since > stamp {
		// later than anything the server can have handed this user (a
		// cursor of another user, or of a database since restored from a
		// backup): from the epoch. Every syncedAt a pull answers is at or
		// below the cursor, which only grows.
		since = time.Unix(0, 0).UTC().Format(stampLayout)
	}
	if q.Limit > 0 {
		// The page ends at the stamp of the limit-th row, and holds every
		// row of that stamp.
		var parts []string
		for _, sh := range q.Shapes.Shapes {
			synced := shapes.QuoteIdent(sh.SyncedAt.Name)
			for _, src := range visible(sh) {
				// CAST: the driver would turn a TIMESTAMP column into a time.Time
				parts = append(parts, fmt.Sprintf(`SELECT CAST(t.%s AS TEXT) AS s FROM %s`, synced, src))
			}
		}
		var end string
		err := tx.QueryRowContext(ctx, `SELECT s FROM (`+strings.Join(parts, " UNION ALL ")+`) ORDER BY s LIMIT 1 OFFSET ?4`,
			q.User, since, stamp, q.Limit-1).Scan(&end)
		switch {
		case err == nil && end < stamp:
			stamp, res.HasMore = end, true
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return res, classify(err)
		}
	}
	if res.Cursor, err = time.Parse(stampLayout, stamp); err != nil {
		return res, fmt.Errorf("sqlite: bad cursor %q: %w", stamp, err)
	}
	for _, sh := range q.Shapes.Shapes {
		if err := pullShape(ctx, tx, sh, q.User, since, stamp, emit); err != nil {
			return res, err
		}
	}
	return res, nil
}

func pullShape(ctx context.Context, tx *sql.Tx, sh *shapes.Shape, user, since, stamp string, emit func(shapes.PulledRow) error) error {
	if sh.Share() != nil {
		return pullShared(ctx, tx, sh, user, since, stamp, emit)
	}
	return scanPulled(ctx, tx, sh, pullSQL(sh), false, []any{user, since, stamp}, emit)
}

// scanPulled runs a pull statement and emits its rows: updatedAt, then
// the shape's columns; for a shared shape, a flag before them and the
// author after them (see pullSharedSQL).
func scanPulled(ctx context.Context, tx *sql.Tx, sh *shapes.Shape, query string, shared bool, args []any, emit func(shapes.PulledRow) error) error {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return classify(err)
	}
	defer rows.Close()
	cols := sh.Columns()
	first := 1 // the column of updatedAt
	n := len(cols) + 1
	if shared {
		first, n = 2, len(cols)+3
	}
	raw := make([]sql.RawBytes, n)
	dest := make([]any, len(raw))
	for i := range raw {
		dest[i] = &raw[i]
	}
	// the author as a NullString: RawBytes reads the empty text of an
	// erased author (shapes.ErasedAuthor) as nil, which would make the
	// row the puller's own
	var author sql.NullString
	if shared {
		dest[n-1] = &author
	}
	vals := make([]shapes.Value, len(cols))
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return classify(err)
		}
		row := shapes.PulledRow{Shape: sh, UpdatedAt: shapes.ValueOf(shapes.KindTimestamp, raw[first-1], parseTime), Values: vals}
		if shared {
			row.User = shapes.Value{Null: !author.Valid, Text: []byte(author.String)}
			switch string(raw[0]) {
			case "p":
				row.Payload = raw[2]
			case "t":
				row.Tombstone = true
			}
		}
		if row.Payload == nil {
			for i, c := range cols {
				vals[i] = shapes.ValueOf(c.Kind, raw[first+i], parseTime)
			}
		}
		if err := emit(row); err != nil {
			return err
		}
	}
	return classify(rows.Err())
}

// visible returns the FROM and WHERE of the rows the user (?1) sees in sh
// stamped in (?2, ?3], the table aliased t: the user's rows, or for a
// shared shape the user's private rows and those of the scopes they are a
// member of.
func visible(sh *shapes.Shape) []string {
	q := shapes.QuoteIdent
	table, synced := shapes.QuoteTable(sh.Schema, sh.Table), "t."+q(sh.SyncedAt.Name)
	window := fmt.Sprintf("%[1]s > ?2 AND %[1]s <= ?3", synced)
	if sh.Share() == nil {
		return []string{fmt.Sprintf("%s AS t WHERE t.%s = ?1 AND %s", table, q(sh.User.Name), window)}
	}
	m := sh.Share().Members
	return []string{
		fmt.Sprintf("%s AS t WHERE t.%s = ?1 AND t.%s IS NULL AND %s", table, q(sh.User.Name), q(sh.ScopeColumn().Name), window),
		fmt.Sprintf("%s AS m JOIN %s AS t ON t.%s = m.%s WHERE m.%s = ?1 AND %s AND %s",
			shapes.QuoteTable(m.Schema, m.Table), table, q(sh.ScopeColumn().Name), q(m.Scope.Name), q(m.Member.Name), active(m, "m"), window),
	}
}

// active is the condition that membership row alias is not removed.
func active(m *shapes.Membership, alias string) string {
	if m.Tomb == nil {
		return "1"
	}
	return "NOT coalesce(" + alias + "." + shapes.QuoteIdent(m.Tomb.Name) + ", 0)"
}

// pullSharedSQL reads a shared shape's rows for the user ?1 in (?2, ?3]:
// flag, updatedAt, the columns, the author. The parts are those of the
// PostgreSQL driver's pull (see sharedBranches there, and
// shapes/pullshared.go): the visible rows, move-in (every row of a scope
// joined in the window), move-out (flag 't': the tombstone form of the
// rows of a scope the user left in the window that they held), and moves
// (flag 'p': the recorded tombstone, in the first column, of a row they
// held that left a scope of theirs for one they cannot see).
func pullSharedSQL(sh *shapes.Shape) string {
	s, _ := sh.Statement(shapes.StatementKey{Op: opPull}, func() (any, error) {
		q := shapes.QuoteIdent
		sc := sh.Share()
		m := sc.Members
		var cols, tombCols []string
		for j, c := range sh.Columns() {
			cols = append(cols, valueExpr(c))
			if j < len(sh.Keys) || j == sc.Scope {
				tombCols = append(tombCols, valueExpr(c))
			} else {
				tombCols = append(tombCols, "NULL")
			}
		}
		upd, user := timeExpr("t."+q(sh.UpdatedAt.Name)), "CAST(t."+q(sh.User.Name)+" AS TEXT)"
		var parts []string
		for _, src := range visible(sh) {
			parts = append(parts, fmt.Sprintf("SELECT NULL, %s, %s, %s FROM %s", upd, strings.Join(cols, ", "), user, src))
		}
		table, members := shapes.QuoteTable(sh.Schema, sh.Table), shapes.QuoteTable(m.Schema, m.Table)
		mstamp := "m." + q(m.Stamp.Name)
		parts = append(parts, fmt.Sprintf("SELECT NULL, %s, %s, %s FROM %s AS m JOIN %s AS t ON t.%s = m.%s WHERE m.%s = ?1 AND %s > ?2 AND %s <= ?3 AND %s AND t.%s <= ?2",
			upd, strings.Join(cols, ", "), user, members, table, q(sh.ScopeColumn().Name), q(m.Scope.Name), q(m.Member.Name), mstamp, mstamp,
			active(m, "m"), q(sh.SyncedAt.Name)))
		if sc.Tomb >= 0 {
			notMember := func(scope string) string {
				return fmt.Sprintf("NOT EXISTS (SELECT 1 FROM %s AS a WHERE a.%s = %s AND a.%s = ?1 AND %s)", members, q(m.Scope.Name), scope, q(m.Member.Name), active(m, "a"))
			}
			// the newest kept version of the row key from before stamp
			kept := func(col, shape, key, stamp string) string {
				return fmt.Sprintf(`(SELECT v.%s FROM "%s" AS v WHERE v.shape = %s AND v.row_key = %s AND v.stamp < %s ORDER BY v.stamp DESC LIMIT 1)`,
					col, shapes.VersionsTable, shape, key, stamp)
			}
			synced := "t." + q(sh.SyncedAt.Name)
			key, shape := rowKeyOf(sh, "t"), quoteLiteral(sh.Config.Key)
			parts = append(parts, fmt.Sprintf(`SELECT 't', CASE WHEN %[1]s < h.left_at THEN %[2]s ELSE coalesce(%[3]s, %[2]s) END, %[4]s,
	CASE WHEN %[1]s < h.left_at THEN %[5]s ELSE coalesce(%[6]s, %[5]s) END
FROM "%[7]s" AS h JOIN %[8]s AS t ON t.%[9]s = h.scope
WHERE h.members = %[10]s AND h.member = ?1 AND h.joined <= ?2 AND h.left_at > ?2 AND h.left_at <= ?3
	AND t.%[11]s <= ?2 AND %[12]s`,
				synced, upd, timeExpr(kept("updated_at", shape, key, "h.left_at")), strings.Join(tombCols, ", "),
				user, kept("user_id", shape, key, "h.left_at"), shapes.LeftTable, table, q(sh.ScopeColumn().Name),
				quoteLiteral(m.Table), q(sc.ScopedAt.Name), notMember("h.scope")))
			joined := "'0000-01-01T00:00:00.000000Z'"
			if m.Joined != nil {
				joined = "a." + q(m.Joined.Name)
			}
			periods := fmt.Sprintf(`(SELECT CAST(a.%[1]s AS TEXT) AS scope, %[2]s AS joined, '9999-12-31T23:59:59.999999Z' AS left_at FROM %[3]s AS a WHERE a.%[4]s = ?1 AND %[5]s
	UNION ALL SELECT h.scope, h.joined, h.left_at FROM "%[6]s" AS h WHERE h.members = %[7]s AND h.member = ?1)`,
				q(m.Scope.Name), joined, members, q(m.Member.Name), active(m, "a"), shapes.LeftTable, quoteLiteral(m.Table))
			member := "p.left_at > mv.stamp OR mv.row_key IS NULL"
			parts = append(parts, fmt.Sprintf(`SELECT 'p', CASE WHEN %[1]s THEN %[2]s ELSE coalesce(%[3]s, %[2]s) END, mv.payload%[4]s,
	CASE WHEN %[1]s THEN mv.user_id ELSE coalesce(%[5]s, mv.user_id) END
FROM "%[6]s" AS mv JOIN %[7]s AS p ON p.scope = mv.scope
WHERE mv.shape = %[8]s AND mv.stamp > ?2 AND (mv.stamp <= ?3 OR p.left_at <= ?3) AND coalesce(mv.from_scoped_at, '') <= ?2
	AND p.joined <= ?2 AND p.left_at > ?2
	AND NOT (mv.new_scope IS NULL AND mv.user_id = ?1) AND %[9]s`,
				member, timeExpr("mv.updated_at"), timeExpr(kept("updated_at", "mv.shape", "mv.row_key", "p.left_at")),
				strings.Repeat(", NULL", len(cols)-1), kept("user_id", "mv.shape", "mv.row_key", "p.left_at"),
				shapes.MovesTable, periods, shape, notMember("mv.new_scope")))
		}
		return strings.Join(parts, "\nUNION ALL\n"), nil
	})
	return s.(string)
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func pullShared(ctx context.Context, tx *sql.Tx, sh *shapes.Shape, user, since, stamp string, emit func(shapes.PulledRow) error) error {
	return scanPulled(ctx, tx, sh, pullSharedSQL(sh), true, []any{user, since, stamp}, emit)
}

// pullSQL reads a shape's rows stamped in (?, ?], updatedAt first, each
// column in the form shapes.Value asks for (valueExpr).
func pullSQL(sh *shapes.Shape) string {
	s, _ := sh.Statement(shapes.StatementKey{Op: opPull}, func() (any, error) {
		exprs := []string{timeExpr("t." + shapes.QuoteIdent(sh.UpdatedAt.Name))}
		for _, c := range sh.Columns() {
			exprs = append(exprs, valueExpr(c))
		}
		synced := "t." + shapes.QuoteIdent(sh.SyncedAt.Name)
		return fmt.Sprintf(`SELECT %s FROM %s AS t WHERE t.%s = ? AND %s > ? AND %s <= ?`,
			strings.Join(exprs, ", "), shapes.QuoteTable(sh.Schema, sh.Table), shapes.QuoteIdent(sh.User.Name), synced, synced), nil
	})
	return s.(string)
}

// timeExpr renders a stored timestamp, in any form SQLite's date functions
// read, as RFC 3339 UTC with milliseconds (parseTime reads it).
func timeExpr(col string) string {
	return `strftime('%Y-%m-%dT%H:%M:%fZ', ` + col + `)`
}

// valueExpr reads a column. SQLite does not enforce column types, so
// numbers and unknown types go through json_quote, which keeps any value
// valid JSON: a number stays one, and text stored in a numeric column
// becomes a JSON string.
func valueExpr(c shapes.Column) string {
	col := "t." + shapes.QuoteIdent(c.Name)
	switch c.Kind {
	case shapes.KindText:
		return "CAST(" + col + " AS TEXT)"
	case shapes.KindBool:
		return "CASE WHEN " + col + " IS NULL THEN NULL WHEN " + col + " THEN 'true' ELSE 'false' END"
	case shapes.KindTimestamp:
		return timeExpr(col)
	case shapes.KindJSON, shapes.KindArray:
		return "json(" + col + ")"
	}
	return "CASE WHEN " + col + " IS NULL THEN NULL ELSE json_quote(" + col + ") END"
}

// parseTime reads strftime's "2026-11-25T10:00:00.123Z", digit by digit:
// a pull reads one or more per row, and time.Parse costs several times as
// much.
func parseTime(v []byte) (time.Time, bool) {
	if len(v) != 24 || v[4] != '-' || v[7] != '-' || v[10] != 'T' || v[13] != ':' || v[16] != ':' || v[19] != '.' || v[23] != 'Z' {
		t, err := time.Parse("2006-01-02T15:04:05.000Z", string(v))
		return t, err == nil
	}
	n := func(b []byte) int {
		x := 0
		for _, c := range b {
			if c < '0' || c > '9' {
				return -1
			}
			x = x*10 + int(c-'0')
		}
		return x
	}
	year, month, day, hour, minute, sec, ms := n(v[0:4]), n(v[5:7]), n(v[8:10]), n(v[11:13]), n(v[14:16]), n(v[17:19]), n(v[20:23])
	if year < 0 || month < 1 || month > 12 || day < 1 || day > 31 || hour < 0 || hour > 23 || minute < 0 || minute > 59 || sec < 0 || sec > 60 || ms < 0 {
		return time.Time{}, false
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, ms*1e6, time.UTC), true
}

// Cursors reads the sync stamps of users.
func (s *driver) Cursors(ctx context.Context, users []string) (map[string]time.Time, error) {
	// the users as one JSON array: SQLite bounds the bound variables
	list, err := json.Marshal(users)
	if err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT user_id, stamp FROM "`+shapes.CursorTable+`" WHERE user_id IN (SELECT value FROM json_each(?))`, string(list))
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	out := make(map[string]time.Time, len(users))
	for rows.Next() {
		var user, stamp string
		if err := rows.Scan(&user, &stamp); err != nil {
			return nil, classify(err)
		}
		t, err := time.Parse(stampLayout, stamp)
		if err != nil {
			return nil, fmt.Errorf("sqlite: bad cursor %q: %w", stamp, err)
		}
		out[user] = t
	}
	return out, classify(rows.Err())
}
