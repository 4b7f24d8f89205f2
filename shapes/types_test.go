package shapes_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

func TestTypesRoundTrip(t *testing.T) {
	testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t, testkit.TypesDDL), testkit.ThingsShape)
		testkit.WantOutcomes(t, f.Push("alice", testkit.Change("things", testkit.At(1), `{
			"id":"x1","t":"hé \"quoted\" 'single'","b":true,"i":-42,"big":9007199254740993,"n":1234.125,
			"d":1.5,"ts":"2026-01-02T03:04:05.678+02:00","u":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
			"j":{"nested":[1,"two",{"three":null}]},"tags":["a","b,c"]}`)), "applied")
		pulled, _, err := testkit.PullStore(f.Store, "alice", testkit.At(0).AddDate(-100, 0, 0), 0)
		if err != nil || len(pulled) != 1 {
			t.Fatal(pulled, err)
		}
		raw := pulled[0].Raw
		var got map[string]json.RawMessage
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatalf("payload %s: %v", raw, err)
		}
		want := map[string]string{
			"id":   `"x1"`,
			"t":    `"hé \"quoted\" 'single'"`,
			"b":    `true`,
			"i":    `-42`,
			"big":  `9007199254740993`,
			"n":    `1234.125`,
			"d":    `1.5`,
			"ts":   `"2026-01-02T01:04:05.678Z"`,
			"u":    `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`,
			"j":    `{"nested":[1,"two",{"three":null}]}`,
			"tags": `["a","b,c"]`,
		}
		for k, w := range want {
			if g := compactJSON(t, got[k]); g != w {
				t.Errorf("%s = %s, want %s", k, g, w)
			}
		}
		if len(got) != len(want) {
			t.Errorf("payload has %d fields, want %d: %s", len(got), len(want), raw)
		}
	})
}

func compactJSON(t *testing.T, raw json.RawMessage) string {
	var v any
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return "invalid: " + string(raw)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

func TestTypeRejections(t *testing.T) {
	cases := []struct {
		name    string
		payload string
	}{
		{"string for boolean", `{"id":"r","b":"yes"}`},
		{"number for text", `{"id":"r","t":5}`},
		{"fraction for integer", `{"id":"r","i":1.5}`},
		{"integer beyond int32", `{"id":"r","i":2147483648}`},
		{"integer beyond int64", `{"id":"r","big":9223372036854775808}`},
		{"float beyond float64", `{"id":"r","d":1e400}`},
		{"string for numeric", `{"id":"r","n":"12"}`},
		{"timestamp that is not RFC 3339", `{"id":"r","ts":"25/11/2026"}`},
		{"number for timestamp", `{"id":"r","ts":1764000000000}`},
		{"malformed uuid", `{"id":"r","u":"not-a-uuid"}`},
		{"object for array", `{"id":"r","tags":{"a":1}}`},
		{"NUL in text", `{"id":"r","t":"a\u0000b"}`},
		{"NUL inside json", `{"id":"r","j":{"k":"\u0000"}}`},
	}
	testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
		f := testkit.OpenStore(t, b.Open(t, testkit.TypesDDL), testkit.ThingsShape)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				good := testkit.Change("things", testkit.At(1), `{"id":"ok-`+tc.name+`","t":"fine"}`)
				got := f.Push("alice", testkit.Change("things", testkit.At(1), tc.payload), good)
				testkit.WantOutcomes(t, got, "rejected:invalid-payload,applied")
				if got[0].Message == "" {
					t.Fatal("a rejection carries no message")
				}
			})
		}
		rows := f.PullAll("alice", "id")
		if _, bad := rows["r"]; bad {
			t.Fatalf("a rejected change was written: %v", rows["r"])
		}
		if len(rows) != len(cases) {
			t.Fatalf("%d good rows written, want %d", len(rows), len(cases))
		}
	})
}

func TestTableLayouts(t *testing.T) {
	t.Run("schema-qualified table", func(t *testing.T) {
		testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
			if b.Name == "sqlite" {
				t.Skip("SQLite has no schemas")
			}
			f := testkit.OpenStore(t, b.Open(t, `CREATE SCHEMA app`, `CREATE TABLE app.todos (
				"todoId" text PRIMARY KEY, title text, "userId" text NOT NULL, "updatedAt" timestamptz, "lastSyncAt" timestamptz)`,
				`CREATE TABLE public.todos (x int)`),
				shapes.ShapeConfig{Key: "todos", Table: "app.todos", KeyFields: []string{"todoId"}})
			testkit.WantOutcomes(t, f.Push("alice", testkit.Change("todos", testkit.At(1), `{"todoId":"t1","title":"in app"}`)), "applied")
			rows := f.PullAll("alice", "todoId")
			if rows["t1"]["title"] != "in app" {
				t.Fatalf("rows = %v", rows)
			}
		})
	})
	t.Run("composite key", func(t *testing.T) {
		testkit.ForEachBackend(t, func(t *testing.T, b testkit.Backend) {
			f := testkit.OpenStore(t, b.Open(t, `CREATE TABLE items (
				listId text NOT NULL, pos integer NOT NULL, label text,
				userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz,
				PRIMARY KEY (listId, pos))`),
				shapes.ShapeConfig{Key: "items", KeyFields: []string{"listId", "pos"}, Fields: []string{"label"}})
			testkit.WantOutcomes(t, f.Push("alice",
				testkit.Change("items", testkit.At(1), `{"listId":"l1","pos":1,"label":"a"}`),
				testkit.Change("items", testkit.At(1), `{"listId":"l1","pos":2,"label":"b"}`),
				testkit.Change("items", testkit.At(1), `{"listId":"l2","pos":1,"label":"c"}`),
				testkit.Change("items", testkit.At(2), `{"listId":"l1","pos":1,"label":"a2"}`),
				testkit.Change("items", testkit.At(2), `{"listId":"l1","label":"no pos"}`),
			), "superseded,applied,applied,applied,rejected:invalid-payload")
			rows, _ := f.Pull("alice", testkit.At(0).AddDate(-1, 0, 0))
			got := map[string]any{}
			for _, r := range rows {
				got[r.Payload["listId"].(string)+"/"+string(r.Payload["pos"].(json.Number))] = r.Payload["label"]
			}
			want := map[string]any{"l1/1": "a2", "l1/2": "b", "l2/1": "c"}
			if len(got) != len(want) {
				t.Fatalf("rows = %v, want %v", got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Fatalf("rows = %v, want %v", got, want)
				}
			}
		})
	})
}
