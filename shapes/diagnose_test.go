package shapes_test

import (
	"context"
	"strings"
	"testing"
	"time"

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

// A shared shape on existing tables: Diagnose names each missing piece of
// sharing (the scoped-at column, the membership table the app's backend
// keeps, the scope index) with the SQL that adds it, and a store then
// serves the shape.
func TestDiagnoseFixesSharing(t *testing.T) {
	notes := shapes.ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"teamId", "body", "deleted"},
		Share: &shapes.ShareConfig{Field: "teamId", Via: "team_members"}}
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		dsn := b.Open(t, `CREATE TABLE notes (noteId text PRIMARY KEY, teamId text, body text, deleted boolean, userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz)`,
			`CREATE INDEX notes_user ON notes (userId, lastSyncAt)`)
		db, err := shapes.Open(dsn, shapes.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Destruct()
		ctx := context.Background()
		var problems []string
		for i := 0; i < 5; i++ {
			d, err := db.Diagnose(ctx, notes, notes)
			if err != nil {
				t.Fatal(err)
			}
			if d.OK {
				break
			}
			if len(d.Fix) == 0 {
				t.Fatalf("no fix for %+v", d)
			}
			problems = append(problems, d.Problems...)
			for _, stmt := range d.Fix {
				if err := testkit.ExecNative(dsn, stmt); err != nil {
					t.Fatalf("fix %q: %v", stmt, err)
				}
			}
		}
		got := strings.ToLower(strings.Join(problems, "\n"))
		for _, want := range []string{`scoped_at_column "scopedAt"`, "membership table team_members does not exist", "no index leads with (teamId, lastSyncAt)"} {
			if !strings.Contains(got, strings.ToLower(want)) {
				t.Fatalf("problems found:\n%s\nwant one about %q", got, want)
			}
		}
		// the membership table's trigger, and the shape's, are warnings with their SQL
		d, err := db.Diagnose(ctx, notes, notes)
		if err != nil || !d.OK || len(d.Warnings) != 2 || !strings.Contains(d.Warnings[1], "team_members") {
			t.Fatalf("diagnosis %+v, %v: want the two stamping triggers as warnings", d, err)
		}
		for _, stmt := range d.Fix {
			if err := testkit.ExecNative(dsn, stmt); err != nil {
				t.Fatalf("fix %q: %v", stmt, err)
			}
		}
		if d, err = db.Diagnose(ctx, notes, notes); err != nil || !d.OK || len(d.Warnings) != 0 {
			t.Fatalf("after the fix: %+v, %v", d, err)
		}
		// the backend adds alice: the trigger stamps the membership for her
		f := testkit.OpenStore(t, dsn, notes)
		testkit.Exec(t, dsn, `INSERT INTO team_members VALUES ('T', 'alice', false, CURRENT_TIMESTAMP)`)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Change("notes", testkit.At(1), `{"noteId":"n1","teamId":"T","body":"hi"}`)), "applied")
		testkit.WantOutcomes(t, f.Push("bob", testkit.Change("notes", testkit.At(2), `{"noteId":"n2","teamId":"T","body":"hi"}`)), "rejected:forbidden")
		// bob added by the backend: his next pull brings the team's note
		testkit.Exec(t, dsn, `INSERT INTO team_members VALUES ('T', 'bob', false, CURRENT_TIMESTAMP)`)
		rows, _ := f.Pull("bob", time.Unix(0, 0))
		if len(rows) != 1 || rows[0].Payload["noteId"] != "n1" {
			t.Fatalf("bob pulled %+v, want alice's note", rows)
		}
	})
}
