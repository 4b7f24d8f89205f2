package shapes

import (
	"fmt"
	"strings"
)

// QuoteIdent quotes an identifier. PostgreSQL and SQLite quote alike.
// Identifiers come from the configuration and the catalog, never from
// requests, and the configuration refuses NUL bytes in them.
func QuoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// QuoteTable quotes an optionally schema-qualified table name.
func QuoteTable(schema, table string) string {
	if schema == "" {
		return QuoteIdent(table)
	}
	return QuoteIdent(schema) + "." + QuoteIdent(table)
}

// CursorTable is the table, created by hypersync, that holds each user's
// latest sync stamp. Its row per user is the lock that orders that user's
// pushes, and the watermark a pull reads.
const CursorTable = "hypersync_cursors"

// The tables hypersync creates when a shape is shared (Dialect.SharingDDL).
const (
	// MovesTable records each row leaving a scope, so that the scope's
	// members who cannot see where it went receive its tombstone once.
	MovesTable = "hypersync_moves"
	// LeftTable records each member removed from a scope: when they had
	// joined it and when they left, so that a pull knows what a device
	// of theirs held (pullshared.go).
	LeftTable = "hypersync_left"
	// VersionsTable keeps the versions of shared rows written over after
	// a member was removed from their scope: the version a removed member
	// saw last, whose updatedAt and author their move-out carries.
	VersionsTable = "hypersync_versions"
	// ScopesTable records the scopes that rows or memberships were
	// deleted from: such a scope can never be founded again.
	ScopesTable = "hypersync_scopes"
)

// syncIndexSQL is the statement that creates the index pulls read through:
// (user, sync stamp), which finds one user's rows written after a stamp.
func syncIndexSQL(schema, table, user, synced string, ifNotExists bool) string {
	cond := ""
	if ifNotExists {
		cond = "IF NOT EXISTS "
	}
	return fmt.Sprintf("CREATE INDEX %s%s ON %s (%s, %s)", cond, QuoteIdent(table+"_"+user+"_"+synced+"_idx"),
		QuoteTable(schema, table), QuoteIdent(user), QuoteIdent(synced))
}

// IndexSQL returns the statement that creates the index a shape's pulls
// need.
func IndexSQL(sh *Shape) string {
	return syncIndexSQL(sh.Schema, sh.Table, sh.User.Name, sh.SyncedAt.Name, false)
}

// ScopeIndexSQL returns the statement that creates the index pulls of a
// shared shape read through: (scope, sync stamp).
func ScopeIndexSQL(sh *Shape) string {
	return syncIndexSQL(sh.Schema, sh.Table, sh.ScopeColumn().Name, sh.SyncedAt.Name, false)
}

// CreateTableSQL renders the CREATE TABLE and CREATE INDEX statements of a
// create_table shape in a dialect.
func CreateTableSQL(cfg ShapeConfig, d *Dialect) []string {
	cfg = cfg.WithDefaults()
	schema, table, _ := SplitTableName(cfg.Table)
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s (\n", QuoteTable(schema, table))
	col := func(name, typ, extra string) {
		fmt.Fprintf(&b, "\t%s %s%s,\n", QuoteIdent(name), typ, extra)
	}
	typeOf := func(f string) string {
		if t := cfg.FieldTypes[f]; t != "" {
			return d.FieldTypes[t]
		}
		return d.FieldTypes["text"]
	}
	for _, f := range cfg.KeyFields {
		col(f, typeOf(f), " NOT NULL")
	}
	for _, f := range cfg.Fields {
		col(f, typeOf(f), "")
	}
	col(cfg.UserColumn, d.FieldTypes["text"], " NOT NULL")
	col(cfg.UpdatedAtColumn, d.StampType, " NOT NULL"+d.StampDefault)
	col(cfg.SyncedAtColumn, d.StampType, " NOT NULL"+d.StampDefault)
	if cfg.Share != nil {
		col(cfg.ScopedAtColumn, d.StampType, " NOT NULL"+d.StampDefault)
	}
	keys := make([]string, len(cfg.KeyFields))
	for i, k := range cfg.KeyFields {
		keys[i] = QuoteIdent(k)
	}
	fmt.Fprintf(&b, "\tPRIMARY KEY (%s)\n)", strings.Join(keys, ", "))
	stmts := []string{b.String(), syncIndexSQL(schema, table, cfg.UserColumn, cfg.SyncedAtColumn, true)}
	if cfg.Share != nil {
		stmts = append(stmts, syncIndexSQL(schema, table, cfg.Share.Field, cfg.SyncedAtColumn, true))
		if cfg.Share.Via == cfg.Table && cfg.Share.Member != "" {
			// a membership shape: a pull finds a user's memberships by member
			stmts = append(stmts, syncIndexSQL(schema, table, cfg.Share.Member, cfg.SyncedAtColumn, true))
		}
	}
	if cfg.Share != nil {
		// the stamping objects of a shared table need its membership
		// table: the store creates them once it has resolved it
		return stmts
	}
	stamping, _ := d.Stamping(stampTargetOf(cfg))
	return append(stmts, stamping...)
}

// SchemaSQL renders the CREATE TABLE and CREATE INDEX statements of a shape
// for a kind of database ("postgres" or "sqlite"), without a database.
// all is the whole configuration, which a shared shape's stamping objects
// need (its membership table).
func SchemaSQL(kind string, cfg ShapeConfig, all ...ShapeConfig) []string {
	d := LookupDialect(kind)
	if d == nil {
		return nil
	}
	stmts := CreateTableSQL(cfg, d)
	if cfg.Share != nil {
		if len(all) == 0 {
			all = []ShapeConfig{cfg}
		}
		stamping, _ := d.Stamping(sharedStampTargetOf(cfg, all, d))
		stmts = append(stmts, stamping...)
	}
	return stmts
}

// sharedStampTargetOf is the target of a shared create_table shape, from
// the configuration alone: the columns are named as the fields are, and a
// membership table that is no shape as hypersync's check asks.
func sharedStampTargetOf(cfg ShapeConfig, all []ShapeConfig, d *Dialect) StampTarget {
	t := stampTargetOf(cfg)
	cfg = cfg.WithDefaults()
	typeOf := func(f string) string {
		if ft := cfg.FieldTypes[f]; ft != "" {
			return d.FieldTypes[ft]
		}
		return d.FieldTypes["text"]
	}
	via := cfg.Share.Via
	schema, table, _ := SplitTableName(via)
	member := memberColumn(all, via)
	sh := &StampShare{Shape: cfg.Key, Scope: cfg.Share.Field, ScopeType: typeOf(cfg.Share.Field), ScopedAt: cfg.ScopedAtColumn,
		KeyFields: cfg.KeyFields, ScopeField: cfg.Share.Field, MSchema: schema, MTable: table, MScope: cfg.Share.Field, MMember: member, MTomb: DefaultTombstone}
	for _, k := range cfg.KeyFields {
		kt := ""
		if cfg.FieldTypes[k] == "timestamp" {
			kt = "tz" // create_table makes timestamptz, and SQLite TIMESTAMP text
		}
		sh.KeyTimes = append(sh.KeyTimes, kt)
	}
	tomb := cfg.Tombstone
	if tomb == "" && cfg.FieldTypes[DefaultTombstone] == "boolean" {
		tomb = DefaultTombstone
	}
	if tomb != "" {
		sh.Tomb, sh.TombField = tomb, tomb
	}
	if m := membershipShape(all, via); m != nil && m.Tombstone != "" {
		sh.MTomb = m.Tombstone
	}
	if cfg.Table == via {
		sh.Membership, sh.Member = true, member
	}
	t.Share = sh
	return t
}
