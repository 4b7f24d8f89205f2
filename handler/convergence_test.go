package handler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/pgtest"
)

// version is one value of a row: the title, and its client updatedAt.
type version struct {
	Title     string
	UpdatedAt time.Time
}

func (v version) newer(o version) bool { return v.UpdatedAt.After(o.UpdatedAt) }

type queuedChange struct {
	id  string
	key string
	v   version
}

// simDevice is a simulated client: a local table, a queue of unpushed
// changes, and a lastPull cursor kept to the millisecond, as the 1.0.0
// client keeps it.
type simDevice struct {
	user     string
	skew     time.Duration // this device's clock error
	rng      *rand.Rand
	local    map[string]version
	queue    []queuedChange
	lastPull time.Time
	seq      int
}

type convergenceRun struct {
	t         *testing.T
	servers   []string
	client    *http.Client
	mu        sync.Mutex
	accepted  map[string]version // key -> newest version any push had accepted
	usedTimes map[string]bool    // key@updatedAt already used, so that no two versions tie
	pushed    atomic.Int64
	resent    atomic.Int64
	pulls     atomic.Int64
}

// stamp returns a device's updatedAt for an edit of key: its skewed clock,
// never older than the local row, and unique for the key.
func (r *convergenceRun) stamp(d *simDevice, key string) time.Time {
	t := time.Now().Add(d.skew).Truncate(time.Millisecond)
	if cur, ok := d.local[key]; ok && !t.After(cur.UpdatedAt) {
		t = cur.UpdatedAt.Add(time.Millisecond)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.usedTimes[key+"@"+t.Format(time.RFC3339Nano)] {
		t = t.Add(time.Millisecond)
	}
	r.usedTimes[key+"@"+t.Format(time.RFC3339Nano)] = true
	return t
}

func (r *convergenceRun) do(d *simDevice, req *http.Request) (*http.Response, []byte, error) {
	req.Header.Set("X-Test-User", d.user)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// sync pushes the queue (a random batch size, sometimes keeping accepted
// changes to send them again) and pulls.
func (r *convergenceRun) sync(d *simDevice, resend bool) error {
	for len(d.queue) > 0 {
		n := 1 + d.rng.Intn(50)
		if n > len(d.queue) {
			n = len(d.queue)
		}
		batch := d.queue[:n]
		var changes []map[string]any
		for _, c := range batch {
			changes = append(changes, map[string]any{"changeId": c.id, "shapeKey": "todos", "pushed": 0, "userId": d.user,
				"updatedAt": c.v.UpdatedAt.UTC().Format("2006-01-02T15:04:05.000Z"),
				"payload":   map[string]any{"todoId": c.key, "title": c.v.Title}})
		}
		body, _ := json.Marshal(map[string]any{"changes": changes})
		req, _ := http.NewRequest("POST", r.servers[d.rng.Intn(len(r.servers))]+"/sync/push", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, answer, err := r.do(d, req)
		if err != nil {
			return err
		}
		if resp.StatusCode != 201 {
			return fmt.Errorf("push: %d %s", resp.StatusCode, answer)
		}
		var pr handler.PushResponse
		if err := json.Unmarshal(answer, &pr); err != nil {
			return err
		}
		if len(pr.RejectedChanges) > 0 {
			return fmt.Errorf("push rejected %+v", pr.RejectedChanges)
		}
		ok := map[string]bool{}
		for _, id := range pr.AcceptedChanges {
			ok[id] = true
		}
		r.pushed.Add(int64(len(batch)))
		var keep []queuedChange
		r.mu.Lock()
		for _, c := range batch {
			if !ok[c.id] {
				keep = append(keep, c)
				continue
			}
			if cur, seen := r.accepted[c.key]; !seen || c.v.newer(cur) {
				r.accepted[c.key] = c.v
			}
			if resend && d.rng.Intn(10) == 0 {
				keep = append(keep, c) // the answer "got lost": send it again later
				r.resent.Add(1)
			}
		}
		r.mu.Unlock()
		d.queue = append(keep, d.queue[n:]...)
		if resend && len(keep) > 0 {
			break // resends go out at a later sync
		}
	}
	req, _ := http.NewRequest("GET", r.servers[d.rng.Intn(len(r.servers))]+"/sync/pull/?lastPull="+d.lastPull.UTC().Format("2006-01-02T15:04:05.000Z"), nil)
	resp, answer, err := r.do(d, req)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("pull: %d %s", resp.StatusCode, answer)
	}
	var out struct {
		Changes []struct {
			Payload   map[string]any
			UserID    string
			UpdatedAt time.Time
		}
		SyncedAt time.Time
	}
	if err := json.Unmarshal(answer, &out); err != nil {
		return err
	}
	r.pulls.Add(1)
	for _, c := range out.Changes {
		if c.UserID != d.user {
			return fmt.Errorf("%s pulled a row of %s", d.user, c.UserID)
		}
		key, _ := c.Payload["todoId"].(string)
		title, _ := c.Payload["title"].(string)
		v := version{Title: title, UpdatedAt: c.UpdatedAt}
		if cur, ok := d.local[key]; !ok || v.newer(cur) {
			d.local[key] = v
		}
	}
	d.lastPull = out.SyncedAt.Truncate(time.Millisecond)
	return nil
}

func (r *convergenceRun) device(ctx context.Context, d *simDevice, errs chan<- error) {
	offlineUntil := time.Time{}
	for ctx.Err() == nil {
		switch p := d.rng.Intn(100); {
		case p < 45: // a local edit, unless a long queue is waiting
			if len(d.queue) > 60 {
				time.Sleep(time.Millisecond)
				continue
			}
			key := fmt.Sprintf("%s-%d", d.user, d.rng.Intn(25))
			d.seq++
			v := version{Title: fmt.Sprintf("%s/%p/%d", d.user, d, d.seq), UpdatedAt: r.stamp(d, key)}
			d.local[key] = v
			d.queue = append(d.queue, queuedChange{id: fmt.Sprintf("%p-%d", d, d.seq), key: key, v: v})
		case p < 80:
			if time.Now().Before(offlineUntil) {
				time.Sleep(time.Millisecond)
				continue
			}
			if err := r.sync(d, true); err != nil {
				errs <- err
				return
			}
		case p < 85: // an offline gap
			offlineUntil = time.Now().Add(time.Duration(50+d.rng.Intn(400)) * time.Millisecond)
		default:
			time.Sleep(time.Duration(1+d.rng.Intn(3)) * time.Millisecond)
		}
	}
}

// TestConvergenceUnderLoad: several users, each with several devices, push
// and pull at random against two instances on one PostgreSQL. Set
// HYPERSYNC_SOAK (for example 60s) for a long run.
func TestConvergenceUnderLoad(t *testing.T) {
	dur := 6 * time.Second
	if v := os.Getenv("HYPERSYNC_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("HYPERSYNC_SOAK: %v", err)
		}
		dur = d
	}
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, seedDDL, `CREATE INDEX todos_sync ON todos (userId, lastSyncAt)`)
	a, b := newEnvOn(t, dsn, nil), newEnvOn(t, dsn, nil)
	r := &convergenceRun{t: t, servers: []string{a.srv.URL, b.srv.URL}, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
		accepted: map[string]version{}, usedTimes: map[string]bool{}}
	defer r.client.CloseIdleConnections()

	var devices []*simDevice
	skews := []time.Duration{0, -3 * time.Second, 2 * time.Second, -700 * time.Millisecond}
	for u, user := range []string{"alice", "bob", "carol"} {
		for i := 0; i < 3; i++ {
			devices = append(devices, &simDevice{user: user, skew: skews[(u+i)%len(skews)], rng: rand.New(rand.NewSource(int64(10*u + i))),
				local: map[string]version{}, lastPull: time.Unix(0, 0)})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	errs := make(chan error, len(devices))
	var wg sync.WaitGroup
	for _, d := range devices {
		wg.Add(1)
		go func(d *simDevice) { defer wg.Done(); r.device(ctx, d, errs) }(d)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Every device comes online and syncs until its queue is empty.
	for _, d := range devices {
		for i := 0; len(d.queue) > 0 || i == 0; i++ {
			if err := r.sync(d, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range devices {
		if err := r.sync(d, false); err != nil { // pull what the others pushed last
			t.Fatal(err)
		}
	}

	db := map[string]map[string]version{}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), `SELECT userId, todoId, title, updatedAt FROM todos`)
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for rows.Next() {
		var user, key string
		var v version
		if err := rows.Scan(&user, &key, &v.Title, &v.UpdatedAt); err != nil {
			t.Fatal(err)
		}
		if db[user] == nil {
			db[user] = map[string]version{}
		}
		db[user][key] = v
		stored++
	}
	misses := 0
	for _, d := range devices {
		want := db[d.user]
		if len(d.local) != len(want) {
			misses += abs(len(d.local) - len(want))
		}
		for k, v := range want {
			if got, ok := d.local[k]; !ok || got.Title != v.Title || !got.UpdatedAt.Equal(v.UpdatedAt) {
				misses++
			}
		}
	}
	for k, v := range r.accepted {
		user := k[:strings.LastIndexByte(k, '-')]
		if got := db[user][k]; got.Title != v.Title || !got.UpdatedAt.Equal(v.UpdatedAt) {
			misses++
		}
	}
	t.Logf("%v: %d devices of 3 users on 2 instances; %d changes pushed (%d sent again), %d pulls; %d rows in the database; %d misses",
		dur, len(devices), r.pushed.Load(), r.resent.Load(), r.pulls.Load(), stored, misses)
	if misses != 0 {
		t.Fatalf("%d misses: devices or the database do not hold the newest accepted versions", misses)
	}
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
