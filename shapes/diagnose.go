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
	// Warnings are gaps that leave the shape working, such as a table
	// whose rows written outside hypersync do not reach devices.
	Warnings []string `json:"warnings,omitempty"`
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
	info, err := db.d.Inspect(ctx, schema, table)
	if err != nil {
		return d, err
	}
	if info == nil {
		d.Problems = []string{fmt.Sprintf("table %s does not exist", cfg.Table)}
		if len(cfg.Fields) == 0 {
			d.Problems = append(d.Problems, "list the fields (with field <name> <type> for their types) to get a CREATE TABLE")
		}
		d.Fix = CreateTableSQL(cfg, db.dialect)
		return d, nil
	}
	sh, err := Resolve(cfg, info)
	var se *SchemaError
	switch {
	case errors.As(err, &se):
		d.Table = se.Table
		d.Problems = []string{se.Error()}
		d.Fix = fixFor(cfg, se, QuoteTable(info.Schema, info.Name), db.dialect)
		return d, nil
	case err != nil:
		return d, err
	}
	d.Table = sh.QualifiedName()
	if !sh.SyncIndex {
		d.Problems = []string{fmt.Sprintf("no index leads with (%s, %s): pulls scan the table", sh.User.Name, sh.SyncedAt.Name)}
		d.Fix = []string{IndexSQL(sh)}
		return d, nil
	}
	d.OK = true
	if stamping, markers := db.dialect.Stamping(sh.StampTarget()); !stamped(info.Stamps, markers) {
		d.Warnings = []string{"no current stamping trigger: rows written outside hypersync (psql, a backend job, a migration) do not reach devices"}
		d.Fix = stamping
	}
	return d, nil
}

// fixFor suggests the statement that repairs a schema error, when there is
// a safe one.
func fixFor(cfg ShapeConfig, se *SchemaError, table string, dl *Dialect) []string {
	addColumn := func(name, typ string) []string {
		return []string{fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", table, QuoteIdent(name), typ)}
	}
	switch se.Problem {
	case ProblemNoColumn:
		switch se.Role {
		case RoleUser:
			return addColumn(cfg.UserColumn, dl.FieldTypes["text"])
		case RoleUpdatedAt:
			return addColumn(cfg.UpdatedAtColumn, dl.StampType)
		case RoleSyncedAt:
			return addColumn(cfg.SyncedAtColumn, dl.StampType)
		case RoleKey, RoleField:
			typ := dl.FieldTypes["text"]
			if t := cfg.FieldTypes[se.Column]; t != "" {
				typ = dl.FieldTypes[t]
			}
			return addColumn(se.Column, typ)
		}
	case ProblemNoUniqueKey:
		// se.Column lists the key columns as the table spells them
		names := strings.Split(se.Column, ", ")
		cols := make([]string, len(names))
		for i, k := range names {
			cols[i] = QuoteIdent(k)
		}
		_, bare, _ := SplitTableName(cfg.Table)
		return []string{fmt.Sprintf("CREATE UNIQUE INDEX %s ON %s (%s)", QuoteIdent(bare+"_"+strings.Join(names, "_")+"_key"), table, strings.Join(cols, ", "))}
	}
	return nil
}
