package shapes

import (
	"fmt"
	"strings"
)

// Shared scopes.
//
// A shape configured with "share <field> via <table> [<member column>]"
// has scoped rows: a row's scope is the value of its share field, and the
// scope's members are the rows of the membership table whose column named
// like the field equals it. A membership row whose tombstone is true does
// not count. A row whose scope is null is private to its owner, as in a
// shape without share.
//
// How pulls stay complete is the drivers' business, with one rule they
// all follow (fan-out on write): a write locks, in user id order, the
// cursor of every user who can see the row before or after it, and takes
// one stamp above all their previous stamps (Tx.Stamp). The argument
// that makes a per-user cursor complete then holds for every member. The
// pushShared policy (pushshared.go) decides who those users are, under
// locks that keep membership still while it decides.

// Membership is a membership table as the shapes sharing through it see it.
type Membership struct {
	// Schema and Table name the table as the database spells them.
	Schema, Table string
	// Scope is the column holding the scope, Member the member's user id,
	// Stamp the sync stamp of the membership row: when it last changed.
	Scope, Member, Stamp ColumnInfo
	// Tomb is the column that removes a member when true; nil when the
	// table has none (then only a DELETE removes a member, and no
	// move-out is sent).
	Tomb *ColumnInfo
	// Shape is the membership table's shape, when it is one: then
	// memberships are written through push, by the rules of share.go.
	Shape *Shape
	// Stamps are the markers of the stamping objects found on a
	// membership table that is no shape.
	Stamps []string
	// Joined is the column holding the stamp at which the member last
	// joined (the membership shape's scoped_at column); nil for a table
	// that is no shape.
	Joined *ColumnInfo
	// Shared are the shapes shared through the table (the membership
	// shape among them): a scope with a row in any of them is in use.
	Shared []*Shape
}

// QualifiedName returns schema.table for messages.
func (m *Membership) QualifiedName() string {
	if m.Schema == "" {
		return m.Table
	}
	return m.Schema + "." + m.Table
}

// Sharing is how one shared shape's rows are scoped.
type Sharing struct {
	// Scope is the index, in Columns(), of the share field.
	Scope int
	// Tomb is the index of the tombstone field, -1 when the shape has none
	// (then move-out sends nothing for its rows).
	Tomb int
	// ScopedAt is the column holding the stamp at which the row entered
	// its current scope.
	ScopedAt Column
	// Members is the membership table.
	Members *Membership
	// ScopeIndex reports whether an index leads with (scope, sync stamp).
	ScopeIndex bool
}

// Share returns how the shape's rows are scoped; nil for a per-user shape.
func (s *Shape) Share() *Sharing { return s.share }

// Members returns the membership table of a shared shape; nil for a
// per-user shape.
func (s *Shape) Members() *Membership {
	if s.share == nil {
		return nil
	}
	return s.share.Members
}

// IsMembership reports whether the shape's table is a membership table:
// writing its rows adds and removes members.
func (s *Shape) IsMembership() bool { return s.share != nil && s.share.Members.Shape == s }

// ScopeColumn returns the share field's column.
func (s *Shape) ScopeColumn() Column { return s.cols[s.share.Scope] }

// ScopeColumnOf returns the column of the share field of a shape whose
// sharing did not resolve.
func (s *Shape) ScopeColumnOf() Column {
	if i, ok := s.byField[s.Config.Share.Field]; ok {
		return s.cols[i]
	}
	return Column{}
}

// TombColumn returns the tombstone field's column; ok is false when there
// is none.
func (s *Shape) TombColumn() (c Column, ok bool) {
	if s.share == nil || s.share.Tomb < 0 {
		return Column{}, false
	}
	return s.cols[s.share.Tomb], true
}

// memberColumn is the member column of shapes sharing through via: the one
// named in a share, or the membership shape's own, or userId.
func memberColumn(cfgs []ShapeConfig, via string) string {
	for _, c := range cfgs {
		if c.Share != nil && c.Share.Via == via && c.WithDefaults().Table == via && c.Share.Member != "" {
			return c.Share.Member
		}
	}
	for _, c := range cfgs {
		if c.Share != nil && c.Share.Via == via && c.Share.Member != "" {
			return c.Share.Member
		}
	}
	return DefaultUserColumn
}

// membershipShape returns the configuration of the shape whose table is
// via, or nil.
func membershipShape(cfgs []ShapeConfig, via string) *ShapeConfig {
	for i := range cfgs {
		if cfgs[i].WithDefaults().Table == via {
			return &cfgs[i]
		}
	}
	return nil
}

// validateSharing checks the shares of a configuration against each
// other: a membership table that is a shape must be shared through
// itself, by a key field, with the member a key field too, so that a
// membership row can never change scope or member; and the shapes sharing
// through one table must agree on its member column.
func validateSharing(cfgs []ShapeConfig) error {
	for _, c := range cfgs {
		if c.Share == nil {
			continue
		}
		member := memberColumn(cfgs, c.Share.Via)
		if c.Share.Member != "" && c.Share.Member != member {
			return fmt.Errorf("shape %q: share via %s names member column %q, but another share through that table names %q", c.Key, c.Share.Via, c.Share.Member, member)
		}
		m := membershipShape(cfgs, c.Share.Via)
		if m == nil {
			continue
		}
		if m.Share == nil || m.Share.Via != c.Share.Via {
			return fmt.Errorf("shape %q is the membership table of shape %q (share … via %s), so it must be shared through itself: share %s via %s %s", m.Key, c.Key, c.Share.Via, c.Share.Field, c.Share.Via, member)
		}
		if m.Share.Field != c.Share.Field {
			return fmt.Errorf("shape %q shares via %s by %q, but the membership shape %q holds its scope in %q; name the scope field alike in both", c.Key, c.Share.Via, c.Share.Field, m.Key, m.Share.Field)
		}
		if !containsFold(m.KeyFields, m.Share.Field) || !containsFold(m.KeyFields, member) {
			return fmt.Errorf("membership shape %q: its key must hold the scope field %q and the member column %q (key %s %s), so that a membership row can never change scope or member", m.Key, m.Share.Field, member, m.Share.Field, member)
		}
		if m.Tombstone == "" && !containsFold(m.Fields, DefaultTombstone) {
			return fmt.Errorf("membership shape %q needs a tombstone field to remove members: add the field %q, or name one with tombstone <field>", m.Key, DefaultTombstone)
		}
	}
	return nil
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// resolveSharing completes the shared shapes of a set once every shape is
// resolved: the scope, tombstone and scoped-at columns, and the membership
// table, read with inspect when it is not a shape's.
func resolveSharing(set *ShapeSet, cfgs []ShapeConfig, inspect func(schema, table string) (*TableInfo, error), infos map[*Shape]*TableInfo) error {
	byTable := map[string]*Membership{}
	for _, sh := range set.Shapes {
		cfg := sh.Config
		if cfg.Share == nil {
			continue
		}
		fail := func(p Problem, role Role, col, format string, args ...any) error {
			return &SchemaError{Shape: cfg.Key, Table: sh.QualifiedName(), Column: col, Problem: p, Role: role, Reason: fmt.Sprintf(format, args...)}
		}
		sc := &Sharing{Scope: -1, Tomb: -1}
		for i, c := range sh.cols {
			if c.Field == cfg.Share.Field {
				sc.Scope = i
			}
		}
		tomb := cfg.Tombstone
		if tomb == "" {
			if i, ok := sh.byField[DefaultTombstone]; ok && sh.cols[i].Kind == KindBool {
				tomb = DefaultTombstone
			}
		}
		if tomb != "" {
			i := sh.byField[tomb]
			if sh.cols[i].Kind != KindBool {
				return fail(ProblemColumnType, RoleTombstone, sh.cols[i].Name, "tombstone %q must be a boolean, but its type is %s", tomb, sh.cols[i].Type)
			}
			sc.Tomb = i
		}
		scoped, ok := findColumn(infos[sh], cfg.ScopedAtColumn)
		if !ok {
			return fail(ProblemNoColumn, RoleScopedAt, cfg.ScopedAtColumn, "no column for scoped_at_column %q: a shared shape keeps the stamp at which each row entered its scope, so that move-out reaches only those who saw it", cfg.ScopedAtColumn)
		}
		if scoped.Kind != KindTimestamp {
			return fail(ProblemColumnType, RoleScopedAt, scoped.Name, "scoped_at_column must be a timestamp, but its type is %s", scoped.Type)
		}
		sc.ScopedAt = Column{Field: cfg.ScopedAtColumn, ColumnInfo: *scoped}

		via := cfg.Share.Via
		m := byTable[via]
		if m == nil {
			var err error
			if m, err = resolveMembership(set, cfgs, via, cfg.Share.Field, inspect); err != nil {
				if se, ok := err.(*SchemaError); ok && se.Shape == "" {
					se.Shape = cfg.Key
				}
				return err
			}
			byTable[via] = m
		}
		scope := sh.cols[sc.Scope]
		if !scopeType(scope.ColumnInfo) {
			return fail(ProblemColumnType, RoleScope, scope.Name, "the scope column must be text, varchar, uuid or an integer, but its type is %s: %s", scope.Type, scopeTypeWhy)
		}
		if !scopeType(m.Scope) {
			return &SchemaError{Shape: cfg.Key, Table: m.QualifiedName(), Column: m.Scope.Name, Problem: ProblemColumnType, Role: RoleScope,
				Reason: fmt.Sprintf("the membership table's scope column must be text, varchar, uuid or an integer, but its type is %s: %s", m.Scope.Type, scopeTypeWhy)}
		}
		if scope.Kind != m.Scope.Kind || scope.IsUUID() != m.Scope.IsUUID() || scope.Kind != KindText && scope.Cast != m.Scope.Cast {
			return fail(ProblemColumnType, RoleScope, scope.Name, "the scope column is %s, but %s.%s is %s: they must both be text (text or varchar), both uuid, or one integer type, to be compared", scope.Type, m.QualifiedName(), m.Scope.Name, m.Scope.Type)
		}
		sc.Members = m
		m.Shared = append(m.Shared, sh)
		for _, idx := range infos[sh].Indexes {
			if len(idx) >= 2 && idx[0] == scope.Name && idx[1] == sh.SyncedAt.Name {
				sc.ScopeIndex = true
			}
		}
		sh.share = sc
	}
	named := map[string]*Membership{}
	for _, m := range byTable {
		if m.Shape != nil && m.Shape.share != nil {
			m.Joined = &m.Shape.share.ScopedAt.ColumnInfo
		}
		// hypersync's own tables and scope locks name a membership table
		// without its schema (a configuration may leave it out, and the
		// stamping triggers must take the locks pushes take)
		if o := named[m.Table]; o != nil {
			return &SchemaError{Table: m.QualifiedName(), Problem: ProblemColumnType, Role: RoleNone,
				Reason: fmt.Sprintf("the membership tables %s and %s have one name: hypersync tells membership tables apart by their name alone; rename one", o.QualifiedName(), m.QualifiedName())}
		}
		named[m.Table] = m
	}
	return nil
}

// scopeType reports whether a column may hold scopes: a push decides on a
// scope's value as it was sent, so the column must store that value as
// it is, and compare it by it alone. Numeric (1.0 = 1.00), padded
// (char(n)), case-blind (citext, or a collation that is not
// deterministic, or SQLite's NOCASE) types, domains (which may carry their
// own rules) and types a database parses its own way (date, name, whose
// text is cut at 63 bytes) do not; varchar(n) does, because a longer
// value is refused (Column.MaxChars) rather than cut.
func scopeType(c ColumnInfo) bool {
	return c.Kind == KindInt || c.Kind == KindText && c.Exact
}

const scopeTypeWhy = "the value a push decides on must be the value the database stores"

// resolveMembership finds the membership table via: a shape's table, or
// one the app's backend keeps.
func resolveMembership(set *ShapeSet, cfgs []ShapeConfig, via, field string, inspect func(schema, table string) (*TableInfo, error)) (*Membership, error) {
	memberCol := memberColumn(cfgs, via)
	for _, sh := range set.Shapes {
		if sh.Config.Table != via {
			continue
		}
		m := &Membership{Schema: sh.Schema, Table: sh.Table, Shape: sh, Stamp: sh.SyncedAt.ColumnInfo}
		for _, c := range sh.cols {
			switch {
			case strings.EqualFold(c.Field, field):
				m.Scope = c.ColumnInfo
			case strings.EqualFold(c.Field, memberCol):
				m.Member = c.ColumnInfo
			}
		}
		tomb := sh.Config.Tombstone
		if tomb == "" {
			tomb = DefaultTombstone
		}
		if i, ok := sh.byField[tomb]; ok && sh.cols[i].Kind == KindBool {
			m.Tomb = &sh.cols[i].ColumnInfo
		}
		if m.Tomb == nil {
			return nil, &SchemaError{Shape: sh.Config.Key, Table: sh.QualifiedName(), Column: tomb, Problem: ProblemColumnType, Role: RoleTombstone,
				Reason: fmt.Sprintf("the membership shape's tombstone %q must be a boolean field", tomb)}
		}
		return m, nil
	}
	schema, table, _ := SplitTableName(via)
	info, err := inspect(schema, table)
	if err != nil {
		return nil, fmt.Errorf("reading membership table %s: %w", via, err)
	}
	fail := func(p Problem, role Role, col, format string, args ...any) error {
		return &SchemaError{Table: via, Column: col, Problem: p, Role: role, Reason: fmt.Sprintf(format, args...)}
	}
	if info == nil {
		return nil, fail(ProblemNoMembership, RoleNone, "", "the membership table %s does not exist", via)
	}
	m := &Membership{Schema: info.Schema, Table: info.Name, Stamps: info.Stamps}
	for _, want := range []struct {
		dst  *ColumnInfo
		name string
		role Role
	}{{&m.Scope, field, RoleScope}, {&m.Member, memberCol, RoleMember}, {&m.Stamp, DefaultSyncedAtColumn, RoleMemberStamp}} {
		c, ok := findColumn(info, want.name)
		if !ok {
			return nil, fail(ProblemNoColumn, want.role, want.name, "membership table %s has no column %q (%s)", via, want.name, want.role)
		}
		*want.dst = *c
	}
	if m.Stamp.Kind != KindTimestamp {
		return nil, fail(ProblemColumnType, RoleMemberStamp, m.Stamp.Name, "the membership table's %s must be a timestamp, but its type is %s", DefaultSyncedAtColumn, m.Stamp.Type)
	}
	if c, ok := findColumn(info, DefaultTombstone); ok && c.Kind == KindBool {
		m.Tomb = c
	}
	return m, nil
}

// findColumn finds a column by exact name, else by its only
// case-insensitive match.
func findColumn(info *TableInfo, name string) (*ColumnInfo, bool) {
	var folded *ColumnInfo
	n := 0
	for i := range info.Columns {
		c := &info.Columns[i]
		if c.Name == name {
			return c, true
		}
		if strings.EqualFold(c.Name, name) {
			folded, n = c, n+1
		}
	}
	return folded, n == 1
}
