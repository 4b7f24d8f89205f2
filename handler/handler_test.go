package handler_test

import (
	"database/sql"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/shapes"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const seedDDL = `CREATE TABLE todos (
todoId TEXT NOT NULL PRIMARY KEY,
title TEXT NOT NULL,
description TEXT,
done BOOLEAN NOT NULL DEFAULT false,
deleted BOOLEAN NOT NULL DEFAULT false,
userId TEXT NOT NULL,
updatedAt TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
lastSyncAt TIMESTAMP WITH TIME ZONE DEFAULT NOW()
)`

type env struct {
	t   *testing.T
	srv *httptest.Server
	dsn string
}

// stores are the databases every wire test runs on.
var stores = []struct {
	name string
	open func(t *testing.T) string // a fresh database holding the todos table
}{
	{"postgres", func(t *testing.T) string {
		dsn := pgtest.NewDatabase(t)
		pgtest.Exec(t, dsn, seedDDL)
		return dsn
	}},
	{"sqlite", func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "sync.db")
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.Exec(strings.ReplaceAll(seedDDL, "DEFAULT NOW()", "")); err != nil {
			t.Fatal(err)
		}
		return "sqlite:" + path
	}},
}

// forEachStore runs f as a subtest on every database.
func forEachStore(t *testing.T, f func(t *testing.T, dsn string)) {
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) { f(t, s.open(t)) })
	}
}

func newEnvOn(t *testing.T, dsn string, configure func(*handler.Handler)) *env {
	db, err := shapes.Open(dsn, shapes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store, err := shapes.NewStore(db, []shapes.ShapeConfig{{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title", "description", "done", "deleted"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &handler.Handler{Store: store, Logger: zaptest.NewLogger(t), Timeout: 5 * time.Second}
	if configure != nil {
		configure(h)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.Serve(w, r, r.Header.Get("X-Test-User"))
	}))
	t.Cleanup(func() { srv.Close(); _ = db.Destruct() })
	return &env{t: t, srv: srv, dsn: dsn}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (a answer) json(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(a.body), &v); err != nil {
		t.Fatalf("answer %d is not JSON: %q", a.status, a.body)
	}
	return v
}

func (e *env) do(method, path, user, contentType, body string) answer {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if user != "" {
		req.Header.Set("X-Test-User", user)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

func (e *env) push(user, changes string) answer {
	return e.do("POST", "/sync/push", user, "application/json", `{"changes":[`+changes+`]}`)
}

func (e *env) pull(user, lastPull string) answer {
	path := "/sync/pull/"
	if lastPull != "" {
		path += "?lastPull=" + lastPull
	}
	return e.do("GET", path, user, "", "")
}

func todo(id, user, updated, payload string) string {
	return `{"changeId":"` + id + `","shapeKey":"todos","pushed":0,"userId":"` + user + `","updatedAt":"` + updated + `","payload":` + payload + `}`
}

func TestWireCompatibility(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, nil)
		a := e.push("alice", todo("1b4e28ba-2fa1-41d2-883f-0016d3cca427", "alice", "2026-11-25T10:00:00.000Z",
			`{"todoId":"t1","title":"Write docs","description":"README task","done":false,"deleted":false}`))
		if a.status != 201 {
			t.Fatalf("push answered %d %s, want 201", a.status, a.body)
		}
		if ct := a.header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type = %q", ct)
		}
		body := a.json(t)
		if body["status"] != "OK" {
			t.Fatalf("status = %v", body["status"])
		}
		acc := body["acceptedChanges"].([]any)
		if len(acc) != 1 || acc[0] != "1b4e28ba-2fa1-41d2-883f-0016d3cca427" {
			t.Fatalf("acceptedChanges = %v", acc)
		}

		for _, path := range []string{"/sync/pull/", "/sync/pull", "/pull/", "/pull"} {
			a = e.do("GET", path+"?lastPull=1970-01-01T00:00:00.000Z", "alice", "", "")
			if a.status != 200 {
				t.Fatalf("GET %s answered %d %s", path, a.status, a.body)
			}
		}
		body = a.json(t)
		changes := body["changes"].([]any)
		if len(changes) != 1 {
			t.Fatalf("changes = %v", changes)
		}
		c := changes[0].(map[string]any)
		if c["shapeKey"] != "todos" || c["userId"] != "alice" || c["updatedAt"] != "2026-11-25T10:00:00.000Z" {
			t.Fatalf("change = %v", c)
		}
		p := c["payload"].(map[string]any)
		if p["todoId"] != "t1" || p["title"] != "Write docs" || p["done"] != false || p["description"] != "README task" {
			t.Fatalf("payload = %v, want the app's field names (todoId, not todoid)", p)
		}
		synced, err := time.Parse(time.RFC3339Nano, body["syncedAt"].(string))
		if err != nil || !strings.HasSuffix(body["syncedAt"].(string), "Z") || len(body["syncedAt"].(string)) != len("2026-11-25T10:00:05.123Z") {
			t.Fatalf("syncedAt = %v, want RFC 3339 UTC with milliseconds", body["syncedAt"])
		}
		// The client sends syncedAt back as lastPull: nothing is repeated.
		a = e.pull("alice", synced.Format("2006-01-02T15:04:05.000Z"))
		if n := len(a.json(t)["changes"].([]any)); n != 0 {
			t.Fatalf("pull at syncedAt repeated %d changes", n)
		}
		// A missing lastPull means the epoch.
		a = e.pull("alice", "")
		if n := len(a.json(t)["changes"].([]any)); a.status != 200 || n != 1 {
			t.Fatalf("pull without lastPull: %d, %d changes", a.status, n)
		}
	})
}

func TestRequestErrors(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, func(h *handler.Handler) { h.MaxBatch = 3; h.MaxBody = 4096 })
		good := todo("c1", "alice", "2026-11-25T10:00:00.000Z", `{"todoId":"t1","title":"x"}`)
		cases := []struct {
			name        string
			method      string
			path        string
			user        string
			contentType string
			body        string
			status      int
			code        string
		}{
			{"push without a user", "POST", "/sync/push", "", "application/json", `{"changes":[` + good + `]}`, 401, "unauthenticated"},
			{"pull without a user", "GET", "/sync/pull", "", "", "", 401, "unauthenticated"},
			{"unknown path", "GET", "/sync/status", "alice", "", "", 404, "not-found"},
			{"extra path segment after push", "POST", "/sync/push/extra", "alice", "application/json", `{"changes":[]}`, 404, "not-found"},
			{"GET on push", "GET", "/sync/push", "alice", "", "", 405, "method-not-allowed"},
			{"POST on pull", "POST", "/sync/pull", "alice", "application/json", `{}`, 405, "method-not-allowed"},
			{"unparsable lastPull", "GET", "/sync/pull?lastPull=yesterday", "alice", "", "", 400, "invalid-last-pull"},
			{"wrong content type", "POST", "/sync/push", "alice", "text/plain", `{"changes":[]}`, 415, "unsupported-media-type"},
			{"no content type", "POST", "/sync/push", "alice", "", `{"changes":[]}`, 415, "unsupported-media-type"},
			{"invalid JSON", "POST", "/sync/push", "alice", "application/json", `{"changes":[`, 400, "invalid-json"},
			{"body that is not an object", "POST", "/sync/push", "alice", "application/json", `[1,2]`, 400, "invalid-json"},
			{"changes that is not an array", "POST", "/sync/push", "alice", "application/json", `{"changes":{"a":1}}`, 400, "invalid-request"},
			{"changes missing", "POST", "/sync/push", "alice", "application/json", `{}`, 400, "invalid-request"},
			{"invalid UTF-8", "POST", "/sync/push", "alice", "application/json", "{\"changes\":[],\"x\":\"\xff\"}", 400, "invalid-json"},
			{"body above max_body", "POST", "/sync/push", "alice", "application/json", `{"changes":[],"pad":"` + strings.Repeat("x", 5000) + `"}`, 413, "body-too-large"},
			{"batch above max_batch", "POST", "/sync/push", "alice", "application/json", `{"changes":[` + strings.Repeat(good+",", 3) + good + `]}`, 413, "batch-too-large"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				a := e.do(tc.method, tc.path, tc.user, tc.contentType, tc.body)
				if a.status != tc.status {
					t.Fatalf("status = %d %s, want %d", a.status, a.body, tc.status)
				}
				body := a.json(t)
				if body["status"] != "error" || body["error"] != tc.code || body["message"] == "" {
					t.Fatalf("body = %s, want error %q with a message", a.body, tc.code)
				}
				if tc.status == 405 && a.header.Get("Allow") == "" {
					t.Fatal("405 without Allow")
				}
			})
		}
		// None of it wrote anything.
		if n := len(e.pull("alice", "").json(t)["changes"].([]any)); n != 0 {
			t.Fatalf("a refused request wrote %d rows", n)
		}
	})
}

func TestPerChangeRejections(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, func(h *handler.Handler) {
			h.Now = func() time.Time { return time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC) }
		})
		ok := func(id, key string) string {
			return todo(id, "alice", "2026-11-25T10:00:00.000Z", `{"todoId":"`+key+`","title":"x"}`)
		}
		cases := []struct {
			name   string
			change string
			code   string
		}{
			{"a change that is not an object", `"hello"`, "invalid-change"},
			{"missing changeId", `{"shapeKey":"todos","userId":"alice","updatedAt":"2026-11-25T10:00:00Z","payload":{"todoId":"a"}}`, "invalid-change"},
			{"changeId that is not a string", `{"changeId":5,"shapeKey":"todos","userId":"alice","updatedAt":"2026-11-25T10:00:00Z","payload":{"todoId":"a"}}`, "invalid-change"},
			{"null shapeKey", `{"changeId":"n1","shapeKey":null,"userId":"alice","updatedAt":"2026-11-25T10:00:00Z","payload":{"todoId":"a"}}`, "invalid-change"},
			{"unknown shape", `{"changeId":"u1","shapeKey":"notes","userId":"alice","updatedAt":"2026-11-25T10:00:00Z","payload":{"todoId":"a"}}`, "unknown-shape"},
			{"another user's userId", todo("m1", "bob", "2026-11-25T10:00:00Z", `{"todoId":"a","title":"x"}`), "user-mismatch"},
			{"unparsable updatedAt", todo("d1", "alice", "last tuesday", `{"todoId":"a","title":"x"}`), "invalid-updated-at"},
			{"updatedAt as a number", `{"changeId":"d2","shapeKey":"todos","userId":"alice","updatedAt":1764064800000,"payload":{"todoId":"a"}}`, "invalid-updated-at"},
			{"far-future updatedAt", todo("d3", "alice", "2099-01-01T00:00:00.000Z", `{"todoId":"a","title":"x"}`), "invalid-updated-at"},
			{"pre-epoch updatedAt", todo("d4", "alice", "1969-12-31T23:59:59.000Z", `{"todoId":"a","title":"x"}`), "invalid-updated-at"},
			{"payload that is not an object", `{"changeId":"p1","shapeKey":"todos","userId":"alice","updatedAt":"2026-11-25T10:00:00Z","payload":[1]}`, "invalid-payload"},
			{"null payload", `{"changeId":"p2","shapeKey":"todos","userId":"alice","updatedAt":"2026-11-25T10:00:00Z","payload":null}`, "invalid-payload"},
			{"payload without its key", todo("p3", "alice", "2026-11-25T10:00:00Z", `{"title":"x"}`), "invalid-payload"},
			{"boolean column given a string", todo("p4", "alice", "2026-11-25T10:00:00Z", `{"todoId":"a","title":"x","done":"true"}`), "invalid-payload"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				a := e.push("alice", tc.change+","+ok("good-"+tc.name, "k-"+tc.name))
				if a.status != 201 {
					t.Fatalf("status = %d %s, want 201", a.status, a.body)
				}
				var resp handler.PushResponse
				if err := json.Unmarshal([]byte(a.body), &resp); err != nil {
					t.Fatal(err)
				}
				if len(resp.AcceptedChanges) != 1 || resp.AcceptedChanges[0] != "good-"+tc.name {
					t.Fatalf("accepted = %v, want only the good change", resp.AcceptedChanges)
				}
				if len(resp.RejectedChanges) != 1 || resp.RejectedChanges[0].Error != tc.code || resp.RejectedChanges[0].Index != 0 || resp.RejectedChanges[0].Message == "" {
					t.Fatalf("rejected = %+v, want one %q at index 0", resp.RejectedChanges, tc.code)
				}
			})
		}
		rows := e.pull("alice", "").json(t)["changes"].([]any)
		if len(rows) != len(cases) {
			t.Fatalf("%d rows written, want %d (only the good changes)", len(rows), len(cases))
		}
	})
}

func TestDuplicateChangeID(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, nil)
		a := e.push("alice", todo("same", "alice", "2026-11-25T10:00:00Z", `{"todoId":"a","title":"first"}`)+","+
			todo("same", "alice", "2026-11-25T10:00:01Z", `{"todoId":"b","title":"second"}`))
		var resp handler.PushResponse
		_ = json.Unmarshal([]byte(a.body), &resp)
		if a.status != 201 || len(resp.AcceptedChanges) != 1 || len(resp.RejectedChanges) != 1 || resp.RejectedChanges[0].Error != "duplicate-change-id" {
			t.Fatalf("answer %d %s", a.status, a.body)
		}
	})
}

func TestDatabaseUnreachableIs503(t *testing.T) {
	// Nothing listens on port 1.
	e := newEnvOn(t, "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2", nil)
	for _, a := range []answer{
		e.push("alice", todo("c1", "alice", "2026-11-25T10:00:00Z", `{"todoId":"a","title":"x"}`)),
		e.pull("alice", ""),
	} {
		if a.status != 503 || a.header.Get("Retry-After") == "" || a.json(t)["error"] != "database-unavailable" {
			t.Fatalf("answer %d %v %s, want 503 with Retry-After", a.status, a.header, a.body)
		}
	}
}

func TestSchemaCheckedOnFirstUse(t *testing.T) {
	// The store was created before its table existed, as when Caddy starts
	// while the database is down: the first request checks the schema.
	dsn := pgtest.NewDatabase(t)
	e := newEnvOn(t, dsn, nil)
	a := e.pull("alice", "")
	if a.status != 500 || a.json(t)["error"] != "schema-mismatch" || !strings.Contains(a.body, "table does not exist") {
		t.Fatalf("answer %d %s, want a schema-mismatch naming the problem", a.status, a.body)
	}
	pgtest.Exec(t, dsn, seedDDL)
	if a := e.pull("alice", ""); a.status != 200 {
		t.Fatalf("after the table was created: %d %s", a.status, a.body)
	}
}

func TestUnusableUserIDs(t *testing.T) {
	h := &handler.Handler{}
	for _, user := range []string{"", "a\x00b", "\xff\xfe", strings.Repeat("u", 1025)} {
		w := httptest.NewRecorder()
		h.Serve(w, httptest.NewRequest("GET", "/sync/pull", nil), user)
		if w.Code != 401 || !strings.Contains(w.Body.String(), `"unauthenticated"`) {
			t.Errorf("user %q: %d %s, want 401", user, w.Code, w.Body)
		}
	}
}
