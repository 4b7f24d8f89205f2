package shapes

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Diagnosis is what is right or wrong with one shape's table, and the SQL
// that would fix it.
type Diagnosis struct {
	Shape    string   `json:"shape"`
	Table    string   `json:"table"`
	OK       bool     `json:"ok"`
	Problems []string `json:"problems,omitempty"`
	// Fix holds statements that would repair the table. hypersync never
	// runs them: an existing table is never altered.
	Fix []string `json:"fix,omitempty"`
}

// Diagnose checks cfg against its table, without changing anything. The
// error is set only when the database cannot be read.
func (db *Database) Diagnose(ctx context.Context, cfg ShapeConfig) (Diagnosis, error) {
	cfg = cfg.WithDefaults()
	d := Diagnosis{Shape: cfg.Key, Table: cfg.Table}
	if err := cfg.Validate(); err != nil {
		d.Problems = []string{err.Error()}
		return d, nil
	}
	schema, table, _ := SplitTableName(cfg.Table)
	info, err := db.d.inspect(ctx, schema, table)
	if err != nil {
		return d, err
	}
	types, stampType := db.d.createTypes()
	if info == nil {
		d.Problems = []string{fmt.Sprintf("table %s does not exist", cfg.Table)}
		if len(cfg.Fields) == 0 {
			d.Problems = append(d.Problems, "list the fields (with field <name> <type> for their types) to get a CREATE TABLE")
		}
		d.Fix = CreateTableSQL(cfg, types, stampType)
		return d, nil
	}
	sh, err := resolveShape(cfg, info)
	var se *SchemaError
	switch {
	case errors.As(err, &se):
		d.Table = se.Table
		d.Problems = []string{se.Error()}
		d.Fix = fixFor(cfg, se, quoteTable(info.Schema, info.Name), types, stampType)
		return d, nil
	case err != nil:
		return d, err
	}
	d.Table = sh.QualifiedName()
	if !sh.SyncIndex {
		d.Problems = []string{fmt.Sprintf("no index leads with (%s, %s): pulls scan the table", sh.User.Name, sh.SyncedAt.Name)}
		d.Fix = []string{strings.TrimSuffix(db.IndexSQL(sh), ";")}
		return d, nil
	}
	d.OK = true
	return d, nil
}

// fixFor suggests the statement that repairs a schema error, when there is
// a safe one.
func fixFor(cfg ShapeConfig, se *SchemaError, table string, types map[string]string, stampType string) []string {
	addColumn := func(name, typ string) []string {
		return []string{fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", table, quoteIdent(name), typ)}
	}
	switch {
	case strings.HasPrefix(se.Reason, "no column for user_column"):
		return addColumn(cfg.UserColumn, types["text"])
	case strings.HasPrefix(se.Reason, "no column for updated_at_column"):
		return addColumn(cfg.UpdatedAtColumn, stampType)
	case strings.HasPrefix(se.Reason, "no column for synced_at_column"):
		return addColumn(cfg.SyncedAtColumn, stampType)
	case strings.HasPrefix(se.Reason, "no column for field"), strings.HasPrefix(se.Reason, "no column for key field"):
		typ := types["text"]
		if t := cfg.FieldTypes[se.Column]; t != "" {
			typ = types[t]
		}
		return addColumn(se.Column, typ)
	case strings.HasPrefix(se.Reason, "the key columns are not"):
		// se.Column lists the key columns as the table spells them
		names := strings.Split(se.Column, ", ")
		cols := make([]string, len(names))
		for i, k := range names {
			cols[i] = quoteIdent(k)
		}
		_, bare, _ := SplitTableName(cfg.Table)
		return []string{fmt.Sprintf("CREATE UNIQUE INDEX %s ON %s (%s)", quoteIdent(bare+"_"+strings.Join(names, "_")+"_key"), table, strings.Join(cols, ", "))}
	}
	return nil
}

// SchemaSQL renders the CREATE TABLE and CREATE INDEX statements of a shape
// for a kind of database ("postgres" or "sqlite"), without a database.
func SchemaSQL(kind string, cfg ShapeConfig) []string {
	var d dialect = &postgres{}
	if kind == "sqlite" {
		d = &sqliteDB{}
	}
	types, stampType := d.createTypes()
	return CreateTableSQL(cfg, types, stampType)
}

// KindOf names the kind of database a DSN selects.
func KindOf(dsn string) string {
	if strings.HasPrefix(dsn, "sqlite:") {
		return "sqlite"
	}
	return "postgres"
}
