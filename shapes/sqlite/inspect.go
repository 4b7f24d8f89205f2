package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"strings"

	"github.com/hypersync/hypersync/shapes"
)

// Inspect reads a table's columns and the column lists of its indexes.
func (s *driver) Inspect(ctx context.Context, schema, table string) (*shapes.TableInfo, error) {
	master := "sqlite_schema"
	if schema != "" {
		master = shapes.QuoteIdent(schema) + ".sqlite_schema"
	}
	info := &shapes.TableInfo{Schema: schema}
	var tableSQL string
	err := s.r.QueryRowContext(ctx, `SELECT name, sql FROM `+master+` WHERE type = 'table' AND name = ? COLLATE NOCASE`, table).Scan(&info.Name, &tableSQL)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return nil, nil // an unknown schema
		}
		return nil, classify(err)
	}
	args := []any{info.Name}
	schemaArg := ""
	if schema != "" {
		schemaArg = ", ?"
		args = append(args, schema)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT name, type, "notnull", dflt_value IS NOT NULL, pk FROM pragma_table_info(?`+schemaArg+`) ORDER BY cid`, args...)
	if err != nil {
		return nil, classify(err)
	}
	var pk []string
	var pkPos []int
	for rows.Next() {
		var c shapes.ColumnInfo
		var pos int
		if err := rows.Scan(&c.Name, &c.Type, &c.NotNull, &c.HasDefault, &pos); err != nil {
			rows.Close()
			return nil, classify(err)
		}
		c.Kind, c.Bits = kindOf(c.Type)
		c.Exact = exactText(c.Type) && binaryCollation(tableSQL, c.Name)
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
		return nil, classify(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, cols string
		var unique, partial bool
		if err := rows.Scan(&name, &unique, &partial, &cols); err != nil {
			return nil, classify(err)
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
	if err := rows.Err(); err != nil {
		return nil, classify(err)
	}
	// the markers of the table's triggers (stamp.go)
	trows, err := s.r.QueryContext(ctx, `SELECT sql FROM `+master+` WHERE type = 'trigger' AND tbl_name = ? COLLATE NOCASE`, info.Name)
	if err != nil {
		return nil, classify(err)
	}
	defer trows.Close()
	for trows.Next() {
		var text string
		if err := trows.Scan(&text); err != nil {
			return nil, classify(err)
		}
		info.Stamps = append(info.Stamps, stampMarkers.FindAllString(text, -1)...)
	}
	return info, classify(trows.Err())
}

// binaryCollation reports whether the column name of the table whose
// CREATE TABLE is sql compares by its bytes: no COLLATE other than BINARY
// in its definition. A column COLLATE NOCASE would make "L" and "l" one
// scope to a join, and two to a push.
func binaryCollation(sql, name string) bool {
	open, end := strings.IndexByte(sql, '('), strings.LastIndexByte(sql, ')')
	if open < 0 || end < open {
		return true
	}
	for _, def := range splitTopLevel(sql[open+1 : end]) {
		fields := strings.Fields(def)
		if len(fields) == 0 || !strings.EqualFold(strings.Trim(fields[0], "\"`[]'"), name) {
			continue
		}
		for i := 1; i+1 < len(fields); i++ {
			if strings.EqualFold(fields[i], "COLLATE") {
				return strings.EqualFold(strings.Trim(fields[i+1], "\"`[]',"), "BINARY")
			}
		}
		return true
	}
	return true
}

// splitTopLevel splits s at the commas outside parentheses and quotes.
func splitTopLevel(s string) []string {
	var parts []string
	depth, start := 0, 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'' || c == '`' || c == '[':
			quote = c
			if c == '[' {
				quote = ']'
			}
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == ',' && depth == 0:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

func containsEmpty(list []string) bool {
	for _, s := range list {
		if s == "" {
			return true
		}
	}
	return false
}

// exactText reports that a column of the declared type stores a text
// value as it is: TEXT affinity (SQLite's rules: INT before CHAR, CLOB or
// TEXT), or UUID, whose values hypersync takes only in their canonical
// form, which no affinity changes. NUMERIC affinity would store "007" as 7.
func exactText(declared string) bool {
	t := strings.ToUpper(declared)
	has := func(s string) bool { return strings.Contains(t, s) }
	return !has("INT") && (has("CHAR") || has("CLOB") || has("TEXT")) || t == "UUID"
}

// kindOf maps a declared column type onto a Kind, in the spirit of
// SQLite's own affinity rules, with names for the types SQLite lacks.
func kindOf(declared string) (shapes.Kind, int) {
	t := strings.ToUpper(declared)
	has := func(s string) bool { return strings.Contains(t, s) }
	switch {
	case has("BOOL"):
		return shapes.KindBool, 0
	case has("ARRAY"):
		return shapes.KindArray, 0
	case has("JSON"):
		return shapes.KindJSON, 0
	case has("TIMESTAMP"), has("DATETIME"):
		return shapes.KindTimestamp, 0
	case has("INT2"), has("SMALLINT"):
		return shapes.KindInt, 16
	case has("INT4"):
		return shapes.KindInt, 32
	case has("INT"):
		return shapes.KindInt, 64
	case has("CHAR"), has("CLOB"), has("TEXT"), has("UUID"), t == "DATE":
		return shapes.KindText, 0
	case has("REAL"), has("FLOA"), has("DOUB"):
		return shapes.KindFloat, 64
	case has("NUMERIC"), has("DECIMAL"):
		return shapes.KindNumeric, 0
	}
	return shapes.KindOther, 0
}
