package shapes_test

import (
	"context"
	"strings"
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

func TestCreateTable(t *testing.T) {
	cfg := shapes.ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"body", "stars", "weight", "pinned", "due", "meta"},
		CreateTable: true, FieldTypes: map[string]string{"body": "text", "stars": "integer", "weight": "real", "pinned": "boolean", "due": "timestamp", "meta": "json"}}
	testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
		t.Run("a missing table is created with its sync index", func(t *testing.T) {
			f := testkit.OpenStore(t, b.Open(t), cfg)
			resolved, _ := f.Store.Shapes(context.Background())
			if !resolved[0].SyncIndex {
				t.Fatal("the created table has no (user, synced_at) index")
			}
			testkit.WantOutcomes(t, f.Push("alice", testkit.Change("notes", testkit.At(1),
				`{"noteId":"n1","body":"hi","stars":3,"weight":0.5,"pinned":true,"due":"2026-12-01T09:00:00.000Z","meta":{"tags":["a"]}}`)), "applied")
			rows := f.PullAll("alice", "noteId")
			n := rows["n1"]
			if n["body"] != "hi" || n["pinned"] != true || n["due"] != "2026-12-01T09:00:00.000Z" || n["stars"].(interface{ String() string }).String() != "3" {
				t.Fatalf("row = %v", n)
			}
			if meta, ok := n["meta"].(map[string]any); !ok || len(meta["tags"].([]any)) != 1 {
				t.Fatalf("meta = %#v, want embedded JSON", n["meta"])
			}
			testkit.WantOutcomes(t, f.Push("alice", testkit.Change("notes", testkit.At(2), `{"noteId":"n2","stars":"three"}`)), "rejected:invalid-payload")
		})
		t.Run("an existing table is never altered", func(t *testing.T) {
			dsn := b.Open(t, `CREATE TABLE notes (noteId text PRIMARY KEY, body text, userId text, updatedAt timestamptz, lastSyncAt timestamptz)`)
			db, err := shapes.Open(dsn, shapes.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Destruct()
			st, _ := shapes.NewStore(db, []shapes.ShapeConfig{cfg}, nil)
			err = st.Check(context.Background())
			if err == nil || !strings.Contains(err.Error(), `no column for field "stars"`) {
				t.Fatalf("check = %v, want the missing column named", err)
			}
		})
	})
}
