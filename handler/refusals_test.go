package handler_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/testkit"
)

// TestRefusalRate: a user whose pushes have more changes refused than
// refusal_rate allows is held, then answered 429 too-many-refusals with
// Retry-After, before the body is read; another user is not held; an
// honest push (a few refusals) never waits; and with the rate off
// nothing is held.
func TestRefusalRate(t *testing.T) {
	dsn := testkit.SQLite().Open(t, seedDDL)
	refused := func(n int) string { // n changes of another user's rows: user-mismatch
		now := time.Now().UTC().Format("2006-01-02T15:04:05.000Z")
		var cs []string
		for i := range n {
			cs = append(cs, todo(fmt.Sprintf("m%d-%d", n, i), "bob", now, fmt.Sprintf(`{"todoId":"x%d","title":"not mine"}`, i)))
		}
		return `{"changes":[` + strings.Join(cs, ",") + `]}`
	}
	t.Run("on", func(t *testing.T) {
		// 10 a second: a bucket of 100
		e := newEnvOn(t, dsn, func(c *handler.Config) { c.RefusalRate = 10 })
		for i := range 2 {
			// the first takes the bucket to 0 and the second below it: neither waits
			start := time.Now()
			if a := e.do("POST", "/sync/push", "mallory", "application/json", refused(100)); a.status != 201 {
				t.Fatalf("push %d: %d %s", i, a.status, a.body)
			}
			if took := time.Since(start); took > time.Second {
				t.Fatalf("push %d, within the bucket, took %v", i, took)
			}
		}
		a := e.do("POST", "/sync/push", "mallory", "application/json", refused(100))
		if a.status != http.StatusTooManyRequests || !strings.Contains(a.body, `"error":"too-many-refusals"`) {
			t.Fatalf("a push 100 refusals in debt: %d %s", a.status, a.body)
		}
		if ra := a.header.Get("Retry-After"); ra == "" || ra == "0" {
			t.Fatalf("429 without Retry-After: %v", a.header)
		}
		start := time.Now()
		if a := e.push("alice", todo("a1", "alice", time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), `{"todoId":"a1","title":"mine"}`)); a.status != 201 {
			t.Fatalf("alice's push beside the flood: %d %s", a.status, a.body)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("alice's push waited %v for mallory's debt", took)
		}
	})
	t.Run("a short debt waits", func(t *testing.T) {
		e := newEnvOn(t, dsn, func(c *handler.Config) { c.RefusalRate = 100 })
		// a bucket of 1,000: 1,050 refusals leave a debt of 50, half a second
		for _, n := range []int{1000, 50} {
			if a := e.do("POST", "/sync/push", "mallory", "application/json", refused(n)); a.status != 201 {
				t.Fatalf("push: %d %s", a.status, a.body)
			}
		}
		start := time.Now()
		if a := e.do("POST", "/sync/push", "mallory", "application/json", refused(1)); a.status != 201 {
			t.Fatalf("push in a short debt: %d %s", a.status, a.body)
		}
		if took := time.Since(start); took < 400*time.Millisecond {
			t.Fatalf("a push half a second in debt was answered after %v", took)
		}
	})
	t.Run("off", func(t *testing.T) {
		e := newEnvOn(t, dsn, nil)
		for i := range 3 {
			if a := e.do("POST", "/sync/push", "mallory", "application/json", refused(200)); a.status != 201 {
				t.Fatalf("push %d with no rate: %d %s", i, a.status, a.body)
			}
		}
	})
}

// TestRefusalWaitOutlastsTheTimeout: the wait for a refusal debt comes
// before the push's own timeout starts, so a short timeout neither cuts
// the wait into an empty answer nor is eaten by it.
func TestRefusalWaitOutlastsTheTimeout(t *testing.T) {
	e := newEnvOn(t, testkit.SQLite().Open(t, seedDDL), func(c *handler.Config) {
		c.RefusalRate = 10
		c.Timeout = 500 * time.Millisecond
	})
	body := func(tag string) string {
		now := time.Now().UTC().Format("2006-01-02T15:04:05.000Z")
		var cs []string
		for i := range 100 {
			cs = append(cs, todo(fmt.Sprintf("%s-%d", tag, i), "bob", now, fmt.Sprintf(`{"todoId":"x%d","title":"not mine"}`, i)))
		}
		return `{"changes":[` + strings.Join(cs, ",") + `]}`
	}
	for i := range 2 {
		if a := e.do("POST", "/sync/push", "mallory", "application/json", body(fmt.Sprint(i))); a.status != 201 {
			t.Fatalf("push %d: %d %s", i, a.status, a.body)
		}
	}
	a := e.do("POST", "/sync/push", "mallory", "application/json", body("late"))
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
		t.Fatalf("a push in debt, with a timeout shorter than the wait: %d %q (Retry-After %q)", a.status, a.body, a.header.Get("Retry-After"))
	}
}
