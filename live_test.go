package hypersync

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"golang.org/x/net/http2"
)

// liveSite is a site with live sync behind encode, the user from a header.
func liveSite(db, extra string) string {
	return `http://localhost:9080 {
	handle /sync/* {
		encode zstd gzip
		hypersync {
			database sqlite:` + db + `
			user_id {http.request.header.X-User}
			heartbeat 200ms
			` + extra + `
			shape todos {
				key todoId
				fields title
				create_table
			}
		}
	}
}
`
}

// openEvents opens alice's stream through Caddy and returns its lines.
func openEvents(t *testing.T, client *http.Client, url string) (*http.Response, <-chan string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("X-User", "alice")
	req.Header.Set("Accept-Encoding", "gzip, zstd")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return resp, lines
}

// waitLine waits for a line with prefix.
func waitLine(lines <-chan string, prefix string, d time.Duration) bool {
	deadline := time.After(d)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return false
			}
			if strings.HasPrefix(l, prefix) {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

func pushThroughCaddy(t *testing.T, key string) {
	t.Helper()
	body := fmt.Sprintf(`{"changes":[{"changeId":%q,"shapeKey":"todos","pushed":0,"userId":"alice","updatedAt":%q,"payload":{"todoId":%q,"title":"x"}}]}`,
		key, time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), key)
	req, _ := http.NewRequest("POST", "http://localhost:9080/sync/push", strings.NewReader(body))
	req.Header.Set("X-User", "alice")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("push: %d", resp.StatusCode)
	}
}

// Through Caddy, behind encode zstd gzip: the stream is not compressed (no
// compressor held per stream), its pokes arrive, over HTTP/1.1 and over
// HTTP/2 (h2c), and it survives a reload, which returns promptly.
func TestLiveThroughCaddy(t *testing.T) {
	db := filepath.Join(t.TempDir(), "live.db")
	tester := serveH2C(t, nil, liveSite(db, ""))
	h2c := &http.Client{Transport: &http2.Transport{AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}}
	for _, c := range []struct {
		name   string
		client *http.Client
		proto  int
	}{{"HTTP/1.1", &http.Client{Transport: &http.Transport{DisableCompression: true}}, 1}, {"HTTP/2", h2c, 2}} {
		t.Run(c.name, func(t *testing.T) {
			resp, lines := openEvents(t, c.client, "http://localhost:9080/sync/events")
			if resp.StatusCode != 200 || resp.ProtoMajor != c.proto {
				t.Fatalf("%d over %s", resp.StatusCode, resp.Proto)
			}
			if enc := resp.Header.Get("Content-Encoding"); enc != "" {
				t.Fatalf("the stream is compressed (%s) behind encode", enc)
			}
			// heartbeats keep coming: an idle HTTP/2 stream is not reset
			for i := 0; i < 3; i++ {
				if !waitLine(lines, ":", 2*time.Second) {
					t.Fatalf("heartbeat %d did not come", i)
				}
			}
			pushThroughCaddy(t, "t-"+c.name)
			if !waitLine(lines, "event: poke", 2*time.Second) {
				t.Fatal("no poke")
			}
		})
	}

	t.Run("metrics", func(t *testing.T) {
		_, lines := openEvents(t, &http.Client{Transport: &http.Transport{DisableCompression: true}}, "http://localhost:9080/sync/events")
		if !waitLine(lines, ":", 2*time.Second) {
			t.Fatal("the stream did not start")
		}
		pushThroughCaddy(t, "t-metrics")
		if !waitLine(lines, "event: poke", 2*time.Second) {
			t.Fatal("no poke")
		}
		resp, err := http.Get("http://localhost:2999/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"hypersync_live_streams ", "hypersync_live_pokes_total ", "hypersync_live_poke_latency_seconds_count "} {
			if !strings.Contains(string(b), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		if strings.Contains(string(b), "hypersync_live_streams 0") {
			t.Error("/metrics counts no open stream")
		}
	})

	t.Run("reload", func(t *testing.T) {
		_, lines := openEvents(t, &http.Client{Transport: &http.Transport{DisableCompression: true}}, "http://localhost:9080/sync/events")
		if !waitLine(lines, ":", 2*time.Second) {
			t.Fatal("the stream did not start")
		}
		start := time.Now()
		serveH2C(t, tester, liveSite(db, "max_streams 100"))
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the reload took %v with a stream open", d)
		}
		// the stream opened before the reload still gets pokes
		pushThroughCaddy(t, "after-reload")
		if !waitLine(lines, "event: poke", 3*time.Second) {
			t.Fatal("the stream opened before the reload got no poke after it")
		}
	})
}

// serveH2C serves sites as serveSites does, with HTTP/2 over cleartext
// (h2c) beside HTTP/1.1.
func serveH2C(t *testing.T, tester *caddytest.Tester, sites string) *caddytest.Tester {
	t.Helper()
	if tester == nil {
		tester = caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 30 * time.Second, TestRequestTimeout: 30 * time.Second})
	}
	globals := strings.Replace(testGlobals, "skip_install_trust", "skip_install_trust\n\tservers {\n\t\tprotocols h1 h2c\n\t}", 1)
	tester.InitServer(globals+sites, "caddyfile")
	return tester
}

// With live off, …/events answers 204 through Caddy.
func TestLiveOffThroughCaddy(t *testing.T) {
	db := filepath.Join(t.TempDir(), "off.db")
	serveSites(t, nil, liveSite(db, "live off"))
	req, _ := http.NewRequest("GET", "http://localhost:9080/sync/events", nil)
	req.Header.Set("X-User", "alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("%d, want 204", resp.StatusCode)
	}
	// live.js is served all the same, cacheable, with an ETag
	resp, err = http.Get("http://localhost:9080/sync/live.js")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || etag == "" || !strings.Contains(string(b), "export function live(") || !strings.Contains(resp.Header.Get("Content-Type"), "javascript") {
		t.Fatalf("live.js: %d %v %.80s", resp.StatusCode, resp.Header, b)
	}
	req, _ = http.NewRequest("GET", "http://localhost:9080/sync/live.js", nil)
	req.Header.Set("If-None-Match", etag)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("live.js with its ETag: %d, want 304", resp.StatusCode)
	}
}

var (
	caddyOnce sync.Once
	caddyBin  string
	caddyErr  error
)

// builtCaddy builds ./cmd/caddy once per test run.
func builtCaddy(t *testing.T) string {
	t.Helper()
	caddyOnce.Do(func() {
		if bin := os.Getenv("CADDY_BIN"); bin != "" {
			caddyBin = bin
			return
		}
		dir, err := os.MkdirTemp("", "hypersync-caddy-")
		if err != nil {
			caddyErr = err
			return
		}
		caddyBin = filepath.Join(dir, "caddy")
		out, err := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy").CombinedOutput()
		if err != nil {
			caddyErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if caddyErr != nil {
		t.Fatal(caddyErr)
	}
	return caddyBin
}

// `caddy stop` with 100 open streams returns within 2 s: the streams are
// closed when Caddy exits, though its grace period is unlimited.
func TestCaddyStopWithOpenStreams(t *testing.T) {
	bin := builtCaddy(t)
	dir := t.TempDir()
	port, admin := freeTCPPort(t), freeTCPPort(t)
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
}
http://127.0.0.1:%d {
	hypersync {
		database sqlite:%s
		user_id {http.request.header.X-User}
		shape todos {
			key todoId
			fields title
			create_table
		}
	}
}
`, admin, port, filepath.Join(dir, "stop.db"))
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", file)
	cmd.Dir = dir
	logs := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()
	base := fmt.Sprintf("http://127.0.0.1:%d/sync/events", port)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 200}}
	var bodies []io.Closer
	for i := 0; i < 100; i++ {
		var resp *http.Response
		for try := 0; try < 100; try++ {
			req, _ := http.NewRequest("GET", base, nil)
			req.Header.Set("X-User", fmt.Sprintf("u%d", i%20))
			var err error
			if resp, err = client.Do(req); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if resp == nil || resp.StatusCode != 200 {
			t.Fatalf("stream %d: %v\n%s", i, resp, logs)
		}
		bodies = append(bodies, resp.Body)
	}
	defer func() {
		for _, b := range bodies {
			b.Close()
		}
	}()
	start := time.Now()
	stop := exec.Command(bin, "stop", "--address", fmt.Sprintf("127.0.0.1:%d", admin))
	if out, err := stop.CombinedOutput(); err != nil {
		t.Fatalf("caddy stop: %v: %s", err, out)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatalf("Caddy did not exit within 5 s of caddy stop\n%s", logs)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("caddy stop took %v with 100 streams open", d)
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
