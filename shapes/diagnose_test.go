package shapes_test

import (
	"context"
	"strings"
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// Each problem Diagnose finds comes with SQL that, once run, leaves the
// shape ready.
func TestDiagnoseFixesWhatItFinds(t *testing.T) {
	notes := shapes.ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"body", "stars"}, FieldTypes: map[string]string{"stars": "integer"}, CreateTable: true}
	cases := []struct {
		name    string
		ddl     []string
		problem string
	}{
		{"missing table", nil, "table notes does not exist"},
		{"missing bookkeeping column", []string{`CREATE TABLE notes (noteId text PRIMARY KEY, body text, stars integer, userId text, updatedAt timestamptz)`}, `no column for synced_at_column "lastSyncAt"`},
		{"missing field column", []string{`CREATE TABLE notes (noteId text PRIMARY KEY, body text, userId text, updatedAt timestamptz, lastSyncAt timestamptz)`}, `no column for field "stars"`},
		{"key without a unique constraint", []string{`CREATE TABLE notes (noteId text, body text, stars integer, userId text, updatedAt timestamptz, lastSyncAt timestamptz)`}, "not the table's primary key or a unique constraint"},
		{"missing sync index", []string{`CREATE TABLE notes (noteId text PRIMARY KEY, body text, stars integer, userId text, updatedAt timestamptz, lastSyncAt timestamptz)`}, "no index leads with"},
	}
	testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				dsn := b.Open(t, tc.ddl...)
				db, err := shapes.Open(dsn, shapes.Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer db.Destruct()
				ctx := context.Background()
				d, err := db.Diagnose(ctx, notes)
				if err != nil {
					t.Fatal(err)
				}
				if d.OK || len(d.Problems) == 0 || !strings.Contains(d.Problems[0], tc.problem) || len(d.Fix) == 0 {
					t.Fatalf("diagnosis %+v, want the problem %q and a fix", d, tc.problem)
				}
				for _, stmt := range d.Fix {
					if err := testkit.ExecNative(dsn, stmt); err != nil {
						t.Fatalf("fix %q: %v", stmt, err)
					}
				}
				// a fix may uncover the next problem (a new table still lacks
				// nothing; a new column may leave the index missing)
				for i := 0; i < 3 && !d.OK; i++ {
					if d, err = db.Diagnose(ctx, notes); err != nil {
						t.Fatal(err)
					}
					for _, stmt := range d.Fix {
						if err := testkit.ExecNative(dsn, stmt); err != nil {
							t.Fatalf("fix %q: %v", stmt, err)
						}
					}
				}
				if !d.OK {
					t.Fatalf("after the fixes: %+v", d)
				}
			})
		}
	})
}
