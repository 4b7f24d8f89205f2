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
}

// Marker is the text the stamping objects carry, naming their version and
// the columns they were made for (the table is the one they are on).
func (t StampTarget) Marker() string {
	h := sha256.Sum256([]byte(strings.Join(append([]string{t.User, t.UpdatedAt, t.SyncedAt,
		fmt.Sprint(t.UpdatedAtLocal, t.SyncedAtLocal)}, t.Keys...), "\x00")))
	return "hypersync-stamp-v1-" + hex.EncodeToString(h[:6])
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
	return t
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
