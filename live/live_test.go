package live_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/live"
	"github.com/hypersync/hypersync/live/pgnotify"
	"github.com/hypersync/hypersync/shapes"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// instance is one hypersync "instance": a store, its broker and an HTTP
// server for …/events, on a test database.
type instance struct {
	t      *testing.T
	dsn    string
	store  *shapes.Store
	broker *live.Broker
	url    string
	f      *testkit.Fixture
}

type setup struct {
	cross bool // a LISTEN/NOTIFY transport (PostgreSQL)
	// listen is the transport's listen_database, and probe how long it
	// waits to hear its own probe (both default)
	listen  string
	probe   time.Duration
	configs []shapes.ShapeConfig
	server  live.Server
	exiting func() bool
}

func newInstance(t *testing.T, dsn string, s setup) *instance {
	t.Helper()
	if len(s.configs) == 0 {
		s.configs = []shapes.ShapeConfig{testkit.TodosShape}
	}
	f := testkit.OpenStore(t, dsn, s.configs...)
	opts := live.Options{Exiting: s.exiting, Cursors: f.Store.Database().Cursors}
	if s.cross {
		tr, err := pgnotify.New(pgnotify.Options{DSN: dsn, ListenDSN: s.listen, Idle: 500 * time.Millisecond, ProbeWait: s.probe})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.Close)
		opts.Transport = tr
	}
	b := live.NewBroker(opts)
	t.Cleanup(func() { _ = b.Destruct() })
	f.Store.OnCommit = b.Publish
	srv := s.server
	srv.Broker, srv.Cursor = b, f.Store.Cursor
	srv = srv.WithDefaults()
	hs := testkit.NewServer(t, f.Store, handler.Config{Timeout: 10 * time.Second, Live: &srv})
	return &instance{t: t, dsn: dsn, store: f.Store, broker: b, url: hs.URL, f: f}
}

// waitListening waits until pokes from other instances reach the
// instance: its listener LISTENs, hears its own probe, and has read the
// database's key.
func (in *instance) waitListening() {
	in.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := in.broker.Listening()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			in.t.Fatalf("the listener is not up after 15 s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stream is an open event stream, read in the background.
type stream struct {
	resp   *http.Response
	events chan event
}

type event struct {
	name, id, data string
}

func (in *instance) open(user, lastID string) (*stream, *http.Response) {
	in.t.Helper()
	req, _ := http.NewRequest("GET", in.url+"/sync/events", nil)
	req.Header.Set("X-Test-User", user)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		in.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return nil, resp
	}
	s := &stream{resp: resp, events: make(chan event, 4096)}
	in.t.Cleanup(func() { resp.Body.Close() })
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		var e event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if e != (event{}) {
					s.events <- e
				}
				e = event{}
			case strings.HasPrefix(line, ":"):
				e.name = "comment"
			case strings.HasPrefix(line, "event: "):
				e.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "id: "):
				e.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				e.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return s, resp
}

// next waits up to d for the next poke, skipping comments.
func (s *stream) next(d time.Duration) (event, bool) {
	deadline := time.After(d)
	for {
		select {
		case e, ok := <-s.events:
			if !ok {
				return event{}, false
			}
			if e.name == "poke" {
				return e, true
			}
		case <-deadline:
			return event{}, false
		}
	}
}

func push(t *testing.T, in *instance, user, key string) {
	t.Helper()
	testkit.WantOutcomes(t, in.f.Push(user, testkit.Change("todos", time.Now(), fmt.Sprintf(`{"todoId":%q,"title":"x"}`, key))), "applied")
}

// A push pokes the streams of its user, at once, and nobody else's; the
// poke's id is the user's new cursor.
func TestPokeDelivery(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		in := newInstance(t, b.Open(t, testkit.SeedTable), setup{})
		alice, resp := in.open("alice", "")
		if alice == nil {
			t.Fatalf("events: %d", resp.StatusCode)
		}
		for h, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform"} {
			if got := alice.resp.Header.Get(h); got != want {
				t.Fatalf("%s = %q, want %q", h, got, want)
			}
		}
		bob, _ := in.open("bob", "")
		start := time.Now()
		push(t, in, "alice", "t1")
		e, ok := alice.next(2 * time.Second)
		if !ok {
			t.Fatal("no poke within 2 s")
		}
		t.Logf("poke after %v", time.Since(start))
		cur, _ := in.store.Cursor(context.Background(), "alice")
		if e.id != fmt.Sprint(cur.UnixMilli()) {
			t.Fatalf("poke id %q, want the cursor %d", e.id, cur.UnixMilli())
		}
		if e, ok := bob.next(300 * time.Millisecond); ok {
			t.Fatalf("bob got %+v for alice's push", e)
		}
	})
}

// On PostgreSQL a push on one instance pokes the streams on another.
func TestPokeAcrossInstances(t *testing.T) {
	dsn := testkit.Postgres().Open(t, testkit.SeedTable)
	a := newInstance(t, dsn, setup{cross: true})
	b := newInstance(t, dsn, setup{cross: true})
	s, _ := b.open("alice", "")
	a.waitListening()
	b.waitListening()
	push(t, a, "alice", "t1")
	if _, ok := s.next(2 * time.Second); !ok {
		t.Fatal("no poke from the other instance within 2 s")
	}
}

// Pokes coalesce: 1,000 commits published faster than a stream can write
// them reach it as a few pokes, the last of which carries the newest stamp;
// 1,000 real pushes reach it as at most 1,000, the last with the cursor.
func TestPokesCoalesce(t *testing.T) {
	in := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), setup{})
	s, _ := in.open("alice", "")
	count := func() (int, string) {
		n, last := 0, ""
		for {
			e, ok := s.next(500 * time.Millisecond)
			if !ok {
				return n, last
			}
			n, last = n+1, e.id
		}
	}
	base := time.Now().Truncate(time.Millisecond)
	for i := 1; i <= 1000; i++ {
		in.broker.Publish([]string{"alice"}, base.Add(time.Duration(i)*time.Millisecond))
	}
	n, last := count()
	t.Logf("a burst of 1,000 commits: %d pokes", n)
	if want := fmt.Sprint(base.Add(1000 * time.Millisecond).UnixMilli()); n == 0 || n >= 100 || last != want {
		t.Fatalf("%d pokes, the last with id %s; want a few, the last with %s", n, last, want)
	}
	for i := 0; i < 1000; i++ {
		push(t, in, "alice", fmt.Sprintf("t%d", i))
	}
	cur, _ := in.store.Cursor(context.Background(), "alice")
	n, last = count()
	t.Logf("1,000 pushes: %d pokes", n)
	if n == 0 || n > 1000 || last != fmt.Sprint(cur.UnixMilli()) {
		t.Fatalf("%d pokes, the last with id %s; want at most 1,000, the last with %d", n, last, cur.UnixMilli())
	}
}

// A client that never reads its stream does not hold up anyone else's.
func TestStalledClientDoesNotBlockOthers(t *testing.T) {
	in := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), setup{server: live.Server{Heartbeat: time.Millisecond}})
	// a raw connection that asks for the stream and never reads: its
	// heartbeats soon fill the socket buffers
	conn, err := net.Dial("tcp", strings.TrimPrefix(in.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(1024)
	}
	fmt.Fprintf(conn, "GET /sync/events HTTP/1.1\r\nHost: x\r\nX-Test-User: alice\r\n\r\n")
	deadline := time.Now().Add(time.Minute)
	for in.broker.Open() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the stalled stream was not served within a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
	other, _ := in.open("alice", "")
	for i := 0; i < 20; i++ {
		start := time.Now()
		push(t, in, "alice", fmt.Sprintf("t%d", i))
		if _, ok := other.next(time.Second); !ok {
			t.Fatalf("push %d: no poke within 1 s beside a stalled stream", i)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("push %d: poke after %v", i, d)
		}
	}
}

// Past max_streams_per_user a stream is refused 429, past max_streams 503
// with Retry-After.
func TestStreamLimits(t *testing.T) {
	in := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), setup{server: live.Server{MaxStreams: 3, MaxStreamsPerUser: 2}})
	for i := 0; i < 2; i++ {
		if s, resp := in.open("alice", ""); s == nil {
			t.Fatalf("stream %d: %d", i, resp.StatusCode)
		}
	}
	if _, resp := in.open("alice", ""); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a third stream of alice: %d, want 429", resp.StatusCode)
	}
	if s, resp := in.open("bob", ""); s == nil {
		t.Fatalf("bob's stream: %d", resp.StatusCode)
	}
	_, resp := in.open("carol", "")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a fourth stream: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// A client reconnecting with the id it last saw gets a poke at once when
// the user's cursor moved on since, none when it did not, and one for an
// id it cannot read.
func TestReconnectCatchUp(t *testing.T) {
	in := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), setup{})
	push(t, in, "alice", "t1")
	cur, _ := in.store.Cursor(context.Background(), "alice")
	id := fmt.Sprint(cur.UnixMilli())
	s, _ := in.open("alice", id)
	if e, ok := s.next(300 * time.Millisecond); ok {
		t.Fatalf("a client that missed nothing got %+v", e)
	}
	old, _ := in.open("alice", fmt.Sprint(cur.UnixMilli()-1))
	if _, ok := old.next(time.Second); !ok {
		t.Fatal("a client that missed a push got no poke")
	}
	for _, garbage := range []string{"yesterday", "-5", "1e99", strings.Repeat("9", 400), "\u00ff"} {
		g, resp := in.open("alice", garbage)
		if g == nil {
			t.Fatalf("Last-Event-ID %q: %d", garbage, resp.StatusCode)
		}
		if _, ok := g.next(time.Second); !ok && garbage != strings.Repeat("9", 400) {
			t.Fatalf("Last-Event-ID %q: no poke", garbage)
		}
		g.resp.Body.Close()
	}
}

// With live off, …/events answers 204, which tells EventSource to stop.
func TestLiveOffAnswers204(t *testing.T) {
	f := testkit.OpenStore(t, testkit.SQLite().Open(t, testkit.SeedTable), testkit.TodosShape)
	hs := testkit.NewServer(t, f.Store, handler.Config{})
	req, _ := http.NewRequest("GET", hs.URL+"/sync/events", nil)
	req.Header.Set("X-Test-User", "alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("events with live off: %d, want 204", resp.StatusCode)
	}
	// and without a user, 401 as push and pull
	resp, _ = http.Get(hs.URL + "/sync/events")
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("events without a user: %d, want 401", resp.StatusCode)
	}
}

// The listener's connection killed (pg_terminate_backend): it comes back,
// and catches its streams up: a stream whose user's cursor moved while it
// was away gets a poke with that cursor, and a stream of a user with
// nothing new (carol) gets none. Pokes from the other instance resume.
func TestListenerLoss(t *testing.T) {
	dsn := testkit.Postgres().Open(t, testkit.SeedTable)
	a := newInstance(t, dsn, setup{cross: true})
	b := newInstance(t, dsn, setup{cross: true})
	s, _ := b.open("alice", "")
	carol, _ := b.open("carol", "")
	a.waitListening()
	b.waitListening()
	killed := 0
	err := testkit.Query(dsn, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'hypersync listener'`,
		func(scan func(...any) error) error { return scan(&killed) })
	if err != nil || killed != 2 {
		t.Fatalf("terminated %d listeners (%v), want 2", killed, err)
	}
	push(t, a, "alice", "t1") // most likely while b's listener is away
	cur, _ := a.store.Cursor(context.Background(), "alice")
	e, ok := s.next(5 * time.Second)
	if !ok {
		t.Fatal("no poke for a push made while the listener was away")
	}
	if e.id != fmt.Sprint(cur.UnixMilli()) {
		t.Fatalf("catch-up poke with id %q, want the cursor %d", e.id, cur.UnixMilli())
	}
	b.waitListening()
	// carol's first poke is the one for her own push: none came before it
	push(t, b, "carol", "c1")
	cc, _ := b.store.Cursor(context.Background(), "carol")
	if e, ok := carol.next(5 * time.Second); !ok || e.id != fmt.Sprint(cc.UnixMilli()) {
		t.Fatalf("carol's first poke %+v (%v), want the one for her push, id %d", e, ok, cc.UnixMilli())
	}
	push(t, a, "alice", "t2")
	if _, ok := s.next(3 * time.Second); !ok {
		t.Fatal("pokes from the other instance did not resume")
	}
}

// The catch-up after a reconnect asks the database, and pokes a stream only
// when its user's cursor is past what it was told, whether the stream was
// told at open, or by a poke.
func TestResyncPokesOnlyStreamsBehind(t *testing.T) {
	in := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), setup{})
	push(t, in, "alice", "t1")
	alice, _ := in.open("alice", "")
	carol, _ := in.open("carol", "")
	live.Resync(in.broker)
	if e, ok := alice.next(300 * time.Millisecond); ok {
		t.Fatalf("alice, told of her cursor when her stream opened, got %+v", e)
	}
	push(t, in, "alice", "t2")
	if _, ok := alice.next(2 * time.Second); !ok {
		t.Fatal("no poke for alice's push")
	}
	live.Resync(in.broker)
	if e, ok := alice.next(300 * time.Millisecond); ok {
		t.Fatalf("alice, told of her cursor by the last poke, got %+v", e)
	}
	// a write the broker was not told of, as from another instance
	testkit.Exec(t, in.dsn, `UPDATE hypersync_cursors SET stamp = '2099-01-01T00:00:00.000000Z' WHERE user_id = 'alice'`)
	live.Resync(in.broker)
	if e, ok := alice.next(2 * time.Second); !ok || e.id != fmt.Sprint(time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()) {
		t.Fatalf("alice, whose cursor moved, got %+v (%v), want a poke with the new cursor", e, ok)
	}
	if e, ok := carol.next(300 * time.Millisecond); ok {
		t.Fatalf("carol, with no cursor, got %+v", e)
	}
}

// A DSN with pgxpool's own parameters (pool_max_conns, as the README
// advises) works for the listener too: a push on one instance pokes the
// other.
func TestListenerTakesPoolDSN(t *testing.T) {
	dsn := testkit.Postgres().Open(t, testkit.SeedTable)
	pooled := dsn + "&pool_max_conns=4"
	if !strings.Contains(dsn, "?") {
		pooled = dsn + "?pool_max_conns=4"
	}
	a := newInstance(t, pooled, setup{cross: true})
	b := newInstance(t, pooled, setup{cross: true})
	s, _ := b.open("alice", "")
	a.waitListening()
	b.waitListening()
	push(t, a, "alice", "t1")
	if _, ok := s.next(3 * time.Second); !ok {
		t.Fatal("no poke from the other instance with pool_max_conns in the DSN")
	}
}

// A listener that cannot LISTEN, or that LISTENs where it does not hear
// what is sent through database (as behind a transaction pooler), says so:
// Listening names the reason.
func TestListenerDegraded(t *testing.T) {
	dsn := testkit.Postgres().Open(t, testkit.SeedTable)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	other := *u
	other.Path = "/postgres" // another database of the cluster: LISTEN works there, and hears nothing of this one
	deaf := newInstance(t, dsn, setup{cross: true, listen: other.String(), probe: 300 * time.Millisecond})
	closed := *u
	closed.Host = "127.0.0.1:1" // nothing listens there
	down := newInstance(t, dsn, setup{cross: true, listen: closed.String()})
	for _, c := range []struct {
		in   *instance
		want string
	}{{deaf, "does not hear"}, {down, "cannot connect"}} {
		deadline := time.Now().Add(15 * time.Second)
		for {
			err := c.in.broker.Listening()
			if err != nil && strings.Contains(err.Error(), c.want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Listening() = %v after 15 s, want an error saying %q", err, c.want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Notifications on the channel that are not hypersync's (any role may
// NOTIFY) poke nobody: not the old poke-everyone form, not keys of another
// shape, not extra fields.
func TestForgedNotificationsPokeNobody(t *testing.T) {
	dsn := testkit.Postgres().Open(t, testkit.SeedTable)
	in := newInstance(t, dsn, setup{cross: true})
	s, _ := in.open("alice", "")
	in.waitListening()
	key := in.broker.Key("alice")
	for _, payload := range []string{`{"a":true}`, `not json`, `{"u":["` + key + `"],"x":1}`, `{"u":["` + key + `x"]}`, `{"u":[]}`, `[1]`} {
		testkit.Exec(t, dsn, fmt.Sprintf(`SELECT pg_notify('hypersync_poke', %s)`, pgLiteral(payload)))
	}
	// a barrier: a real poke, sent the same way, arrives after them
	testkit.Exec(t, dsn, fmt.Sprintf(`SELECT pg_notify('hypersync_poke', %s)`, pgLiteral(`{"u":["`+key+`"],"s":42}`)))
	e, ok := s.next(3 * time.Second)
	if !ok || e.id != "42" {
		t.Fatalf("first poke %+v (%v), want only the well-formed one (id 42)", e, ok)
	}
}

func pgLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// A write from outside hypersync pokes too, through the stamping trigger.
func TestOutsideWritePokes(t *testing.T) {
	dsn := testkit.Postgres().Open(t, testkit.SeedTable)
	in := newInstance(t, dsn, setup{cross: true})
	d, err := in.f.DB.Diagnose(context.Background(), testkit.TodosShape)
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range d.Fix {
		testkit.Exec(t, dsn, stmt)
	}
	s, _ := in.open("alice", "")
	in.waitListening()
	testkit.Exec(t, dsn, `INSERT INTO todos (todoId, title, userId) VALUES ('psql', 'from psql', 'alice')`)
	if _, ok := s.next(2 * time.Second); !ok {
		t.Fatal("no poke for a row written with SQL")
	}
}

// A write into a shared list pokes every member of it, and nobody else.
func TestSharedWritePokesEveryMember(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		in := newInstance(t, b.Open(t), setup{configs: testkit.ListShapes()})
		testkit.WantOutcomes(t, in.f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false)), "applied,applied")
		bob, _ := in.open("bob", "")
		carol, _ := in.open("carol", "")
		testkit.WantOutcomes(t, in.f.Push("alice", testkit.Todo(3, "t1", "L", "milk")), "applied")
		if _, ok := bob.next(2 * time.Second); !ok {
			t.Fatal("bob, a member, got no poke")
		}
		if e, ok := carol.next(300 * time.Millisecond); ok {
			t.Fatalf("carol got %+v", e)
		}
	})
}

// A process exiting closes every stream, so that Caddy's graceful
// shutdown does not wait on them.
func TestExitClosesStreams(t *testing.T) {
	exiting := make(chan struct{})
	in := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), setup{exiting: func() bool {
		select {
		case <-exiting:
			return true
		default:
			return false
		}
	}})
	var streams []*stream
	for i := 0; i < 100; i++ {
		s, resp := in.open(fmt.Sprintf("u%d", i), "")
		if s == nil {
			t.Fatalf("stream %d: %d", i, resp.StatusCode)
		}
		streams = append(streams, s)
	}
	start := time.Now()
	close(exiting)
	for i, s := range streams {
		for range s.events {
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("stream %d still open after 2 s", i)
		}
	}
	if in.broker.Open() != 0 {
		t.Fatalf("%d streams left", in.broker.Open())
	}
}

// A flood of stream opens by one user: at most max_streams_per_user are
// served, the rest get 429 at once, and others are not affected.
func TestStreamFloodByOneUser(t *testing.T) {
	in := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), setup{})
	answers := make(chan int, 200)
	for i := 0; i < 200; i++ {
		go func() {
			req, _ := http.NewRequest("GET", in.url+"/sync/events", nil)
			req.Header.Set("X-Test-User", "mallory")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				answers <- 0
				return
			}
			answers <- resp.StatusCode
			if resp.StatusCode != 200 {
				resp.Body.Close()
				return
			}
			t.Cleanup(func() { resp.Body.Close() })
		}()
	}
	counts := map[int]int{}
	for i := 0; i < 200; i++ {
		select {
		case code := <-answers:
			counts[code]++
		case <-time.After(10 * time.Second):
			t.Fatalf("answers so far %v", counts)
		}
	}
	if counts[200] != live.DefaultMaxStreamsPerUser || counts[429] != 200-live.DefaultMaxStreamsPerUser {
		t.Fatalf("answers %v, want %d streams and the rest 429", counts, live.DefaultMaxStreamsPerUser)
	}
	alice, resp := in.open("alice", "")
	if alice == nil {
		t.Fatalf("alice, beside the flood: %d", resp.StatusCode)
	}
	push(t, in, "alice", "t1")
	if _, ok := alice.next(2 * time.Second); !ok {
		t.Fatal("alice got no poke beside the flood")
	}
}

// A stream is closed cleanly after its age (80 to 100 % of
// stream_max_age), for the client to reconnect.
func TestStreamMaxAge(t *testing.T) {
	in := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), setup{server: live.Server{MaxAge: 300 * time.Millisecond}})
	s, _ := in.open("alice", "")
	start := time.Now()
	for range s.events {
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
		t.Fatalf("the stream ended after %v, want about 240-300 ms", d)
	}
	if in.broker.Open() != 0 {
		t.Fatalf("%d streams left open", in.broker.Open())
	}
}

// A write from outside into a scope of more than 300 members pokes its
// members, in several notifications, and nobody else.
func TestOutsideWriteIntoBigScopePokesOnlyMembers(t *testing.T) {
	dsn := testkit.Postgres().Open(t)
	in := newInstance(t, dsn, setup{cross: true, configs: testkit.ListShapes()})
	var members []shapes.Change
	members = append(members, testkit.Member(0, "L", "alice", false))
	for i := 1; i <= 320; i++ {
		members = append(members, testkit.Member(i, "L", fmt.Sprintf("m%03d", i), false))
	}
	in.f.Push("alice", members...)
	last, _ := in.open("m320", "")
	carol, _ := in.open("carol", "")
	in.waitListening()
	testkit.Exec(t, dsn, `INSERT INTO todos ("todoId", "listId", title, "userId") VALUES ('psql', 'L', 'from psql', 'backend')`)
	if _, ok := last.next(5 * time.Second); !ok {
		t.Fatal("the 321st member got no poke")
	}
	// carol's first poke is the one for her own push: none came before it
	testkit.WantOutcomes(t, in.f.Push("carol", testkit.Todo(1, "c1", "", "mine")), "applied")
	cc, _ := in.store.Cursor(context.Background(), "carol")
	if e, ok := carol.next(5 * time.Second); !ok || e.id != fmt.Sprint(cc.UnixMilli()) {
		t.Fatalf("carol, no member, got %+v (%v) before the poke for her own push (id %d)", e, ok, cc.UnixMilli())
	}
}

// max_streams counts the streams of the instance, whatever the database.
func TestMaxStreamsIsPerInstance(t *testing.T) {
	srv := setup{server: live.Server{MaxStreams: 2}}
	a := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), srv)
	b := newInstance(t, testkit.SQLite().Open(t, testkit.SeedTable), srv)
	if s, resp := a.open("alice", ""); s == nil {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	if s, resp := b.open("bob", ""); s == nil {
		t.Fatalf("second: %d", resp.StatusCode)
	}
	if _, resp := b.open("carol", ""); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a third stream on another database: %d, want 503", resp.StatusCode)
	}
}

// A push that changes nothing (here, a change whose key is another user's)
// pokes nobody, not even the pusher: the 1.0.0 client resends a refused
// change at every sync, and a poke for it would make live.js sync again at
// once, forever. The first poke alice gets is for her next real change.
func TestRefusedPushPokesNobody(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		in := newInstance(t, b.Open(t, testkit.SeedTable), setup{})
		push(t, in, "bob", "bobs")
		alice, _ := in.open("alice", "")
		for i := 0; i < 3; i++ {
			testkit.WantOutcomes(t, in.f.Push("alice", testkit.Change("todos", time.Now(), `{"todoId":"bobs","title":"mine now"}`)), "rejected:user-mismatch")
		}
		if e, ok := alice.next(500 * time.Millisecond); ok {
			t.Fatalf("alice got %+v for pushes that changed nothing", e)
		}
		push(t, in, "alice", "t1")
		cur, _ := in.store.Cursor(context.Background(), "alice")
		if e, ok := alice.next(5 * time.Second); !ok || e.id != fmt.Sprint(cur.UnixMilli()) {
			t.Fatalf("alice's first poke %+v (%v), want the one for her applied push (id %d)", e, ok, cur.UnixMilli())
		}
	})
}
