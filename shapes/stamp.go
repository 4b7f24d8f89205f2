package shapes

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// Writes from outside hypersync (a backend job, psql, a migration) reach
// devices through database objects that stamp them as a push would: a
// trigger that takes the owner's sync stamp from CursorTable, under the
// same lock and rule as a push, and writes it into the row. The owner's
// next pull then brings the row, with the completeness argument of the
// database package unchanged: to the pull, the outside write is one more
// push. The same objects keep last-write-wins working for such writers: an
// update that leaves updatedAt unchanged, or sets it no later than the
// stored one, gets greatest(database time, previous updatedAt + 1 ms), so
// that devices, which ignore a version not newer than theirs, apply it.
//
// hypersync's own writes stamp themselves and skip the trigger. Each
// database package writes the objects in its dialect (Dialect.Stamping);
// a marker in their text names the version and the columns they were made
// for, so that a check can tell current objects from missing or stale ones.

// StampTarget names what the stamping objects of one table touch.
type StampTarget struct {
	Schema, Table string
	// Keys are the key columns, as the table spells them.
	Keys []string
	// The bookkeeping columns.
	User, UpdatedAt, SyncedAt string
	// UpdatedAtLocal and SyncedAtLocal say the column is a timestamp
	// without time zone, which hypersync reads and writes as UTC.
	UpdatedAtLocal, SyncedAtLocal bool
	// Share is set for a shared shape's table and for a membership table:
	// then a write is stamped for every member of the row's scope, before
	// and after it, as a push into the scope is (see share.go).
	Share *StampShare
}

// StampShare is what the stamping objects of a shared table need.
type StampShare struct {
	// Shape is the shape key, for the moves table; empty for a membership
	// table that is no shape (then User and UpdatedAt are empty too).
	Shape string
	// Scope is the scope column, ScopeType its type (to cast a scope to),
	// ScopedAt the scoped-at column (empty for a plain membership table).
	Scope, ScopeType, ScopedAt string
	// KeyFields, ScopeField and TombField are the payload names of the
	// keys, scope and tombstone, for the tombstone a move records; Tomb is
	// the tombstone column, empty when there is none.
	KeyFields                   []string
	ScopeField, Tomb, TombField string
	// KeyTimes says, per key, that it holds a time ("tz", or "local" for a
	// timestamp without time zone, which holds UTC): a tombstone writes it
	// as pulls do.
	KeyTimes []string
	// The membership table: its scope, member and tombstone columns.
	MSchema, MTable, MScope, MMember, MTomb string
	// Membership: the table is the membership table, and Member its
	// member column: a write changes who sees the scope.
	Membership bool
	Member     string
}

// Marker is the text the stamping objects carry, naming their version and
// the columns they were made for (the table is the one they are on).
func (t StampTarget) Marker() string {
	parts := append([]string{t.User, t.UpdatedAt, t.SyncedAt, fmt.Sprint(t.UpdatedAtLocal, t.SyncedAtLocal)}, t.Keys...)
	if sh := t.Share; sh != nil {
		// what the objects do, not how the configuration spells the
		// membership table's schema or the scope's type
		c := *sh
		c.MSchema, c.ScopeType = "", ""
		parts = append(parts, fmt.Sprintf("%+v", c))
	}
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	// v2: the PostgreSQL objects notify live streams; v3: they notify
	// only while an instance listens, with the stamp, and shared tables
	// keep the history of memberships, the versions removed members saw
	// last, and the scopes rows were deleted from
	return "hypersync-stamp-v3-" + hex.EncodeToString(h[:6])
}

// keyTime is a key column's KeyTimes entry.
func keyTime(c ColumnInfo) string {
	switch {
	case c.Kind != KindTimestamp:
		return ""
	case strings.Contains(c.Type, "without time zone"):
		return "local"
	}
	return "tz"
}

// stampTargetOf is the target of a create_table shape.
func stampTargetOf(cfg ShapeConfig) StampTarget {
	cfg = cfg.WithDefaults()
	schema, table, _ := SplitTableName(cfg.Table)
	return StampTarget{Schema: schema, Table: table, Keys: cfg.KeyFields, User: cfg.UserColumn,
		UpdatedAt: cfg.UpdatedAtColumn, SyncedAt: cfg.SyncedAtColumn}
}

// StampTarget is the target of a resolved shape's table.
func (s *Shape) StampTarget() StampTarget {
	// format_type writes timestamp(3) without time zone for a precision
	local := func(c Column) bool { return strings.Contains(c.Type, "without time zone") }
	t := StampTarget{Schema: s.Schema, Table: s.Table, User: s.User.Name, UpdatedAt: s.UpdatedAt.Name, SyncedAt: s.SyncedAt.Name,
		UpdatedAtLocal: local(s.UpdatedAt), SyncedAtLocal: local(s.SyncedAt)}
	for _, k := range s.Keys {
		t.Keys = append(t.Keys, k.Name)
	}
	if sc := s.share; sc != nil {
		m := sc.Members
		sh := &StampShare{Shape: s.Config.Key, Scope: s.ScopeColumn().Name, ScopeType: s.ScopeColumn().Cast, ScopedAt: sc.ScopedAt.Name,
			ScopeField: s.ScopeColumn().Field, MSchema: m.Schema, MTable: m.Table, MScope: m.Scope.Name, MMember: m.Member.Name}
		for _, k := range s.Keys {
			sh.KeyFields = append(sh.KeyFields, k.Field)
			sh.KeyTimes = append(sh.KeyTimes, keyTime(k.ColumnInfo))
		}
		if c, ok := s.TombColumn(); ok {
			sh.Tomb, sh.TombField = c.Name, c.Field
		}
		if m.Tomb != nil {
			sh.MTomb = m.Tomb.Name
		}
		if s.IsMembership() {
			sh.Membership, sh.Member = true, m.Member.Name
		}
		t.Share = sh
	}
	return t
}

// StampTarget is the target of a membership table that is no shape: its writes stamp the membership stamp column, for everyone who
// can see the scope before or after.
func (m *Membership) StampTarget() StampTarget {
	sh := &StampShare{Scope: m.Scope.Name, ScopeType: m.Scope.Cast, MSchema: m.Schema, MTable: m.Table,
		MScope: m.Scope.Name, MMember: m.Member.Name, Membership: true, Member: m.Member.Name}
	if m.Tomb != nil {
		sh.MTomb = m.Tomb.Name
	}
	return StampTarget{Schema: m.Schema, Table: m.Table, SyncedAt: m.Stamp.Name,
		SyncedAtLocal: strings.Contains(m.Stamp.Type, "without time zone"), Share: sh}
}

// stamped reports whether every marker the dialect's objects carry for t
// is among those found on the table.
func stamped(found, want []string) bool {
	for _, w := range want {
		ok := false
		for _, f := range found {
			ok = ok || f == w
		}
		if !ok {
			return false
		}
	}
	return true
}
