package testkit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/shapes"
)

// Convergence is a run of simulated devices against several instances of
// hypersync on one database. Each device keeps a local table, a queue of
// unpushed changes and a lastPull cursor truncated to the millisecond, as
// the 1.0.0 client keeps them. Devices edit, push, pull and go offline at
// random, on instances picked at random. At the end every device syncs,
// and the run checks that every device holds exactly the database's final
// version of each of its user's rows, and that the database holds the
// newest version any push had accepted.
type Convergence struct {
	// Servers are the instances' base URLs; the user goes in X-Test-User.
	Servers []string
	// DSN is the database, read directly at the end.
	DSN string
	// Users, and the devices each one has: Devices edit, push and pull;
	// Pushers only edit and push, as fast as they can; Pullers only pull,
	// as fast as they can. Pushers' own tables are not checked.
	Users                     []string
	Devices, Pushers, Pullers int
	// UpdateShare is the percentage of edits that change an existing row
	// of the user; the others make a new one. Zero picks among Keys.
	UpdateShare int
	// Skews are the devices' clock errors, dealt round-robin.
	Skews []time.Duration
	// Keys is how many rows each user edits: few make conflicts, many make
	// mostly new rows.
	Keys int
	// Resend makes a push answer get lost now and then, so that its
	// changes are sent again. Offline makes devices drop off for a while.
	Resend, Offline bool
	// SQLWriter adds a client that writes the table directly, as psql or a
	// backend job would: it retitles the users' rows without touching
	// updatedAt or the sync stamp, and inserts new rows for them.
	SQLWriter bool
	// Duration is how long the run lasts at least; Enough, when set, keeps
	// it going past Duration until what it did suffices (see runFor).
	Duration time.Duration
	Enough   func(Work) bool
}

// Work is how much a run has done so far.
type Work struct {
	Pushed, SQLWrites, Pulls int64
}

// runLimit bounds a run that Enough keeps going.
const runLimit = 2 * time.Minute

// runFor returns a context that ends once d has passed and enough, if
// set, holds, or after runLimit whatever it says. A run judged by what it
// did must be timed by it too: on a busy machine four seconds may do a
// tenth of what they do on an idle one.
func runFor(d time.Duration, enough func() bool) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), max(d, runLimit))
	if enough == nil {
		ctx2, cancel2 := context.WithTimeout(ctx, d)
		return ctx2, func() { cancel2(); cancel() }
	}
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for !enough() {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
		cancel()
	}()
	return ctx, cancel
}

// Report is what a convergence run did and found.
type Report struct {
	Devices, Stored       int
	Pushed, Resent, Pulls int64
	// SQLWrites counts the rows the SQL writer changed.
	SQLWrites int64
	// Checked counts (device, row) pairs compared; Misses those that were
	// wrong, plus accepted versions the database lost. Ties are devices that
	// received the final version but hold another of the same updatedAt,
	// and accepted versions that lost to the SQL writer's of the same
	// updatedAt, which only a writer that bumps updatedAt can make (no two
	// device versions of a key share an updatedAt, see stamp).
	Checked, Misses, Ties int
}

func (r Report) String() string {
	return fmt.Sprintf("%d devices; %d changes pushed (%d sent again), %d rows written by SQL, %d pulls; %d rows in the database; %d device rows checked, %d misses, %d ties",
		r.Devices, r.Pushed, r.Resent, r.SQLWrites, r.Pulls, r.Stored, r.Checked, r.Misses, r.Ties)
}

// version is one value of a row: the title, and its client updatedAt.
type version struct {
	Title     string
	UpdatedAt time.Time
}

func (v version) newer(o version) bool { return v.UpdatedAt.After(o.UpdatedAt) }

// same compares by instant, not by ==: a time read from PostgreSQL is in
// time.Local, one decoded from JSON in UTC.
func (v version) same(o version) bool { return v.Title == o.Title && v.UpdatedAt.Equal(o.UpdatedAt) }

type queuedChange struct {
	id  string
	key string
	v   version
}

// role is what a device does.
type role int

const (
	full   role = iota // edits, pushes and pulls
	pusher             // edits and pushes only
	puller             // pulls only
)

type device struct {
	role     role
	user     string
	skew     time.Duration
	rng      *rand.Rand
	local    map[string]version
	received map[string]version // the last version a pull brought, applied or not
	queue    []queuedChange
	lastPull time.Time
	seq      int
}

type run struct {
	c        Convergence
	client   *http.Client
	mu       sync.Mutex
	accepted map[string]version // user/key -> newest version any push had accepted
	times    uniqueTimes
	pushed   atomic.Int64
	resent   atomic.Int64
	pulls    atomic.Int64
	keys     map[string]*atomic.Int64 // per user: the rows made so far, with UpdateShare
}

// Converge runs c and returns its report. Errors of the protocol (a push
// or pull that fails) fail the test at once; misses are for the caller to
// judge.
func Converge(t *testing.T, c Convergence) Report {
	t.Helper()
	if c.Keys == 0 {
		c.Keys = 25
	}
	if len(c.Skews) == 0 {
		c.Skews = []time.Duration{0}
	}
	r := &run{c: c, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}},
		accepted: map[string]version{}, keys: map[string]*atomic.Int64{}}
	defer r.client.CloseIdleConnections()
	var devices []*device
	for u, user := range c.Users {
		r.keys[user] = &atomic.Int64{}
		roles := make([]role, 0, c.Devices+c.Pushers+c.Pullers)
		for i := 0; i < c.Devices+c.Pushers+c.Pullers; i++ {
			switch {
			case i < c.Devices:
				roles = append(roles, full)
			case i < c.Devices+c.Pushers:
				roles = append(roles, pusher)
			default:
				roles = append(roles, puller)
			}
		}
		for i, ro := range roles {
			devices = append(devices, &device{role: ro, user: user, skew: c.Skews[(u+i)%len(c.Skews)],
				rng: rand.New(rand.NewSource(int64(100*u + i))), local: map[string]version{}, received: map[string]version{}, lastPull: time.Unix(0, 0)})
		}
	}
	var sqlWrites atomic.Int64
	var enough func() bool
	if c.Enough != nil {
		enough = func() bool {
			return c.Enough(Work{Pushed: r.pushed.Load(), SQLWrites: sqlWrites.Load(), Pulls: r.pulls.Load()})
		}
	}
	ctx, cancel := runFor(c.Duration, enough)
	defer cancel()
	errs := make(chan error, len(devices)+1)
	var wg sync.WaitGroup
	for _, d := range devices {
		wg.Add(1)
		go func(d *device) { defer wg.Done(); r.live(ctx, d, errs) }(d)
	}
	if c.SQLWriter {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sqlWriter(ctx, Connect(t, c.DSN), &sqlWrites, errs, func(rng *rand.Rand, i int) (string, []any) {
				user := c.Users[rng.Intn(len(c.Users))]
				if i%4 == 0 {
					return `INSERT INTO todos (todoId, title, userId) VALUES ($1, $2, $3)`,
						[]any{fmt.Sprintf("%s-sql-%d", user, i), fmt.Sprintf("sql/insert/%d", i), user}
				}
				return `UPDATE todos SET title = $1 WHERE todoId = $2`, []any{fmt.Sprintf("sql/%d", i), fmt.Sprintf("%s-%d", user, rng.Intn(c.Keys))}
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Every device comes online and syncs until its queue is empty, then
	// pulls once more what the others pushed last. Pushers only push.
	for _, d := range devices {
		for i := 0; len(d.queue) > 0 || i == 0; i++ {
			if err := r.sync(d, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range devices {
		if err := r.sync(d, false); err != nil {
			t.Fatal(err)
		}
	}
	checked := devices[:0:0]
	for _, d := range devices {
		if d.role != pusher {
			checked = append(checked, d)
		}
	}

	db := map[string]map[string]version{}
	rep := Report{Devices: len(devices), Pushed: r.pushed.Load(), Resent: r.resent.Load(), Pulls: r.pulls.Load(), SQLWrites: sqlWrites.Load()}
	err := Query(c.DSN, `SELECT userId, todoId, title, updatedAt FROM todos`, func(scan func(...any) error) error {
		var user, key string
		var v version
		var upd any
		if err := scan(&user, &key, &v.Title, &upd); err != nil {
			return err
		}
		var err error
		if v.UpdatedAt, err = timeOf(upd); err != nil {
			return err
		}
		if db[user] == nil {
			db[user] = map[string]version{}
		}
		db[user][key] = v
		rep.Stored++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range checked {
		want := db[d.user]
		if len(d.local) > len(want) {
			rep.Misses += len(d.local) - len(want)
		}
		for k, v := range want {
			rep.Checked++
			got, ok := d.local[k]
			switch {
			case ok && got.same(v):
			case c.SQLWriter && ok && got.UpdatedAt.Equal(v.UpdatedAt) && d.received[k].same(v):
				// The device got the final version, and kept its own of
				// the same updatedAt, as last-write-wins by updatedAt
				// must: a tie, not a miss. Only the SQL writer's bump of
				// updatedAt can meet a device's time.
				rep.Ties++
			default:
				rep.Misses++
				if rep.Misses <= 5 {
					t.Logf("miss: device %p of %s holds %s as %+v (present %v), last received %+v; the database has %+v",
						d, d.user, k, got, ok, d.received[k], v)
				}
			}
		}
	}
	// The database holds the newest accepted version of each row, or a
	// newer one that the SQL writer made. A push that met the SQL writer's
	// version of the same updatedAt lost, as last-write-wins keeps the
	// stored row on a tie, and was accepted all the same: a tie.
	for k, v := range r.accepted {
		user, key, _ := strings.Cut(k, "/")
		got := db[user][key]
		lost := got.UpdatedAt.Before(v.UpdatedAt) || got.UpdatedAt.Equal(v.UpdatedAt) && got.Title != v.Title
		if !c.SQLWriter {
			// Only devices write: the database holds exactly the newest
			// accepted version.
			lost = !got.same(v)
		}
		switch {
		case c.SQLWriter && got.UpdatedAt.Equal(v.UpdatedAt) && got.Title != v.Title && strings.HasPrefix(got.Title, "sql/"):
			rep.Ties++
		case lost:
			rep.Misses++
			if rep.Misses <= 5 {
				t.Logf("miss: %s was accepted as %+v; the database has %+v", k, v, got)
			}
		}
	}
	return rep
}

// stamp returns a device's updatedAt for an edit of key: its skewed clock,
// never older than the local row, and unique for the key.
func (r *run) stamp(d *device, key string) time.Time {
	t := time.Now().Add(d.skew).Truncate(time.Millisecond)
	if cur, ok := d.local[key]; ok && !t.After(cur.UpdatedAt) {
		t = cur.UpdatedAt.Add(time.Millisecond)
	}
	return r.times.take(key, t)
}

// uniqueTimes hands out client times no two versions of a row share.
type uniqueTimes struct {
	mu   sync.Mutex
	used map[string]bool // key@updatedAt
}

// take returns t, or the first millisecond after it not yet used for key.
func (u *uniqueTimes) take(key string, t time.Time) time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.used == nil {
		u.used = map[string]bool{}
	}
	for u.used[key+"@"+t.Format(time.RFC3339Nano)] {
		t = t.Add(time.Millisecond)
	}
	u.used[key+"@"+t.Format(time.RFC3339Nano)] = true
	return t
}

func (r *run) do(d *device, req *http.Request) (*http.Response, []byte, error) {
	req.Header.Set("X-Test-User", d.user)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func (r *run) server(d *device) string { return r.c.Servers[d.rng.Intn(len(r.c.Servers))] }

// sync pushes the queue (a random batch size, sometimes keeping accepted
// changes to send them again) and pulls.
func (r *run) sync(d *device, resend bool) error {
	for len(d.queue) > 0 {
		n := min(1+d.rng.Intn(50), len(d.queue))
		batch := d.queue[:n]
		var changes []map[string]any
		for _, c := range batch {
			changes = append(changes, map[string]any{"changeId": c.id, "shapeKey": "todos", "pushed": 0, "userId": d.user,
				"updatedAt": c.v.UpdatedAt.UTC().Format("2006-01-02T15:04:05.000Z"),
				"payload":   map[string]any{"todoId": c.key, "title": c.v.Title}})
		}
		body, _ := json.Marshal(map[string]any{"changes": changes})
		req, _ := http.NewRequest("POST", r.server(d)+"/sync/push", bytes.NewReader(body))
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
			k := d.user + "/" + c.key
			if cur, seen := r.accepted[k]; !seen || c.v.newer(cur) {
				r.accepted[k] = c.v
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
	if d.role == pusher {
		return nil
	}
	req, _ := http.NewRequest("GET", r.server(d)+"/sync/pull/?lastPull="+d.lastPull.UTC().Format("2006-01-02T15:04:05.000Z"), nil)
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
		d.received[key] = v
		// the client's upsertRemoteChangeFn keeps the newest updatedAt
		if cur, ok := d.local[key]; !ok || v.newer(cur) {
			d.local[key] = v
		}
	}
	// The client keeps syncedAt as a JS Date: milliseconds only.
	d.lastPull = out.SyncedAt.Truncate(time.Millisecond)
	return nil
}

// edit makes one local edit and queues it.
func (r *run) edit(d *device) {
	var key string
	if r.c.UpdateShare > 0 {
		made := r.keys[d.user]
		if n := made.Load(); n > 0 && d.rng.Intn(100) < r.c.UpdateShare {
			key = fmt.Sprintf("%s-%d", d.user, d.rng.Int63n(n))
		} else {
			key = fmt.Sprintf("%s-%d", d.user, made.Add(1)-1)
		}
	} else {
		key = fmt.Sprintf("%s-%d", d.user, d.rng.Intn(r.c.Keys))
	}
	d.seq++
	v := version{Title: fmt.Sprintf("%s/%p/%d", d.user, d, d.seq), UpdatedAt: r.stamp(d, key)}
	d.local[key] = v
	d.queue = append(d.queue, queuedChange{id: fmt.Sprintf("%p-%d", d, d.seq), key: key, v: v})
}

// live is one device's life until ctx ends.
func (r *run) live(ctx context.Context, d *device, errs chan<- error) {
	switch d.role {
	case pusher:
		// a batch of 1 to 20 edits, pushed; again
		for ctx.Err() == nil {
			for n := 1 + d.rng.Intn(20); n > 0; n-- {
				r.edit(d)
			}
			if err := r.sync(d, false); err != nil {
				errs <- err
				return
			}
		}
		return
	case puller:
		for ctx.Err() == nil {
			if err := r.sync(d, false); err != nil {
				errs <- err
				return
			}
		}
		return
	}
	offlineUntil := time.Time{}
	for ctx.Err() == nil {
		switch p := d.rng.Intn(100); {
		case p < 45: // a local edit, unless a long queue is waiting
			if len(d.queue) > 60 {
				time.Sleep(time.Millisecond)
				continue
			}
			r.edit(d)
		case p < 80:
			if time.Now().Before(offlineUntil) {
				time.Sleep(time.Millisecond)
				continue
			}
			if err := r.sync(d, r.c.Resend); err != nil {
				errs <- err
				return
			}
		case p < 85 && r.c.Offline: // an offline gap
			offlineUntil = time.Now().Add(time.Duration(50+d.rng.Intn(400)) * time.Millisecond)
		default:
			time.Sleep(time.Duration(1+d.rng.Intn(3)) * time.Millisecond)
		}
	}
}

// CompletenessRun is the convergence run that pull completeness is judged
// by: four pushers of one user push batches of 1 to 20 changes, four in
// five of them new rows and the rest updates, and four pullers pull, all
// as fast as they can, on two instances. Every row version a push stamps
// is one that every puller must end up holding. The naive-stamp proof in
// shapes/postgres runs it too.
func CompletenessRun(t *testing.T, dsn string, a, b *shapes.Store) Report {
	cfg := handler.Config{Timeout: 30 * time.Second}
	s1, s2 := NewServer(t, a, cfg), NewServer(t, b, cfg)
	return Converge(t, Convergence{Servers: []string{s1.URL, s2.URL}, DSN: dsn,
		Users: []string{"alice"}, Pushers: 4, Pullers: 4, UpdateShare: 20, Duration: 4 * time.Second,
		Enough: func(w Work) bool { return w.Pushed >= 2000 && w.Pulls >= 200 }})
}

// sqlWriter writes the table directly until ctx ends, as psql or a
// backend job would: next gives the i-th statement, "" to skip a turn.
func sqlWriter(ctx context.Context, conn *Conn, writes *atomic.Int64, errs chan<- error, next func(rng *rand.Rand, i int) (string, []any)) {
	rng := rand.New(rand.NewSource(99))
	for i := 0; ctx.Err() == nil && i < 1_000_000; i++ {
		stmt, args := next(rng, i)
		if stmt == "" {
			time.Sleep(time.Millisecond)
			continue
		}
		n, err := conn.Exec(ctx, stmt, args...)
		if isDeadlock(err) || isBusy(err) {
			// A writer that updates a row a push writes at the same
			// time can deadlock with it, as any two writers taking rows
			// and cursors in opposite orders; such a writer retries, as
			// for a serialization failure. On SQLite a writer beside a
			// busy server may wait out its busy timeout (the server's
			// writers take the file's lock back to back, and SQLite's
			// busy handler only polls): it retries too, as any outside
			// writer of an SQLite file must.
			continue
		}
		if err != nil && ctx.Err() == nil {
			errs <- fmt.Errorf("SQL writer: %w", err)
			return
		}
		writes.Add(n)
		time.Sleep(time.Duration(1+rng.Intn(3)) * time.Millisecond)
	}
}

// isBusy reports SQLite's SQLITE_BUSY.
func isBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// isDeadlock reports PostgreSQL's deadlock_detected.
func isDeadlock(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40P01"
}
