package handler_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const seedDDL = pgtest.TodosWithDescriptionDDL

type env struct {
	t     *testing.T
	srv   *httptest.Server
	h     *handler.Handler
	dsn   string
	store *shapes.Store
}

// stores are the databases every wire test runs on.
var stores = testkit.Stores()

// forEachStore runs f as a subtest on every database, with the todos table.
func forEachStore(t *testing.T, f func(t *testing.T, dsn string)) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) { f(t, b.Open(t, seedDDL)) })
}

func newEnvOn(t *testing.T, dsn string, configure func(*handler.Config)) *env {
	db := testkit.OpenDB(t, dsn)
	// no fields listed: every column of the table is synced
	store := testkit.NewStore(t, db, shapes.ShapeConfig{Key: "todos", KeyFields: []string{"todoId"}})
	cfg := handler.Config{Store: store, Logger: zaptest.NewLogger(t), Timeout: 5 * time.Second}
	if configure != nil {
		configure(&cfg)
	}
	srv := testkit.NewServer(t, store, cfg)
	return &env{t: t, srv: srv.Server, h: srv.Handler, dsn: dsn, store: store}
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
		if _, extra := body["hasMore"]; extra {
			t.Fatal("a pull without limit answers hasMore, which the 1.0.0 client does not know")
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
	h, err := handler.New(handler.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"", "a\x00b", "\xff\xfe", strings.Repeat("u", 1025)} {
		w := httptest.NewRecorder()
		h.Serve(w, httptest.NewRequest("GET", "/sync/pull", nil), user)
		if w.Code != 401 || !strings.Contains(w.Body.String(), `"unauthenticated"`) {
			t.Errorf("user %q: %d %s, want 401", user, w.Code, w.Body)
		}
	}
}

// Change ids come back in acceptedChanges exactly as the client sent them,
// whatever characters they hold, and the answer stays valid JSON.
func TestAcceptedIDsRoundTrip(t *testing.T) {
	e := newEnvOn(t, testkit.SQLite().Open(t, seedDDL), nil)
	ids := []string{`quote"d`, `back\slash`, "new\nline", "tab\t", "ctl\u0001", "é😀", "</script>", "line\u2028sep"}
	var changes []string
	for i, id := range ids {
		quoted, _ := json.Marshal(id)
		changes = append(changes, strings.Replace(todo("X", "alice", "2026-11-25T10:00:00.000Z", fmt.Sprintf(`{"todoId":"r%d","title":"x"}`, i)),
			`"X"`, string(quoted), 1))
	}
	a := e.push("alice", strings.Join(changes, ","))
	if a.status != 201 {
		t.Fatalf("push answered %d %s", a.status, a.body)
	}
	var resp handler.PushResponse
	if err := json.Unmarshal([]byte(a.body), &resp); err != nil {
		t.Fatalf("answer is not JSON: %v: %s", err, a.body)
	}
	if fmt.Sprint(resp.AcceptedChanges) != fmt.Sprint(ids) || len(resp.RejectedChanges) != 0 {
		t.Fatalf("accepted %q, rejected %v; want %q", resp.AcceptedChanges, resp.RejectedChanges, ids)
	}
}
