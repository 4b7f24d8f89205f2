package shapes

import (
	"context"
	"strings"
	"testing"
)

func TestCreateTable(t *testing.T) {
	cfg := ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"body", "stars", "weight", "pinned", "due", "meta"},
		CreateTable: true, FieldTypes: map[string]string{"body": "text", "stars": "integer", "weight": "real", "pinned": "boolean", "due": "timestamp", "meta": "json"}}
	forEachBackend(t, func(t *testing.T, b backendCase) {
		t.Run("a missing table is created with its sync index", func(t *testing.T) {
			f := openStore(t, b.open(t), cfg)
			shapes, _ := f.store.Shapes(context.Background())
			if !shapes[0].SyncIndex {
				t.Fatal("the created table has no (user, synced_at) index")
			}
			wantOutcomes(t, f.push("alice", change("notes", at(1),
				`{"noteId":"n1","body":"hi","stars":3,"weight":0.5,"pinned":true,"due":"2026-12-01T09:00:00.000Z","meta":{"tags":["a"]}}`)), "applied")
			rows := f.pullAll("alice", "noteId")
			n := rows["n1"]
			if n["body"] != "hi" || n["pinned"] != true || n["due"] != "2026-12-01T09:00:00.000Z" || n["stars"].(interface{ String() string }).String() != "3" {
				t.Fatalf("row = %v", n)
			}
			if meta, ok := n["meta"].(map[string]any); !ok || len(meta["tags"].([]any)) != 1 {
				t.Fatalf("meta = %#v, want embedded JSON", n["meta"])
			}
			wantOutcomes(t, f.push("alice", change("notes", at(2), `{"noteId":"n2","stars":"three"}`)), "rejected:invalid-payload")
		})
		t.Run("an existing table is never altered", func(t *testing.T) {
			dsn := b.open(t, `CREATE TABLE notes (noteId text PRIMARY KEY, body text, userId text, updatedAt timestamptz, lastSyncAt timestamptz)`)
			db, err := Open(dsn, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Destruct()
			st, _ := NewStore(db, []ShapeConfig{cfg}, nil)
			err = st.Check(context.Background())
			if err == nil || !strings.Contains(err.Error(), `no column for field "stars"`) {
				t.Fatalf("check = %v, want the missing column named", err)
			}
		})
	})
}
