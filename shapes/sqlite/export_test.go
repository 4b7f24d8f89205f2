package sqlite

import (
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// Values converts a row's values as a push writes them.
func Values(sh *shapes.Shape, r *shapes.Row) error {
	_, err := appendValues(nil, sh, r)
	return err
}

// ParseTime reads a timestamp as the pull receives it.
func ParseTime(v []byte) (time.Time, bool) { return parseTime(v) }
