package postgres_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
	"github.com/hypersync/hypersync/shapes/postgres"
)

// Pulls from hot standbys (read_database): complete under concurrent
// pushes on two instances, read-your-writes while a standby lags, and
// the faults (a standby down, a recovery conflict). Each mechanism's test
// has a twin that switches it off and must see the failure.

// targets counts where pulls ran, as the metrics do.
type targets struct {
	mu sync.Mutex
	n  map[string]int // "target" or "primary/reason"
}

func (c *targets) observe(target, fallback string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	if fallback != "" {
		target += "/" + fallback
	}
	c.n[target]++
}

func (c *targets) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// split returns the pulls that ran on a standby and the others.
func (c *targets) split() (standby, primary int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.n {
		if strings.HasPrefix(k, "primary") {
			primary += v
		} else {
			standby += v
		}
	}
	return standby, primary
}

func (c *targets) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprint(c.n)
}

// replicated opens dsn with its pulls on the standbys, through dialect
// (nil: PostgreSQL's own), and a store of cfgs on it.
func replicated(t *testing.T, dialect *shapes.Dialect, dsn string, standbys []*pgtest.Standby, opts shapes.Options, cfgs ...shapes.ShapeConfig) *testkit.Fixture {
	t.Helper()
	for _, s := range standbys {
		opts.ReadReplicas = append(opts.ReadReplicas, s.DSN(dsn))
	}
	open := shapes.Open
	if dialect != nil {
		open = func(dsn string, opts shapes.Options) (*shapes.Database, error) {
			return shapes.OpenDialect(dialect, dsn, opts)
		}
	}
	db, err := open(dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Destruct() })
	if err := db.VerifyReplicas(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := testkit.NewStore(t, db, cfgs...)
	if err := st.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	// the tables the store created, replayed before the first pull
	for _, s := range standbys {
		s.WaitCaughtUp(t, dsn)
	}
	return &testkit.Fixture{T: t, DSN: dsn, DB: db, Store: st}
}

// at is a standby's target, as metrics name it.
func at(s *pgtest.Standby) string { return fmt.Sprintf("127.0.0.1:%d", s.Port) }

func pullTitles(t *testing.T, st *shapes.Store, user string) map[string]string {
	t.Helper()
	rows, _, err := testkit.PullStore(st, user, time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range rows {
		if id, ok := r.Payload["todoId"].(string); ok {
			out[id], _ = r.Payload["title"].(string)
		}
	}
	return out
}

// completenessOnStandby runs the primary's completeness run with pulls on
// sb, fails on any miss, and returns where the pulls ran.
func completenessOnStandby(t *testing.T, sb *pgtest.Standby) *targets {
	dsn := testkit.Postgres().Open(t, testkit.SeedTable)
	sb.WaitCaughtUp(t, dsn)
	tg := &targets{}
	opts := shapes.Options{PullTarget: tg.observe}
	a := replicated(t, nil, dsn, []*pgtest.Standby{sb}, opts, testkit.TodosShape)
	b := replicated(t, nil, dsn, []*pgtest.Standby{sb}, opts, testkit.TodosShape)
	rep := testkit.CompletenessRun(t, dsn, a.Store, b.Store)
	t.Logf("%v; pulls by target: %v", rep, tg)
	if rep.Misses > 0 || rep.Checked < 500 {
		t.Fatalf("%v", rep)
	}
	return tg
}

// TestStandbyPullsAreComplete: the completeness run of the primary
// (pushes on two instances, every version checked), with every pull on a
// standby. Most pulls must have run there, or the run proves nothing.
func TestStandbyPullsAreComplete(t *testing.T) {
	tg := completenessOnStandby(t, pgtest.SharedStandby(t))
	if standby, primary := tg.split(); standby < 10*primary {
		t.Fatalf("only %d pulls of %d ran on the standby: %v", standby, standby+primary, tg)
	}
}

// TestStandbySharedPullsAreComplete: the shared convergence run (members
// push into shared lists on two instances while memberships change and a
// SQL writer edits rows from outside), every pull on a standby.
func TestStandbySharedPullsAreComplete(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	sb := pgtest.SharedStandby(t)
	sb.WaitCaughtUp(t, dsn)
	var tg targets
	opts := shapes.Options{PullTarget: tg.observe}
	var urls []string
	for range 2 {
		f := replicated(t, nil, dsn, []*pgtest.Standby{sb}, opts, testkit.ListShapes()...)
		urls = append(urls, testkit.NewServer(t, f.Store, handler.Config{Timeout: 30 * time.Second}).URL)
	}
	rep := testkit.ConvergeShared(t, testkit.SharedConvergence{Servers: urls, DSN: dsn, Pushers: 2, Pullers: 2, SQLWriter: true, Duration: 4 * time.Second,
		Enough: func(w testkit.Work) bool { return w.Pushed >= 600 && w.Pulls >= 100 && w.SQLWrites >= 40 }})
	t.Logf("%v; pulls by target: %v", rep, &tg)
	if rep.Misses > 0 || rep.Leaks > 0 || rep.Checked < 300 {
		t.Fatalf("%v", rep)
	}
	if standby, primary := tg.split(); standby < 10*primary {
		t.Fatalf("only %d pulls of %d ran on the standby: %v", standby, standby+primary, &tg)
	}
}

// lagging is a standby that applies each commit applyDelay after the
// primary made it, as a busy or distant standby does.
const applyDelay = "300ms"

// TestLaggingStandbyPullsAreComplete: on a standby a little behind, the
// pulls that end a run (right after the last pushes) must still hold
// every version, because a pull waits for the standby to hold the user's
// cursor as the primary has it (the floor).
func TestLaggingStandbyPullsAreComplete(t *testing.T) {
	tg := completenessOnStandby(t, pgtest.NewStandby(t, pgtest.StandbyOptions{Settings: map[string]string{"recovery_min_apply_delay": applyDelay}}))
	if standby, _ := tg.split(); standby == 0 {
		t.Fatalf("no pull ran on the standby: %v", &tg)
	}
}

// TestLaggingStandbyCheckCatchesNoFloor: the same run with the floor
// switched off must report misses: the proof that the test above, and
// the checker on a standby, can fail.
func TestLaggingStandbyCheckCatchesNoFloor(t *testing.T) {
	sb := pgtest.NewStandby(t, pgtest.StandbyOptions{Settings: map[string]string{"recovery_min_apply_delay": applyDelay}})
	for attempt := 1; attempt <= 3; attempt++ {
		dsn := testkit.Postgres().Open(t, testkit.SeedTable)
		sb.WaitCaughtUp(t, dsn)
		a := replicated(t, postgres.FloorlessDialect(), dsn, []*pgtest.Standby{sb}, shapes.Options{}, testkit.TodosShape)
		b := replicated(t, postgres.FloorlessDialect(), dsn, []*pgtest.Standby{sb}, shapes.Options{}, testkit.TodosShape)
		rep := testkit.CompletenessRun(t, dsn, a.Store, b.Store)
		t.Logf("attempt %d: no floor: %v", attempt, rep)
		if rep.Misses > 0 {
			return
		}
	}
	t.Fatal("pulls on a lagging standby without the floor missed nothing: the check cannot catch it")
}

// readYourWrites: with the standby's replay paused, alice's push into a
// shared list and a private row of hers; then alice's pull and bob's (a
// member) must hold them. It returns what each pulled and how long the
// pulls took.
func readYourWrites(t *testing.T, dialect *shapes.Dialect, maxLag time.Duration) (alice, bob map[string]string, took time.Duration, tg *targets) {
	dsn := testkit.Postgres().Open(t)
	sb := pgtest.NewStandby(t, pgtest.StandbyOptions{})
	sb.WaitCaughtUp(t, dsn)
	tg = &targets{}
	f := replicated(t, dialect, dsn, []*pgtest.Standby{sb}, shapes.Options{ReadMaxLag: maxLag, PullTarget: tg.observe}, testkit.ListShapes()...)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
		testkit.Todo(3, "t1", "L", "milk")), "applied,applied,applied")
	sb.WaitCaughtUp(t, dsn)
	if got := pullTitles(t, f.Store, "bob"); got["t1"] != "milk" {
		t.Fatalf("bob's pull before the pause: %v", got)
	}
	if tg.get(at(sb)) == 0 {
		t.Fatalf("the pull before the pause did not run on the standby: %v", tg)
	}
	sb.PauseReplay(t)
	defer sb.ResumeReplay(t)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(4, "t2", "L", "eggs"), testkit.Todo(5, "p1", "", "mine")), "applied,applied")
	start := time.Now()
	alice = pullTitles(t, f.Store, "alice")
	bob = pullTitles(t, f.Store, "bob")
	return alice, bob, time.Since(start), tg
}

// TestStandbyReadYourWrites: a pull that starts after a push answered
// holds the push, for the pusher and for a member of the scope, while the
// standby's replay is paused: each waits read_max_lag, then reads the
// primary.
func TestStandbyReadYourWrites(t *testing.T) {
	const maxLag = 300 * time.Millisecond
	alice, bob, took, tg := readYourWrites(t, nil, maxLag)
	if alice["t2"] != "eggs" || alice["p1"] != "mine" || bob["t2"] != "eggs" {
		t.Fatalf("a pull after the push lacks it: alice %v, bob %v", alice, bob)
	}
	if _, ok := bob["p1"]; ok {
		t.Fatalf("bob received alice's private row: %v", bob)
	}
	if n := tg.get("primary/lag"); n != 2 {
		t.Fatalf("want both pulls read on the primary for lag: %v", tg)
	}
	// two pulls, each waiting read_max_lag at most (less once the
	// monitor has seen the standby behind), and no more than a little
	if took > 2*maxLag+5*time.Second {
		t.Fatalf("two pulls took %v with read_max_lag %v", took, maxLag)
	}
}

// TestStandbyReadYourWritesCatchesNoFloor: without the floor the same
// pulls read the paused standby and lack the push.
func TestStandbyReadYourWritesCatchesNoFloor(t *testing.T) {
	alice, bob, _, _ := readYourWrites(t, postgres.FloorlessDialect(), 300*time.Millisecond)
	if _, ok := alice["t2"]; ok {
		t.Fatalf("alice's pull from the paused standby holds her push: %v", alice)
	}
	if _, ok := bob["t2"]; ok {
		t.Fatalf("bob's pull from the paused standby holds alice's push: %v", bob)
	}
}

// TestStandbyDownAndBack: with its standby stopped, pulls answer 200 from
// the primary, with one warning; once it is back, pulls go to it again.
func TestStandbyDownAndBack(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	sb := pgtest.NewStandby(t, pgtest.StandbyOptions{})
	sb.WaitCaughtUp(t, dsn)
	core, logs := observer.New(zapcore.WarnLevel)
	var tg targets
	f := replicated(t, nil, dsn, []*pgtest.Standby{sb}, shapes.Options{PullTarget: tg.observe, Logger: zap.New(core)}, testkit.ListShapes()...)
	srv := testkit.NewServer(t, f.Store, handler.Config{Timeout: 10 * time.Second})
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(1, "t1", "", "milk")), "applied")
	pull := func() string {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+"/sync/pull?lastPull=1970-01-01T00:00:00.000Z", nil)
		req.Header.Set("X-Test-User", "alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(body), "milk") {
			t.Fatalf("pull answered %d: %s", resp.StatusCode, body)
		}
		return string(body)
	}
	standbyPulls := func() int { s, _ := tg.split(); return s }
	sb.WaitCaughtUp(t, dsn)
	pull()
	if standbyPulls() != 1 {
		t.Fatalf("the first pull did not run on the standby: %v", &tg)
	}
	if err := sb.Stop(); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		pull()
	}
	if standbyPulls() != 1 || tg.get("primary/down") != 5 {
		t.Fatalf("with the standby down, want 5 pulls on the primary for down: %v", &tg)
	}
	if n := logs.FilterMessageSnippet("standby").Len(); n != 1 {
		t.Fatalf("want one warning for the standby down, got %d: %v", n, logs.All())
	}
	if err := sb.Start(); err != nil {
		t.Fatal(err)
	}
	// the monitor probes every second: back within a few probes
	deadline := time.Now().Add(30 * time.Second)
	for standbyPulls() == 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the standby is not used again after its restart: %v", &tg)
		}
		pull()
		time.Sleep(50 * time.Millisecond) // one pull per probe interval's slice, bounded above
	}
}

// TestStandbysShareThePulls: each instance spreads its pulls across its
// standbys.
func TestStandbysShareThePulls(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	one, two := pgtest.SharedStandby(t), pgtest.NewStandby(t, pgtest.StandbyOptions{})
	var tg targets
	f := replicated(t, nil, dsn, []*pgtest.Standby{one, two}, shapes.Options{PullTarget: tg.observe}, testkit.ListShapes()...)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(1, "t1", "", "milk")), "applied")
	one.WaitCaughtUp(t, dsn)
	two.WaitCaughtUp(t, dsn)
	for range 40 {
		if got := pullTitles(t, f.Store, "alice"); got["t1"] != "milk" {
			t.Fatalf("pull: %v", got)
		}
	}
	a, b := tg.get(at(one)), tg.get(at(two))
	if a < 10 || b < 10 {
		t.Fatalf("40 pulls on two standbys: %v", &tg)
	}
}

// TestStandbyRecoveryConflict: a pull on a standby that replay cancels
// (max_standby_streaming_delay 0, an exclusive lock of the table on the
// primary) is read again on the primary, whole, and never fails.
func TestStandbyRecoveryConflict(t *testing.T) {
	dsn := testkit.Postgres().Open(t, testkit.SeedTable)
	sb := pgtest.NewStandby(t, pgtest.StandbyOptions{NoHotStandbyFeedback: true, MaxStandbyStreamingDelay: "0"})
	var tg targets
	f := replicated(t, nil, dsn, []*pgtest.Standby{sb}, shapes.Options{PullTarget: tg.observe}, testkit.TodosShape)
	// an answer larger than the sockets' buffers, so that the standby's
	// statement is still running while the first rows are read
	const rows = 4000
	title := strings.Repeat("x", 4000)
	for i := 0; i < rows; i += 500 {
		var batch []shapes.Change
		for j := i; j < i+500; j++ {
			batch = append(batch, testkit.Change("todos", testkit.At(j), fmt.Sprintf(`{"todoId":"r%d","title":%q,"done":false,"deleted":false}`, j, title)))
		}
		for _, r := range f.Push("alice", batch...) {
			if r.Outcome != shapes.Applied {
				t.Fatalf("push: %+v", r)
			}
		}
	}
	sb.WaitCaughtUp(t, dsn)

	first := make(chan struct{})
	resume := make(chan struct{})
	type result struct {
		n       int
		restart bool
		err     error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		_, r.err = f.Store.Pull(context.Background(), "alice", time.Time{}, 0, func(row shapes.PulledRow) error {
			if row.Restart {
				r.restart, r.n = true, 0
				return nil
			}
			r.n++
			if r.n == 1 && first != nil {
				close(first)
				first = nil
				<-resume
			}
			return nil
		})
		done <- r
	}()
	select {
	case <-first:
	case r := <-done:
		t.Fatalf("the pull ended before its first row was held: %+v", r)
	case <-time.After(30 * time.Second):
		t.Fatal("no row pulled within 30 s")
	}
	// an exclusive lock of the table on the primary, which replay takes
	// too: it cancels the statement that holds the table. (A VACUUM of
	// rows the statement reads would do as well, but another standby's
	// feedback may keep them.)
	testkit.Exec(t, dsn, `DO $$ BEGIN LOCK TABLE todos IN ACCESS EXCLUSIVE MODE; END $$`)
	sb.WaitCaughtUp(t, dsn) // replay went past the lock: the statement was cancelled
	close(resume)
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the pull did not end within 60 s")
	}
	if r.err != nil {
		t.Fatalf("the pull failed: %v (%v)", r.err, &tg)
	}
	if !r.restart || r.n != rows || tg.get("primary/conflict") != 1 {
		t.Fatalf("want the pull restarted on the primary, whole: restart %v, %d rows of %d, targets %v", r.restart, r.n, rows, &tg)
	}
	// the cancelled session reports its conflict with its statistics,
	// which reach the view within a second or so
	deadline := time.Now().Add(15 * time.Second)
	for {
		var conflicts int64
		if err := testkit.Query(sb.DSN(dsn), `SELECT confl_snapshot + confl_bufferpin + confl_lock FROM pg_stat_database_conflicts WHERE datname = current_database()`, func(scan func(...any) error) error {
			return scan(&conflicts)
		}); err != nil {
			t.Fatal(err)
		}
		if conflicts > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the standby counts no conflict with recovery: the test did not make one")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestReadDatabaseMustBeAStandby: a read_database that is not in
// recovery is refused at start-up.
func TestReadDatabaseMustBeAStandby(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	db, err := shapes.Open(dsn, shapes.Options{ReadReplicas: []string{dsn}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Destruct()
	err = db.VerifyReplicas(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not in recovery") {
		t.Fatalf("a primary as read_database: %v", err)
	}
}

// erasedStandby: alice pushes a row, the standby replays it, then its
// replay pauses (after the erase when pausedAfterErase) and the operator
// erases and unblocks alice on the primary.
func erasedStandby(t *testing.T, pausedAfterErase bool, between func(dsn string)) (*testkit.Fixture, *targets) {
	dsn := testkit.Postgres().Open(t)
	sb := pgtest.NewStandby(t, pgtest.StandbyOptions{})
	sb.WaitCaughtUp(t, dsn)
	tg := &targets{}
	f := replicated(t, nil, dsn, []*pgtest.Standby{sb}, shapes.Options{ReadMaxLag: 300 * time.Millisecond, PullTarget: tg.observe}, testkit.ListShapes()...)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(1, "p1", "", "alice's secret")), "applied")
	if between != nil {
		between(dsn)
	}
	ctx := context.Background()
	if pausedAfterErase {
		if _, err := f.Store.Erase(ctx, "alice", false); err != nil {
			t.Fatal(err)
		}
	}
	sb.WaitCaughtUp(t, dsn)
	sb.PauseReplay(t)
	t.Cleanup(func() { sb.ResumeReplay(t) })
	if !pausedAfterErase {
		if _, err := f.Store.Erase(ctx, "alice", false); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := f.Store.Unblock(ctx, "alice"); err != nil || !ok {
		t.Fatalf("unblock: %v %v", ok, err)
	}
	return f, tg
}

// TestStandbyAfterEraseAndUnblock: a standby that has not replayed an
// erase must not hand the erased rows to the user once unblocked: erase
// keeps the cursor's stamp and unblock gives it back above it, so the
// floor makes the pull wait for the standby (found by review).
func TestStandbyAfterEraseAndUnblock(t *testing.T) {
	f, tg := erasedStandby(t, false, nil)
	if got := pullTitles(t, f.Store, "alice"); len(got) != 0 {
		t.Fatalf("a pull after erase and unblock received erased rows: %v (%v)", got, tg)
	}
}

// TestStandbyAfterUnblock: a standby that replayed the erase but not the
// unblock does not refuse the unblocked user: the pull waits, then reads
// the primary.
func TestStandbyAfterUnblock(t *testing.T) {
	f, tg := erasedStandby(t, true, nil)
	if _, _, err := testkit.PullStore(f.Store, "alice", time.Time{}, 0); err != nil {
		t.Fatalf("a pull after unblock: %v (%v)", err, tg)
	}
	if tg.get("primary/lag") != 1 {
		t.Fatalf("want the pull read on the primary for lag: %v", tg)
	}
}

// TestStandbyReadYourWritesAfterUnblock: a cursor run ahead of the clock
// (an outside writer stamping row by row, in a subtransaction), then erase
// and unblock, then a push: a pull must hold the push, though the standby
// holds the old cursor, later than the push's stamp would be from the
// clock alone.
func TestStandbyReadYourWritesAfterUnblock(t *testing.T) {
	f, tg := erasedStandby(t, false, func(dsn string) {
		testkit.Exec(t, dsn, `INSERT INTO todos ("todoId", title, "userId") SELECT 'b' || i, 'bulk', 'alice' FROM generate_series(1, 3000) AS i`,
			`DO $$ BEGIN BEGIN UPDATE todos SET title = 'v' WHERE "userId" = 'alice'; EXCEPTION WHEN others THEN RAISE; END; END $$`)
	})
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(2, "p2", "", "a new start")), "applied")
	got := pullTitles(t, f.Store, "alice")
	if len(got) != 1 || got["p2"] != "a new start" {
		t.Fatalf("a pull after the push holds %d rows, p2 %q (%v)", len(got), got["p2"], tg)
	}
}

// TestPromotedStandbyIsNotRead: a pull meant for a standby that was
// promoted fails in its own statement and is read on the primary, before
// any probe marks it down.
func TestPromotedStandbyIsNotRead(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	sb := pgtest.NewStandby(t, pgtest.StandbyOptions{})
	sb.WaitCaughtUp(t, dsn)
	var tg targets
	f := replicated(t, nil, dsn, []*pgtest.Standby{sb}, shapes.Options{PullTarget: tg.observe}, testkit.ListShapes()...)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(1, "p0", "", "zero")), "applied")
	sb.WaitCaughtUp(t, dsn)
	testkit.Exec(t, sb.DSN(dsn), `SELECT pg_promote(true, 30)`)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(2, "p1", "", "acknowledged")), "applied")
	// a write the primary never sees, on the promoted server: its trigger
	// takes alice's cursor there past the push's stamp
	testkit.Exec(t, sb.DSN(dsn), `INSERT INTO todos ("todoId", title, "userId") VALUES ('x', 'phantom', 'alice')`)
	got := pullTitles(t, f.Store, "alice")
	if got["p1"] != "acknowledged" || got["x"] != "" {
		t.Fatalf("a pull after the promotion: %v (%v)", got, &tg)
	}
	if standby, _ := tg.split(); standby != 0 {
		t.Fatalf("a pull ran on the promoted server: %v", &tg)
	}
}

// TestBehindStandbyIsSkipped: a standby more than read_max_lag behind the
// primary's WAL (replay paused here; a standby that stopped receiving
// looks the same) is skipped by pulls without waiting, shown not up with
// its lag, and used again once it has caught up.
func TestBehindStandbyIsSkipped(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	sb := pgtest.NewStandby(t, pgtest.StandbyOptions{})
	sb.WaitCaughtUp(t, dsn)
	const maxLag = 500 * time.Millisecond
	var tg targets
	f := replicated(t, nil, dsn, []*pgtest.Standby{sb}, shapes.Options{ReadMaxLag: maxLag, PullTarget: tg.observe}, testkit.ListShapes()...)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(1, "p1", "", "one")), "applied")
	sb.WaitCaughtUp(t, dsn)
	sb.PauseReplay(t)
	testkit.WantOutcomes(t, f.Push("alice", testkit.Todo(2, "p2", "", "two")), "applied")
	state := func() shapes.ReplicaState { return f.DB.Replicas()[0] }
	deadline := time.Now().Add(20 * time.Second)
	for state().Up {
		if time.Now().After(deadline) {
			t.Fatalf("the standby, paused, is still up: %+v", state())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := state(); st.Lag < maxLag.Seconds() {
		t.Fatalf("a standby skipped as behind shows lag %v", st.Lag)
	}
	start := time.Now()
	if got := pullTitles(t, f.Store, "bob"); len(got) != 0 {
		t.Fatalf("bob: %v", got)
	}
	if took := time.Since(start); took >= maxLag {
		t.Fatalf("a pull waited %v for a standby known to be behind", took)
	}
	if tg.get("primary/lag") == 0 {
		t.Fatalf("want the pull on the primary for lag: %v", &tg)
	}
	sb.ResumeReplay(t)
	sb.WaitCaughtUp(t, dsn)
	for !state().Up {
		if time.Now().After(deadline.Add(20 * time.Second)) {
			t.Fatalf("the standby, caught up, is not used again: %+v", state())
		}
		time.Sleep(50 * time.Millisecond)
	}
	before, _ := tg.split()
	pullTitles(t, f.Store, "alice")
	if after, _ := tg.split(); after != before+1 {
		t.Fatalf("the pull after the catch-up did not run on the standby: %v", &tg)
	}
}
