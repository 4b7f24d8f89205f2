package shapes

import (
	"fmt"
	"strings"
)

// Default bookkeeping column names, as in the HyperSync README's table.
const (
	DefaultUserColumn      = "userId"
	DefaultUpdatedAtColumn = "updatedAt"
	DefaultSyncedAtColumn  = "lastSyncAt"
	DefaultScopedAtColumn  = "scopedAt"
	DefaultTombstone       = "deleted"
)

// ShapeConfig maps one shape, the unit of sync a client names by shapeKey,
// onto one SQL table.
type ShapeConfig struct {
	// The shapeKey clients send. Required.
	Key string `json:"key"`

	// The table, optionally schema-qualified (app.todos). Default: the key.
	Table string `json:"table,omitempty"`

	// Payload fields that together form the table's primary key or a unique
	// constraint. Required.
	KeyFields []string `json:"key_fields"`

	// The data fields synced besides the key. Default: every column of the
	// table except the key and bookkeeping columns.
	Fields []string `json:"fields,omitempty"`

	// The column holding the owning user's id. Default: userId.
	UserColumn string `json:"user_column,omitempty"`

	// The column holding the client's updatedAt. Default: updatedAt.
	UpdatedAtColumn string `json:"updated_at_column,omitempty"`

	// The column holding the server's sync stamp. Default: lastSyncAt.
	SyncedAtColumn string `json:"synced_at_column,omitempty"`

	// Create the table when it does not exist, from FieldTypes. An existing
	// table is never altered.
	CreateTable bool `json:"create_table,omitempty"`

	// Column types for create_table, by field name: text, integer, real,
	// boolean, timestamp or json. Fields without a type are text.
	FieldTypes map[string]string `json:"field_types,omitempty"`

	// Share makes the shape's rows visible to the members of their scope
	// (see share.go). Nil: every row is private to its owner.
	Share *ShareConfig `json:"share,omitempty"`

	// Tombstone names the boolean field that marks a row deleted. Default:
	// "deleted" when the shape has a boolean field of that name. A shared
	// shape needs one for move-out, and a membership shape to remove
	// members.
	Tombstone string `json:"tombstone,omitempty"`

	// The column holding the sync stamp at which the row entered its
	// current scope: move-out sends a removed member only the rows that
	// were in the scope before the removal. Shared shapes with a tombstone
	// only. Default: scopedAt.
	ScopedAtColumn string `json:"scoped_at_column,omitempty"`
}

// ShareConfig is "share <field> via <table> [<member column>]".
type ShareConfig struct {
	// Field is the payload field holding the row's scope.
	Field string `json:"field"`
	// Via is the membership table: its rows whose column named like Field
	// equals a scope are that scope's members. It may be a shape's table.
	Via string `json:"via"`
	// Member is the membership table's column holding the member's user
	// id. Default: the member column of the membership shape's own share,
	// else userId.
	Member string `json:"member,omitempty"`
}

// FieldTypeNames are the portable column types create_table understands.
var FieldTypeNames = []string{"text", "integer", "real", "boolean", "timestamp", "json"}

// WithDefaults returns a copy with every defaulted option filled in.
func (c ShapeConfig) WithDefaults() ShapeConfig {
	if c.Table == "" {
		c.Table = c.Key
	}
	if c.UserColumn == "" {
		c.UserColumn = DefaultUserColumn
	}
	if c.UpdatedAtColumn == "" {
		c.UpdatedAtColumn = DefaultUpdatedAtColumn
	}
	if c.SyncedAtColumn == "" {
		c.SyncedAtColumn = DefaultSyncedAtColumn
	}
	if c.Share != nil && c.ScopedAtColumn == "" {
		c.ScopedAtColumn = DefaultScopedAtColumn
	}
	return c
}

// Validate checks the configuration on its own, without a database.
func (c ShapeConfig) Validate() error {
	if c.Key == "" {
		return fmt.Errorf("shape has no key (shapeKey)")
	}
	if len(c.KeyFields) == 0 {
		return fmt.Errorf("shape %q: no key fields", c.Key)
	}
	if _, _, err := SplitTableName(c.WithDefaults().Table); err != nil {
		return fmt.Errorf("shape %q: %w", c.Key, err)
	}
	seen := map[string]string{}
	for _, f := range c.KeyFields {
		if err := checkName(f); err != nil {
			return fmt.Errorf("shape %q: key field %w", c.Key, err)
		}
		if seen[f] != "" {
			return fmt.Errorf("shape %q: field %q is named twice", c.Key, f)
		}
		seen[f] = "key"
	}
	for _, f := range c.Fields {
		if err := checkName(f); err != nil {
			return fmt.Errorf("shape %q: field %w", c.Key, err)
		}
		if seen[f] != "" {
			return fmt.Errorf("shape %q: field %q is named twice", c.Key, f)
		}
		seen[f] = "field"
	}
	d := c.WithDefaults()
	bookkeeping := []string{d.UserColumn, d.UpdatedAtColumn, d.SyncedAtColumn}
	if c.Share != nil {
		bookkeeping = append(bookkeeping, d.ScopedAtColumn)
	}
	for _, col := range bookkeeping {
		if err := checkName(col); err != nil {
			return fmt.Errorf("shape %q: bookkeeping column %w", c.Key, err)
		}
		if seen[col] != "" {
			return fmt.Errorf("shape %q: %q is a bookkeeping column and cannot also be a %s", c.Key, col, seen[col])
		}
	}
	for f, typ := range c.FieldTypes {
		if seen[f] == "" {
			return fmt.Errorf("shape %q: field type given for %q, which is neither a key field nor a field", c.Key, f)
		}
		if !isFieldTypeName(typ) {
			return fmt.Errorf("shape %q: field %q: unknown type %q (want one of %s)", c.Key, f, typ, strings.Join(FieldTypeNames, ", "))
		}
	}
	if len(c.FieldTypes) > 0 && !c.CreateTable {
		return fmt.Errorf("shape %q: field types are only used with create_table", c.Key)
	}
	if c.CreateTable && len(c.Fields) == 0 {
		return fmt.Errorf("shape %q: create_table needs the fields listed", c.Key)
	}
	if c.Tombstone != "" && seen[c.Tombstone] != "field" {
		return fmt.Errorf("shape %q: tombstone %q is not one of the shape's fields", c.Key, c.Tombstone)
	}
	if c.Tombstone != "" && c.FieldTypes[c.Tombstone] != "" && c.FieldTypes[c.Tombstone] != "boolean" {
		return fmt.Errorf("shape %q: tombstone %q must be a boolean field, not %s", c.Key, c.Tombstone, c.FieldTypes[c.Tombstone])
	}
	if c.ScopedAtColumn != "" && c.Share == nil {
		return fmt.Errorf("shape %q: scoped_at_column is only used with share", c.Key)
	}
	if sh := c.Share; sh != nil {
		if sh.Field == "" || sh.Via == "" {
			return fmt.Errorf("shape %q: share needs a field and a table: share <field> via <table> [<member column>]", c.Key)
		}
		if seen[sh.Field] == "" {
			return fmt.Errorf("shape %q: share field %q is neither a key field nor a field of the shape", c.Key, sh.Field)
		}
		if _, _, err := SplitTableName(sh.Via); err != nil {
			return fmt.Errorf("shape %q: share via: %w", c.Key, err)
		}
		if sh.Member != "" {
			if err := checkName(sh.Member); err != nil {
				return fmt.Errorf("shape %q: share member column %w", c.Key, err)
			}
		}
		if c.Tombstone == sh.Field {
			return fmt.Errorf("shape %q: the share field %q cannot also be the tombstone", c.Key, sh.Field)
		}
	}
	return nil
}

func isFieldTypeName(s string) bool {
	for _, n := range FieldTypeNames {
		if n == s {
			return true
		}
	}
	return false
}

func checkName(s string) error {
	if s == "" {
		return fmt.Errorf("name is empty")
	}
	if strings.ContainsRune(s, 0) {
		return fmt.Errorf("%q contains a NUL byte", s)
	}
	if len(s) > 63 {
		return fmt.Errorf("%q is longer than 63 bytes", s)
	}
	if strings.Contains(s, "$hypersync$") {
		// it would end the body of a stamping function early
		return fmt.Errorf("%q contains $hypersync$", s)
	}
	return nil
}

// SplitTableName splits "schema.table" into its parts. Schema is empty for
// an unqualified name.
func SplitTableName(name string) (schema, table string, err error) {
	parts := strings.Split(name, ".")
	switch len(parts) {
	case 1:
		table = parts[0]
	case 2:
		schema, table = parts[0], parts[1]
		if err := checkName(schema); err != nil {
			return "", "", fmt.Errorf("table schema %w", err)
		}
	default:
		return "", "", fmt.Errorf("table name %q has more than one dot", name)
	}
	if err := checkName(table); err != nil {
		return "", "", fmt.Errorf("table %w", err)
	}
	return schema, table, nil
}
