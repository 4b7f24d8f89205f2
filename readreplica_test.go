package hypersync

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/hypersync/hypersync/internal/pgtest"
)

// TestReadDatabaseThroughCaddy: a block with read_database pulls from the
// standby, and /metrics shows where pulls ran and the standby's state.
func TestReadDatabaseThroughCaddy(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, integrationDDL)
	sb := pgtest.SharedStandby(t)
	sb.WaitCaughtUp(t, dsn)
	tester := serveSites(t, nil, fmt.Sprintf(`http://localhost:9080 {
	handle /sync/* {
		hypersync {
			database %s
			read_database %s
			read_max_lag 1s
			user_id {http.request.header.X-Test-User}
			shape todos {
				key todoId
				fields title description done deleted
			}
		}
	}
}`, dsn, sb.DSN(dsn)))
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, "http://localhost:9080"+path, strings.NewReader(body))
		req.Header.Set("X-Test-User", "alice-standby")
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
	if s, body := do("POST", "/sync/push", `{"changes":[`+itChange("s1", "alice-standby", "s1", "from the standby", time.Now())+`]}`); s != 201 {
		t.Fatalf("push: %d %s", s, body)
	}
	// right after the push: the pull waits for the standby, or reads the
	// primary, and holds the push either way
	if s, body := do("GET", "/sync/pull?lastPull=1970-01-01T00:00:00.000Z", ""); s != 200 || !strings.Contains(body, "from the standby") {
		t.Fatalf("pull: %d %s", s, body)
	}
	resp, err := http.Get("http://localhost:2999/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	target := fmt.Sprintf("127.0.0.1:%d", sb.Port)
	for _, want := range []string{
		`hypersync_standby_up{database=`,
		`standby="` + target + `"} 1`,
		`hypersync_standby_lag_seconds{database=`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(string(metrics), `hypersync_pulls_by_target_total{target="`+target+`"} 1`) &&
		!strings.Contains(string(metrics), `hypersync_pull_fallbacks_total{reason="lag"} 1`) {
		t.Errorf("/metrics shows the pull neither on the standby nor fallen back for lag")
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", metrics)
	}
}

// TestReadDatabaseMustBeAStandby: a read_database that is the primary
// itself fails the config's load, and check says why.
func TestReadDatabaseMustBeAStandby(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, integrationDDL)
	block := fmt.Sprintf(`hypersync {
		database %[1]s
		read_database %[1]s
		user_id {http.request.header.X-Test-User}
		shape todos {
			key todoId
			fields title
		}
	}`, dsn)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("{\n\tadmin off\n}\n:0 {\n"+block+"\n}"), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Load(cfg, true)
	if err == nil {
		_ = caddy.Stop()
		t.Fatal("a config whose read_database is the primary loaded")
	}
	if !strings.Contains(err.Error(), "not in recovery") {
		t.Fatalf("load: %v", err)
	}

	sb := pgtest.SharedStandby(t)
	sb.WaitCaughtUp(t, dsn)
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`:0 {
	hypersync {
		database %[1]s
		read_database %[2]s
		read_database %[1]s
		shape todos {
			key todoId
			fields title
		}
	}
}`, dsn, sb.DSN(dsn))), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runCommand(t, cmdCheck, config)
	if code == 0 || !strings.Contains(out, fmt.Sprintf("✓ read_database 127.0.0.1:%d: a hot standby of database", sb.Port)) ||
		!strings.Contains(out, "✗ read_database") || !strings.Contains(out, "not in recovery") {
		t.Fatalf("check: %d\n%s", code, out)
	}
}

// TestReloadKeepsTheBrokerOnALivePool: a reload that changes read_max_lag
// opens another pool of the database; the live broker must belong to the
// pool in use (it reads cursors through it), not to the one the reload
// closed.
func TestReloadKeepsTheBrokerOnALivePool(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, integrationDDL)
	sb := pgtest.SharedStandby(t)
	sb.WaitCaughtUp(t, dsn)
	site := func(lag string) string {
		return fmt.Sprintf(`http://localhost:9080 {
	handle /sync/* {
		hypersync {
			database %s
			read_database %s
			read_max_lag %s
			user_id {http.request.header.X-Test-User}
			shape todos {
				key todoId
				fields title description done deleted
			}
		}
	}
}`, dsn, sb.DSN(dsn), lag)
	}
	tester := serveSites(t, nil, site("1s"))
	serveSites(t, tester, site("2s"))
	pools := map[string]bool{}
	databases.Range(func(k, _ any) bool { pools[k.(string)] = true; return true })
	n := 0
	brokers.Range(func(k, _ any) bool {
		n++
		// the key is the pool's key, then the listen DSN
		key := k.(string)
		pool := key[:strings.LastIndex(key, "\x00")]
		if !pools[pool] {
			t.Errorf("a live broker belongs to a pool that is closed: %q (open: %v)", pool, pools)
		}
		return true
	})
	if n == 0 {
		t.Fatal("no live broker after the reload")
	}
}
