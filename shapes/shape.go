package shapes

import (
	"encoding/json"
	"fmt"
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
}

// ColumnInfo describes one column of a table.
type ColumnInfo struct {
	Name string
	Type string
	// Cast is the type to cast a value to on its way in, without length or
	// precision, which the assignment to the column then enforces.
	Cast       string
	Kind       Kind
	Bits       int
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
	// KeyLead is the key column that leads the key's unique index: a
	// condition on it can always use that index.
	KeyLead Column

	cols    []Column       // Keys then Fields
	byField map[string]int // payload field name -> index into cols
	hasDef  []bool         // per col: the column has a default
	sql     sync.Map       // generated statements, by column mask
	quoted  []byte         // the shape key as a JSON string
	// fieldKeys holds `"field":` per column, for writing payloads.
	fieldKeys [][]byte
}

// QuotedKey returns the shape key as a JSON string.
func (s *Shape) QuotedKey() []byte { return s.quoted }

// insertable reports whether a row carrying the columns of mask can be
// inserted: it has every NOT NULL column that has no default.
func (s *Shape) insertable(mask string) bool {
	for i, c := range s.cols {
		if c.NotNull && !s.hasDef[i] && mask[i] != '1' {
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

// Columns returns the key columns followed by the data columns.
func (s *Shape) Columns() []Column { return s.cols }

// SchemaError is a mismatch between a shape's configuration and its table.
type SchemaError struct {
	Shape  string
	Table  string
	Column string
	Reason string
}

func (e *SchemaError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "shape %q, table %s", e.Shape, e.Table)
	if e.Column != "" {
		fmt.Fprintf(&b, ", column %s", e.Column)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	return b.String()
}

// resolveShape checks cfg against the table and builds the Shape.
// info is nil when the table does not exist.
func resolveShape(cfg ShapeConfig, info *TableInfo) (*Shape, error) {
	cfg = cfg.WithDefaults()
	if info == nil {
		return nil, &SchemaError{Shape: cfg.Key, Table: cfg.Table, Reason: "table does not exist"}
	}
	s := &Shape{Config: cfg, Schema: info.Schema, Table: info.Name}
	s.quoted, _ = json.Marshal(cfg.Key)
	qname := s.QualifiedName()
	fail := func(col, format string, args ...any) error {
		return &SchemaError{Shape: cfg.Key, Table: qname, Column: col, Reason: fmt.Sprintf(format, args...)}
	}
	find := func(field, role string) (*ColumnInfo, error) {
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
			return nil, fail(field, "%s %q matches several columns when case is ignored; name one exactly", role, field)
		}
		return nil, fail(field, "no column for %s %q", role, field)
	}
	used := map[string]string{}
	take := func(field, role string) (Column, *ColumnInfo, error) {
		ci, err := find(field, role)
		if err != nil {
			return Column{}, nil, err
		}
		if other, dup := used[ci.Name]; dup {
			return Column{}, nil, fail(ci.Name, "%s %q maps to the same column as %s", role, field, other)
		}
		used[ci.Name] = fmt.Sprintf("%q", field)
		return Column{Field: field, Name: ci.Name, Type: ci.Type, Cast: ci.Cast, Kind: ci.Kind, Bits: ci.Bits, NotNull: ci.NotNull}, ci, nil
	}

	var err error
	var ci *ColumnInfo
	if s.User, ci, err = take(cfg.UserColumn, "user_column"); err != nil {
		return nil, err
	}
	if ci.Kind != KindText && ci.Kind != KindOther {
		return nil, fail(ci.Name, "user_column must hold text, but its type is %s", ci.Type)
	}
	for _, bk := range []struct {
		dst  *Column
		name string
		role string
	}{{&s.UpdatedAt, cfg.UpdatedAtColumn, "updated_at_column"}, {&s.SyncedAt, cfg.SyncedAtColumn, "synced_at_column"}} {
		if *bk.dst, ci, err = take(bk.name, bk.role); err != nil {
			return nil, err
		}
		if ci.Kind != KindTimestamp {
			return nil, fail(ci.Name, "%s must be a timestamp, but its type is %s", bk.role, ci.Type)
		}
	}

	for _, f := range cfg.KeyFields {
		col, ci, err := take(f, "key field")
		if err != nil {
			return nil, err
		}
		s.Keys = append(s.Keys, col)
		s.hasDef = append(s.hasDef, ci.HasDefault)
	}
	keyCols := make([]string, len(s.Keys))
	for i, k := range s.Keys {
		keyCols[i] = k.Name
	}
	unique := findColumnSet(info.Unique, keyCols)
	if unique == nil {
		return nil, fail(strings.Join(keyCols, ", "), "the key columns are not the table's primary key or a unique constraint")
	}
	for _, k := range s.Keys {
		if k.Name == unique[0] {
			s.KeyLead = k
		}
	}

	if len(cfg.Fields) > 0 {
		for _, f := range cfg.Fields {
			col, ci, err := take(f, "field")
			if err != nil {
				return nil, err
			}
			s.Fields = append(s.Fields, col)
			s.hasDef = append(s.hasDef, ci.HasDefault)
		}
	} else {
		for _, ci := range info.Columns {
			if _, taken := used[ci.Name]; taken {
				continue
			}
			col, ci, err := take(ci.Name, "field")
			if err != nil {
				return nil, err
			}
			s.Fields = append(s.Fields, col)
			s.hasDef = append(s.hasDef, ci.HasDefault)
		}
	}

	for _, c := range []*Column{&s.User, &s.UpdatedAt, &s.SyncedAt} {
		c.quoted, _ = json.Marshal(c.Name)
	}
	for _, list := range [][]Column{s.Keys, s.Fields} {
		for i := range list {
			list[i].quoted, _ = json.Marshal(list[i].Name)
		}
	}
	s.cols = append(append([]Column{}, s.Keys...), s.Fields...)
	s.fieldKeys = make([][]byte, len(s.cols))
	for i, c := range s.cols {
		k, _ := json.Marshal(c.Field)
		s.fieldKeys[i] = append(k, ':')
	}
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
