package shapes_test

import (
	"context"
	"strings"
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// listTables creates the todos and list_members tables of ListShapes with
// the given types for todos."listId" and list_members."listId", and opens
// the two shapes on them (created by the test, not by hypersync).
func listTables(t *testing.T, dsn, todoScope, memberScope string) []shapes.ShapeConfig {
	t.Helper()
	stamp := "timestamptz"
	if _, ok := testkit.IsSQLite(dsn); ok {
		stamp = "TIMESTAMP"
	}
	testkit.Exec(t, dsn, `CREATE TABLE list_members ("listId" `+memberScope+` NOT NULL, "memberId" text NOT NULL, deleted boolean, "userId" text NOT NULL,
		"updatedAt" `+stamp+` NOT NULL, "lastSyncAt" `+stamp+` NOT NULL DEFAULT CURRENT_TIMESTAMP, "scopedAt" `+stamp+` NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY ("listId", "memberId"))`,
		`CREATE TABLE todos ("todoId" text PRIMARY KEY, "listId" `+todoScope+`, title text, done boolean, deleted boolean, "userId" text NOT NULL,
		"updatedAt" `+stamp+` NOT NULL, "lastSyncAt" `+stamp+` NOT NULL DEFAULT CURRENT_TIMESTAMP, "scopedAt" `+stamp+` NOT NULL DEFAULT CURRENT_TIMESTAMP)`,
		`CREATE INDEX todos_user ON todos ("userId", "lastSyncAt")`, `CREATE INDEX todos_list ON todos ("listId", "lastSyncAt")`,
		`CREATE INDEX members_user ON list_members ("userId", "lastSyncAt")`, `CREATE INDEX members_list ON list_members ("listId", "lastSyncAt")`)
	cfgs := testkit.ListShapes()[1:]
	for i := range cfgs {
		cfgs[i].CreateTable, cfgs[i].FieldTypes = false, nil
	}
	return cfgs
}

const aliceList = "6f1c2a8e-0d3b-4c5e-9a7f-1b2c3d4e5f60"

// The value a push decides on is the value the database stores. With
// list_members."listId" a varchar(36) of UUIDs, mallory's membership of
// alice's list id plus one space would be decided as founding a new scope,
// and stored, cut to 36 characters, as a membership of alice's list: it is
// refused instead, and her pull brings nothing of the list. The same for a
// todo moved into the padded id, and with the two tables' scope columns of
// different text types.
func TestScopeValueIsTheValueStored(t *testing.T) {
	for _, c := range []struct{ todo, member string }{
		{"varchar(36)", "varchar(36)"},
		{"text", "varchar(36)"},
		{"varchar(36)", "text"},
	} {
		t.Run(c.todo+"/"+c.member, func(t *testing.T) {
			dsn := testkit.Postgres().Open(t)
			f := testkit.OpenStore(t, dsn, listTables(t, dsn, c.todo, c.member)...)
			testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, aliceList, "alice", false), testkit.Todo(2, "t1", aliceList, "alice's")), "applied,applied")
			padded := aliceList + " "
			mallory := f.NewDevice("mallory")
			member := "rejected:invalid-payload"
			if c.member == "text" {
				member = "applied" // a scope of its own, "…60 ", which text keeps as it is
			}
			testkit.WantOutcomes(t, f.Push("mallory", testkit.Member(3, padded, "mallory", false)), member)
			todo := "rejected:invalid-payload"
			if c.todo == "text" {
				todo = "rejected:forbidden" // the padded scope stays padded, and mallory is no member of it
			}
			if c.member == "text" && c.todo == "varchar(36)" {
				todo = "rejected:invalid-payload"
			}
			testkit.WantOutcomes(t, f.Push("mallory", testkit.Todo(4, "m1", padded, "mallory's")), todo)
			for _, r := range mallory.Sync() {
				if strings.Contains(string(r.Raw), "alice's") || r.Payload["listId"] == aliceList {
					t.Fatalf("mallory pulled %s of alice's list", r.Raw)
				}
			}
			var n int
			testkit.Query(dsn, `SELECT count(*) FROM list_members WHERE "listId" = '`+aliceList+`'`, func(scan func(...any) error) error { return scan(&n) })
			if n != 1 {
				t.Fatalf("alice's list has %d memberships, want alice's alone", n)
			}
		})
	}
}

// A scope column of a type that would store another value than the one
// sent, or compare by more than its text, fails the start-up check, and
// check prints the ALTER that fixes it.
func TestScopeColumnTypesThatChangeValuesAreRefused(t *testing.T) {
	for _, typ := range []string{"date", "name", "character(36)", "numeric", "scope_text"} {
		t.Run(typ, func(t *testing.T) {
			dsn := testkit.Postgres().Open(t)
			testkit.Exec(t, dsn, `CREATE DOMAIN scope_text AS text CHECK (VALUE <> '')`)
			cfgs := listTables(t, dsn, typ, typ)
			st := testkit.NewStore(t, testkit.OpenDB(t, dsn), cfgs...)
			var se *shapes.SchemaError
			if err := st.Check(context.Background()); !asSchemaError(err, &se) || se.Role != shapes.RoleScope {
				t.Fatalf("check = %v, want the %s scope column refused", err, typ)
			}
			d, err := testkit.OpenDB(t, dsn).Diagnose(context.Background(), cfgs[0], cfgs...)
			if err != nil {
				t.Fatal(err)
			}
			if d.OK || len(d.Fix) == 0 || !strings.Contains(d.Fix[0], `ALTER COLUMN "listId" TYPE text`) {
				t.Fatalf("diagnosis %+v, want the ALTER … TYPE text", d)
			}
		})
	}
	// SQLite: NUMERIC affinity would store "007" as 7
	for _, typ := range []string{"NUMERIC", "DATE", "DECIMAL(10)"} {
		t.Run("sqlite "+typ, func(t *testing.T) {
			dsn := testkit.SQLite().Open(t)
			st := testkit.NewStore(t, testkit.OpenDB(t, dsn), listTables(t, dsn, typ, typ)...)
			var se *shapes.SchemaError
			if err := st.Check(context.Background()); !asSchemaError(err, &se) || se.Role != shapes.RoleScope {
				t.Fatalf("check = %v, want the %s scope column refused", err, typ)
			}
		})
	}
	t.Run("sqlite VARCHAR(36)", func(t *testing.T) {
		dsn := testkit.SQLite().Open(t)
		f := testkit.OpenStore(t, dsn, listTables(t, dsn, "VARCHAR(36)", "TEXT")...)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, aliceList, "alice", false)), "applied")
	})
}

// A text value longer than its varchar(n) column is refused, in any shape:
// PostgreSQL would cut its trailing spaces and store another value.
func TestOverlongTextIsRefused(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	testkit.Exec(t, dsn, `CREATE TABLE todos ("todoId" varchar(8) PRIMARY KEY, title varchar(5), "userId" text NOT NULL, "updatedAt" timestamptz, "lastSyncAt" timestamptz)`)
	f := testkit.OpenStore(t, dsn, shapes.ShapeConfig{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title"}})
	testkit.WantOutcomes(t, f.Push("alice",
		testkit.Change("todos", testkit.At(1), `{"todoId":"k1","title":"fits!"}`),
		testkit.Change("todos", testkit.At(2), `{"todoId":"k2","title":"fits!  "}`),
		testkit.Change("todos", testkit.At(3), `{"todoId":"k1      `+"  "+`","title":"x"}`),
		testkit.Change("todos", testkit.At(4), `{"todoId":"k4","title":"ünï€ø"}`),
	), "applied,rejected:invalid-payload,rejected:invalid-payload,applied")
}

// A default on the scope column does not decide where a new row goes: a
// new todo without listId is decided as private, and stored as private,
// not in alice's list that the default names.
func TestScopeColumnDefaultIsNotUsed(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		dsn := b.Open(t)
		var cfgs []shapes.ShapeConfig
		if _, ok := testkit.IsSQLite(dsn); ok {
			// SQLite cannot change a column's default: the table is made so
			cfgs = listTables(t, dsn, "TEXT DEFAULT '"+aliceList+"'", "TEXT")
		} else {
			cfgs = listTables(t, dsn, "text", "text")
			testkit.Exec(t, dsn, `ALTER TABLE todos ALTER COLUMN "listId" SET DEFAULT '`+aliceList+`'`)
		}
		f := testkit.OpenStore(t, dsn, cfgs...)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, aliceList, "alice", false)), "applied")
		testkit.WantOutcomes(t, f.Push("mallory", testkit.Change("todos", testkit.At(2), `{"todoId":"m1","title":"no listId"}`)), "applied")
		alice := f.NewDevice("alice")
		alice.Sync()
		if _, ok := alice.Rows["todos/m1"]; ok {
			t.Fatal("mallory's todo reached alice's list through the column default")
		}
		var n int
		testkit.Query(dsn, `SELECT count(*) FROM todos WHERE "todoId" = 'm1' AND "listId" IS NULL`, func(scan func(...any) error) error { return scan(&n) })
		if n != 1 {
			t.Fatal("mallory's todo was not stored private")
		}
	})
}

// A scope column whose equality is wider than its text (numeric: 1.0 =
// 1.00) is refused: a stranger could found the same scope again by
// another spelling.
func TestSharedScopeColumnMustCompareByText(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		dsn := b.Open(t,
			`CREATE TABLE list_members (listId numeric NOT NULL, memberId text NOT NULL, deleted boolean,
				userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz, scopedAt timestamptz, PRIMARY KEY (listId, memberId))`)
		db := testkit.OpenDB(t, dsn)
		st := testkit.NewStore(t, db, shapes.ShapeConfig{Key: "list_members", KeyFields: []string{"listId", "memberId"}, Fields: []string{"deleted"},
			Share: &shapes.ShareConfig{Field: "listId", Via: "list_members", Member: "memberId"}})
		var se *shapes.SchemaError
		if err := st.Check(context.Background()); !asSchemaError(err, &se) || se.Role != shapes.RoleScope {
			t.Fatalf("check = %v, want the scope column refused", err)
		}
	})
}

// A case-blind scope column (citext) is refused: a scope lock keyed by the
// client's spelling would not order writers that the database's equality
// puts in one scope.
func TestSharedCitextScopeRefused(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	if err := testkit.ExecErr(dsn, `CREATE EXTENSION citext`); err != nil {
		t.Skip(err)
	}
	testkit.Exec(t, dsn, `CREATE TABLE list_members ("listId" citext NOT NULL, "memberId" text NOT NULL, deleted boolean, "userId" text NOT NULL,
		"updatedAt" timestamptz NOT NULL, "lastSyncAt" timestamptz NOT NULL DEFAULT now(), "scopedAt" timestamptz NOT NULL DEFAULT now(), PRIMARY KEY ("listId", "memberId"))`,
		`CREATE TABLE todos ("todoId" text PRIMARY KEY, "listId" citext, title text, done boolean, deleted boolean, "userId" text NOT NULL,
		"updatedAt" timestamptz NOT NULL, "lastSyncAt" timestamptz NOT NULL DEFAULT now(), "scopedAt" timestamptz NOT NULL DEFAULT now())`)
	cfgs := testkit.ListShapes()[1:]
	for i := range cfgs {
		cfgs[i].CreateTable, cfgs[i].FieldTypes = false, nil
	}
	// one scope to the database, two to the scope locks: refused
	st := testkit.NewStore(t, testkit.OpenDB(t, dsn), cfgs...)
	var se *shapes.SchemaError
	if err := st.Check(context.Background()); !asSchemaError(err, &se) || se.Role != shapes.RoleScope {
		t.Fatalf("check = %v, want the citext scope column refused", err)
	}
}

// asSchemaError reports whether err is a *shapes.SchemaError, and sets se.
func asSchemaError(err error, se **shapes.SchemaError) bool {
	e, ok := err.(*shapes.SchemaError)
	*se = e
	return ok
}

// A key the database cannot read (a date column given "not a date", which
// a column of a type hypersync treats as text lets through) fails that
// change alone, not the push.
func TestSharedBadKeyFailsThatChangeAlone(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	cfgs := testkit.ListShapes()
	testkit.Exec(t, dsn, `CREATE TABLE days ("day" date PRIMARY KEY, "listId" text, note text, deleted boolean, "userId" text NOT NULL,
		"updatedAt" timestamptz NOT NULL, "lastSyncAt" timestamptz NOT NULL DEFAULT now(), "scopedAt" timestamptz NOT NULL DEFAULT now())`)
	cfgs = append(cfgs, shapes.ShapeConfig{Key: "days", KeyFields: []string{"day"}, Fields: []string{"listId", "note", "deleted"},
		Share: &shapes.ShareConfig{Field: "listId", Via: "list_members"}})
	f := testkit.OpenStore(t, dsn, cfgs...)
	changes := []shapes.Change{testkit.Member(1, "A", "alice", false),
		testkit.Change("days", testkit.At(2), `{"day":"2026-12-01","listId":"A","note":"ok"}`),
		testkit.Change("days", testkit.At(3), `{"day":"not a date","listId":"A","note":"bad"}`)}
	res := make([]shapes.Result, len(changes))
	if _, err := f.Store.Push(context.Background(), "alice", changes, res); err != nil {
		t.Fatalf("one bad key fails the push: %v", err)
	}
	testkit.WantOutcomes(t, res, "applied,applied,rejected:invalid-payload")
}

// A scope column whose collation compares more loosely than its bytes (a
// PostgreSQL collation that is not deterministic, SQLite's NOCASE) is
// refused: founding "l" looks at the membership table's equality, and a
// pull's join at the data table's, which would hand mallory alice's "L".
func TestScopeColumnMustCompareByBytes(t *testing.T) {
	t.Run("sqlite NOCASE", func(t *testing.T) {
		dsn := testkit.SQLite().Open(t)
		st := testkit.NewStore(t, testkit.OpenDB(t, dsn), listTables(t, dsn, "TEXT COLLATE NOCASE", "TEXT")...)
		var se *shapes.SchemaError
		if err := st.Check(context.Background()); !asSchemaError(err, &se) || se.Role != shapes.RoleScope {
			t.Fatalf("check = %v, want the NOCASE scope column refused", err)
		}
	})
	t.Run("sqlite BINARY", func(t *testing.T) {
		dsn := testkit.SQLite().Open(t)
		f := testkit.OpenStore(t, dsn, listTables(t, dsn, "TEXT COLLATE BINARY", "TEXT")...)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false)), "applied")
	})
	t.Run("postgres case-insensitive collation", func(t *testing.T) {
		dsn := testkit.Postgres().Open(t)
		if err := testkit.ExecErr(dsn, `CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`); err != nil {
			t.Skip(err)
		}
		st := testkit.NewStore(t, testkit.OpenDB(t, dsn), listTables(t, dsn, "text COLLATE ci", "text")...)
		var se *shapes.SchemaError
		if err := st.Check(context.Background()); !asSchemaError(err, &se) || se.Role != shapes.RoleScope {
			t.Fatalf("check = %v, want the case-blind scope column refused", err)
		}
	})
}
