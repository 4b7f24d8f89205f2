package handler_test

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/handler"
)

// hostileDDL adds the column types the hostile cases aim at.
const hostileDDL = `CREATE TABLE todos (
todoId TEXT NOT NULL PRIMARY KEY,
title TEXT NOT NULL,
description TEXT,
done BOOLEAN NOT NULL DEFAULT false,
deleted BOOLEAN NOT NULL DEFAULT false,
priority INTEGER,
score DOUBLE PRECISION,
meta JSONB,
userId TEXT NOT NULL,
updatedAt TIMESTAMP WITH TIME ZONE,
lastSyncAt TIMESTAMP WITH TIME ZONE
);
CREATE INDEX todos_description ON todos (description)`

type hostileCase struct {
	name        string
	method      string // default POST
	path        string // default /sync/push
	user        string // default alice; "-" for none
	contentType string // default application/json
	body        string
	status      int
	code        string   // the error code of a refused request
	rejected    []string // the codes of the rejected changes of a 201, in order
	accepted    int      // how many changes a 201 accepts
	writes      []string // keys the case may write; every other row must stay as it was
	check       func(t *testing.T, e *env, answer string)
	// onStore overrides rejected and accepted on a store whose limits
	// differ (SQLite has no index row size limit).
	onStore map[string]storeOutcome
}

type storeOutcome struct {
	rejected []string
	accepted int
}

// incompressible returns n letters that no compression shrinks much, so
// that PostgreSQL stores them at full size, in its indexes too.
func incompressible(n int) string {
	rng := rand.New(rand.NewSource(int64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + rng.Intn(26))
	}
	return string(b)
}

func ch(id, key, updated, payload string) string {
	return fmt.Sprintf(`{"changeId":%q,"shapeKey":"todos","pushed":0,"userId":"alice","updatedAt":%q,"payload":%s}`, id, updated, strings.Replace(payload, "KEY", key, 1))
}

func push(changes ...string) string { return `{"changes":[` + strings.Join(changes, ",") + `]}` }

const ts = "2026-11-25T10:00:00.000Z"

func nested(depth int) string {
	return strings.Repeat(`{"a":`, depth) + "1" + strings.Repeat("}", depth)
}

func hostileCases() []hostileCase {
	good := func(key string) string { return ch("ok-"+key, key, ts, `{"todoId":"KEY","title":"fine"}`) }
	valid := push(good("v1"))
	return []hostileCase{
		// the request as a whole
		{name: "invalid JSON", body: `{"changes":[`, status: 400, code: "invalid-json"},
		{name: "truncated body", body: valid[:len(valid)/2], status: 400, code: "invalid-json"},
		{name: "empty body", body: ``, status: 400, code: "invalid-json"},
		{name: "wrong content type", contentType: "text/plain", body: valid, status: 415, code: "unsupported-media-type"},
		{name: "form content type", contentType: "application/x-www-form-urlencoded", body: valid, status: 415, code: "unsupported-media-type"},
		{name: "no content type", contentType: "-", body: valid, status: 415, code: "unsupported-media-type"},
		{name: "invalid UTF-8", body: "{\"changes\":[" + strings.Replace(good("u8"), "fine", "fi\xffne", 1) + "]}", status: 400, code: "invalid-json"},
		{name: "body that is an array", body: `[` + valid + `]`, status: 400, code: "invalid-json"},
		{name: "changes that is an object", body: `{"changes":{"0":` + good("o") + `}}`, status: 400, code: "invalid-request"},
		{name: "changes that is a string", body: `{"changes":"all of them"}`, status: 400, code: "invalid-request"},
		{name: "changes that is null", body: `{"changes":null}`, status: 400, code: "invalid-request"},
		{name: "changes missing", body: `{"change":[]}`, status: 400, code: "invalid-request"},
		{name: "nesting deeper than the JSON decoder allows", body: push(ch("n1", "deep2", ts, `{"todoId":"KEY","title":"x","meta":`+nested(20000)+`}`)), status: 400, code: "invalid-json"},
		{name: "body above max_body", body: push(ch("big", "big", ts, `{"todoId":"KEY","title":"`+strings.Repeat("x", 17<<20)+`"}`)), status: 413, code: "body-too-large"},
		{name: "batch above max_batch", body: push(strings.TrimSuffix(strings.Repeat(good("mb")+",", 1001), ",")), status: 413, code: "batch-too-large"},
		{name: "GET on push", method: "GET", status: 405, code: "method-not-allowed"},
		{name: "PUT on push", method: "PUT", body: valid, status: 405, code: "method-not-allowed"},
		{name: "POST on pull", path: "/sync/pull", body: valid, status: 405, code: "method-not-allowed"},
		{name: "extra path segment", path: "/sync/push/extra", body: valid, status: 404, code: "not-found"},
		{name: "unknown operation", method: "GET", path: "/sync/status", status: 404, code: "not-found"},
		{name: "no user", user: "-", body: valid, status: 401, code: "unauthenticated"},
		{name: "pull without a user", method: "GET", path: "/sync/pull", user: "-", status: 401, code: "unauthenticated"},
		{name: "lastPull unparsable", method: "GET", path: "/sync/pull?lastPull=yesterday", status: 400, code: "invalid-last-pull"},
		{name: "limit that is not a number", method: "GET", path: "/sync/pull?limit=many", status: 400, code: "invalid-limit"},
		{name: "limit of zero", method: "GET", path: "/sync/pull?limit=0", status: 400, code: "invalid-limit"},
		// later than anything the server can have handed the user: from
		// the epoch, with a cursor that is not from the future
		{name: "lastPull in the future", method: "GET", path: "/sync/pull?lastPull=2999-01-01T00:00:00.000Z", status: 200,
			check: func(t *testing.T, e *env, answer string) {
				v := decode(t, answer)
				if n := len(v["changes"].([]any)); n == 0 || v["syncedAt"].(string) > "2999" {
					t.Fatalf("a future lastPull returned %d changes and syncedAt %v; want every row, from the epoch", n, v["syncedAt"])
				}
			}},
		{name: "lastPull before the epoch", method: "GET", path: "/sync/pull?lastPull=1900-01-01T00:00:00.000Z", status: 200,
			check: func(t *testing.T, e *env, answer string) {
				if n := len(decode(t, answer)["changes"].([]any)); n == 0 {
					t.Fatal("a pre-epoch lastPull returned nothing")
				}
			}},

		// one change at a time: the others in the push are still accepted
		{name: "a change that is a string", body: push(`"hello"`, good("s1")), status: 201, rejected: []string{"invalid-change"}, accepted: 1, writes: []string{"s1"}},
		{name: "a change that is null", body: push(`null`, good("s2")), status: 201, rejected: []string{"invalid-change"}, accepted: 1, writes: []string{"s2"}},
		{name: "a change that is an array", body: push(`[1]`, good("s3")), status: 201, rejected: []string{"invalid-change"}, accepted: 1, writes: []string{"s3"}},
		{name: "missing changeId", body: push(`{"shapeKey":"todos","userId":"alice","updatedAt":"`+ts+`","payload":{"todoId":"x","title":"x"}}`, good("s4")), status: 201, rejected: []string{"invalid-change"}, accepted: 1, writes: []string{"s4"}},
		{name: "null changeId", body: push(`{"changeId":null,"shapeKey":"todos","userId":"alice","updatedAt":"`+ts+`","payload":{"todoId":"x","title":"x"}}`, good("s5")), status: 201, rejected: []string{"invalid-change"}, accepted: 1, writes: []string{"s5"}},
		{name: "numeric changeId", body: push(`{"changeId":7,"shapeKey":"todos","userId":"alice","updatedAt":"`+ts+`","payload":{"todoId":"x","title":"x"}}`, good("s6")), status: 201, rejected: []string{"invalid-change"}, accepted: 1, writes: []string{"s6"}},
		{name: "missing shapeKey", body: push(`{"changeId":"m","userId":"alice","updatedAt":"`+ts+`","payload":{"todoId":"x","title":"x"}}`, good("s7")), status: 201, rejected: []string{"invalid-change"}, accepted: 1, writes: []string{"s7"}},
		{name: "unknown shapeKey", body: push(strings.Replace(ch("u", "x", ts, `{"todoId":"KEY","title":"x"}`), `"todos"`, `"notes"`, 1), good("s8")), status: 201, rejected: []string{"unknown-shape"}, accepted: 1, writes: []string{"s8"}},
		{name: "null userId", body: push(strings.Replace(ch("nu", "x", ts, `{"todoId":"KEY","title":"x"}`), `"alice"`, `null`, 1), good("s9")), status: 201, rejected: []string{"invalid-change"}, accepted: 1, writes: []string{"s9"}},
		{name: "another user's userId", body: push(strings.Replace(ch("bu", "b-row", ts, `{"todoId":"KEY","title":"stolen"}`), `"alice"`, `"bob"`, 1), good("s10")), status: 201, rejected: []string{"user-mismatch"}, accepted: 1, writes: []string{"s10"}},
		{name: "another user's key", body: push(ch("bk", "b-row", "2026-11-25T11:00:00.000Z", `{"todoId":"KEY","title":"stolen"}`), good("s11")), status: 201, rejected: []string{"user-mismatch"}, accepted: 1, writes: []string{"s11"}},
		{name: "unparsable updatedAt", body: push(ch("d1", "x", "last tuesday", `{"todoId":"KEY","title":"x"}`), good("s12")), status: 201, rejected: []string{"invalid-updated-at"}, accepted: 1, writes: []string{"s12"}},
		{name: "numeric updatedAt", body: push(strings.Replace(ch("d2", "x", ts, `{"todoId":"KEY","title":"x"}`), `"`+ts+`"`, `1764064800000`, 1), good("s13")), status: 201, rejected: []string{"invalid-updated-at"}, accepted: 1, writes: []string{"s13"}},
		{name: "far-future updatedAt", body: push(ch("d3", "x", "2999-01-01T00:00:00.000Z", `{"todoId":"KEY","title":"x"}`), good("s14")), status: 201, rejected: []string{"invalid-updated-at"}, accepted: 1, writes: []string{"s14"}},
		{name: "pre-epoch updatedAt", body: push(ch("d4", "x", "1969-07-20T20:17:00.000Z", `{"todoId":"KEY","title":"x"}`), good("s15")), status: 201, rejected: []string{"invalid-updated-at"}, accepted: 1, writes: []string{"s15"}},
		{name: "payload that is an array", body: push(`{"changeId":"p1","shapeKey":"todos","userId":"alice","updatedAt":"`+ts+`","payload":["todoId"]}`, good("s16")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s16"}},
		{name: "null payload", body: push(`{"changeId":"p2","shapeKey":"todos","userId":"alice","updatedAt":"`+ts+`","payload":null}`, good("s17")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s17"}},
		{name: "missing payload", body: push(`{"changeId":"p3","shapeKey":"todos","userId":"alice","updatedAt":"`+ts+`"}`, good("s18")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s18"}},
		{name: "payload without its key", body: push(ch("p4", "x", ts, `{"title":"x"}`), good("s19")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s19"}},
		{name: "null key", body: push(ch("p5", "x", ts, `{"todoId":null,"title":"x"}`), good("s20")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s20"}},
		{name: "numeric key for a text column", body: push(ch("p6", "x", ts, `{"todoId":12,"title":"x"}`), good("s21")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s21"}},
		{name: "boolean column given a string", body: push(ch("p7", "x", ts, `{"todoId":"KEY","title":"x","done":"true"}`), good("s22")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s22"}},
		{name: "boolean column given an operator object", body: push(ch("p8", "x", ts, `{"todoId":"KEY","title":"x","done":{"$gt":""}}`), good("s23")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s23"}},
		{name: "integer beyond int64", body: push(ch("p9", "x", ts, `{"todoId":"KEY","title":"x","priority":92233720368547758070}`), good("s24")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s24"}},
		{name: "integer beyond int32", body: push(ch("p10", "x", ts, `{"todoId":"KEY","title":"x","priority":2147483648}`), good("s25")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s25"}},
		{name: "number beyond float64", body: push(ch("p11", "x", ts, `{"todoId":"KEY","title":"x","score":1e999}`), good("s26")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s26"}},
		{name: "NUL in a string", body: push(ch("p12", "x", ts, `{"todoId":"KEY","title":"a\u0000b"}`), good("s27")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s27"}},
		{name: "null into a NOT NULL column", body: push(ch("p13", "x", ts, `{"todoId":"KEY","title":null}`), good("s28")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s28"}},
		{name: "new row missing a required column", body: push(ch("p14", "x", ts, `{"todoId":"KEY","done":true}`), good("s29")), status: 201, rejected: []string{"invalid-payload"}, accepted: 1, writes: []string{"s29"}},
		{name: "changeId repeated in one push", body: push(ch("dup", "r1", ts, `{"todoId":"KEY","title":"first"}`), ch("dup", "r2", ts, `{"todoId":"KEY","title":"second"}`)),
			status: 201, rejected: []string{"duplicate-change-id"}, accepted: 1, writes: []string{"r1"}},

		// accepted, and stored exactly
		{name: "same key twice with different updatedAt: the newest wins", body: push(
			ch("k2", "twice", "2026-11-25T10:00:02.000Z", `{"todoId":"KEY","title":"newer"}`),
			ch("k1", "twice", "2026-11-25T10:00:01.000Z", `{"todoId":"KEY","title":"older"}`)),
			status: 201, accepted: 2, writes: []string{"twice"},
			check: func(t *testing.T, e *env, _ string) { wantTitle(t, e, "twice", "newer") }},
		{name: "payload key that looks like SQL", body: push(ch("sql", "sql", ts, `{"todoId":"KEY","title":"x","title\"; DROP TABLE todos; --":"y"}`)),
			status: 201, accepted: 1, writes: []string{"sql"},
			check: func(t *testing.T, e *env, _ string) { wantTitle(t, e, "sql", "x") }},
		{name: "values with quotes and SQL", body: push(ch("q", "quotes", ts, `{"todoId":"KEY","title":"it's \"quoted\"; DROP TABLE todos; --"}`)),
			status: 201, accepted: 1, writes: []string{"quotes"},
			check: func(t *testing.T, e *env, _ string) { wantTitle(t, e, "quotes", `it's "quoted"; DROP TABLE todos; --`) }},
		{name: "a 1 MB string", body: push(ch("mb", "megabyte", ts, `{"todoId":"KEY","title":"`+strings.Repeat("é", 1<<19)+`"}`)),
			status: 201, accepted: 1, writes: []string{"megabyte"},
			check: func(t *testing.T, e *env, _ string) { wantTitle(t, e, "megabyte", strings.Repeat("é", 1<<19)) }},
		{name: "deeply nested JSON value", body: push(ch("deep", "deep", ts, `{"todoId":"KEY","title":"x","meta":`+nested(100)+`}`)),
			status: 201, accepted: 1, writes: []string{"deep"},
			check: func(t *testing.T, e *env, _ string) {
				row := rowsOf(t, e, "alice")["deep"]
				b, _ := json.Marshal(row["meta"])
				if string(b) != nested(100) {
					t.Fatalf("meta = %.80s…", b)
				}
			}},
		{name: "ten thousand unknown fields", body: push(ch("wide", "wide", ts, `{"todoId":"KEY","title":"x"`+strings.Repeat(`,"f":1`, 1)+manyFields(10000)+`}`)),
			status: 201, accepted: 1, writes: []string{"wide"}},
		{name: "a float that JSON can carry but not exactly", body: push(ch("fl", "float", ts, `{"todoId":"KEY","title":"x","score":0.30000000000000004}`)),
			status: 201, accepted: 1, writes: []string{"float"},
			check: func(t *testing.T, e *env, _ string) {
				if got := rowsOf(t, e, "alice")["float"]["score"]; got != 0.30000000000000004 {
					t.Fatalf("score = %v", got)
				}
			}},
		// A value can break a limit of the database rather than a rule of
		// the shape: a key over PostgreSQL's btree row limit (2,704 bytes)
		// fails its index. That change alone is rejected.
		{name: "a key over the index row size limit beside a good change",
			body:   push(ch("long-key", incompressible(3200), ts, `{"todoId":"KEY","title":"x"}`), good("beside-long")),
			status: 201, accepted: 1, rejected: []string{"invalid-payload"}, writes: []string{"beside-long", incompressible(3200)},
			onStore: map[string]storeOutcome{"sqlite": {accepted: 2}}},
		{name: "a data value over the index row size limit of an indexed column", body: push(ch("long-desc", "long-desc", ts,
			`{"todoId":"KEY","title":"x","description":"`+incompressible(9000)+`"}`), good("beside-desc")),
			status: 201, accepted: 1, rejected: []string{"invalid-payload"}, writes: []string{"beside-desc", "long-desc"},
			onStore: map[string]storeOutcome{"sqlite": {accepted: 2}}},
		{name: "a paged pull says whether more is waiting", method: "GET", path: "/sync/pull?limit=1", status: 200,
			check: func(t *testing.T, e *env, answer string) {
				body := decode(t, answer)
				if more, ok := body["hasMore"].(bool); !ok || !more || len(body["changes"].([]any)) == 0 {
					t.Fatalf("paged pull: %.300s, want a page and hasMore true", answer)
				}
			}},
	}
}

func manyFields(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `,"extra%d":%d`, i, i)
	}
	return b.String()
}

func decode(t *testing.T, s string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %.200q", s)
	}
	return v
}

// rowsOf pulls every row of a user, by todoId.
func rowsOf(t *testing.T, e *env, user string) map[string]map[string]any {
	t.Helper()
	a := e.pull(user, "")
	if a.status != 200 {
		t.Fatalf("pull as %s: %d %s", user, a.status, a.body)
	}
	out := map[string]map[string]any{}
	for _, c := range decode(t, a.body)["changes"].([]any) {
		p := c.(map[string]any)["payload"].(map[string]any)
		out[p["todoId"].(string)] = p
	}
	return out
}

func wantTitle(t *testing.T, e *env, key, want string) {
	t.Helper()
	if got := rowsOf(t, e, "alice")[key]["title"]; got != want {
		t.Fatalf("title of %s = %.60q, want %.60q", key, got, want)
	}
}

func TestHostileInput(t *testing.T) {
	cases := hostileCases()
	if len(cases) < 40 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, s := range stores {
		t.Run(s.Name, func(t *testing.T) {
			dsn := s.Open(t, hostileDDL)
			e := newEnvOn(t, dsn, func(h *handler.Config) {
				h.Now = func() time.Time { return time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC) }
			})
			// Rows that no case may touch: bob's, and alice's own.
			if a := e.do("POST", "/sync/push", "bob", "application/json", push(strings.ReplaceAll(ch("b", "b-row", ts, `{"todoId":"KEY","title":"bob's","meta":{"k":[1]}}`), `"alice"`, `"bob"`))); a.status != 201 {
				t.Fatalf("seeding bob: %d %s", a.status, a.body)
			}
			if a := e.push("alice", ch("a", "a-row", ts, `{"todoId":"KEY","title":"alice's","priority":3,"score":1.5}`)); a.status != 201 {
				t.Fatalf("seeding alice: %d %s", a.status, a.body)
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					beforeA, beforeB := rowsOf(t, e, "alice"), rowsOf(t, e, "bob")
					method, path, user, ct := tc.method, tc.path, tc.user, tc.contentType
					if method == "" {
						method = "POST"
					}
					if path == "" {
						path = "/sync/push"
					}
					if user == "" {
						user = "alice"
					} else if user == "-" {
						user = ""
					}
					if ct == "" && method != "GET" {
						ct = "application/json"
					} else if ct == "-" {
						ct = ""
					}
					a := e.do(method, path, user, ct, tc.body)
					if a.status != tc.status {
						t.Fatalf("status %d, want %d: %.300s", a.status, tc.status, a.body)
					}
					body := decode(t, a.body)
					switch {
					case tc.code != "":
						if body["status"] != "error" || body["error"] != tc.code || body["message"] == "" {
							t.Fatalf("body %.300s, want error %q with a message", a.body, tc.code)
						}
					case tc.status == 201:
						var resp handler.PushResponse
						_ = json.Unmarshal([]byte(a.body), &resp)
						var codes []string
						for _, r := range resp.RejectedChanges {
							codes = append(codes, r.Error)
							if r.Message == "" {
								t.Errorf("rejection %+v has no message", r)
							}
						}
						want := storeOutcome{tc.rejected, tc.accepted}
						if o, ok := tc.onStore[s.Name]; ok {
							want = o
						}
						if len(resp.AcceptedChanges) != want.accepted || !reflect.DeepEqual(codes, want.rejected) {
							t.Fatalf("accepted %d, rejected %v; want %d and %v (%.300s)", len(resp.AcceptedChanges), codes, want.accepted, want.rejected, a.body)
						}
					}
					// Nothing else changed: bob's rows, and alice's other rows.
					afterA, afterB := rowsOf(t, e, "alice"), rowsOf(t, e, "bob")
					if !reflect.DeepEqual(beforeB, afterB) {
						t.Fatalf("bob's rows changed: %v -> %v", beforeB, afterB)
					}
					for _, k := range tc.writes {
						delete(beforeA, k)
						delete(afterA, k)
					}
					if !reflect.DeepEqual(beforeA, afterA) {
						t.Fatalf("alice's other rows changed")
					}
					if tc.check != nil {
						tc.check(t, e, a.body)
					}
				})
			}
		})
	}
}
