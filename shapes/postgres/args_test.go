package postgres_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
	"github.com/hypersync/hypersync/shapes/postgres"
)

// Pushes send binary arrays built by hand (binaryColumn) in pgx's modes
// that prepare or describe statements, or typed slices pgx encodes
// (typedColumn) in the others. Every mode must store the same values, edge
// values included.
func TestBinaryAndTypedArgumentsAgree(t *testing.T) {
	payloads := []string{
		`{"id":"a","t":"plain","b":true,"i":-2147483648,"big":-9223372036854775808,"d":-0.0,"ts":"1969-12-31T23:59:59.999999Z","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","n":-1e-20,"j":[],"tags":[]}`,
		`{"id":"b","t":"esc\"aped\\ \u00e9 \ud83d\ude00 \n","b":false,"i":2147483647,"big":9223372036854775807,"d":1.7976931348623157e308,"ts":"1999-12-31T23:59:59.999Z","n":123456789012345678901234567890.5}`,
		`{"id":"c","t":"","d":5e-324,"ts":"2000-01-01T00:00:00Z","tags":["x",null,"\"q\""],"j":null}`,
		`{"id":"d","t":null,"b":null,"i":null,"big":null,"d":null,"ts":"2262-04-11T23:47:16.854775Z","u":null,"n":null,"tags":null}`,
		`{"id":"e","ts":"0001-01-01T00:00:00Z","d":1e-300,"i":0}`,
	}
	modes := []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"}
	stored := map[string]string{}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			dsn := pgtest.NewDatabase(t)
			pgtest.Exec(t, dsn, testkit.TypesDDL)
			f := testkit.OpenStore(t, pgtest.WithParam(dsn, "default_query_exec_mode", mode), testkit.ThingsShape)
			if binary := postgres.IsBinary(f.DB); binary != (mode != "exec" && mode != "simple_protocol") {
				t.Fatalf("binary arrays = %v in mode %s", binary, mode)
			}
			var changes []shapes.Change
			for _, p := range payloads {
				changes = append(changes, testkit.Change("things", testkit.At(1), p))
			}
			testkit.WantOutcomes(t, f.Push("alice", changes...), "applied,applied,applied,applied,applied")
			out, _ := json.Marshal(f.PullAll("alice", "id"))
			stored[mode] = string(out)
		})
	}
	for _, mode := range modes[1:] {
		if stored[mode] != stored[modes[0]] {
			t.Fatalf("%s stored\n%s\n%s stored\n%s", modes[0], stored[modes[0]], mode, stored[mode])
		}
	}
	if !strings.Contains(stored[modes[0]], `"ts":"1969-12-31T23:59:59.999Z"`) {
		t.Fatalf("timestamps before 1970 went wrong: %s", stored[modes[0]])
	}
}
