package shapes_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/shapes"
)

func openDB(t *testing.T, dsn string) *shapes.Database {
	t.Helper()
	db, err := shapes.Open(dsn, shapes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Destruct() })
	return db
}

// newInstance is one hypersync handler on db. Two instances on two pools
// of one PostgreSQL database stand for two Caddy instances.
func newInstance(t *testing.T, db *shapes.Database) *httptest.Server {
	t.Helper()
	store, err := shapes.NewStore(db, []shapes.ShapeConfig{{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title", "done", "deleted"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &handler.Handler{Store: store, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), Timeout: 30 * time.Second}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.Serve(w, r, r.Header.Get("X-Test-User"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// convergence runs pushers and pullers of one user against two instances
// for dur, then checks that every puller has seen the final version of
// every row. It returns the number of rows checked and missed.
func convergence(t *testing.T, a, b *httptest.Server, final func() (map[string]string, error), dur time.Duration) (rows, misses int) {
	instances := []*httptest.Server{a, b}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()

	var clock atomic.Int64 // client updatedAt, unique and increasing
	clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	var keys atomic.Int64
	var wg sync.WaitGroup
	var failures atomic.Int64
	fail := func(format string, args ...any) {
		if failures.Add(1) < 5 {
			t.Errorf(format, args...)
		}
	}
	const pushers, pullers = 4, 4
	for p := 0; p < pushers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(p)))
			for ctx.Err() == nil {
				n := 1 + rng.Intn(20)
				var changes []map[string]any
				for i := 0; i < n; i++ {
					// Mostly new rows, so that every row version is a final
					// one that every puller must see; some updates.
					var key int64
					if k := keys.Load(); k > 0 && rng.Intn(5) == 0 {
						key = rng.Int63n(k)
					} else {
						key = keys.Add(1)
					}
					stamp := time.UnixMilli(clock.Add(1)).UTC()
					changes = append(changes, map[string]any{
						"changeId": fmt.Sprintf("p%d-%d", p, clock.Load()), "shapeKey": "todos", "pushed": 0,
						"userId": "alice", "updatedAt": stamp.Format("2006-01-02T15:04:05.000Z"),
						"payload": map[string]any{"todoId": fmt.Sprint(key), "title": stamp.Format(time.RFC3339Nano), "done": false, "deleted": false},
					})
				}
				body, _ := json.Marshal(map[string]any{"changes": changes})
				req, _ := http.NewRequest("POST", instances[rng.Intn(2)].URL+"/sync/push", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-Test-User", "alice")
				resp, err := client.Do(req)
				if err != nil {
					fail("push: %v", err)
					return
				}
				answer, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 201 {
					fail("push answered %d: %s", resp.StatusCode, answer)
					return
				}
			}
		}(p)
	}
	type view struct {
		cursor string
		rows   map[string]string // todoId -> title of the newest version seen
		upd    map[string]string // todoId -> its updatedAt
	}
	views := make([]*view, pullers)
	pull := func(v *view, srv *httptest.Server) error {
		req, _ := http.NewRequest("GET", srv.URL+"/sync/pull/?lastPull="+v.cursor, nil)
		req.Header.Set("X-Test-User", "alice")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var out struct {
			Changes []struct {
				Payload   map[string]any
				UpdatedAt string
			}
			SyncedAt string
		}
		if resp.StatusCode != 200 {
			answer, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("pull answered %d: %s", resp.StatusCode, answer)
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return err
		}
		for _, c := range out.Changes {
			id := c.Payload["todoId"].(string)
			// the client's upsertRemoteChangeFn keeps the newest updatedAt
			if c.UpdatedAt > v.upd[id] {
				v.upd[id] = c.UpdatedAt
				v.rows[id] = c.Payload["title"].(string)
			}
		}
		// The client keeps syncedAt as a JS Date: milliseconds only.
		synced, err := time.Parse(time.RFC3339Nano, out.SyncedAt)
		if err != nil {
			return err
		}
		v.cursor = synced.Truncate(time.Millisecond).UTC().Format("2006-01-02T15:04:05.000Z")
		return nil
	}
	for p := 0; p < pullers; p++ {
		views[p] = &view{cursor: "1970-01-01T00:00:00.000Z", rows: map[string]string{}, upd: map[string]string{}}
		wg.Add(1)
		go func(v *view, p int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(100 + p)))
			for ctx.Err() == nil {
				if err := pull(v, instances[rng.Intn(2)]); err != nil {
					fail("pull: %v", err)
					return
				}
			}
		}(views[p], p)
	}
	wg.Wait()
	if failures.Load() > 0 {
		t.FailNow()
	}

	// The database's final state, read directly.
	want, err := final()
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range views {
		if err := pull(v, instances[i%2]); err != nil {
			t.Fatal(err)
		}
		for id, title := range want {
			rows++
			if v.rows[id] != title {
				misses++
			}
		}
	}
	return rows, misses
}

func TestPullCompletenessUnderConcurrency(t *testing.T) {
	check := func(t *testing.T, a, b *httptest.Server, final func() (map[string]string, error)) {
		rows, misses := convergence(t, a, b, final, 4*time.Second)
		t.Logf("%d row versions checked across pullers, %d missed", rows, misses)
		if rows < 1000 {
			t.Fatalf("only %d rows checked: the test did too little to mean anything", rows)
		}
		if misses != 0 {
			t.Fatalf("pullers missed %d of %d final row versions", misses, rows)
		}
	}
	t.Run("postgres, two instances with their own pools", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		pgtest.Exec(t, dsn, seedTable)
		check(t, newInstance(t, openDB(t, dsn)), newInstance(t, openDB(t, dsn)), pgTitles(dsn))
	})
	t.Run("sqlite, two handlers in one process", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "sync.db")
		db := openDB(t, "sqlite:"+path)
		if err := sqliteExec(path, strings.ReplaceAll(seedTable, "DEFAULT NOW()", "")); err != nil {
			t.Fatal(err)
		}
		check(t, newInstance(t, db), newInstance(t, db), sqliteTitles(path))
	})
}

// The same test against the reference's scheme (stamp = now() of the push
// transaction, syncedAt = now() of the pull) must find missed rows,
// otherwise the test above proves nothing.
func TestConcurrencyCheckCatchesNaiveStamps(t *testing.T) {
	shapes.SetNaiveStamps(true)
	defer shapes.SetNaiveStamps(false)
	for attempt := 1; attempt <= 3; attempt++ {
		dsn := pgtest.NewDatabase(t)
		pgtest.Exec(t, dsn, seedTable)
		rows, misses := convergence(t, newInstance(t, openDB(t, dsn)), newInstance(t, openDB(t, dsn)), pgTitles(dsn), 4*time.Second)
		t.Logf("attempt %d: naive stamps: %d of %d final row versions missed", attempt, misses, rows)
		if misses > 0 {
			return
		}
	}
	t.Fatal("the concurrency check found no missed rows with naive now() stamps: it cannot catch the checkpoint bug")
}

const seedTable = pgtest.TodosDDL + ";\n" + pgtest.TodosIndex

func payloadOf(s string) shapes.Payload {
	var p map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		panic(err)
	}
	return shapes.PayloadOf(p)
}
