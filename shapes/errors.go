package shapes

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnavailable marks errors caused by the database being unreachable,
// overloaded or too slow. Callers answer 503 and the client retries.
var ErrUnavailable = errors.New("database unavailable")

// ErrSchemaChanged marks a statement that failed because a table no longer
// matches what was checked (a column or table dropped or renamed). The
// store checks its tables again on the next request.
var ErrSchemaChanged = errors.New("a table changed since it was checked")

// ErrRefused marks a write that the database refused because of a value in
// it: a type or range error, a constraint, a size limit. A driver returns
// it from a write that is not isolated, and the store then writes the
// changes one at a time, so that only the changes at fault are rejected.
var ErrRefused = errors.New("the database refused a value")

// RefusedError is a refusal with the database's own words, which are safe
// to show the client that sent the value.
type RefusedError struct{ Message string }

func (e *RefusedError) Error() string { return e.Message }

// Is makes every RefusedError match ErrRefused.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// ErrRetry asks the driver to run a shared write again from the start: a
// row it found missing was inserted meanwhile by another transaction.
var ErrRetry = errors.New("shapes: a concurrent write raced this one; retry")

// ErrErased marks a request by a user the operator erased (caddy
// hypersync erase): their token may outlive the account, and a device must
// not push their data back. Callers answer 403 user-erased.
var ErrErased = errors.New("the user was erased")

// ErasedMarker is the text a statement fails with when its user is
// erased, where SQL cannot raise an error of its own choosing: drivers
// turn an error that carries it into ErrErased.
const ErasedMarker = "hypersync: user erased"

// memberRefused: the database refused membership changes that the policy
// had already counted, so every later decision of the push may rest on
// them. All the memberships of the push are written before anything else,
// so one decision again settles every refusal among them.
type memberRefused struct {
	refused map[int]string // by change index
}

func (e *memberRefused) Error() string { return fmt.Sprintf("%d memberships refused", len(e.refused)) }

// Problem is the kind of a mismatch between a shape and its table.
type Problem uint8

const (
	// ProblemNoTable: the table does not exist.
	ProblemNoTable Problem = iota + 1
	// ProblemNoColumn: no column answers to the field or option (Role).
	ProblemNoColumn
	// ProblemAmbiguousColumn: several columns match when case is ignored.
	ProblemAmbiguousColumn
	// ProblemSharedColumn: two fields or options map to one column.
	ProblemSharedColumn
	// ProblemColumnType: a bookkeeping column has the wrong type.
	ProblemColumnType
	// ProblemNoUniqueKey: the key columns are not a primary key or unique
	// constraint.
	ProblemNoUniqueKey
	// ProblemNoMembership: a share's membership table does not exist.
	ProblemNoMembership
)

// Role is what a column is for in a shape.
type Role uint8

const (
	RoleNone Role = iota
	RoleUser
	RoleUpdatedAt
	RoleSyncedAt
	RoleKey
	RoleField
	RoleScope
	RoleMember
	RoleMemberStamp
	RoleScopedAt
	RoleTombstone
)

var roleNames = [...]string{"", "user_column", "updated_at_column", "synced_at_column", "key field", "field",
	"scope column", "member column", "membership stamp column", "scoped_at_column", "tombstone"}

func (r Role) String() string { return roleNames[r] }

// SchemaError is a mismatch between a shape's configuration and its table.
type SchemaError struct {
	Shape string
	Table string
	// Column names the column, or the configured name that found none;
	// for ProblemNoUniqueKey, the key columns joined by ", ".
	Column  string
	Problem Problem
	Role    Role
	Reason  string
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
