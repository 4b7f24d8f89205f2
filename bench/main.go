// Command bench measures hypersync against PostgreSQL and SQLite
// themselves, in one run on one machine:
//
//	go run ./bench                  # from the repository root
//	go run ./bench -postgres=false  # the SQLite rows alone
//
// It starts a throwaway PostgreSQL cluster and a real Caddy (built from
// this repository) with basic_auth and hypersync on loopback. It then does
// the same work through Caddy, with the @jaaahn/hyper-sync 1.0.0 wire
// format, and directly with pgx, and prints a table of absolute figures
// and their ratios. The SQLite rows do the same with a second Caddy whose
// database is a SQLite file, against modernc.org/sqlite on a file of its
// own. Each figure is the median of -runs runs.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/crypto/bcrypt"

	"github.com/hypersync/hypersync/internal/pgtest"
)

var (
	runs        = flag.Int("runs", 5, "runs of each measurement; the median is reported")
	pushTotal   = flag.Int("push", 60000, "changes pushed per push measurement")
	batchSize   = flag.Int("batch", 300, "changes per push request (the client's pushBatchSize)")
	pullRows    = flag.Int("pull", 100000, "rows in the full-pull measurement")
	bigRows     = flag.Int("big", 1000000, "rows in the memory measurement (0 skips it)")
	smallOther  = flag.Int("others", 1000000, "rows of other users around the small pull (0 skips it)")
	caddyBin    = flag.String("caddy", "", "a Caddy with hypersync; built from ./cmd/caddy when empty")
	profile     = flag.String("profile", "", "save Caddy's CPU profile during the first 1-user push to this file")
	dsnFlag     = flag.String("dsn", "", "an existing PostgreSQL database to use (it must be empty); a throwaway cluster when empty")
	withPG      = flag.Bool("postgres", true, "measure the PostgreSQL rows (-postgres=false: the SQLite rows alone)")
	withSQLite  = flag.Bool("sqlite", true, "measure the SQLite rows")
	withShared  = flag.Bool("shared", true, "measure the shared-scope rows (PostgreSQL)")
	onlyShared  = flag.Bool("only-shared", false, "measure the shared-scope rows alone")
	withLive    = flag.Bool("live", true, "measure the live-sync rows")
	onlyLive    = flag.Bool("only-live", false, "measure the live-sync rows alone")
	liveStreams = flag.Int("streams", 10000, "idle streams in the live memory measurement (ulimit -n must allow them)")
	liveOff     = flag.Bool("live-off", false, "serve the push and pull rows with live off (to compare with a build that has no live sync)")
	sqlitePull  = flag.Int("sqlite-pull", 0, "rows in the SQLite full-pull measurement (0: as many as -pull)")
	sqliteProf  = flag.String("sqlite-profile", "", "save Caddy's CPU profile during the first SQLite push to this file")
)

const ddl = pgtest.TodosDDL + ";\n" + pgtest.TodosIndex

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// result is one measurement, through Caddy and directly, over the runs.
type result struct {
	name          string
	caddy, direct []float64
	ratios        []float64 // caddy/direct, per run
	unit          string
	target        string
	better        string // "higher" or "lower"
}

// pair measures both ways once. The order alternates from run to run, so
// that whatever drifts during a run (the table's size, a checkpoint) does
// not favour one side; the ratio is taken within the run.
func (r *result) pair(run int, viaCaddy, direct func() (float64, error)) error {
	first, second := viaCaddy, direct
	if run%2 == 1 {
		first, second = direct, viaCaddy
	}
	a, err := first()
	if err != nil {
		return err
	}
	b, err := second()
	if err != nil {
		return err
	}
	if run%2 == 1 {
		a, b = b, a
	}
	r.caddy, r.direct, r.ratios = append(r.caddy, a), append(r.direct, b), append(r.ratios, a/b)
	return nil
}

func run() error {
	ctx := context.Background()
	bin := *caddyBin
	if bin == "" {
		dir, err := os.MkdirTemp("", "hypersync-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "caddy")
		fmt.Fprintln(os.Stderr, "building Caddy with hypersync…")
		build := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building caddy: %w", err)
		}
	}
	var out outcome
	if *onlyShared {
		*withPG, *withSQLite, *withShared, *withLive, *withStandby = false, false, true, false, false
	}
	if *onlyLive {
		*withPG, *withSQLite, *withShared, *withLive, *withStandby = false, false, false, true, false
	}
	if *onlyStandby {
		*withPG, *withSQLite, *withShared, *withLive, *withStandby = false, false, false, false, true
	}
	if *withLive {
		if err := runLive(ctx, bin, &out); err != nil {
			return fmt.Errorf("live: %w", err)
		}
	}
	if *withShared {
		if err := runShared(ctx, bin, &out); err != nil {
			return fmt.Errorf("shared scopes: %w", err)
		}
	}
	if *withStandby {
		if err := runStandby(ctx, bin, &out); err != nil {
			return fmt.Errorf("standby: %w", err)
		}
	}
	if *withPG {
		if err := runPostgres(ctx, bin, &out); err != nil {
			return err
		}
	}
	if *withSQLite {
		if err := runSQLite(ctx, bin, &out); err != nil {
			return err
		}
	}
	report(out)
	if len(out.breakdown) > 0 {
		fmt.Printf("\nwhere a push request's time goes, per request, from Caddy's hypersync metrics (median run):\n")
	}
	for _, b := range out.breakdown {
		if len(b.sums) == 0 || b.sums[0].count == 0 {
			continue
		}
		sort.Slice(b.sums, func(i, j int) bool { return b.sums[i].request/b.sums[i].count < b.sums[j].request/b.sums[j].count })
		m := b.sums[len(b.sums)/2]
		fmt.Printf("  %s: %.2f ms in the handler, of which %.2f ms in the store (%.2f ms waiting for the user's stamp)\n",
			b.label, 1000*m.request/m.count, 1000*m.database/m.count, 1000*m.lockWait/m.count)
	}
	return nil
}

// outcome is what the sections measured, for the report.
type outcome struct {
	results           []result // PostgreSQL's
	sqlite            []result
	ran               bool // the PostgreSQL section ran
	p50               float64
	heapRise, rssRise float64
	enc               []string
	// the direct bulk insert, with the stamping trigger and without (ms)
	outsideWith, outsideWithout []float64
	breakdown                   []breakdown
	shared                      []sharedRow
}

// breakdown is the push histograms' sums of one push row, per run.
type breakdown struct {
	label string
	sums  []pushSums
}

// caddyPush measures one push through Caddy, adds the push histograms'
// sums over it to sums, and saves a CPU profile of Caddy to profileFile
// when that is not empty.
func caddyPush(srv *caddyServer, users int, prefix, profileFile string, sums *[]pushSums) (float64, error) {
	var profiled chan error
	if profileFile != "" {
		profiled = make(chan error, 1)
		go func() { profiled <- srv.cpuProfile(profileFile, 3) }()
		time.Sleep(100 * time.Millisecond)
	}
	before, err := srv.pushSums()
	if err != nil {
		return 0, err
	}
	rate, err := measurePush(users, srv.preparePush, prefix)
	if err == nil {
		var after pushSums
		if after, err = srv.pushSums(); err == nil {
			*sums = append(*sums, after.minus(before))
		}
	}
	if profiled != nil {
		if perr := <-profiled; err == nil {
			err = perr
		}
	}
	return rate, err
}

// runPostgres measures the PostgreSQL rows, on a throwaway cluster that
// is gone when it returns.
func runPostgres(ctx context.Context, bin string, out *outcome) error {
	out.ran = true
	dsn := *dsnFlag
	if dsn == "" {
		c, err := pgtest.StartCluster()
		if err != nil {
			return err
		}
		defer c.Destroy()
		dsn = c.DSN
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, ddl); err != nil {
		return fmt.Errorf("creating the table: %w", err)
	}

	if out.outsideWith, out.outsideWithout, err = measureOutsideWrites(ctx, pool, dsn); err != nil {
		return fmt.Errorf("outside writes: %w", err)
	}

	users := []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "big", "small", "mem"}
	srv, err := startCaddy(bin, dsn, users)
	if err != nil {
		return err
	}
	defer srv.stop()

	// push, 1 user and 8 users
	for _, n := range []int{1, 8} {
		var res result
		sums := breakdown{label: fmt.Sprintf("%d user(s)", n)}
		for r := 0; r < *runs; r++ {
			prefix := fmt.Sprintf("p%d-%d-", n, r)
			viaCaddy := func() (float64, error) {
				prof := ""
				if n == 1 && r == 0 {
					prof = *profile
				}
				return caddyPush(srv, n, prefix+"c", prof, &sums.sums)
			}
			direct := func() (float64, error) {
				return measurePush(n, func(user string, batch []change) (func() error, error) {
					return prepareDirectPush(ctx, pool, user, batch), nil
				}, prefix+"d")
			}
			if err := res.pair(r, viaCaddy, direct); err != nil {
				return err
			}
		}
		res.name, res.unit, res.target, res.better = fmt.Sprintf("push, %d user(s), batches of %d", n, *batchSize), "changes/s", "≥ 0.6×", "higher"
		out.results = append(out.results, res)
		out.breakdown = append(out.breakdown, sums)
	}

	// full pull of pullRows rows
	if err := seedRows(ctx, pool, "big", "b", *pullRows); err != nil {
		return err
	}
	var size int64
	pull := result{unit: "ms", target: "≤ 1.2×", better: "lower"}
	for r := 0; r < *runs; r++ {
		viaCaddy := func() (float64, error) {
			start := time.Now()
			n, err := srv.pullBytes("big", "1970-01-01T00:00:00.000Z", "")
			size = n
			return float64(time.Since(start).Microseconds()) / 1000, err
		}
		direct := func() (float64, error) {
			start := time.Now()
			err := directPull(ctx, pool, "big")
			return float64(time.Since(start).Microseconds()) / 1000, err
		}
		if err := pull.pair(r, viaCaddy, direct); err != nil {
			return err
		}
	}
	pull.name = fmt.Sprintf("full pull of %d rows (%.1f MB JSON)", *pullRows, float64(size)/1e6)
	out.results = append(out.results, pull)

	// compression
	for _, e := range []string{"gzip", "zstd"} {
		n, err := srv.pullBytes("big", "1970-01-01T00:00:00.000Z", e)
		if err != nil {
			return err
		}
		out.enc = append(out.enc, fmt.Sprintf("%s %.1f MB (%.0f%% saved)", e, float64(n)/1e6, 100*(1-float64(n)/float64(size))))
	}

	// small pull among many rows of other users
	if *smallOther > 0 {
		if err := seedRows(ctx, pool, "", "o", *smallOther); err != nil {
			return err
		}
		since := time.Now().UTC().Add(-time.Second)
		batch := make([]change, 100)
		for i := range batch {
			batch[i] = newChange("small", fmt.Sprintf("s%d", i))
		}
		time.Sleep(10 * time.Millisecond)
		if err := srv.push("small", batch); err != nil {
			return err
		}
		var lat []float64
		for i := 0; i < 200; i++ {
			start := time.Now()
			if _, err := srv.pullBytes("small", since.Format("2006-01-02T15:04:05.000Z"), ""); err != nil {
				return err
			}
			lat = append(lat, float64(time.Since(start).Microseconds())/1000)
		}
		out.p50 = median(lat)
	}

	// memory during a 1M-row pull
	if *bigRows > 0 {
		if err := seedRows(ctx, pool, "mem", "m", *bigRows); err != nil {
			return err
		}
		out.heapRise, out.rssRise, err = srv.measurePullMemory("mem")
		if err != nil {
			return err
		}
	}
	return nil
}

// pushSums are the sums of Caddy's push histograms, in seconds.
type pushSums struct{ count, request, database, lockWait float64 }

func (a pushSums) minus(b pushSums) pushSums {
	return pushSums{a.count - b.count, a.request - b.request, a.database - b.database, a.lockWait - b.lockWait}
}

// pushSums reads the push histograms from Caddy's metrics endpoint.
func (s *caddyServer) pushSums() (pushSums, error) {
	resp, err := http.Get(s.admin + "/metrics")
	if err != nil {
		return pushSums{}, err
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	if err != nil {
		return pushSums{}, err
	}
	var p pushSums
	fields := map[string]*float64{
		`hypersync_request_duration_seconds_count{op="push"}`: &p.count,
		`hypersync_request_duration_seconds_sum{op="push"}`:   &p.request,
		`hypersync_database_duration_seconds_sum{op="push"}`:  &p.database,
		`hypersync_lock_wait_seconds_sum`:                     &p.lockWait,
	}
	for _, line := range strings.Split(string(text), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		dst := fields[name]
		if dst != nil {
			*dst, _ = strconv.ParseFloat(value, 64)
		}
	}
	return p, nil
}

func report(out outcome) {
	host, _ := os.Hostname()
	fmt.Printf("\nhypersync benchmark — %s, %d CPUs, median of %d runs; each ratio is the median of the runs' own ratios\n\n", host, runtime.NumCPU(), *runs)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "work\tthrough Caddy\tdirect\tratio\ttarget\tmet\tratio per run")
	rows := func(results []result) {
		for _, r := range results {
			ratio := median(r.ratios)
			met := (r.better == "higher" && ratio >= 0.6) || (r.better == "lower" && ratio <= 1.2)
			var each []string
			for _, x := range r.ratios {
				each = append(each, fmt.Sprintf("%.2f", x))
			}
			fmt.Fprintf(w, "%s\t%.0f %s\t%.0f %s\t%.2f×\t%s\t%v\t%s\n", r.name, median(r.caddy), r.unit, median(r.direct), r.unit, ratio, r.target, yes(met), strings.Join(each, " "))
		}
	}
	rows(out.results)
	if out.p50 > 0 {
		fmt.Fprintf(w, "pull of 100 new rows among %d of other users, p50\t%.2f ms\t\t\t< 5 ms\t%v\n", *smallOther, out.p50, yes(out.p50 < 5))
	}
	if out.ran && *bigRows > 0 {
		fmt.Fprintf(w, "Caddy's peak heap rise during a pull of %d rows\t%.1f MB (RSS %.1f MB)\t\t\t≤ 64 MB\t%v\n", *bigRows, out.heapRise, out.rssRise, yes(out.heapRise <= 64))
	}
	rows(out.sqlite)
	for _, r := range out.shared {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", r.name, r.value, r.reference, r.ratio, r.target, yes(r.met), r.each)
	}
	w.Flush()
	fmt.Println("\ndirect: pgx on PostgreSQL; database/sql with modernc.org/sqlite on SQLite")
	fmt.Println("\neach run, through Caddy / direct:")
	for _, r := range append(append([]result{}, out.results...), out.sqlite...) {
		var each []string
		for i := range r.caddy {
			each = append(each, fmt.Sprintf("%.0f / %.0f", r.caddy[i], r.direct[i]))
		}
		fmt.Printf("  %s (%s): %s\n", r.name, r.unit, strings.Join(each, ", "))
	}
	if len(out.enc) > 0 {
		fmt.Printf("\nthe %d-row pull with `encode zstd gzip`: %s\n", *pullRows, strings.Join(out.enc, ", "))
	}
	if len(out.outsideWith) > 0 {
		var ratios, each []string
		for i := range out.outsideWith {
			ratios = append(ratios, fmt.Sprintf("%.2f", out.outsideWith[i]/out.outsideWithout[i]))
			each = append(each, fmt.Sprintf("%.0f / %.0f", out.outsideWith[i], out.outsideWithout[i]))
		}
		fmt.Printf("\nwrites from outside hypersync: one INSERT … SELECT of %d rows, with the stamping trigger / without: median %.0f ms / %.0f ms; per run %s ms; ratios %s\n",
			outsideRows, median(out.outsideWith), median(out.outsideWithout), strings.Join(each, ", "), strings.Join(ratios, " "))
	}
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func median(xs []float64) float64 {
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

type change struct {
	ID        string         `json:"changeId"`
	ShapeKey  string         `json:"shapeKey"`
	Pushed    int            `json:"pushed"`
	UserID    string         `json:"userId"`
	UpdatedAt time.Time      `json:"updatedAt"`
	Payload   map[string]any `json:"payload"`
}

var changeSeq struct {
	sync.Mutex
	n int
}

func newChange(user, key string) change {
	changeSeq.Lock()
	changeSeq.n++
	n := changeSeq.n
	changeSeq.Unlock()
	return change{ID: fmt.Sprintf("c%d", n), ShapeKey: "todos", UserID: user, UpdatedAt: time.Now().UTC().Truncate(time.Millisecond),
		Payload: map[string]any{"todoId": key, "title": "Buy milk and bread for the week " + strconv.Itoa(n), "done": n%2 == 0, "deleted": false}}
}

// measurePush pushes *pushTotal changes as users concurrent clients, each
// sending batches of *batchSize, and returns changes per second. Each batch
// is prepared (for Caddy: encoded as the client would) before the clock
// starts, so that only the server's work is timed.
func measurePush(users int, push func(user string, batch []change) (func() error, error), prefix string) (float64, error) {
	per := *pushTotal / users
	batches := make([][][]change, users)
	for u := 0; u < users; u++ {
		user := fmt.Sprintf("u%d", u)
		for i := 0; i < per; i += *batchSize {
			var b []change
			for j := i; j < i+*batchSize && j < per; j++ {
				b = append(b, newChange(user, fmt.Sprintf("%s%d-%d", prefix, u, j)))
			}
			batches[u] = append(batches[u], b)
		}
	}
	sends := make([][]func() error, users)
	for u := range batches {
		for _, b := range batches[u] {
			send, err := push(fmt.Sprintf("u%d", u), b)
			if err != nil {
				return 0, err
			}
			sends[u] = append(sends[u], send)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, users)
	start := time.Now()
	for u := 0; u < users; u++ {
		wg.Add(1)
		go func(u int) {
			defer wg.Done()
			for _, send := range sends[u] {
				if err := send(); err != nil {
					errs <- err
					return
				}
			}
		}(u)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(per*users) / time.Since(start).Seconds(), nil
}

// prepareDirectPush is the reference: one unnest upsert per batch, stamped
// with now(), as an application would write it by hand with pgx.
func prepareDirectPush(ctx context.Context, pool *pgxpool.Pool, user string, batch []change) func() error {
	ids := make([]string, len(batch))
	titles := make([]string, len(batch))
	done := make([]bool, len(batch))
	deleted := make([]bool, len(batch))
	upd := make([]time.Time, len(batch))
	for i, c := range batch {
		ids[i], titles[i] = c.Payload["todoId"].(string), c.Payload["title"].(string)
		done[i], deleted[i], upd[i] = c.Payload["done"].(bool), c.Payload["deleted"].(bool), c.UpdatedAt
	}
	return func() error {
		_, err := pool.Exec(ctx, `INSERT INTO todos (todoId, title, done, deleted, userId, updatedAt, lastSyncAt)
		SELECT i, t, d, x, $6, u, now() FROM unnest($1::text[], $2::text[], $3::bool[], $4::bool[], $5::timestamptz[]) AS v(i, t, d, x, u)
		ON CONFLICT (todoId) DO UPDATE SET title = EXCLUDED.title, done = EXCLUDED.done, deleted = EXCLUDED.deleted,
			updatedAt = EXCLUDED.updatedAt, lastSyncAt = now()
		WHERE EXCLUDED.updatedAt > todos.updatedAt AND todos.userId = EXCLUDED.userId`, ids, titles, done, deleted, upd, user)
		return err
	}
}

// directPull is the reference: the rows of a user queried and scanned
// with pgx, and encoded as the pull answer with encoding/json.
func directPull(ctx context.Context, pool *pgxpool.Pool, user string) error {
	rows, err := pool.Query(ctx, `SELECT todoId, title, done, deleted, userId, updatedAt FROM todos
		WHERE userId = $1 AND lastSyncAt > $2 AND lastSyncAt <= now() ORDER BY lastSyncAt`, user, time.Unix(0, 0))
	if err != nil {
		return err
	}
	type payload struct {
		TodoID  string `json:"todoId"`
		Title   string `json:"title"`
		Done    bool   `json:"done"`
		Deleted bool   `json:"deleted"`
	}
	type out struct {
		ShapeKey  string    `json:"shapeKey"`
		Payload   payload   `json:"payload"`
		UserID    string    `json:"userId"`
		UpdatedAt time.Time `json:"updatedAt"`
	}
	var changes []out
	for rows.Next() {
		var o out
		if err := rows.Scan(&o.Payload.TodoID, &o.Payload.Title, &o.Payload.Done, &o.Payload.Deleted, &o.UserID, &o.UpdatedAt); err != nil {
			return err
		}
		o.ShapeKey = "todos"
		changes = append(changes, o)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return json.NewEncoder(io.Discard).Encode(map[string]any{"changes": changes, "syncedAt": time.Now()})
}

// seedRows inserts n rows for user straight into the table, stamped in
// the past, and moves the user's cursor past them, as pushes would have.
// With user empty, the rows belong to n/10 other users.
func seedRows(ctx context.Context, pool *pgxpool.Pool, user, prefix string, n int) error {
	_, err := pool.Exec(ctx, `INSERT INTO todos (todoId, title, done, deleted, userId, updatedAt, lastSyncAt)
		SELECT $2 || g, 'Buy milk and bread for the week ' || g, g % 2 = 0, false,
			CASE WHEN $1::text = '' THEN 'other' || (g % 1000) ELSE $1::text END,
			now() - interval '1 hour', now() - interval '1 hour' + g * interval '1 microsecond'
		FROM generate_series(1, $3::int) AS g`, user, prefix, n)
	if err != nil {
		return fmt.Errorf("seeding rows: %w", err)
	}
	if user != "" {
		_, err = pool.Exec(ctx, `INSERT INTO hypersync_cursors (user_id, stamp) VALUES ($1, date_trunc('milliseconds', clock_timestamp()))
			ON CONFLICT (user_id) DO UPDATE SET stamp = greatest(EXCLUDED.stamp, hypersync_cursors.stamp)`, user)
	}
	_, _ = pool.Exec(ctx, `VACUUM ANALYZE todos`)
	return err
}

type caddyServer struct {
	cmd    *exec.Cmd
	dir    string // the Caddyfile and the log
	base   string
	admin  string
	client *http.Client
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCaddy starts Caddy with hypersync on database (a PostgreSQL DSN or
// sqlite:FILE), behind basic_auth for users, all with the password "pw".
func startCaddy(bin, database string, users []string) (*caddyServer, error) {
	extra := ""
	if *liveOff {
		extra = "\t\t\tlive off\n"
	}
	return startCaddyWith(bin, database, users, extra)
}

// startCaddyWith starts Caddy with the todos shape and the shapes in extra
// (Caddyfile text inside the hypersync block).
func startCaddyWith(bin, database string, users []string, extra string) (*caddyServer, error) {
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		return nil, err
	}
	var accounts strings.Builder
	for _, u := range users {
		fmt.Fprintf(&accounts, "\t\t\t%s %s\n", u, hash)
	}
	port, admin := freePort(), freePort()
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	metrics
}
http://127.0.0.1:%d {
	handle /sync/* {
		encode zstd gzip
		basic_auth {
%s		}
		hypersync {
			database %s
			max_concurrent_pushes 16
			max_concurrent_pulls 16
			timeout 120s
			shape todos {
				key todoId
				fields title done deleted
			}
%s		}
	}
}`, admin, port, accounts.String(), database, extra)
	dir, err := os.MkdirTemp("", "hypersync-bench-caddy-")
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", file)
	cmd.Dir = dir
	logf, _ := os.Create(filepath.Join(dir, "caddy.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &caddyServer{cmd: cmd, dir: dir, base: fmt.Sprintf("http://127.0.0.1:%d", port), admin: fmt.Sprintf("http://127.0.0.1:%d", admin),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}}
	for i := 0; ; i++ {
		if _, err := s.pullBytes("u0", "", ""); err == nil {
			return s, nil
		}
		if i > 100 {
			log, _ := os.ReadFile(filepath.Join(dir, "caddy.log"))
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil, fmt.Errorf("caddy did not start:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *caddyServer) stop() {
	_ = s.cmd.Process.Signal(os.Interrupt)
	_ = s.cmd.Wait()
	_ = os.RemoveAll(s.dir)
}

func (s *caddyServer) push(user string, batch []change) error {
	send, err := s.preparePush(user, batch)
	if err != nil {
		return err
	}
	return send()
}

// preparePush encodes a batch as the client sends it, and returns the
// function that sends it.
func (s *caddyServer) preparePush(user string, batch []change) (func() error, error) {
	body, err := json.Marshal(map[string]any{"changes": batch})
	if err != nil {
		return nil, err
	}
	return func() error { return s.send(user, body) }, nil
}

func (s *caddyServer) send(user string, body []byte) error {
	answer, err := s.post(user, body)
	if err == nil && !bytes.Contains(answer, []byte(`"rejectedChanges":[]`)) {
		err = fmt.Errorf("push rejected changes: %.300s", answer)
	}
	return err
}

// pushRefused pushes a batch whose changes the server refuses: it must
// answer 201, and reject every one.
func (s *caddyServer) pushRefused(user string, batch []change) error {
	body, err := json.Marshal(map[string]any{"changes": batch})
	if err != nil {
		return err
	}
	answer, err := s.post(user, body)
	if err == nil && !bytes.Contains(answer, []byte(`"acceptedChanges":[]`)) {
		err = fmt.Errorf("a push of refused changes had some accepted: %.300s", answer)
	}
	return err
}

// errThrottled: the push was answered 429 (refusal_rate).
var errThrottled = errors.New("push answered 429")

// post sends a push body and returns the answer of a 201.
func (s *caddyServer) post(user string, body []byte) ([]byte, error) {
	req, _ := http.NewRequest("POST", s.base+"/sync/push", bytes.NewReader(body))
	req.SetBasicAuth(user, "pw")
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusTooManyRequests {
		return nil, errThrottled
	}
	if resp.StatusCode != 201 {
		return nil, fmt.Errorf("push answered %d: %.300s", resp.StatusCode, answer)
	}
	return answer, nil
}

// pullBytes pulls and returns the size of the answer as sent.
func (s *caddyServer) pullBytes(user, lastPull, encoding string) (int64, error) {
	url := s.base + "/sync/pull/"
	if lastPull != "" {
		url += "?lastPull=" + lastPull
	}
	req, _ := http.NewRequest("GET", url, nil)
	req.SetBasicAuth(user, "pw")
	if encoding != "" {
		req.Header.Set("Accept-Encoding", encoding)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("pull answered %d", resp.StatusCode)
	}
	return n, err
}

// measurePullMemory samples Caddy's heap (go_memstats_heap_inuse_bytes on
// the admin /metrics) and resident set while one big pull streams, and
// returns their rises over the idle baseline, in MB.
func (s *caddyServer) measurePullMemory(user string) (heapMB, rssMB float64, err error) {
	heap := func() float64 {
		resp, err := s.client.Get(s.admin + "/metrics")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_inuse_bytes "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return 0
	}
	rss := func() float64 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				f, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
				return f * 1024
			}
		}
		return 0
	}
	baseHeap, baseRSS := heap(), rss()
	var peakHeap, peakRSS float64
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if h := heap(); h > peakHeap {
				peakHeap = h
			}
			if r := rss(); r > peakRSS {
				peakRSS = r
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	_, err = s.pullBytes(user, "1970-01-01T00:00:00.000Z", "")
	close(done)
	return (peakHeap - baseHeap) / 1e6, (peakRSS - baseRSS) / 1e6, err
}

// cpuProfile saves a CPU profile of Caddy, taken through its admin API.
func (s *caddyServer) cpuProfile(file string, seconds int) error {
	resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", s.admin, seconds))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}
