package shapes_test

// Cases a second independent review of sharing found, kept as tests.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/shapes"

	"github.com/hypersync/hypersync/internal/testkit"
)

// An outside UPDATE of a membership row that is already removed (a
// backend job touching rows, a no-op re-tombstone) moves its stamp, and
// the removed member's next pull sends move-out tombstones again, now for
// rows created in the scope after they left.
func TestSharedOutsideRetouchOfRemovedMemberSendsNothing(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		bob := f.NewDevice("bob")
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "A", "alice", false), testkit.Member(2, "A", "bob", false), testkit.Todo(3, "a1", "A", "before")), "applied,applied,applied")
		bob.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(4, "A", "bob", true)), "applied")
		bob.Sync()
		testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(5, "secret-after-bob-left", "A", "after")), "applied")
		if got := bob.Sync(); len(got) != 0 {
			t.Fatalf("bob got %v", got)
		}
		// a backend job re-asserts the removal
		testkit.Exec(t, f.DSN, `UPDATE list_members SET deleted = true WHERE "memberId" = 'bob'`)
		for _, r := range bob.Sync() {
			if r.Payload["todoId"] == "secret-after-bob-left" {
				t.Fatalf("bob, removed before it was created, receives %s (user %s)", r.Raw, r.User)
			}
		}
	})
}

var _ = strings.Join

// A shared table of one's own whose bookkeeping columns are timestamp
// without time zone (which hypersync reads and writes as UTC). An outside
// writer in a session whose TimeZone is not UTC moves a row from A to B:
// the trigger records the move's updatedAt (and from_scoped_at, and sets
// scopedAt) through the session's time zone.
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

// A member of 20 lists of 900 members each (each under max_members)
// pushes one todo into each: the push stamps 18,001 cursors, which the
// SQLite driver binds as 2 variables each in one statement.
func TestSharedPushStampsManyMembers(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := sharedLists(t, b)
		var changes []shapes.Change
		for s := 0; s < 20; s++ {
			changes = append(changes, testkit.Member(s, fmt.Sprintf("L%d", s), "alice", false))
		}
		f.Push("alice", changes...)
		c := testkit.Connect(t, f.DSN)
		// setup only: the memberships go in without the stamping trigger
		if _, ok := testkit.IsSQLite(f.DSN); !ok {
			c.Exec(context.Background(), `SET hypersync.writer = 'hypersync'`)
		} else if _, err := c.Exec(context.Background(), `DROP TRIGGER "hypersync_stamp_list_members_insert"`); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(context.Background(), `INSERT INTO list_members ("listId", "memberId", deleted, "userId", "updatedAt", "lastSyncAt", "scopedAt")
			WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM g WHERE n < 18000)
			SELECT 'L' || (n % 20), 'm' || n, false, 'alice', '2026-11-25T10:00:00Z', '2026-11-25T10:00:00Z', '2026-11-25T10:00:00Z' FROM g`); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		defer func() { t.Logf("push took %v", time.Since(start)) }()
		changes = nil
		for s := 0; s < 20; s++ {
			changes = append(changes, testkit.Todo(100+s, fmt.Sprintf("t%d", s), fmt.Sprintf("L%d", s), "x"))
		}
		results := make([]shapes.Result, len(changes))
		if _, err := f.Store.Push(context.Background(), "alice", changes, results); err != nil {
			t.Fatalf("push into 20 lists of 900 members: %v", err)
		}
	})
}

// The tables and triggers `caddy hypersync schema` prints, applied before
// the first start: the store finds the shared triggers stale, and their
// scope locks are not the ones its pushes take.
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

func randomText(n int) string {
	b := make([]byte, n)
	x := uint64(88172645463325252)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[x%62]
	}
	return string(b)
}

// A uuid key sent in upper case: stored and pulled in lower case, but a
// move's tombstone carries the key as the client spelled it.
func TestSharedMoveTombstoneKeyIsCanonical(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	cfgs := testkit.ListShapes()
	cfgs[1].FieldTypes = nil
	cfgs[1].CreateTable = false
	testkit.Exec(t, dsn, `CREATE TABLE todos ("todoId" uuid PRIMARY KEY, "listId" text, title text, done boolean, deleted boolean,
		"userId" text NOT NULL, "updatedAt" timestamptz NOT NULL, "lastSyncAt" timestamptz NOT NULL DEFAULT now(), "scopedAt" timestamptz NOT NULL DEFAULT now())`)
	f := testkit.OpenStore(t, dsn, cfgs...)
	bob := f.NewDevice("bob")
	const id = "0F8FAD5B-D9CB-469F-A165-70867728950E"
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "A", "alice", false), testkit.Member(2, "A", "bob", false),
		testkit.Member(3, "B", "alice", false), testkit.Todo(4, id, "A", "x")), "applied,applied,applied,applied")
	bob.Sync()
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(5, id, "B", "x")), "applied")
	for _, r := range bob.Sync() {
		t.Logf("bob got %s", r.Raw)
	}
	bob.WantLive(t, "list_members/A/alice", "list_members/A/bob")
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

// share.go refuses scope types that "compare wider than their text"
// (case-blind ones among them), but a citext scope resolves; its scope
// lock is keyed by the client's spelling while membership is matched
// case-blind.
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

// A stranger's push that is wholly forbidden still locks and stamps the
// cursor of every member of the scopes it names.
func TestSharedForbiddenPushStampsNobody(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		f := hostileLists(t, b)
		cursor := func() string {
			var s string
			testkit.Query(f.DSN, `SELECT CAST(stamp AS TEXT) FROM hypersync_cursors WHERE user_id = 'carol'`, func(scan func(...any) error) error { return scan(&s) })
			return s
		}
		before := cursor()
		testkit.NextMillisecond()
		wantUnchanged(t, f, "mallory", "rejected:forbidden,rejected:forbidden", testkit.Todo(10, "c1", "C", "x"), testkit.Member(11, "C", "mallory", false))
		if after := cursor(); after != before {
			t.Errorf("carol's cursor moved from %s to %s by mallory's forbidden push", before, after)
		}
	})
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

// Many memberships the database refuses (scopes too long for the key's
// index) beside good ones: every refused one is rejected alone, and the
// good ones are applied, in one decision again, not one per refusal.
func TestSharedManyRefusedMemberships(t *testing.T) {
	f := sharedLists(t, testkit.Postgres())
	var changes []shapes.Change
	const n = 100
	for i := 0; i < n; i++ {
		changes = append(changes, testkit.Member(i, fmt.Sprintf("ok%d", i), "alice", false))
	}
	for i := 0; i < n; i++ {
		changes = append(changes, testkit.Member(n+i, fmt.Sprintf("%d", i)+randomText(9000), "alice", false))
	}
	start := time.Now()
	res := f.Push("alice", changes...)
	t.Logf("%d good and %d refused memberships: %v", n, n, time.Since(start))
	want := strings.TrimSuffix(strings.Repeat("applied,", n)+strings.Repeat("rejected:invalid-payload,", n), ",")
	testkit.WantOutcomes(t, res, want)
}
