package handler_test

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
)

// serveAs calls the handler directly with a user id, as Caddy does after
// reading the user_id placeholder: no HTTP header can mangle the id.
func (e *env) serveAs(user, method, path, body string) (int, string) {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	e.h.Serve(w, req, user)
	return w.Code, w.Body.String()
}

func TestUnusualUserIDsStayIsolated(t *testing.T) {
	users := []string{
		"alice", "Alice", "alice ", " alice", // case and spaces make different users
		"ünïcødé 用户 🚀", "with spaces and 'quotes'", `back\slash"quote`, "%27%20OR%201=1", strings.Repeat("x", 255),
	}
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, nil)
		for i, u := range users {
			uj, _ := json.Marshal(u)
			body := fmt.Sprintf(`{"changes":[{"changeId":"c%d","shapeKey":"todos","userId":%s,"updatedAt":"2026-11-25T10:00:00.000Z","payload":{"todoId":"own-%d","title":%s}}]}`, i, uj, i, uj)
			if code, answer := e.serveAs(u, "POST", "/sync/push", body); code != 201 || !strings.Contains(answer, fmt.Sprintf(`"acceptedChanges":["c%d"]`, i)) {
				t.Fatalf("push as %q: %d %s", u, code, answer)
			}
		}
		for i, u := range users {
			for _, lastPull := range []string{"", "?lastPull=1970-01-01T00:00:00.000Z", "?lastPull=1900-01-01T00:00:00Z"} {
				code, answer := e.serveAs(u, "GET", "/sync/pull"+lastPull, "")
				if code != 200 {
					t.Fatalf("pull as %q: %d %s", u, code, answer)
				}
				var out struct {
					Changes []struct {
						UserID  string
						Payload map[string]any
					}
				}
				if err := json.Unmarshal([]byte(answer), &out); err != nil {
					t.Fatal(err)
				}
				if len(out.Changes) != 1 || out.Changes[0].UserID != u || out.Changes[0].Payload["todoId"] != fmt.Sprintf("own-%d", i) || out.Changes[0].Payload["title"] != u {
					t.Fatalf("%q pulled %+v, want only its own row", u, out.Changes)
				}
			}
		}
	})
}
