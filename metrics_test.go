package hypersync

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/pgtest"
)

// Two hypersync handlers in one config share the collectors, and after a
// push and a pull the admin endpoint's /metrics shows them, with no user in
// any label.
func TestMetricsOnTheAdminEndpoint(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, integrationDDL)
	tester := serveSites(t, nil, fmt.Sprintf(`http://localhost:9080 {
	handle /sync/* {
		hypersync {
			database %[1]s
			user_id {http.request.header.X-Test-User}
			shape todos {
				key todoId
				fields title description done deleted
			}
		}
	}
	handle /other/* {
		hypersync {
			database %[1]s
			user_id {http.request.header.X-Test-User}
			shape lists {
				key listId
			}
		}
	}
}`, dsn))
	do := func(method, path, body string) int {
		req, _ := http.NewRequest(method, "http://localhost:9080"+path, strings.NewReader(body))
		req.Header.Set("X-Test-User", "alice-metrics")
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	now := time.Now()
	if s := do("POST", "/sync/push", `{"changes":[`+itChange("m1", "alice-metrics", "m1", "x", now)+`,`+
		strings.Replace(itChange("m2", "alice-metrics", "m2", "x", now), `"todos"`, `"made-up-shape"`, 1)+`]}`); s != 201 {
		t.Fatalf("push: %d", s)
	}
	if s := do("GET", "/sync/pull/", ""); s != 200 {
		t.Fatalf("pull: %d", s)
	}
	resp, err := http.Get("http://localhost:2999/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ours []string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "hypersync_") {
			ours = append(ours, line)
		}
	}
	all := strings.Join(ours, "\n")
	for _, want := range []string{
		`hypersync_requests_total{op="push",status="201"} `,
		`hypersync_requests_total{op="pull",status="200"} `,
		`hypersync_changes_total{outcome="applied",shape="todos"} `,
		`hypersync_changes_total{outcome="unknown-shape",shape="(unknown)"} `,
		`hypersync_rows_pulled_total{shape="todos"} `,
		`hypersync_request_duration_seconds_bucket{op="push",`,
		`hypersync_database_duration_seconds_bucket{op="pull",`,
		`hypersync_lock_wait_seconds_count `,
		`hypersync_pool_connections{database=`,
		`hypersync_pool_acquire_waits_total{database=`,
		`hypersync_pool_acquire_wait_seconds_total{database=`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(all, "alice") || strings.Contains(all, "made-up-shape") {
		t.Error("a metric label carries a user or a client-chosen shape key")
	}
	if t.Failed() {
		t.Logf("hypersync metrics:\n%s", all)
	}

	// The admin health route: the database answers; todos is ready, lists
	// lacks its sync index, so the whole is degraded (503).
	resp, err = http.Get("http://localhost:2999/hypersync/health")
	if err != nil {
		t.Fatal(err)
	}
	var h Health
	err = json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 503 || h.Status != "degraded" || len(h.Databases) != 1 || !h.Databases[0].Reachable || strings.Contains(h.Databases[0].Database, "password") {
		t.Fatalf("health %d %+v", resp.StatusCode, h)
	}
	byShape := map[string]ShapeHealth{}
	for _, s := range h.Shapes {
		byShape[s.Shape] = s
	}
	if !byShape["todos"].OK || byShape["lists"].OK || len(byShape["lists"].Fix) != 1 || !strings.Contains(byShape["lists"].Fix[0], "CREATE INDEX") {
		t.Fatalf("shape health %+v", h.Shapes)
	}
}

// A live listener that cannot LISTEN shows as degraded in the health route
// and as 0 in hypersync_live_listener_up; fixed by a reload, it shows as
// listening and 1.
func TestListenerStateInHealthAndMetrics(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, integrationDDL)
	site := func(listen string) string {
		return fmt.Sprintf(`http://localhost:9080 {
	handle /sync/* {
		hypersync {
			database %s
			%s
			user_id {http.request.header.X-Test-User}
			shape todos {
				key todoId
				fields title description done deleted
			}
		}
	}
}`, dsn, listen)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = "127.0.0.1:1" // nothing listens there
	tester := serveSites(t, nil, site("listen_database "+u.String()))
	// waitFor polls the health route and /metrics until ok says their
	// state is the one wanted, for at most 20 s.
	waitFor := func(what string, ok func(h Health, metrics string) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			var h Health
			if resp, err := http.Get("http://localhost:2999/hypersync/health"); err == nil {
				_ = json.NewDecoder(resp.Body).Decode(&h)
				resp.Body.Close()
			}
			var metrics string
			if resp, err := http.Get("http://localhost:2999/metrics"); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				metrics = string(b)
			}
			if ok(h, metrics) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("after 20 s, not %s: health %+v", what, h)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	live := func(h Health) *LiveHealth {
		if len(h.Databases) != 1 {
			return nil
		}
		return h.Databases[0].Live
	}
	waitFor("degraded", func(h Health, m string) bool {
		l := live(h)
		return h.Status == "degraded" && l != nil && !l.Listening && strings.Contains(l.Error, "cannot connect") &&
			regexp.MustCompile(`hypersync_live_listener_up\{database="[^"]+"\} 0\n`).MatchString(m)
	})
	serveSites(t, tester, site(""))
	waitFor("listening", func(h Health, m string) bool {
		l := live(h)
		return l != nil && l.Listening && l.Error == "" && regexp.MustCompile(`hypersync_live_listener_up\{database="[^"]+"\} 1\n`).MatchString(m)
	})
}
