package handler_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/testkit"
)

// pullWithCookie pulls as user from lastPull, carrying cookie (none when
// empty), and returns the answer and the cookie it sets.
func (e *env) pullWithCookie(user, lastPull, cookie string) (answer, *http.Cookie) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.srv.URL+"/sync/pull/?lastPull="+lastPull, nil)
	req.Header.Set("X-Test-User", user)
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: handler.CursorCookie, Value: cookie})
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, c := range resp.Cookies() {
		if c.Name == handler.CursorCookie {
			return answer{resp.StatusCode, resp.Header, string(body)}, c
		}
	}
	return answer{resp.StatusCode, resp.Header, string(body)}, nil
}

// pulled returns the todoIds and syncedAt of a pull answer.
func pulled(t *testing.T, a answer) ([]string, string) {
	t.Helper()
	var v struct {
		Changes []struct {
			Payload map[string]any `json:"payload"`
		} `json:"changes"`
		SyncedAt string `json:"syncedAt"`
	}
	if err := json.Unmarshal([]byte(a.body), &v); err != nil || a.status != 200 {
		t.Fatalf("pull %d: %s", a.status, a.body)
	}
	var ids []string
	for _, c := range v.Changes {
		ids = append(ids, fmt.Sprint(c.Payload["todoId"]))
	}
	return ids, v.SyncedAt
}

// One browser profile, alice then bob: the 1.0.0 client keeps one
// lastPull per profile, so bob's first pull sends alice's cursor. Her
// cookie comes with it, and the pull is answered from the epoch: bob gets
// every row of his, also those stamped before her cursor. A pull with his
// own cookie trusts its lastPull; a pull without a cookie (a client that
// is no browser) trusts it too.
func TestCursorCookie(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, func(c *handler.Config) { c.CursorCookie = true })
		now := func() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z") }
		var five []string
		for i := 0; i < 5; i++ {
			five = append(five, todo(fmt.Sprint("b", i), "bob", now(), fmt.Sprintf(`{"todoId":"b%d","title":"bob's"}`, i)))
		}
		e.push("bob", strings.Join(five, ","))
		testkit.NextMillisecond()
		e.push("alice", todo("a1", "alice", now(), `{"todoId":"a1","title":"alice's"}`))
		a, aliceCookie := e.pullWithCookie("alice", "", "")
		_, aliceCursor := pulled(t, a)
		if aliceCookie == nil || !aliceCookie.HttpOnly || aliceCookie.SameSite != http.SameSiteStrictMode || aliceCookie.Path != "/sync" || aliceCookie.Secure {
			t.Fatalf("cookie %+v, want HttpOnly, SameSite=Strict, Path=/sync, not Secure over HTTP", aliceCookie)
		}
		if strings.Contains(aliceCookie.Value, "alice") || len(aliceCookie.Value) < 16 {
			t.Fatalf("cookie value %q: want a keyed hash, not the user id", aliceCookie.Value)
		}
		testkit.NextMillisecond()
		e.push("bob", todo("b9", "bob", now(), `{"todoId":"b9","title":"bob's, after alice's cursor"}`))

		// without a cookie, alice's cursor is trusted: bob's first five are skipped
		ids, _ := pulled(t, answerOf(e.pullWithCookie("bob", aliceCursor, "")))
		if strings.Join(ids, ",") != "b9" {
			t.Fatalf("bob without a cookie, from alice's cursor: %v, want only b9", ids)
		}
		// with alice's cookie: from the epoch, and bob's cookie set
		a, bobCookie := e.pullWithCookie("bob", aliceCursor, aliceCookie.Value)
		ids, bobCursor := pulled(t, a)
		if len(ids) != 6 {
			t.Fatalf("bob with alice's cookie got %v, want all six of his rows", ids)
		}
		if bobCookie == nil || bobCookie.Value == aliceCookie.Value {
			t.Fatalf("bob's answer set %+v, want his own cookie", bobCookie)
		}
		// with his own cookie, his cursor is trusted
		if ids, _ := pulled(t, answerOf(e.pullWithCookie("bob", bobCursor, bobCookie.Value))); len(ids) != 0 {
			t.Fatalf("bob with his own cookie and cursor got %v, want nothing", ids)
		}
	})
}

func answerOf(a answer, _ *http.Cookie) answer { return a }

// Over HTTPS the cookie is Secure; with cursor_cookie off, no cookie is
// set and another user's is not looked at.
func TestCursorCookieSecureAndOff(t *testing.T) {
	dsn := stores[1].Open(t, seedDDL)
	e := newEnvOn(t, dsn, func(c *handler.Config) { c.CursorCookie = true })
	req := httptest.NewRequest("GET", "https://app.example/sync/pull/", nil)
	req.TLS = &tls.ConnectionState{}
	rec := httptest.NewRecorder()
	e.h.Serve(rec, req, "alice")
	cookies := rec.Result().Cookies()
	if len(cookies) != 1 || !cookies[0].Secure {
		t.Fatalf("cookies over HTTPS %+v, want one, Secure", cookies)
	}
	off := newEnvOn(t, dsn, nil)
	a, c := off.pullWithCookie("alice", "", "someone-else")
	if a.status != 200 || c != nil {
		t.Fatalf("with cursor_cookie off: %d, cookie %+v; want 200 and no cookie", a.status, c)
	}
}

// The record of refused changes: one entry per changeId, newest first,
// with when it was first and last refused and how often (the client sends
// a refused change again at every sync), its shape, key fields, code and
// message; at most keep_rejections entries per user; only the user's own;
// Cache-Control no-store; 401 without a user.
func TestRejectionRecord(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, func(c *handler.Config) { c.KeepRejections = 3 })
		ts := "2026-11-25T10:00:00.000Z"
		e.push("bob", todo("b1", "bob", ts, `{"todoId":"t1","title":"bob's"}`))
		refused := todo("r1", "alice", ts, `{"todoId":"t1","title":"not mine"}`) + "," +
			todo("r2", "alice", ts, `{"todoId":"t2","title":7}`) + "," +
			strings.Replace(todo("r3", "alice", ts, `{"todoId":"t3"}`), `"todos"`, `"nope"`, 1)
		e.push("alice", refused)
		get := func(user string) (answer, []handler.RejectionEntry) {
			e.h.WaitRecords() // written after the answers
			a := e.do("GET", "/sync/rejections", user, "", "")
			var v struct {
				Rejections []handler.RejectionEntry `json:"rejections"`
			}
			if a.status == 200 {
				if err := json.Unmarshal([]byte(a.body), &v); err != nil {
					t.Fatal(err)
				}
			}
			return a, v.Rejections
		}
		a, recs := get("alice")
		if a.status != 200 || a.header.Get("Cache-Control") != "no-store" || len(recs) != 3 {
			t.Fatalf("rejections %d %v: %s", a.status, a.header, a.body)
		}
		byID := map[string]handler.RejectionEntry{}
		for _, r := range recs {
			byID[r.ChangeID] = r
		}
		if r := byID["r1"]; r.Error != "user-mismatch" || r.ShapeKey != "todos" || string(r.Key) != `{"todoId":"t1"}` || r.Times != 1 || r.Message == "" || r.At == "" || r.At != r.Last {
			t.Fatalf("r1 %+v", r)
		}
		if r := byID["r2"]; r.Error != "invalid-payload" || string(r.Key) != `{"todoId":"t2"}` {
			t.Fatalf("r2 %+v", r)
		}
		if r := byID["r3"]; r.Error != "unknown-shape" || string(r.Key) != "null" {
			t.Fatalf("r3 %+v", r)
		}
		// sent again, as the client does at every sync
		testkit.NextMillisecond()
		e.push("alice", todo("r1", "alice", ts, `{"todoId":"t1","title":"not mine"}`))
		_, recs = get("alice")
		if recs[0].ChangeID != "r1" || recs[0].Times != 2 || recs[0].At != byID["r1"].At || recs[0].Last <= recs[0].At {
			t.Fatalf("r1 again: %+v, want first, twice, the same at and a later last", recs[0])
		}
		// a fourth: the oldest goes
		testkit.NextMillisecond()
		e.push("alice", todo("r4", "alice", ts, `{"todoId":"t1","title":"still not mine"}`))
		if _, recs = get("alice"); len(recs) != 3 || recs[0].ChangeID != "r4" {
			t.Fatalf("after a fourth: %+v, want three, r4 first", recs)
		}
		if _, bobs := get("bob"); len(bobs) != 0 {
			t.Fatalf("bob sees %+v", bobs)
		}
		if a, _ := get(""); a.status != 401 {
			t.Fatalf("without a user: %d, want 401", a.status)
		}
	})
}

// A push of 1,000 refused changes is recorded in one go, and kept within
// keep_rejections; with keep_rejections 0 nothing is kept.
func TestRejectionRecordIsBounded(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, func(c *handler.Config) { c.KeepRejections = 100 })
		var changes []string
		for i := 0; i < 1000; i++ {
			changes = append(changes, todo(fmt.Sprint("r", i), "alice", "2026-11-25T10:00:00.000Z", `{"todoId":"t","title":7}`))
		}
		if a := e.push("alice", strings.Join(changes, ",")); a.status != 201 {
			t.Fatalf("push: %d %s", a.status, a.body)
		}
		e.h.WaitRecords()
		a := e.do("GET", "/sync/rejections", "alice", "", "")
		if n := strings.Count(a.body, `"changeId"`); n != 100 {
			t.Fatalf("%d entries kept, want 100", n)
		}
		off := newEnvOn(t, dsn, nil)
		off.push("carol", todo("c1", "carol", "2026-11-25T10:00:00.000Z", `{"todoId":"c","title":7}`))
		off.h.WaitRecords()
		if a := off.do("GET", "/sync/rejections", "carol", "", ""); !strings.Contains(a.body, `"rejections":[]`) {
			t.Fatalf("with keep_rejections 0: %s", a.body)
		}
	})
}

// An erased user's pushes, pulls, streams and record answer 403
// user-erased, on both stores, whatever the push carries; another user
// goes on; unblocked, the user is served again.
func TestErasedUserIsRefused(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		e := newEnvOn(t, dsn, func(c *handler.Config) { c.CursorCookie = true })
		now := func() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z") }
		if a := e.push("alice", todo("a1", "alice", now(), `{"todoId":"a1","title":"alice's"}`)); a.status != 201 {
			t.Fatalf("push: %d %s", a.status, a.body)
		}
		if _, err := e.store.Erase(context.Background(), "alice", false); err != nil {
			t.Fatal(err)
		}
		for name, a := range map[string]answer{
			"push":       e.push("alice", todo("a2", "alice", now(), `{"todoId":"a2","title":"back"}`)),
			"pull":       e.pull("alice", ""),
			"paged pull": e.do("GET", "/sync/pull/?limit=10", "alice", "", ""),
			"stream":     e.do("GET", "/sync/events", "alice", "", ""),
			"rejections": e.do("GET", "/sync/rejections", "alice", "", ""),
			// nothing to write: no statement checks the block, the
			// store does
			"empty push":        e.do("POST", "/sync/push", "alice", "application/json", `{"changes":[]}`),
			"push of bob's row": e.push("alice", todo("a3", "bob", now(), `{"todoId":"a3","title":"not mine"}`)),
		} {
			if a.status != http.StatusForbidden || !strings.Contains(a.body, `"error":"user-erased"`) {
				t.Errorf("%s by alice, erased: %d %s", name, a.status, a.body)
			}
			if c := a.header.Get("Set-Cookie"); c != "" {
				t.Errorf("%s by alice, erased, sets a cookie: %s", name, c)
			}
		}
		if a := e.push("bob", todo("b1", "bob", now(), `{"todoId":"b1","title":"bob's"}`)); a.status != 201 {
			t.Fatalf("bob's push: %d %s", a.status, a.body)
		}
		if _, err := e.store.Unblock(context.Background(), "alice"); err != nil {
			t.Fatal(err)
		}
		if a := e.push("alice", todo("a4", "alice", now(), `{"todoId":"a4","title":"a new start"}`)); a.status != 201 {
			t.Fatalf("alice's push, unblocked: %d %s", a.status, a.body)
		}
		if ids, _ := pulled(t, e.pull("alice", "")); strings.Join(ids, ",") != "a4" {
			t.Fatalf("alice, unblocked, pulls %v: want her one new row", ids)
		}
	})
}
