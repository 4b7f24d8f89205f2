package shapes

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
)

// TableInfo is what a store reads from its catalog about one table.
type TableInfo struct {
	Schema  string
	Name    string
	Columns []ColumnInfo
	// Unique lists the column sets of the primary key and of every unique
	// constraint or index that can arbitrate an upsert.
	Unique [][]string
	// Indexes lists the column lists of every index, leading column first.
	Indexes [][]string
	// Stamps lists the markers of the stamping objects found on the table
	// (see stamp.go).
	Stamps []string
}

// ColumnInfo describes one column of a table.
type ColumnInfo struct {
	Name string
	// Type is the database's name for the column type, for messages.
	Type string
	// Cast is the type to cast a value to on its way in, without length or
	// precision, which the assignment to the column then enforces
	// (PostgreSQL).
	Cast string
	Kind Kind
	// Bits bounds KindInt values (16, 32 or 64) and KindFloat ones (32, 64).
	Bits int
	// MaxChars bounds the characters of a text value (varchar(n)): 0 for
	// none. A longer value is refused, where PostgreSQL would cut
	// trailing spaces on assignment and store another value than the one
	// the push decided on.
	MaxChars int
	// Exact reports that the column stores a text value exactly as it is
	// sent (PostgreSQL's text, varchar and uuid, SQLite's TEXT affinity
	// and uuid): a scope must be such a column, or an integer, so that the
	// value a push decides on is the value stored.
	Exact      bool
	NotNull    bool
	HasDefault bool
}

// Shape is a ShapeConfig checked against its table: every payload field
// resolved to a column.
type Shape struct {
	Config ShapeConfig
	// Schema and Table name the table as the database spells them.
	Schema, Table string
	// Keys are the key columns, Fields the data columns, in config order.
	Keys   []Column
	Fields []Column
	// The bookkeeping columns.
	User, UpdatedAt, SyncedAt Column
	// SyncIndex reports whether an index leads with (user, synced_at).
	SyncIndex bool
	// Stamped reports whether the table has current stamping objects, so
	// that writes made outside hypersync reach devices.
	Stamped bool
	// KeyLead is the key column that leads the key's unique index: a
	// condition on it can always use that index.
	KeyLead Column

	share   *Sharing       // nil for a per-user shape
	cols    []Column       // Keys then Fields
	byField map[string]int // payload field name -> index into cols
	stmts   statements
}

// Insertable reports whether a row carrying the columns of mask can be
// inserted: it has every NOT NULL column that has no default.
func (s *Shape) Insertable(m Mask) bool {
	for i, c := range s.cols {
		if c.NotNull && !c.HasDefault && !m.Has(i) {
			return false
		}
	}
	return true
}

// QualifiedName returns schema.table for messages.
func (s *Shape) QualifiedName() string {
	if s.Schema == "" {
		return s.Table
	}
	return s.Schema + "." + s.Table
}

// Columns returns the key columns followed by the data columns: the
// columns a payload carries, in the order rows and masks index them.
func (s *Shape) Columns() []Column { return s.cols }

// Statement returns the statement cached under key, building it on first
// use. Drivers keep their SQL, or prepared statements, here.
func (s *Shape) Statement(key StatementKey, build func() (any, error)) (any, error) {
	return s.stmts.get(key, build)
}

// ShapeSet is the resolved shapes of a store: taken as one value, so that a
// request never sees the shapes of one check with the order of another.
type ShapeSet struct {
	// Shapes lists the shapes in configuration order.
	Shapes []*Shape
	byKey  map[string]*Shape
	stmts  statements
}

// Get returns the shape with the given shapeKey, or nil.
func (s *ShapeSet) Get(key string) *Shape { return s.byKey[key] }

// Statement returns a statement over the whole set (a pull reads every
// shape in one), cached under key.
func (s *ShapeSet) Statement(key StatementKey, build func() (any, error)) (any, error) {
	return s.stmts.get(key, build)
}

// close releases what drivers cached on the set and its shapes.
func (s *ShapeSet) close() {
	s.stmts.close()
	for _, sh := range s.Shapes {
		sh.stmts.close()
	}
}

// Op names a kind of statement; each driver numbers its own.
type Op uint8

// StatementKey is what a statement is cached under.
type StatementKey struct {
	Op   Op
	Mask Mask
}

// statements caches a driver's statements. Values that are io.Closers,
// such as prepared statements, are closed with the cache.
type statements struct {
	mu sync.Mutex
	m  map[StatementKey]any
}

func (c *statements) get(key StatementKey, build func() (any, error)) (any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.m[key]; ok {
		return v, nil
	}
	v, err := build()
	if err != nil {
		return nil, err
	}
	if c.m == nil {
		c.m = map[StatementKey]any{}
	}
	c.m[key] = v
	return v, nil
}

func (c *statements) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.m {
		if cl, ok := v.(io.Closer); ok {
			_ = cl.Close()
		}
	}
	c.m = nil
}

// Resolve checks cfg against the table and builds the Shape. info is nil
// when the table does not exist.
func Resolve(cfg ShapeConfig, info *TableInfo) (*Shape, error) {
	cfg = cfg.WithDefaults()
	if info == nil {
		return nil, &SchemaError{Shape: cfg.Key, Table: cfg.Table, Problem: ProblemNoTable, Reason: "table does not exist"}
	}
	s := &Shape{Config: cfg, Schema: info.Schema, Table: info.Name}
	qname := s.QualifiedName()
	fail := func(p Problem, role Role, col, format string, args ...any) error {
		return &SchemaError{Shape: cfg.Key, Table: qname, Column: col, Problem: p, Role: role, Reason: fmt.Sprintf(format, args...)}
	}
	find := func(field string, role Role) (*ColumnInfo, error) {
		var exact *ColumnInfo
		var folded []*ColumnInfo
		for i := range info.Columns {
			c := &info.Columns[i]
			if c.Name == field {
				exact = c
			} else if strings.EqualFold(c.Name, field) {
				folded = append(folded, c)
			}
		}
		switch {
		case exact != nil:
			return exact, nil
		case len(folded) == 1:
			return folded[0], nil
		case len(folded) > 1:
			return nil, fail(ProblemAmbiguousColumn, role, field, "%s %q matches several columns when case is ignored; name one exactly", role, field)
		}
		return nil, fail(ProblemNoColumn, role, field, "no column for %s %q", role, field)
	}
	used := map[string]string{}
	take := func(field string, role Role) (Column, *ColumnInfo, error) {
		ci, err := find(field, role)
		if err != nil {
			return Column{}, nil, err
		}
		if other, dup := used[ci.Name]; dup {
			return Column{}, nil, fail(ProblemSharedColumn, role, ci.Name, "%s %q maps to the same column as %s", role, field, other)
		}
		used[ci.Name] = fmt.Sprintf("%q", field)
		return Column{Field: field, ColumnInfo: *ci}, ci, nil
	}

	var err error
	var ci *ColumnInfo
	if cfg.Share != nil {
		// a bookkeeping column, never a default field; resolveSharing
		// checks it
		if c, ok := findColumn(info, cfg.ScopedAtColumn); ok {
			used[c.Name] = "scoped_at_column"
		}
	}
	if s.User, ci, err = take(cfg.UserColumn, RoleUser); err != nil {
		return nil, err
	}
	if ci.Kind != KindText && ci.Kind != KindOther {
		return nil, fail(ProblemColumnType, RoleUser, ci.Name, "user_column must hold text, but its type is %s", ci.Type)
	}
	for _, bk := range []struct {
		dst  *Column
		name string
		role Role
	}{{&s.UpdatedAt, cfg.UpdatedAtColumn, RoleUpdatedAt}, {&s.SyncedAt, cfg.SyncedAtColumn, RoleSyncedAt}} {
		if *bk.dst, ci, err = take(bk.name, bk.role); err != nil {
			return nil, err
		}
		if ci.Kind != KindTimestamp {
			return nil, fail(ProblemColumnType, bk.role, ci.Name, "%s must be a timestamp, but its type is %s", bk.role, ci.Type)
		}
	}

	for _, f := range cfg.KeyFields {
		col, _, err := take(f, RoleKey)
		if err != nil {
			return nil, err
		}
		s.Keys = append(s.Keys, col)
	}
	keyCols := make([]string, len(s.Keys))
	for i, k := range s.Keys {
		keyCols[i] = k.Name
	}
	unique := findColumnSet(info.Unique, keyCols)
	if unique == nil {
		return nil, fail(ProblemNoUniqueKey, RoleKey, strings.Join(keyCols, ", "), "the key columns are not the table's primary key or a unique constraint")
	}
	for _, k := range s.Keys {
		if k.Name == unique[0] {
			s.KeyLead = k
		}
	}

	if len(cfg.Fields) > 0 {
		for _, f := range cfg.Fields {
			col, _, err := take(f, RoleField)
			if err != nil {
				return nil, err
			}
			s.Fields = append(s.Fields, col)
		}
	} else {
		for _, ci := range info.Columns {
			if _, taken := used[ci.Name]; taken {
				continue
			}
			col, _, err := take(ci.Name, RoleField)
			if err != nil {
				return nil, err
			}
			s.Fields = append(s.Fields, col)
		}
	}

	s.cols = append(append([]Column{}, s.Keys...), s.Fields...)
	s.byField = make(map[string]int, len(s.cols))
	for i, c := range s.cols {
		s.byField[c.Field] = i
	}
	for _, idx := range info.Indexes {
		if len(idx) >= 2 && idx[0] == s.User.Name && idx[1] == s.SyncedAt.Name {
			s.SyncIndex = true
		}
	}
	return s, nil
}

// findColumnSet returns the set that holds exactly the columns of want, in
// any order, or nil.
func findColumnSet(sets [][]string, want []string) []string {
	w := append([]string{}, want...)
	sort.Strings(w)
	for _, set := range sets {
		if len(set) != len(w) {
			continue
		}
		got := append([]string{}, set...)
		sort.Strings(got)
		same := true
		for i := range got {
			if got[i] != w[i] {
				same = false
				break
			}
		}
		if same {
			return set
		}
	}
	return nil
}
