package live_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
)

// rawStream is an event stream read line by line, as it comes.
type rawStream struct {
	lines chan string
}

// openRaw opens …/events for user, with the query parameters query and,
// when lastID is not empty, a Last-Event-ID header.
func openRaw(t *testing.T, in *instance, user string, query url.Values, lastID string) *rawStream {
	t.Helper()
	target := in.url + "/sync/events"
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	req, _ := http.NewRequest("GET", target, nil)
	req.Header.Set("X-Test-User", user)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		t.Fatalf("events for %s: %d", user, resp.StatusCode)
	}
	t.Cleanup(func() { resp.Body.Close() })
	s := &rawStream{lines: make(chan string, 256)}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	return s
}

// retry waits for the stream's retry: line and returns its value.
func (s *rawStream) retry(t *testing.T) int {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatal("the stream ended before its retry: line")
			}
			if v, found := strings.CutPrefix(l, "retry: "); found {
				n, err := strconv.Atoi(v)
				if err != nil {
					t.Fatalf("retry: %q", v)
				}
				return n
			}
		case <-deadline:
			t.Fatal("no retry: line within 5 s")
		}
	}
}

// poked reports whether an event: poke line comes within d.
func (s *rawStream) poked(d time.Duration) bool {
	deadline := time.After(d)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				return false
			}
			if l == "event: poke" {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// Each stream asks EventSource for its own reconnect delay, between 1 and
// 5 s: after a restart, devices come back spread out, not all at once.
func TestRetryIsSpreadPerStream(t *testing.T) {
	in := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), setup{})
	const n = 40
	seen := map[int]bool{}
	lo, hi := 1<<30, 0
	for i := 0; i < n; i++ {
		r := openRaw(t, in, fmt.Sprintf("u%d", i), nil, "").retry(t)
		if r < 1000 || r > 5000 {
			t.Fatalf("stream %d: retry %d ms, want 1000 to 5000", i, r)
		}
		seen[r] = true
		lo, hi = min(lo, r), max(hi, r)
	}
	t.Logf("%d streams: %d distinct retry values, %d to %d ms", n, len(seen), lo, hi)
	// 40 draws from 4,001 values: all alike, or within 2 s of each other,
	// would be a fixed or barely spread delay (the odds of the latter for a
	// uniform draw are below 1e-10)
	if len(seen) < n/2 || hi-lo < 2000 {
		t.Fatalf("%d distinct retry values among %d streams, spread %d ms: want them spread over 1-5 s", len(seen), n, hi-lo)
	}
}

// A new EventSource cannot send Last-Event-ID: it gives the id as
// ?lastEventId=, and gets a poke at once when the user's cursor moved on
// since, none when it did not. EventSource's own reconnects keep the URL
// and send the header too, with a newer id: the header wins.
func TestLastEventIDAsQueryParameter(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		in := newInstance(t, b.Open(t, testkit.SeedTable), setup{})
		push(t, in, "alice", "t1")
		cur, err := in.store.Cursor(context.Background(), "alice")
		if err != nil {
			t.Fatal(err)
		}
		now, old := fmt.Sprint(cur.UnixMilli()), fmt.Sprint(cur.UnixMilli()-1)
		q := func(id string) url.Values { return url.Values{"lastEventId": {id}} }

		// the behind ones first: a poke arrives within a second, and then
		// the silence of the current ones, checked last, is not a slow poke
		for _, c := range []struct {
			name, query, header string
		}{
			{"an old id as the parameter", old, ""},
			{"an unreadable id as the parameter", "yesterday", ""},
			{"an old id in the header beside a current parameter", now, old},
		} {
			if !openRaw(t, in, "alice", q(c.query), c.header).poked(2 * time.Second) {
				t.Fatalf("%s: no poke, want one at once", c.name)
			}
		}
		for _, c := range []struct {
			name, query, header string
		}{
			{"the current id as the parameter", now, ""},
			{"the current id in the header beside an old parameter", old, now},
		} {
			if openRaw(t, in, "alice", q(c.query), c.header).poked(400 * time.Millisecond) {
				t.Fatalf("%s: a poke, want none", c.name)
			}
		}
	})
}
