package shapes

import "errors"

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
