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

// MovesTable is the table, created by hypersync when a shape is shared,
// that records each row leaving a scope, so that the scope's members who
// cannot see where it went receive its tombstone once.
const MovesTable = "hypersync_moves"

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

// MovedAwaySQL is the condition, in either dialect, that the move mv
// (a row of MovesTable) reaches the member of the membership row m in the
// pull window (since, until], where active says m is not removed:
//   - a member who was one when the row left receives it with the move;
//   - so does one removed later, who was a member when it left;
//   - one removed before the row left, where it was in the scope before
//     the removal, receives it with the removal.
//
// Where the membership table records when the member joined, a member who
// joined after the row left receives nothing of it.
func MovedAwaySQL(m *Membership, since, until, active string) string {
	stamp := "m." + QuoteIdent(m.Stamp.Name)
	joined := ""
	if m.Joined != nil {
		joined = " AND mv.stamp > m." + QuoteIdent(m.Joined.Name)
	}
	window := func(col string) string { return fmt.Sprintf("%[1]s > %[2]s AND %[1]s <= %[3]s", col, since, until) }
	cond := fmt.Sprintf("(%s AND %s%s)", active, window("mv.stamp"), joined)
	if m.Tomb != nil {
		tomb := "m." + QuoteIdent(m.Tomb.Name)
		cond += fmt.Sprintf(" OR (%[1]s AND %[2]s AND mv.stamp < %[3]s%[4]s) OR (%[1]s AND %[5]s AND mv.stamp > %[3]s AND mv.from_scoped_at < %[3]s)",
			tomb, window("mv.stamp"), stamp, joined, window(stamp))
	}
	return cond
}
