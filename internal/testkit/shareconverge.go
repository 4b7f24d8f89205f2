package testkit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersync/hypersync/handler"
)

// SharedConvergence is a run of devices of several users sharing lists
// (the ListShapes) on several instances of hypersync on one database.
//
// Four users: alice, bob and carol share list S1; alice and carol share
// S2. Mid-run, alice adds dave to S2, and then removes bob from S1.
// Every user has pushers, which edit and create todos in the lists they
// are members of (alice also moves todos between the two), and pullers,
// which follow their cursor truncated to the millisecond and keep the
// newest version of each row, as an app's upsertRemoteChangeFn does. An
// optional SQL writer retitles todos directly in the database.
//
// At the end every puller syncs once more, and the run compares each with
// the database: it must hold exactly the final version of every todo its
// user can see, and nothing else that is not a tombstone.
type SharedConvergence struct {
	Servers []string
	DSN     string
	// Pushers and Pullers per user.
	Pushers, Pullers int
	SQLWriter        bool
	// Duration is how long the run lasts at least; Enough, when set, keeps
	// it going past Duration until what it did suffices (see runFor).
	Duration time.Duration
	Enough   func(Work) bool
	// Erase, when set, adds eve, a member of both lists who pushes into
	// them, and erases her with it at two thirds of the run (caddy
	// hypersync erase): her pushes stop, and the rows she wrote stay,
	// under the placeholder author, with new versions every member must
	// receive.
	Erase func(user string) error
}

// SharedReport is what a shared convergence run did and found.
type SharedReport struct {
	Pushed, Forbidden, Pulls, SQLWrites int64
	Stored                              int
	// Checked counts (puller, visible row) pairs compared; Misses those
	// that were wrong; Leaks rows a puller holds alive that its user
	// cannot see.
	Checked, Misses, Leaks int
}

func (r SharedReport) String() string {
	return fmt.Sprintf("%d changes pushed (%d forbidden), %d rows written by SQL, %d pulls; %d todos in the database; %d puller rows checked, %d misses, %d leaks",
		r.Pushed, r.Forbidden, r.SQLWrites, r.Pulls, r.Stored, r.Checked, r.Misses, r.Leaks)
}

type sharedRow struct {
	Title     string
	List      string
	Deleted   bool
	UpdatedAt time.Time
}

type sharedRun struct {
	c         SharedConvergence
	client    *http.Client
	mu        sync.Mutex
	times     uniqueTimes
	keys      map[string]int // per list, todos made so far
	pushed    atomic.Int64
	forbidden atomic.Int64
	pulls     atomic.Int64
	seq       atomic.Int64
	erasing   sync.Map // users being erased: their pushes may answer 403
}

// ConvergeShared runs c and returns its report.
func ConvergeShared(t *testing.T, c SharedConvergence) SharedReport {
	t.Helper()
	r := &sharedRun{c: c, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}},
		keys: map[string]int{}}
	defer r.client.CloseIdleConnections()
	rng := rand.New(rand.NewSource(1))
	setup := []map[string]any{
		r.member("S1", "alice", false), r.member("S1", "bob", false), r.member("S1", "carol", false),
		r.member("S2", "alice", false), r.member("S2", "carol", false),
	}
	if err := r.push(rng, "alice", setup); err != nil {
		t.Fatal(err)
	}
	// scopes each user pushes into; updated as memberships change
	var memberMu sync.Mutex
	scopes := map[string][]string{"alice": {"S1", "S2"}, "bob": {"S1"}, "carol": {"S1", "S2"}, "dave": nil}
	users := []string{"alice", "bob", "carol", "dave"}
	if c.Erase != nil {
		if err := r.push(rng, "alice", []map[string]any{r.member("S1", "eve", false), r.member("S2", "eve", false)}); err != nil {
			t.Fatal(err)
		}
		scopes["eve"] = []string{"S1", "S2"}
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
	errs := make(chan error, 64)
	var wg sync.WaitGroup
	type puller struct {
		user     string
		lastPull time.Time
		rows     map[string]sharedRow
	}
	var pullers []*puller
	for ui, user := range users {
		for i := 0; i < c.Pushers; i++ {
			wg.Add(1)
			go func(user string, rng *rand.Rand) {
				defer wg.Done()
				for ctx.Err() == nil {
					memberMu.Lock()
					mine := append([]string{}, scopes[user]...)
					memberMu.Unlock()
					if len(mine) == 0 {
						time.Sleep(2 * time.Millisecond)
						continue
					}
					var batch []map[string]any
					for n := 1 + rng.Intn(10); n > 0; n-- {
						batch = append(batch, r.edit(rng, user, mine))
					}
					if err := r.push(rng, user, batch); err != nil && ctx.Err() == nil {
						errs <- err
						return
					}
				}
			}(user, rand.New(rand.NewSource(int64(10*ui+i))))
		}
		for i := 0; i < c.Pullers; i++ {
			p := &puller{user: user, lastPull: time.Unix(0, 0), rows: map[string]sharedRow{}}
			pullers = append(pullers, p)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					if err := r.pull(p.user, &p.lastPull, p.rows); err != nil && ctx.Err() == nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	if c.Erase != nil {
		// eve pushes, and never pulls (her pulls answer 403 once erased)
		for i := 0; i < c.Pushers; i++ {
			wg.Add(1)
			go func(rng *rand.Rand) {
				defer wg.Done()
				for ctx.Err() == nil {
					memberMu.Lock()
					mine := append([]string{}, scopes["eve"]...)
					memberMu.Unlock()
					if len(mine) == 0 {
						return
					}
					if err := r.push(rng, "eve", []map[string]any{r.edit(rng, "eve", mine)}); err != nil && ctx.Err() == nil {
						errs <- err
						return
					}
				}
			}(rand.New(rand.NewSource(int64(100 + i))))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * c.Duration / 3):
			}
			r.erasing.Store("eve", true)
			if err := c.Erase("eve"); err != nil {
				errs <- fmt.Errorf("erase: %w", err)
				return
			}
			memberMu.Lock()
			scopes["eve"] = nil
			memberMu.Unlock()
		}()
	}
	// alice adds dave to S2 at a third of the run, and removes bob from S1
	// at a half
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(7))
		start := time.Now()
		for _, step := range []struct {
			at           time.Duration
			list, member string
			deleted      bool
		}{{c.Duration / 3, "S2", "dave", false}, {c.Duration / 2, "S1", "bob", true}} {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(start.Add(step.at))):
			}
			if err := r.push(rng, "alice", []map[string]any{r.member(step.list, step.member, step.deleted)}); err != nil {
				errs <- err
				return
			}
			memberMu.Lock()
			if step.deleted {
				scopes[step.member] = nil
			} else {
				scopes[step.member] = append(scopes[step.member], step.list)
			}
			memberMu.Unlock()
		}
	}()
	if c.SQLWriter {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sqlWriter(ctx, Connect(t, c.DSN), &sqlWrites, errs, func(rng *rand.Rand, i int) (string, []any) {
				list := []string{"S1", "S2"}[rng.Intn(2)]
				r.mu.Lock()
				n := r.keys[list]
				r.mu.Unlock()
				if n == 0 {
					return "", nil
				}
				return `UPDATE todos SET title = $1 WHERE "todoId" = $2`, []any{fmt.Sprintf("sql/%d", i), fmt.Sprintf("%s-%d", list, rng.Intn(n))}
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, p := range pullers {
		if err := r.pull(p.user, &p.lastPull, p.rows); err != nil {
			t.Fatal(err)
		}
	}

	// The database: every todo, and every user's live memberships.
	rep := SharedReport{Pushed: r.pushed.Load(), Forbidden: r.forbidden.Load(), Pulls: r.pulls.Load(), SQLWrites: sqlWrites.Load()}
	db := map[string]sharedRow{}
	owner := map[string]string{}
	err := Query(c.DSN, `SELECT "todoId", "listId", title, deleted, "userId", "updatedAt" FROM todos`, func(scan func(...any) error) error {
		var key, user string
		var list, title *string
		var deleted *bool
		var upd any
		if err := scan(&key, &list, &title, &deleted, &user, &upd); err != nil {
			return err
		}
		row := sharedRow{}
		if list != nil {
			row.List = *list
		}
		if title != nil {
			row.Title = *title
		}
		row.Deleted = deleted != nil && *deleted
		var err error
		if row.UpdatedAt, err = timeOf(upd); err != nil {
			return err
		}
		db[key], owner[key] = row, user
		rep.Stored++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	member := map[string]bool{}
	err = Query(c.DSN, `SELECT "listId", "memberId" FROM list_members WHERE NOT coalesce(deleted, false)`, func(scan func(...any) error) error {
		var list, user string
		if err := scan(&list, &user); err != nil {
			return err
		}
		member[user+"/"+list] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	visible := func(user, key string) bool {
		row := db[key]
		if row.List == "" {
			return owner[key] == user
		}
		return member[user+"/"+row.List]
	}
	for _, p := range pullers {
		for key, want := range db {
			if !visible(p.user, key) {
				continue
			}
			rep.Checked++
			got, ok := p.rows[key]
			if !ok || got.Title != want.Title || !got.UpdatedAt.Equal(want.UpdatedAt) || got.Deleted != want.Deleted {
				rep.Misses++
				if rep.Misses <= 5 {
					t.Logf("miss: a puller of %s holds %s as %+v (present %v); the database has %+v", p.user, key, got, ok, want)
				}
			}
		}
		for key, got := range p.rows {
			if !visible(p.user, key) && !got.Deleted {
				rep.Leaks++
				if rep.Leaks <= 5 {
					t.Logf("leak: a puller of %s holds %s alive as %+v; the database has %+v", p.user, key, got, db[key])
				}
			}
		}
	}
	return rep
}

func timeOf(v any) (time.Time, error) {
	switch u := v.(type) {
	case time.Time:
		return u, nil
	case string:
		t, err := time.Parse(time.RFC3339Nano, u)
		if err != nil {
			t, err = time.Parse(time.DateTime, u)
		}
		return t, err
	}
	return time.Time{}, fmt.Errorf("updatedAt %v (%T)", v, v)
}

// updatedAt is a unique client time for key: no two versions of a row tie.
func (r *sharedRun) updatedAt(key string) time.Time {
	return r.times.take(key, time.Now().Truncate(time.Millisecond))
}

func (r *sharedRun) change(shape, key string, payload map[string]any) map[string]any {
	return map[string]any{"changeId": fmt.Sprintf("c%d", r.seq.Add(1)), "shapeKey": shape, "pushed": 0,
		"updatedAt": r.updatedAt(shape + "/" + key).UTC().Format("2006-01-02T15:04:05.000Z"), "payload": payload}
}

func (r *sharedRun) member(list, user string, deleted bool) map[string]any {
	return r.change("list_members", list+"/"+user, map[string]any{"listId": list, "memberId": user, "deleted": deleted})
}

// edit is one change by user into one of the lists: a new todo, a new
// title, or, for a user in both lists, now and then a move to the other.
func (r *sharedRun) edit(rng *rand.Rand, user string, lists []string) map[string]any {
	list := lists[rng.Intn(len(lists))]
	r.mu.Lock()
	n := r.keys[list]
	fresh := n == 0 || rng.Intn(10) < 3
	if fresh {
		r.keys[list]++
	}
	r.mu.Unlock()
	if fresh {
		key := fmt.Sprintf("%s-%d", list, n)
		return r.change("todos", key, map[string]any{"todoId": key, "listId": list, "title": user + "/new", "done": false, "deleted": false})
	}
	key := fmt.Sprintf("%s-%d", list, rng.Intn(n))
	payload := map[string]any{"todoId": key, "listId": list, "title": fmt.Sprintf("%s/%d", user, r.seq.Load())}
	if len(lists) > 1 && rng.Intn(20) == 0 {
		payload["listId"] = lists[rng.Intn(len(lists))] // a move, now and then
	}
	if rng.Intn(30) == 0 {
		payload["deleted"] = true
	}
	return r.change("todos", key, payload)
}

func (r *sharedRun) push(rng *rand.Rand, user string, changes []map[string]any) error {
	for _, ch := range changes {
		ch["userId"] = user
	}
	body, _ := json.Marshal(map[string]any{"changes": changes})
	req, _ := http.NewRequest("POST", r.c.Servers[rng.Intn(len(r.c.Servers))]+"/sync/push", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Test-User", user)
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var pr handler.PushResponse
	if _, erasing := r.erasing.Load(user); erasing && resp.StatusCode == http.StatusForbidden {
		return nil
	}
	if resp.StatusCode != 201 {
		return fmt.Errorf("push: %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil {
		return err
	}
	for _, rej := range pr.RejectedChanges {
		if rej.Error != "forbidden" {
			return fmt.Errorf("push rejected %+v", rej)
		}
		r.forbidden.Add(1)
	}
	r.pushed.Add(int64(len(changes)))
	return nil
}

var pullClientRNG = rand.New(rand.NewSource(3))
var pullClientMu sync.Mutex

func (r *sharedRun) pull(user string, lastPull *time.Time, rows map[string]sharedRow) error {
	pullClientMu.Lock()
	server := r.c.Servers[pullClientRNG.Intn(len(r.c.Servers))]
	pullClientMu.Unlock()
	req, _ := http.NewRequest("GET", server+"/sync/pull/?lastPull="+lastPull.UTC().Format("2006-01-02T15:04:05.000Z"), nil)
	req.Header.Set("X-Test-User", user)
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("pull: %d", resp.StatusCode)
	}
	var out struct {
		Changes []struct {
			ShapeKey  string
			Payload   map[string]any
			UpdatedAt time.Time
		}
		SyncedAt time.Time
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return err
	}
	r.pulls.Add(1)
	for _, c := range out.Changes {
		if c.ShapeKey != "todos" {
			continue
		}
		key, _ := c.Payload["todoId"].(string)
		cur, held := rows[key]
		if held && c.UpdatedAt.Before(cur.UpdatedAt) {
			continue
		}
		// a tombstone carries only the key, the list and deleted: the rest
		// of the row stays as held
		next := cur
		if _, full := c.Payload["title"]; full {
			next = sharedRow{}
		}
		for f, v := range c.Payload {
			switch f {
			case "title":
				next.Title, _ = v.(string)
			case "listId":
				next.List, _ = v.(string)
			case "deleted":
				next.Deleted, _ = v.(bool)
			}
		}
		next.UpdatedAt = c.UpdatedAt
		rows[key] = next
	}
	*lastPull = out.SyncedAt.Truncate(time.Millisecond)
	return nil
}
