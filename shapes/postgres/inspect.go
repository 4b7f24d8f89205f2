package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/hypersync/hypersync/shapes"
)

// Inspect reads a table's columns and the column lists of its indexes from
// the catalog.
func (p *driver) Inspect(ctx context.Context, schema, table string) (*shapes.TableInfo, error) {
	name := shapes.QuoteTable(schema, table)
	var oid uint32
	info := &shapes.TableInfo{}
	err := p.pool.QueryRow(ctx, `SELECT c.oid, n.nspname, c.relname FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')`, name).Scan(&oid, &info.Schema, &info.Name)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, pgError(err)
	}
	// a varchar(n) of a domain has its n on the domain's type
	rows, err := p.pool.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), format_type(a.atttypid, NULL), b.typname, b.typcategory,
			a.attnotnull, a.atthasdef OR a.attidentity <> '', a.attgenerated <> '',
			CASE WHEN b.typname IN ('varchar', 'bpchar') THEN greatest(CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END - 4, 0) ELSE 0 END,
			t.typtype <> 'd' AND b.typname IN ('text', 'varchar', 'uuid')
				AND coalesce((SELECT co.collisdeterministic FROM pg_collation AS co WHERE co.oid = a.attcollation), true)
		FROM pg_attribute a
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, pgError(err)
	}
	for rows.Next() {
		var c shapes.ColumnInfo
		var typname, category string
		var generated bool
		var maxChars int32
		if err := rows.Scan(&c.Name, &c.Type, &c.Cast, &typname, &category, &c.NotNull, &c.HasDefault, &generated, &maxChars, &c.Exact); err != nil {
			rows.Close()
			return nil, pgError(err)
		}
		if generated {
			continue // computed by the database: never synced from clients
		}
		c.Kind, c.Bits = kindOf(typname, category)
		c.MaxChars = int(maxChars)
		info.Columns = append(info.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, pgError(err)
	}
	rows, err = p.pool.Query(ctx, `SELECT i.indisunique AND i.indimmediate AND i.indexprs IS NULL AND i.indpred IS NULL,
			array_agg(a.attname ORDER BY k.ord)
		FROM pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1 AND i.indpred IS NULL
		GROUP BY i.indexrelid, i.indisunique, i.indimmediate, i.indexprs, i.indpred`, oid)
	if err != nil {
		return nil, pgError(err)
	}
	for rows.Next() {
		var unique bool
		var cols []string
		if err := rows.Scan(&unique, &cols); err != nil {
			rows.Close()
			return nil, pgError(err)
		}
		info.Indexes = append(info.Indexes, cols)
		if unique {
			info.Unique = append(info.Unique, cols)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, pgError(err)
	}
	// the markers of enabled trigger functions on the table (stamp.go)
	rows, err = p.pool.Query(ctx, `SELECT p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
		WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND t.tgenabled <> 'D'`, oid)
	if err != nil {
		return nil, pgError(err)
	}
	for rows.Next() {
		var src string
		if err := rows.Scan(&src); err != nil {
			rows.Close()
			return nil, pgError(err)
		}
		info.Stamps = append(info.Stamps, stampMarker.FindAllString(src, -1)...)
	}
	return info, pgError(rows.Err())
}

// kindOf maps a column's base type onto how its values travel as JSON.
func kindOf(typname, category string) (shapes.Kind, int) {
	switch typname {
	case "bool":
		return shapes.KindBool, 0
	case "int2":
		return shapes.KindInt, 16
	case "int4":
		return shapes.KindInt, 32
	case "int8":
		return shapes.KindInt, 64
	case "float4":
		return shapes.KindFloat, 32
	case "float8":
		return shapes.KindFloat, 64
	case "numeric":
		return shapes.KindNumeric, 0
	case "timestamptz", "timestamp":
		return shapes.KindTimestamp, 0
	case "json", "jsonb":
		return shapes.KindJSON, 0
	case "text", "varchar", "bpchar", "name", "citext", "uuid", "date", "time", "timetz", "interval", "inet", "cidr", "macaddr":
		return shapes.KindText, 0
	}
	if category == "A" {
		return shapes.KindArray, 0
	}
	return shapes.KindOther, 0
}
