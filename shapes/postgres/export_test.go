package postgres

import (
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// IsBinary reports whether db's pushes send binary arrays.
func IsBinary(db *shapes.Database) bool { return db.Driver().(*driver).binary }

// NaiveDialect is PostgreSQL with the reference server's stamps (see
// write.go), for the test that proves the concurrency check catches them.
func NaiveDialect() *shapes.Dialect {
	d := *dialect
	d.Name = "postgres-naive"
	d.Open = func(dsn string, opts shapes.Options) (shapes.Driver, error) {
		return open(dsn, opts, config{naiveStamps: true})
	}
	return &d
}

// FloorlessDialect is PostgreSQL whose pulls read a standby without
// waiting for it to hold the user's cursor (see replica.go), for the tests
// that prove the standby tests catch it.
func FloorlessDialect() *shapes.Dialect {
	d := *dialect
	d.Name = "postgres-floorless"
	d.Open = func(dsn string, opts shapes.Options) (shapes.Driver, error) {
		return open(dsn, opts, config{noStandbyFloor: true})
	}
	return &d
}

// GroupArgs builds a group's arguments as a push sends them.
func GroupArgs(user string, g shapes.Group, binary bool) error {
	_, err := (&driver{binary: binary}).groupArgs(user, g)
	return err
}

// ParseTime reads a timestamp as the pull receives it.
func ParseTime(v []byte) (time.Time, bool) { return parseTime(v) }
