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

// Diagnose checks cfg against its table, without changing anything. all
// is the whole configuration, which a shared shape's membership table may
// be part of. The error is set only when the database cannot be read.
func (db *Database) Diagnose(ctx context.Context, cfg ShapeConfig, all ...ShapeConfig) (Diagnosis, error) {
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
	var members *Membership
	if cfg.Share != nil {
		problem, fix, err := db.diagnoseShare(ctx, sh, info, all)
		if err != nil {
			return d, err
		}
		if problem != "" {
			d.Problems, d.Fix = []string{problem}, fix
			return d, nil
		}
		members = sh.share.Members
	}
	d.OK = true
	if stamping, markers := db.dialect.Stamping(sh.StampTarget()); !stamped(info.Stamps, markers) {
		d.Warnings = []string{"no current stamping trigger: rows written outside hypersync (psql, a backend job, a migration) do not reach devices"}
		d.Fix = stamping
	}
	if members != nil && members.Shape == nil {
		if stamping, markers := db.dialect.Stamping(members.StampTarget()); !stamped(members.Stamps, markers) {
			d.Warnings = append(d.Warnings, fmt.Sprintf("the membership table %s has no current stamping trigger: memberships the app's backend writes do not reach devices in order", members.QualifiedName()))
			d.Fix = append(d.Fix, stamping...)
		}
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

// diagnoseShare checks a shared shape's scoping: its scoped-at column, its
// membership table, and the index its pulls read through.
func (db *Database) diagnoseShare(ctx context.Context, sh *Shape, info *TableInfo, all []ShapeConfig) (problem string, fix []string, err error) {
	cfg := sh.Config
	if len(all) == 0 {
		all = []ShapeConfig{cfg}
	}
	set := &ShapeSet{Shapes: []*Shape{sh}}
	infos := map[*Shape]*TableInfo{sh: info}
	if m := membershipShape(all, cfg.Share.Via); m != nil && m.Key != cfg.Key {
		mc := m.WithDefaults()
		schema, table, _ := SplitTableName(mc.Table)
		mi, err := db.d.Inspect(ctx, schema, table)
		if err != nil {
			return "", nil, err
		}
		msh, err := Resolve(mc, mi)
		if err != nil {
			return fmt.Sprintf("membership shape %q: %v", m.Key, err), nil, nil
		}
		set.Shapes = append(set.Shapes, msh)
		infos[msh] = mi
	}
	inspect := func(schema, table string) (*TableInfo, error) { return db.d.Inspect(ctx, schema, table) }
	err = resolveSharing(set, all, inspect, infos)
	var se *SchemaError
	if errors.As(err, &se) {
		return se.Error(), shareFix(sh, se, all, db.dialect), nil
	}
	if err != nil {
		return "", nil, err
	}
	if !sh.share.ScopeIndex {
		return fmt.Sprintf("no index leads with (%s, %s): pulls of shared rows scan the table", sh.ScopeColumn().Name, sh.SyncedAt.Name),
			[]string{ScopeIndexSQL(sh)}, nil
	}
	return "", nil, nil
}

// shareFix suggests the statements that repair a sharing problem.
func shareFix(sh *Shape, se *SchemaError, all []ShapeConfig, dl *Dialect) []string {
	table := QuoteTable(sh.Schema, sh.Table)
	switch {
	case se.Problem == ProblemNoColumn && se.Role == RoleScopedAt:
		// existing rows entered their scope no later than their last write
		return []string{
			fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", table, QuoteIdent(sh.Config.ScopedAtColumn), dl.StampType),
			fmt.Sprintf("UPDATE %s SET %s = %s", table, QuoteIdent(sh.Config.ScopedAtColumn), QuoteIdent(sh.SyncedAt.Name)),
		}
	case se.Problem == ProblemNoMembership:
		schema, name, _ := SplitTableName(sh.Config.Share.Via)
		member := memberColumn(all, sh.Config.Share.Via)
		scope := sh.ScopeColumnOf()
		return []string{
			fmt.Sprintf("CREATE TABLE %s (\n\t%s %s NOT NULL,\n\t%s %s NOT NULL,\n\t%s %s,\n\t%s %s NOT NULL%s,\n\tPRIMARY KEY (%s, %s)\n)",
				QuoteTable(schema, name), QuoteIdent(scope.Name), scope.Type, QuoteIdent(member), dl.FieldTypes["text"],
				QuoteIdent(DefaultTombstone), dl.FieldTypes["boolean"], QuoteIdent(DefaultSyncedAtColumn), dl.StampType, dl.StampDefault,
				QuoteIdent(scope.Name), QuoteIdent(member)),
			syncIndexSQL(schema, name, member, DefaultSyncedAtColumn, false),
		}
	case se.Problem == ProblemColumnType && se.Role == RoleScope && dl.Name == "postgres":
		// text holds every scope as it is sent (SQLite cannot change a
		// column's type: a new table is the fix there)
		schema, name, _ := SplitTableName(se.Table)
		return []string{fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s TYPE text", QuoteTable(schema, name), QuoteIdent(se.Column))}
	case se.Problem == ProblemNoColumn && se.Role == RoleMemberStamp:
		schema, name, _ := SplitTableName(sh.Config.Share.Via)
		return []string{fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", QuoteTable(schema, name), QuoteIdent(DefaultSyncedAtColumn), dl.StampType)}
	}
	return nil
}
