package sqlite

import (
	"context"
	"database/sql"
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
	var stamp string
	err = tx.QueryRowContext(ctx, `SELECT stamp FROM "`+shapes.CursorTable+`" WHERE user_id = ?`, q.User).Scan(&stamp)
	if errors.Is(err, sql.ErrNoRows) {
		return res, nil // the user never pushed: nothing to pull
	}
	if err != nil {
		return res, classify(err)
	}
	since := q.Since.UTC().Format(stampLayout)
	if q.Limit > 0 {
		// The page ends at the stamp of the limit-th row, and holds every
		// row of that stamp.
		var parts []string
		var args []any
		for _, sh := range q.Shapes.Shapes {
			synced := shapes.QuoteIdent(sh.SyncedAt.Name)
			// CAST: the driver would turn a TIMESTAMP column into a time.Time
			parts = append(parts, fmt.Sprintf(`SELECT CAST(%s AS TEXT) AS s FROM %s WHERE %s = ? AND %s > ? AND %s <= ?`,
				synced, shapes.QuoteTable(sh.Schema, sh.Table), shapes.QuoteIdent(sh.User.Name), synced, synced))
			args = append(args, q.User, since, stamp)
		}
		var end string
		err := tx.QueryRowContext(ctx, `SELECT s FROM (`+strings.Join(parts, " UNION ALL ")+`) ORDER BY s LIMIT 1 OFFSET ?`,
			append(args, q.Limit-1)...).Scan(&end)
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
	rows, err := tx.QueryContext(ctx, pullSQL(sh), user, since, stamp)
	if err != nil {
		return classify(err)
	}
	defer rows.Close()
	cols := sh.Columns()
	raw := make([]sql.RawBytes, len(cols)+1)
	dest := make([]any, len(raw))
	for i := range raw {
		dest[i] = &raw[i]
	}
	vals := make([]shapes.Value, len(cols))
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return classify(err)
		}
		for i, c := range cols {
			vals[i] = shapes.ValueOf(c.Kind, raw[i+1], parseTime)
		}
		if err := emit(shapes.PulledRow{Shape: sh, Values: vals, UpdatedAt: shapes.ValueOf(shapes.KindTimestamp, raw[0], parseTime)}); err != nil {
			return err
		}
	}
	return classify(rows.Err())
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
