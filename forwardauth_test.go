package hypersync

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/pgtest"
)

// With forward_auth … copy_headers X-User and user_id
// {http.request.header.X-User}, the user is whoever the auth service says,
// never what the client put in X-User.
func TestForwardAuthCannotBeImpersonated(t *testing.T) {
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("Authorization") {
		case "Bearer alice-token":
			w.Header().Set("X-User", "alice")
		case "Bearer anonymous-token":
			// a valid session that maps to no user: no X-User at all
		default:
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer auth.Close()

	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, integrationDDL)
	tester := serveSites(t, nil, fmt.Sprintf(`http://localhost:9080 {
	handle /sync/* {
		forward_auth %s {
			uri /verify
			copy_headers X-User
		}
		hypersync {
			database %s
			user_id {http.request.header.X-User}
			shape todos {
				key todoId
				fields title description done deleted
			}
		}
	}
}`, strings.TrimPrefix(auth.URL, "http://"), dsn))

	do := func(method, path, token, xUser, body string) (int, string) {
		req, _ := http.NewRequest(method, "http://localhost:9080"+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if xUser != "" {
			req.Header.Set("X-User", xUser)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	now := time.Now()
	// bob's row, written straight into the database
	pgtest.Exec(t, dsn, `INSERT INTO todos (todoId, title, userId, updatedAt, lastSyncAt) VALUES ('bob-1', 'bob''s', 'bob', now(), now())`)

	// alice, claiming to be bob in X-User, is alice.
	if code, body := do("POST", "/sync/push", "alice-token", "bob", `{"changes":[`+itChange("a1", "alice", "alice-1", "alice's", now)+`,`+itChange("b1", "bob", "bob-2", "forged", now)+`]}`); code != 201 ||
		!strings.Contains(body, `"acceptedChanges":["a1"]`) || !strings.Contains(body, `"changeId":"b1","index":1,"error":"user-mismatch"`) {
		t.Fatalf("push: %d %s", code, body)
	}
	code, body := do("GET", "/sync/pull/", "alice-token", "bob", "")
	if code != 200 || !strings.Contains(body, "alice-1") || strings.Contains(body, "bob-") {
		t.Fatalf("pull as alice with X-User: bob: %d %s", code, body)
	}
	// A session with no user, and a client-supplied X-User: nobody.
	if code, body := do("GET", "/sync/pull/", "anonymous-token", "bob", ""); code != 401 || !strings.Contains(body, `"unauthenticated"`) {
		t.Fatalf("anonymous session claiming bob: %d %s", code, body)
	}
	// No credentials: the auth service's 401.
	if code, _ := do("GET", "/sync/pull/", "", "bob", ""); code != 401 {
		t.Fatalf("no token: %d", code)
	}
}
