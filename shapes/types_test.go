package shapes

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/hypersync/hypersync/internal/pgtest"
)

const typesDDL = `CREATE TABLE things (
	id text PRIMARY KEY,
	t text, b boolean, i int4, big bigint, n numeric, d double precision,
	ts timestamptz, u uuid, j jsonb, tags text[],
	userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz)`

var thingsShape = ShapeConfig{Key: "things", KeyFields: []string{"id"}}

func TestTypesRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backendCase) {
		f := openStore(t, b.open(t, typesDDL), thingsShape)
		wantOutcomes(t, f.push("alice", change("things", at(1), `{
			"id":"x1","t":"hé \"quoted\" 'single'","b":true,"i":-42,"big":9007199254740993,"n":1234.125,
			"d":1.5,"ts":"2026-01-02T03:04:05.678+02:00","u":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
			"j":{"nested":[1,"two",{"three":null}]},"tags":["a","b,c"]}`)), "applied")
		var raw json.RawMessage
		_, err := f.store.Pull(t.Context(), "alice", at(0).AddDate(-100, 0, 0), 0, func(r PulledRow) error {
			raw = append(raw[:0], r.Payload...)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
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
	dec := json.NewDecoder(jsonReader(raw))
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
	forEachBackend(t, func(t *testing.T, b backendCase) {
		f := openStore(t, b.open(t, typesDDL), thingsShape)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				good := change("things", at(1), `{"id":"ok-`+tc.name+`","t":"fine"}`)
				got := f.push("alice", change("things", at(1), tc.payload), good)
				wantOutcomes(t, got, "rejected:invalid-payload,applied")
				if got[0].Message == "" {
					t.Fatal("a rejection carries no message")
				}
			})
		}
		rows := f.pullAll("alice", "id")
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
		forEachBackend(t, func(t *testing.T, b backendCase) {
			if b.name == "sqlite" {
				t.Skip("SQLite has no schemas")
			}
			f := openStore(t, b.open(t, `CREATE SCHEMA app`, `CREATE TABLE app.todos (
				"todoId" text PRIMARY KEY, title text, "userId" text NOT NULL, "updatedAt" timestamptz, "lastSyncAt" timestamptz)`,
				`CREATE TABLE public.todos (x int)`),
				ShapeConfig{Key: "todos", Table: "app.todos", KeyFields: []string{"todoId"}})
			wantOutcomes(t, f.push("alice", change("todos", at(1), `{"todoId":"t1","title":"in app"}`)), "applied")
			rows := f.pullAll("alice", "todoId")
			if rows["t1"]["title"] != "in app" {
				t.Fatalf("rows = %v", rows)
			}
		})
	})
	t.Run("composite key", func(t *testing.T) {
		forEachBackend(t, func(t *testing.T, b backendCase) {
			f := openStore(t, b.open(t, `CREATE TABLE items (
				listId text NOT NULL, pos integer NOT NULL, label text,
				userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz,
				PRIMARY KEY (listId, pos))`),
				ShapeConfig{Key: "items", KeyFields: []string{"listId", "pos"}, Fields: []string{"label"}})
			wantOutcomes(t, f.push("alice",
				change("items", at(1), `{"listId":"l1","pos":1,"label":"a"}`),
				change("items", at(1), `{"listId":"l1","pos":2,"label":"b"}`),
				change("items", at(1), `{"listId":"l2","pos":1,"label":"c"}`),
				change("items", at(2), `{"listId":"l1","pos":1,"label":"a2"}`),
				change("items", at(2), `{"listId":"l1","label":"no pos"}`),
			), "superseded,applied,applied,applied,rejected:invalid-payload")
			rows, _ := f.pull("alice", at(0).AddDate(-1, 0, 0))
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
			pgtest.Exec(t, dsn, typesDDL)
			f := openStore(t, pgtest.WithParam(dsn, "default_query_exec_mode", mode), thingsShape)
			if binary := f.db.d.(*postgres).binary; binary != (mode != "exec" && mode != "simple_protocol") {
				t.Fatalf("binary arrays = %v in mode %s", binary, mode)
			}
			var changes []Change
			for _, p := range payloads {
				changes = append(changes, change("things", at(1), p))
			}
			wantOutcomes(t, f.push("alice", changes...), "applied,applied,applied,applied,applied")
			out, _ := json.Marshal(f.pullAll("alice", "id"))
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
