package handler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/pgtest"
)

// TestDatabaseOutage stops PostgreSQL with `pg_ctl stop -m immediate` while
// clients push and pull, then starts it again.
func TestDatabaseOutage(t *testing.T) {
	cluster := pgtest.SharedCluster(t)
	if cluster == nil {
		t.Skip("HYPERSYNC_TEST_DSN names a server this test cannot stop")
	}
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, seedDDL)
	const timeout = 2 * time.Second
	e := newEnvOn(t, dsn, func(h *handler.Config) { h.Timeout = timeout })
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	if a := e.pull("alice", ""); a.status != 200 {
		t.Fatalf("warm-up pull: %d %s", a.status, a.body)
	}
	baseline := runtime.NumGoroutine()

	var (
		mu       sync.Mutex
		accepted = map[string]string{} // todoId -> title, for every change answered as accepted
		statuses = map[int]int{}
		slowest  time.Duration // slowest 503
		problems []string
		seq      atomic.Int64
		down     atomic.Bool
		upAgain  atomic.Int64 // successful pushes after the restart
	)
	record := func(status int, took time.Duration, hdr http.Header, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		statuses[status]++
		switch status {
		case 200, 201:
		case 503:
			if took > slowest {
				slowest = took
			}
			if hdr.Get("Retry-After") == "" {
				problems = append(problems, "a 503 without Retry-After")
			}
		default:
			problems = append(problems, fmt.Sprintf("%d: %s", status, body))
		}
	}
	// send makes one request as alice and records its answer; ok is false
	// when the connection failed.
	send := func(req *http.Request) (status int, body []byte, ok bool) {
		req.Header.Set("X-Test-User", "alice")
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, false
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		record(resp.StatusCode, time.Since(start), resp.Header, body)
		return resp.StatusCode, body, true
	}
	// the load runs until the phases below have seen what they wait for
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// waitFor waits until cond holds, for at most a minute
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("after a minute, still not %s: answers %v", what, statuses)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	count := func(status int) int {
		mu.Lock()
		defer mu.Unlock()
		return statuses[status]
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				var changes []string
				titles := map[string]string{}
				for i := 0; i < 10; i++ {
					n := seq.Add(1)
					key, title := fmt.Sprintf("k%d", n), fmt.Sprintf("title %d", n)
					titles[fmt.Sprintf("c%d", n)] = key + "\x00" + title
					changes = append(changes, todo(fmt.Sprintf("c%d", n), "alice", time.Now().UTC().Format("2006-01-02T15:04:05.000Z"),
						fmt.Sprintf(`{"todoId":%q,"title":%q}`, key, title)))
				}
				req, _ := http.NewRequest("POST", e.srv.URL+"/sync/push", strings.NewReader(`{"changes":[`+strings.Join(changes, ",")+`]}`))
				req.Header.Set("Content-Type", "application/json")
				status, body, ok := send(req)
				if ok && status == 201 {
					var pr handler.PushResponse
					_ = json.Unmarshal(body, &pr)
					mu.Lock()
					for _, id := range pr.AcceptedChanges {
						kt := strings.SplitN(titles[id], "\x00", 2)
						accepted[kt[0]] = kt[1]
					}
					mu.Unlock()
					if !down.Load() {
						upAgain.Add(1)
					}
				}
			}
		}()
	}
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequest("GET", e.srv.URL+"/sync/pull/?lastPull=2026-11-25T00:00:00.000Z", nil)
				send(req)
			}
		}()
	}

	// up: pushes and pulls succeed
	waitFor("20 pushes and 20 pulls answered", func() bool { return count(201) >= 20 && count(200) >= 20 })
	if err := cluster.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	// down: every request ends, as a 503
	waitFor("8 answers of 503", func() bool { return count(503) >= 8 })
	during503 := count(503)
	if err := cluster.Start(); err != nil {
		t.Fatal(err)
	}
	upAgain.Store(0)
	down.Store(false)
	// up again: pushes succeed without a restart of hypersync
	waitFor("10 pushes accepted after the restart", func() bool { return upAgain.Load() >= 10 })
	cancel()
	wg.Wait()

	t.Logf("answers: %v; slowest 503 %v; pushes accepted after the restart: %d", statuses, slowest.Round(time.Millisecond), upAgain.Load())
	if len(problems) > 0 {
		t.Fatalf("%d answers were neither a success nor a 503 with Retry-After, first: %s", len(problems), problems[0])
	}
	if during503 == 0 {
		t.Fatal("no 503 while the database was down")
	}
	if slowest > timeout+time.Second {
		t.Fatalf("a 503 took %v, beyond the %v timeout", slowest, timeout)
	}
	if upAgain.Load() == 0 {
		t.Fatal("no push succeeded after the database came back")
	}

	// Every change ever reported accepted is in the database.
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), `SELECT todoId, title FROM todos`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]string{}
	for rows.Next() {
		var k, v string
		_ = rows.Scan(&k, &v)
		stored[k] = v
	}
	lost := 0
	for k, title := range accepted {
		if stored[k] != title {
			lost++
		}
	}
	t.Logf("acknowledged changes: %d, in the database: %d, lost: %d", len(accepted), len(accepted)-lost, lost)
	if lost > 0 {
		t.Fatalf("%d acknowledged changes are not in the database", lost)
	}

	// No goroutine outlives the load.
	client.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline+2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline+2 {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines before the load, %d after:\n%s", baseline, n, buf[:runtime.Stack(buf, true)])
	}
}
