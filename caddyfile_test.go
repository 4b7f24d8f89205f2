package hypersync

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/hypersync/hypersync/shapes"
)

var liveOn, liveOff = true, false

func TestUnmarshalCaddyfile(t *testing.T) {
	fifty := 50
	cases := []struct {
		name    string
		input   string
		want    *HyperSync
		wantErr string // substring of the error
		line    int    // the line the error must name, when set
	}{
		{
			name: "the issue's example",
			input: `hypersync {
				database {env.DATABASE_URL}
				shape todos {
					key todoId
					fields title description done deleted
				}
			}`,
			want: &HyperSync{Database: "{env.DATABASE_URL}", Shapes: []shapes.ShapeConfig{
				{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title", "description", "done", "deleted"}}}},
		},
		{
			name: "every option",
			input: `hypersync {
				database postgres://u:p@db/app
				user_id {http.request.header.X-User}
				max_batch 500
				max_body 2MB
				timeout 3s
				max_concurrent_pushes 4
				max_concurrent_pulls 12
				metrics off
				shape items {
					table app.list_items
					key listId pos
					fields label
					fields done
					user_column owner
					updated_at_column changed
					synced_at_column stamped
				}
				shape notes {
					key id
					create_table
					field body text
					field pinned boolean
				}
			}`,
			want: &HyperSync{Database: "postgres://u:p@db/app", UserID: "{http.request.header.X-User}", MaxBatch: 500, MaxBody: 2000000, Timeout: 3e9, MaxConcurrentPushes: 4, MaxConcurrentPulls: 12, DisableMetrics: true,
				Shapes: []shapes.ShapeConfig{
					{Key: "items", Table: "app.list_items", KeyFields: []string{"listId", "pos"}, Fields: []string{"label", "done"},
						UserColumn: "owner", UpdatedAtColumn: "changed", SyncedAtColumn: "stamped"},
					{Key: "notes", KeyFields: []string{"id"}, Fields: []string{"body", "pinned"}, CreateTable: true,
						FieldTypes: map[string]string{"body": "text", "pinned": "boolean"}},
				}},
		},
		{
			name: "the sharing issue's example",
			input: `hypersync {
				database {env.DATABASE_URL}
				shape lists {
					key listId
					fields name deleted
					share listId via list_members
				}
				shape todos {
					key todoId
					fields listId title done deleted
					share listId via list_members
					tombstone deleted
					scoped_at_column enteredAt
				}
				shape list_members {
					key listId memberId
					fields deleted
					share listId via list_members memberId
				}
			}`,
			want: &HyperSync{Database: "{env.DATABASE_URL}", Shapes: []shapes.ShapeConfig{
				{Key: "lists", KeyFields: []string{"listId"}, Fields: []string{"name", "deleted"}, Share: &shapes.ShareConfig{Field: "listId", Via: "list_members"}},
				{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"listId", "title", "done", "deleted"},
					Share: &shapes.ShareConfig{Field: "listId", Via: "list_members"}, Tombstone: "deleted", ScopedAtColumn: "enteredAt"},
				{Key: "list_members", KeyFields: []string{"listId", "memberId"}, Fields: []string{"deleted"},
					Share: &shapes.ShareConfig{Field: "listId", Via: "list_members", Member: "memberId"}},
			}},
		},
		{name: "share without via", input: "hypersync {\n shape todos {\n key id\n fields listId\n share listId list_members\n }\n}", wantErr: `shape "todos": share takes <field> via <table> [<member column>], not "listId list_members"`, line: 5},
		{name: "share with too many words", input: "hypersync {\n shape todos {\n key id\n fields listId\n share listId via m userId extra\n }\n}", wantErr: `share takes <field> via <table> [<member column>]`, line: 5},
		{name: "share given twice", input: "hypersync {\n shape todos {\n key id\n fields listId\n share listId via m\n share listId via n\n }\n}", wantErr: `share given twice in shape "todos"`, line: 6},
		{name: "share of an unknown field", input: "hypersync {\n shape todos {\n key id\n fields title\n share listId via m\n }\n}", wantErr: `share field "listId" is neither a key field nor a field`},
		{name: "share via a bad table name", input: "hypersync {\n shape todos {\n key id\n fields listId\n share listId via a.b.c\n }\n}", wantErr: `table name "a.b.c" has more than one dot`, line: 5},
		{name: "tombstone not a field", input: "hypersync {\n shape todos {\n key id\n fields title\n tombstone gone\n }\n}", wantErr: `tombstone "gone" is not one of the shape's fields`},
		{name: "tombstone without a value", input: "hypersync {\n shape todos {\n key id\n tombstone\n }\n}", wantErr: "wrong argument count or unexpected line ending after 'tombstone'", line: 4},
		{name: "tombstone of another type", input: "hypersync {\n shape todos {\n key id\n create_table\n field gone text\n tombstone gone\n }\n}", wantErr: `tombstone "gone" must be a boolean field, not text`},
		{name: "scoped_at_column without share", input: "hypersync {\n shape todos {\n key id\n fields title\n scoped_at_column s\n }\n}", wantErr: "scoped_at_column is only used with share"},
		{name: "membership shape not shared through itself", input: "hypersync {\n shape todos {\n key id\n fields listId\n share listId via list_members memberId\n }\n shape list_members {\n key listId memberId\n fields deleted\n }\n}", wantErr: `shape "list_members" is the membership table of shape "todos" (share … via list_members), so it must be shared through itself: share listId via list_members memberId`, line: 1},
		{name: "membership shape keyed without its member", input: "hypersync {\n shape list_members {\n key listId\n fields memberId deleted\n share listId via list_members memberId\n }\n}", wantErr: `membership shape "list_members": its key must hold the scope field "listId" and the member column "memberId"`},
		{name: "membership shape without a tombstone", input: "hypersync {\n shape list_members {\n key listId memberId\n share listId via list_members memberId\n }\n}", wantErr: `membership shape "list_members" needs a tombstone field to remove members`},
		{name: "two member columns for one table", input: "hypersync {\n shape a {\n key id\n fields t\n share t via m userId\n }\n shape b {\n key id\n fields t\n share t via m memberId\n }\n}", wantErr: `names member column`},
		{name: "max_members not a number", input: "hypersync {\n max_members lots\n}", wantErr: `max_members "lots" is not a positive whole number`, line: 2},
		{name: "max_scopes_per_user zero", input: "hypersync {\n max_scopes_per_user 0\n}", wantErr: `max_scopes_per_user "0" is not a positive whole number`, line: 2},
		{
			name: "the live options",
			input: `hypersync {
				live on
				heartbeat 10s
				max_streams 500
				max_streams_per_user 4
				stream_max_age 5m
				listen_database postgres://u:p@db-direct/app
				shape todos {
					key todoId
				}
			}`,
			want: &HyperSync{Live: &liveOn, Heartbeat: caddy.Duration(10 * time.Second), MaxStreams: 500, MaxStreamsPerUser: 4,
				StreamMaxAge: caddy.Duration(5 * time.Minute), ListenDatabase: "postgres://u:p@db-direct/app",
				Shapes: []shapes.ShapeConfig{{Key: "todos", KeyFields: []string{"todoId"}}}},
		},
		{
			name: "hot standbys",
			input: `hypersync {
				database postgres://u:p@primary/app
				read_database postgres://u:p@standby1/app
				read_database {env.STANDBY2}
				read_max_lag 500ms
				shape todos {
					key todoId
				}
			}`,
			want: &HyperSync{Database: "postgres://u:p@primary/app", ReadDatabases: []string{"postgres://u:p@standby1/app", "{env.STANDBY2}"},
				ReadMaxLag: caddy.Duration(500 * time.Millisecond), Shapes: []shapes.ShapeConfig{{Key: "todos", KeyFields: []string{"todoId"}}}},
		},
		{name: "read_database on SQLite", input: "hypersync {\n database sqlite:./app.db\n read_database postgres://u:secret@standby/app\n shape t {\n key id\n }\n}",
			wantErr: "read_database is for PostgreSQL: database sqlite:./app.db is SQLite, a file on this machine, which has no standbys", line: 3},
		{name: "read_database without database", input: "hypersync {\n read_database postgres://standby/app\n shape t {\n key id\n }\n}",
			wantErr: "read_database is for PostgreSQL", line: 2},
		{name: "read_database not PostgreSQL", input: "hypersync {\n database postgres://x\n read_database sqlite:./x.db\n}", wantErr: `read_database "sqlite:./x.db" is not a postgres:// DSN`, line: 3},
		{name: "read_database without a value", input: "hypersync {\n read_database\n}", wantErr: "wrong argument count or unexpected line ending after 'read_database'", line: 2},
		{name: "read_max_lag not a duration", input: "hypersync {\n read_max_lag soon\n}", wantErr: `read_max_lag "soon" is not a positive duration such as 2s`, line: 2},
		{name: "read_max_lag zero", input: "hypersync {\n read_max_lag 0s\n}", wantErr: `read_max_lag "0s" is not a positive duration`, line: 2},
		{name: "live off", input: "hypersync {\n live off\n shape t {\n key id\n }\n}",
			want: &HyperSync{Live: &liveOff, Shapes: []shapes.ShapeConfig{{Key: "t", KeyFields: []string{"id"}}}}},
		{name: "live neither on nor off", input: "hypersync {\n live maybe\n}", wantErr: `live takes on or off, not "maybe"`, line: 2},
		{name: "cursor_cookie neither on nor off", input: "hypersync {\n cursor_cookie no\n}", wantErr: `cursor_cookie takes on or off, not "no"`, line: 2},
		{name: "refusal_rate", input: "hypersync {\n refusal_rate 50\n shape t {\n key id\n }\n}",
			want: &HyperSync{RefusalRate: &fifty, Shapes: []shapes.ShapeConfig{{Key: "t", KeyFields: []string{"id"}}}}},
		{name: "refusal_rate not a number", input: "hypersync {\n refusal_rate lots\n}", wantErr: `refusal_rate "lots" is not a whole number (0 sets no limit)`, line: 2},
		{name: "keep_rejections negative", input: "hypersync {\n keep_rejections -1\n}", wantErr: `keep_rejections "-1" is not a whole number (0 keeps none)`, line: 2},
		{name: "heartbeat not a duration", input: "hypersync {\n heartbeat often\n}", wantErr: `heartbeat "often" is not a positive duration`, line: 2},
		{name: "stream_max_age zero", input: "hypersync {\n stream_max_age 0s\n}", wantErr: `stream_max_age "0s" is not a positive duration`, line: 2},
		{name: "max_streams not a number", input: "hypersync {\n max_streams lots\n}", wantErr: `max_streams "lots" is not a positive whole number`, line: 2},
		{name: "max_streams_per_user zero", input: "hypersync {\n max_streams_per_user 0\n}", wantErr: `max_streams_per_user "0" is not a positive whole number`, line: 2},
		{name: "listen_database not PostgreSQL", input: "hypersync {\n listen_database sqlite:./x.db\n}", wantErr: `listen_database "sqlite:./x.db" is not a postgres:// DSN`, line: 2},
		{name: "listen_database of an unknown kind", input: "hypersync {\n database postgres://x\n listen_database mysql://u:secret@x/app\n}", wantErr: `listen_database "mysql://u:xxxxx@x/app" is not a postgres:// DSN`, line: 3},
		{name: "argument after the directive", input: "hypersync extra {\n shape t {\n key id\n }\n}", wantErr: "wrong argument count or unexpected line ending after 'extra'", line: 1},
		{name: "unsupported database scheme", input: "hypersync {\n database mysql://x\n}", wantErr: `unsupported database "mysql://x": use postgres://…, postgresql://… or sqlite:<path>`, line: 2},
		{name: "no shapes", input: "hypersync {\n database postgres://x\n}", wantErr: "hypersync needs at least one shape block", line: 1},
		{name: "unknown option", input: "hypersync {\n databse postgres://x\n}", wantErr: `unrecognized hypersync option "databse"`, line: 2},
		{name: "database without a value", input: "hypersync {\n database\n}", wantErr: "wrong argument count or unexpected line ending after 'database'", line: 2},
		{name: "user_id without a placeholder", input: "hypersync {\n user_id alice\n}", wantErr: `user_id "alice" is not a placeholder`, line: 2},
		{name: "max_batch not a number", input: "hypersync {\n max_batch lots\n}", wantErr: `max_batch "lots" is not a positive whole number`, line: 2},
		{name: "max_concurrent_pulls not a number", input: "hypersync {\n max_concurrent_pulls many\n}", wantErr: `max_concurrent_pulls "many" is not a positive whole number`, line: 2},
		{name: "metrics neither on nor off", input: "hypersync {\n metrics maybe\n}", wantErr: `metrics takes on or off, not "maybe"`, line: 2},
		{name: "max_batch zero", input: "hypersync {\n max_batch 0\n}", wantErr: `max_batch "0" is not a positive whole number`},
		{name: "max_body not a size", input: "hypersync {\n max_body big\n}", wantErr: `max_body "big" is not a size`, line: 2},
		{name: "timeout not a duration", input: "hypersync {\n timeout soon\n}", wantErr: `timeout "soon" is not a positive duration`, line: 2},
		{name: "shape without a key line", input: "hypersync {\n shape todos {\n fields title\n }\n}", wantErr: `shape "todos" needs a key`},
		{name: "shape without a name", input: "hypersync {\n shape {\n key id\n }\n}", wantErr: "shape needs a shapeKey"},
		{name: "unknown shape option", input: "hypersync {\n shape todos {\n key id\n colour red\n }\n}", wantErr: `unrecognized option "colour" in shape "todos"`, line: 4},
		{name: "key without fields", input: "hypersync {\n shape todos {\n key\n }\n}", wantErr: "wrong argument count or unexpected line ending after 'key'", line: 3},
		{name: "table with two dots", input: "hypersync {\n shape todos {\n table a.b.c\n key id\n }\n}", wantErr: `shape "todos": table name "a.b.c" has more than one dot`, line: 3},
		{name: "table given twice", input: "hypersync {\n shape todos {\n table a\n table b\n key id\n }\n}", wantErr: `table given twice in shape "todos"`, line: 4},
		{name: "shape defined twice", input: "hypersync {\n shape todos {\n key id\n }\n shape todos {\n key id\n }\n}", wantErr: `shape "todos" is defined twice`},
		{name: "field named as key and field", input: "hypersync {\n shape todos {\n key id\n fields id title\n }\n}", wantErr: `field "id" is named twice`},
		{name: "bookkeeping column as a field", input: "hypersync {\n shape todos {\n key id\n fields title userId\n }\n}", wantErr: `"userId" is a bookkeeping column`},
		{name: "unknown field type", input: "hypersync {\n shape todos {\n key id\n create_table\n field title varchar\n }\n}", wantErr: `field "title": unknown type "varchar"`, line: 5},
		{name: "field types without create_table", input: "hypersync {\n shape todos {\n key id\n field title text\n }\n}", wantErr: "field types are only used with create_table"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(tc.input)
			got := new(HyperSync)
			err := got.UnmarshalCaddyfile(d)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				if at := fmt.Sprintf("at Testfile:%d", tc.line); tc.line > 0 && !strings.HasSuffix(err.Error(), at) {
					t.Fatalf("error = %v, want it to end %q", err, at)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestCaddyfileAdapt compares each testdata/caddyfile_adapt/*.caddyfiletest
// (a Caddyfile, a line of dashes, the JSON it adapts to) with the adapter.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt tests found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.SplitN(string(data), "----------", 2)
			if len(parts) != 2 {
				t.Fatalf("%s has no ---------- separator", f)
			}
			if !caddytest.CompareAdapt(t, f, parts[0], "caddyfile", strings.TrimSpace(parts[1])) {
				t.Fail()
			}
		})
	}
}
