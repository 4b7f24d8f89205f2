package hypersync

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"golang.org/x/crypto/bcrypt"

	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

const integrationDDL = pgtest.TodosWithDescriptionDDL + `;
CREATE INDEX todos_sync ON todos (userId, lastSyncAt);
CREATE TABLE lists (listId TEXT PRIMARY KEY, name TEXT, userId TEXT NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz)`

// integrationCaddyfile is the SPA + sync site of the README, on a loopback
// port, with basic_auth for alice and bob.
func integrationCaddyfile(t *testing.T, extra string) string {
	hash := func(pw string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	return fmt.Sprintf(`http://localhost:9080 {
	handle /sync/* {
		basic_auth {
			alice %s
			bob %s
		}
		hypersync {
			database {env.HYPERSYNC_IT_DSN}
			shape todos {
				key todoId
				fields title description done deleted
			}
			%s
		}
	}
	handle {
		respond "the SPA" 200
	}
}`, hash("alice-pw"), hash("bob-pw"), extra)
}

type itClient struct {
	t      *testing.T
	tester *caddytest.Tester
}

func (c *itClient) do(method, path, user, body string) (int, http.Header, string) {
	c.t.Helper()
	req, _ := http.NewRequest(method, "http://localhost:9080"+path, strings.NewReader(body))
	if user != "" {
		req.SetBasicAuth(user, user+"-pw")
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.tester.Client.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func itChange(id, user, key, title string, updated time.Time) string {
	return fmt.Sprintf(`{"changeId":%q,"shapeKey":"todos","pushed":0,"userId":%q,"updatedAt":%q,"payload":{"todoId":%q,"title":%q,"done":false,"deleted":false}}`,
		id, user, updated.UTC().Format("2006-01-02T15:04:05.000Z"), key, title)
}

func TestThroughCaddy(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) { throughCaddy(t, b.Open(t, integrationDDL)) })
}

// A hypersync without a matcher answers its own paths only, and passes
// every other request on to the site's next handler.
func TestHypersyncClaimsOnlyItsPaths(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "claims.db")
	site := filepath.Join(dir, "site")
	if err := os.MkdirAll(filepath.Join(site, "app", "sync"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"index.html", "app/sync/pushes"} {
		if err := os.WriteFile(filepath.Join(site, f), []byte("the app"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tester := serveSites(t, nil, `http://localhost:9080 {
	root * `+site+`
	hypersync {
		database sqlite:`+db+`
		shape notes {
			key noteId
			fields body
			create_table
		}
	}
	file_server
}
`)
	for _, c := range []struct {
		path   string
		status int
		body   string
	}{
		{"/index.html", 200, "the app"},
		{"/", 200, "the app"},
		{"/app/sync/pushes", 200, "the app"},
		{"/sync/pull/", 401, `"unauthenticated"`},
		{"/api/push", 405, `"method-not-allowed"`},
	} {
		req, _ := http.NewRequest("GET", "http://localhost:9080"+c.path, nil)
		resp := tester.AssertResponseCode(req, c.status)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), c.body) {
			t.Errorf("GET %s: %d %q, want %d with %q", c.path, resp.StatusCode, b, c.status, c.body)
		}
	}
}

func throughCaddy(t *testing.T, dsn string) {
	t.Setenv("HYPERSYNC_IT_DSN", dsn)
	tester := serveSites(t, nil, integrationCaddyfile(t, ""))
	c := &itClient{t: t, tester: tester}
	now := time.Now()

	t.Run("push and pull round trip", func(t *testing.T) {
		status, _, body := c.do("POST", "/sync/push", "alice", `{"changes":[`+itChange("a1", "alice", "t1", "alice's todo", now)+`]}`)
		if status != 201 || !strings.Contains(body, `"acceptedChanges":["a1"]`) {
			t.Fatalf("push: %d %s", status, body)
		}
		status, _, body = c.do("GET", "/sync/pull/?lastPull=1970-01-01T00:00:00.000Z", "alice", "")
		if status != 200 || !strings.Contains(body, `"todoId":"t1"`) || !strings.Contains(body, `"title":"alice's todo"`) {
			t.Fatalf("pull: %d %s", status, body)
		}
	})
	t.Run("401 without credentials", func(t *testing.T) {
		for _, req := range [][2]string{{"GET", "/sync/pull/"}, {"POST", "/sync/push"}} {
			status, header, _ := c.do(req[0], req[1], "", "")
			if status != 401 || !strings.HasPrefix(header.Get("WWW-Authenticate"), "Basic") {
				t.Fatalf("%s %s: %d %v, want 401 with a Basic challenge", req[0], req[1], status, header)
			}
		}
	})
	t.Run("the SPA is served beside sync", func(t *testing.T) {
		if status, _, body := c.do("GET", "/some/page", "", ""); status != 200 || body != "the SPA" {
			t.Fatalf("%d %q", status, body)
		}
	})
	t.Run("cross-user attempts change nothing", func(t *testing.T) {
		// bob names alice as the user: rejected, not accepted.
		status, _, body := c.do("POST", "/sync/push", "bob", `{"changes":[`+itChange("b1", "alice", "t1", "bob was here", now.Add(time.Second))+`]}`)
		if status != 201 || !strings.Contains(body, `"acceptedChanges":[]`) || !strings.Contains(body, `"error":"user-mismatch"`) {
			t.Fatalf("push as alice from bob: %d %s", status, body)
		}
		// bob names his own user but alice's key: alice's row is untouched.
		status, _, body = c.do("POST", "/sync/push", "bob", `{"changes":[`+itChange("b2", "bob", "t1", "bob was here", now.Add(time.Second))+`]}`)
		if status != 201 || !strings.Contains(body, `"acceptedChanges":[]`) || !strings.Contains(body, `"error":"user-mismatch"`) {
			t.Fatalf("push to alice's key from bob: %d %s", status, body)
		}
		_, _, body = c.do("GET", "/sync/pull/", "bob", "")
		if strings.Contains(body, "t1") {
			t.Fatalf("bob pulled alice's row: %s", body)
		}
		_, _, body = c.do("GET", "/sync/pull/", "alice", "")
		if !strings.Contains(body, `"title":"alice's todo"`) || strings.Contains(body, "bob was here") {
			t.Fatalf("alice's row changed: %s", body)
		}
	})
	t.Run("a config reload mid-run keeps working and keeps the pool", func(t *testing.T) {
		pool := poolFor(t, dsn)
		var wg sync.WaitGroup
		var ok, bad atomic.Int64
		stop := make(chan struct{})
		var errMu sync.Mutex
		var firstErr string
		for w := 0; w < 3; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					ch := itChange(fmt.Sprintf("r%d-%d", w, i), "alice", fmt.Sprintf("r%d-%d", w, i), "reload", time.Now())
					req, _ := http.NewRequest("POST", "http://localhost:9080/sync/push", strings.NewReader(`{"changes":[`+ch+`]}`))
					req.SetBasicAuth("alice", "alice-pw")
					req.Header.Set("Content-Type", "application/json")
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						// a connection closed by the reload: the client retries
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 201 {
						ok.Add(1)
					} else {
						bad.Add(1)
						errMu.Lock()
						firstErr = fmt.Sprint(resp.StatusCode)
						errMu.Unlock()
					}
				}
			}(w)
		}
		// pushes before, during and after the reload: wait for each by count
		waitPushes := func(n int64) {
			t.Helper()
			deadline := time.Now().Add(time.Minute)
			for ok.Load()+bad.Load() < n {
				if time.Now().After(deadline) {
					t.Fatalf("after a minute, %d pushes answered, want %d", ok.Load()+bad.Load(), n)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		waitPushes(20)
		serveSites(t, tester, integrationCaddyfile(t, "max_batch 50\n\t\t\tshape lists {\n\t\t\t\tkey listId\n\t\t\t}"))
		waitPushes(ok.Load() + bad.Load() + 20)
		close(stop)
		wg.Wait()
		t.Logf("pushes across the reload: %d succeeded, %d failed", ok.Load(), bad.Load())
		if bad.Load() > 0 || ok.Load() == 0 {
			t.Fatalf("during the reload: %d pushes succeeded, %d failed (first: %s)", ok.Load(), bad.Load(), firstErr)
		}
		if after := poolFor(t, dsn); after != pool {
			t.Fatal("the reload opened a new pool for the same DSN")
		}
		if refs, _ := databases.References(dsn); refs != 1 {
			t.Fatalf("the pool has %d references after the reload, want 1", refs)
		}
		// The new config is live: the second shape syncs.
		status, _, body := c.do("POST", "/sync/push", "alice", `{"changes":[{"changeId":"l1","shapeKey":"lists","userId":"alice","updatedAt":"2026-11-25T10:00:00Z","payload":{"listId":"l1","name":"groceries"}}]}`)
		if status != 201 || !strings.Contains(body, `"acceptedChanges":["l1"]`) {
			t.Fatalf("push to the new shape: %d %s", status, body)
		}
		var pulled struct{ Changes []struct{ ShapeKey string } }
		_, _, body = c.do("GET", "/sync/pull/", "alice", "")
		_ = json.Unmarshal([]byte(body), &pulled)
		shapesSeen := map[string]bool{}
		for _, ch := range pulled.Changes {
			shapesSeen[ch.ShapeKey] = true
		}
		if !shapesSeen["lists"] || !shapesSeen["todos"] {
			t.Fatalf("pull after the reload saw shapes %v", shapesSeen)
		}
	})
}

func poolFor(t *testing.T, dsn string) *shapes.Database {
	t.Helper()
	var db *shapes.Database
	databases.Range(func(k, v any) bool {
		if k == dsn {
			db = v.(*shapes.Database)
		}
		return true
	})
	if db == nil {
		t.Fatalf("no pool for %s", dsn)
	}
	return db
}
