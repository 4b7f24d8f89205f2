package shapes_test

// The stamping objects of shared tables, as check and schema print them and
// as outside writers meet them.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// A shared table of one's own whose bookkeeping columns are timestamp
// without time zone (which hypersync reads and writes as UTC): an outside
// writer in a session whose TimeZone is not UTC moves a row from A to B,
// and the trigger records the move's updatedAt, from_scoped_at and
// scopedAt in UTC.
func TestSharedTriggerInNonUTCSession(t *testing.T) {
	b := testkit.Postgres()
	dsn := b.Open(t)
	cfgs := testkit.ListShapes()
	cfgs[1] = shapes.ShapeConfig{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"listId", "title", "done", "deleted"},
		Share: &shapes.ShareConfig{Field: "listId", Via: "list_members"}}
	testkit.Exec(t, dsn, `CREATE TABLE todos ("todoId" text PRIMARY KEY, "listId" text, title text, done boolean, deleted boolean,
		"userId" text NOT NULL, "updatedAt" timestamp(3) NOT NULL, "lastSyncAt" timestamp(3) NOT NULL DEFAULT now(), "scopedAt" timestamp(3) NOT NULL DEFAULT now())`,
		`CREATE INDEX ON todos ("userId", "lastSyncAt")`, `CREATE INDEX ON todos ("listId", "lastSyncAt")`)
	f := testkit.OpenStore(t, dsn, cfgs...)
	var fix []string
	for _, c := range cfgs {
		d, err := f.DB.Diagnose(context.Background(), c, cfgs...)
		if err != nil {
			t.Fatal(err)
		}
		fix = append(fix, d.Fix...)
	}
	for _, s := range fix {
		if err := testkit.ExecNative(dsn, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	f = testkit.OpenStore(t, dsn, cfgs...)
	bob := f.NewDevice("bob")
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "A", "alice", false), testkit.Member(2, "A", "bob", false),
		testkit.Member(3, "B", "alice", false),
		testkit.Change("todos", time.Now().Add(-time.Hour), `{"todoId":"t1","listId":"A","title":"x","deleted":false}`)), "applied,applied,applied,applied")
	bob.Sync()
	c := testkit.Connect(t, dsn)
	ctx := context.Background()
	if _, err := c.Exec(ctx, `SET TimeZone = 'Asia/Tokyo'`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, `UPDATE todos SET "listId" = 'B' WHERE "todoId" = 't1'`); err != nil {
		t.Fatal(err)
	}
	got := bob.Sync()
	for _, r := range got {
		t.Logf("bob got %s at %s", r.Raw, r.UpdatedAt)
	}
	t.Logf("bob holds %s at %s", bob.Rows["todos/t1"].Raw, bob.Rows["todos/t1"].UpdatedAt)
	bob.WantLive(t, "list_members/A/alice", "list_members/A/bob")
}

// The tables and triggers `caddy hypersync schema` prints, applied before
// the first start, are the ones the store finds current, and take the
// scope locks its pushes take.
func TestSharedSchemaTriggersMatchTheStore(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	cfgs := testkit.ListShapes()
	for _, c := range cfgs {
		for _, s := range shapes.SchemaSQL("postgres", c, cfgs...) {
			if err := testkit.ExecNative(dsn, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	f := testkit.OpenStore(t, dsn, cfgs...)
	shs, err := f.Store.Shapes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var src string
	testkit.Query(dsn, `SELECT prosrc FROM pg_proc WHERE proname = 'hypersync_stamp_todos'`, func(scan func(...any) error) error { return scan(&src) })
	for _, sh := range shs {
		if !sh.Stamped {
			i := strings.Index(src, "hashtextextended")
			t.Errorf("shape %q: the trigger `schema` printed is not current for the store (lock key in it: %s)", sh.Config.Key, src[i:i+60])
		}
	}
}

// Schema-qualified tables whose names differ from the shape keys.
func TestSharedQualifiedTables(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		dsn := b.Open(t)
		_, lite := testkit.IsSQLite(dsn)
		if lite {
			t.Skip("main.x on sqlite fails in create_table already")
		}
		schema := "App Schema"
		if lite {
			schema = "main"
		} else {
			testkit.Exec(t, dsn, `CREATE SCHEMA "App Schema"`)
		}
		cfgs := testkit.ListShapes()
		for i, tbl := range []string{"Lists", "Todo's", "Members"} {
			cfgs[i].Table = schema + "." + tbl
		}
		for i := range cfgs {
			cfgs[i].Share.Via = schema + ".Members"
		}
		f := testkit.OpenStore(t, dsn, cfgs...)
		alice, bob := f.NewDevice("alice"), f.NewDevice("bob")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "A", "alice", false), testkit.Member(2, "A", "bob", false),
			testkit.Member(3, "B", "alice", false), testkit.Todo(4, "t1", "A", "x"), testkit.Todo(5, "t2", "A", "y")), "applied,applied,applied,applied,applied")
		bob.Sync()
		alice.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(6, "t1", "B", "x")), "applied")
		q := shapes.QuoteTable(schema, "Todo's")
		if lite {
			q = `"Todo's"`
		}
		testkit.Exec(t, dsn, `UPDATE `+q+` SET title = 'outside' WHERE "todoId" = 't2'`)
		testkit.Exec(t, dsn, `INSERT INTO `+q+` ("todoId", "listId", title, "userId", "updatedAt") VALUES ('t3', 'A', 'outside', 'backend', '2026-11-25T10:00:00Z')`)
		mq := shapes.QuoteTable(schema, "Members")
		if lite {
			mq = `"Members"`
		}
		testkit.Exec(t, dsn, `UPDATE `+mq+` SET deleted = true WHERE "memberId" = 'bob'`)
		bob.Sync()
		alice.Sync()
		bob.WantLive(t)
		alice.WantLive(t, "list_members/A/alice", "list_members/B/alice", "todos/t1", "todos/t2", "todos/t3")
		if alice.Rows["todos/t2"].Payload["title"] != "outside" {
			t.Fatalf("alice holds %s", alice.Rows["todos/t2"].Raw)
		}
	})
}

// A membership table the backend keeps, without a tombstone, its stamp a
// timestamp without time zone; the shared shape's table name differs from
// its shape key.
func TestSharedBackendMembershipWithoutTombstone(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		dsn := b.Open(t)
		testkit.Exec(t, dsn, `CREATE TABLE team_members ("teamId" text NOT NULL, "userId" text NOT NULL, "lastSyncAt" timestamp(3) NOT NULL DEFAULT now(), PRIMARY KEY ("teamId", "userId"))`)
		cfgs := []shapes.ShapeConfig{{Key: "docs", Table: "documents", KeyFields: []string{"docId"}, Fields: []string{"teamId", "body", "deleted"},
			Share: &shapes.ShareConfig{Field: "teamId", Via: "team_members"}, CreateTable: true, FieldTypes: map[string]string{"deleted": "boolean"}}}
		f := testkit.OpenStore(t, dsn, cfgs...)
		d, err := f.DB.Diagnose(context.Background(), cfgs[0], cfgs...)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("diagnosis: %+v", d)
		for _, s := range d.Fix {
			if err := testkit.ExecNative(dsn, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
		f = testkit.OpenStore(t, dsn, cfgs...)
		testkit.Exec(t, dsn, `INSERT INTO team_members ("teamId", "userId") VALUES ('T', 'alice')`)
		doc := func(at int, id, team string) shapes.Change {
			return testkit.Change("docs", testkit.At(at), fmt.Sprintf(`{"docId":%q,"teamId":%q,"body":"b","deleted":false}`, id, team))
		}
		testkit.WantOutcomes(t, f.Push("alice", doc(1, "d1", "T"), doc(2, "d2", "U"), testkit.Change("team_members", testkit.At(3), `{"teamId":"T","userId":"bob"}`)),
			"applied,rejected:forbidden,rejected:unknown-shape")
		bob := f.NewDevice("bob")
		bob.Sync()
		testkit.Exec(t, dsn, `INSERT INTO team_members ("teamId", "userId") VALUES ('T', 'bob')`)
		got := bob.Sync()
		if len(got) != 1 {
			t.Fatalf("bob got %v after joining", got)
		}
		testkit.Exec(t, dsn, `DELETE FROM team_members WHERE "userId" = 'bob'`)
		testkit.WantOutcomes(t, f.Push("alice", doc(4, "d3", "T")), "applied")
		if got := bob.Sync(); len(got) != 0 {
			t.Fatalf("bob got %v after leaving", got)
		}
		testkit.WantOutcomes(t, f.Push("bob", doc(5, "d1", "T")), "rejected:forbidden")
	})
}

// Two membership tables of one name in two schemas are refused: hypersync
// tells membership tables apart by name, and a removal from one would send
// the other's rows.
func TestMembershipTablesOfOneNameAreRefused(t *testing.T) {
	dsn := testkit.Postgres().Open(t, `CREATE SCHEMA crm`, `CREATE SCHEMA chat`)
	cfg := func(key, table string, keys, fields []string, field, via, member string) shapes.ShapeConfig {
		return shapes.ShapeConfig{Key: key, Table: table, KeyFields: keys, Fields: fields, CreateTable: true,
			FieldTypes: map[string]string{"deleted": "boolean"}, Share: &shapes.ShareConfig{Field: field, Via: via, Member: member}}
	}
	st := testkit.NewStore(t, testkit.OpenDB(t, dsn),
		cfg("team_members", "crm.members", []string{"teamId", "memberId"}, []string{"deleted"}, "teamId", "crm.members", "memberId"),
		cfg("room_members", "chat.members", []string{"roomId", "memberId"}, []string{"deleted"}, "roomId", "chat.members", "memberId"))
	err := st.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "have one name") {
		t.Fatalf("check = %v, want the two membership tables of one name refused", err)
	}
}

// eventShapes are the lists example with a shared shape keyed by a
// timestamp, and a per-user one.
func eventShapes() []shapes.ShapeConfig {
	return append(testkit.ListShapes(),
		shapes.ShapeConfig{Key: "events", KeyFields: []string{"eventId", "day"}, Fields: []string{"listId", "title", "deleted"},
			Share: &shapes.ShareConfig{Field: "listId", Via: "list_members"}, CreateTable: true,
			FieldTypes: map[string]string{"day": "timestamp", "deleted": "boolean"}},
		shapes.ShapeConfig{Key: "diary", KeyFields: []string{"day"}, Fields: []string{"body"}, CreateTable: true,
			FieldTypes: map[string]string{"day": "timestamp"}})
}

func event(at int, list, day, title string) shapes.Change {
	return testkit.Change("events", testkit.At(at), fmt.Sprintf(`{"eventId":"e1","day":%q,"listId":%q,"title":%q,"deleted":false}`, day, list, title))
}

// A timestamp in a key: a move's tombstone names the row as pulls do (UTC,
// milliseconds), whatever offset the client spelled it in, by push and
// from outside hypersync, so that a device finds the row it holds.
func TestMoveTombstoneOfTimestampKey(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t), eventShapes()...)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "carol", false),
			testkit.Member(3, "M", "alice", false), event(4, "L", "2026-11-25T10:00:00+01:00", "x")), "applied,applied,applied,applied")
		carol := f.NewDevice("carol")
		carol.Sync()
		carol.WantLive(t, "events/e1/2026-11-25T09:00:00.000Z", "list_members/L/alice", "list_members/L/carol")
		testkit.WantOutcomes(t, f.Push("alice", event(10, "M", "2026-11-25T10:00:00+01:00", "x")), "applied")
		carol.Sync()
		carol.WantLive(t, "list_members/L/alice", "list_members/L/carol")
		testkit.WantOutcomes(t, f.Push("alice", event(11, "L", "2026-11-25T09:00:00Z", "x")), "applied")
		carol.Sync()
		carol.WantLive(t, "events/e1/2026-11-25T09:00:00.000Z", "list_members/L/alice", "list_members/L/carol")
		testkit.Exec(t, f.DSN, `UPDATE events SET "listId" = 'M' WHERE "eventId" = 'e1'`)
		carol.Sync()
		carol.WantLive(t, "list_members/L/alice", "list_members/L/carol")
	})
}

// One row named by two spellings of a timestamp key in one push is one
// row to the push too: both changes are decided, and the push does not
// fail (it did: PostgreSQL refuses to update one row twice in one
// statement).
func TestOneRowTwoSpellingsOfTimestampKey(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t), eventShapes()...)
		diary := func(at int, day, body string) shapes.Change {
			return testkit.Change("diary", testkit.At(at), fmt.Sprintf(`{"day":%q,"body":%q}`, day, body))
		}
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), event(2, "L", "2026-11-25T10:00:00Z", "a")), "applied,applied")
		testkit.WantOutcomes(t, f.Push("alice", event(5, "L", "2026-11-25T10:00:00Z", "a"), event(6, "L", "2026-11-25T11:00:00+01:00", "b")), "applied,applied")
		testkit.WantOutcomes(t, f.Push("alice", diary(2, "2026-11-25T10:00:00Z", "a"), diary(3, "2026-11-25T11:00:00+01:00", "b")), "superseded,applied")
		rows, _ := f.Pull("alice", time.Unix(0, 0))
		n := 0
		for _, r := range rows {
			if r.Shape == "diary" || r.Shape == "events" {
				n++
			}
		}
		if n != 2 {
			t.Fatalf("pulled %d events and diary rows, want one of each", n)
		}
	})
}
