package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// liveExtra lets the bench's idle streams all belong to one user.
const liveExtra = "\t\t\tmax_streams_per_user 100000\n\t\t\tmax_streams 100000\n"

// runLive measures live sync:
//   - poke latency, from a push's 201 on one instance to the poke on a
//     stream of another device of the user on the other instance, with
//     1,000 idle streams open there (PostgreSQL), and on one SQLite instance;
//   - Caddy's RSS with -streams idle streams open, against none;
//   - push throughput with live on and 1,000 streams open, against a
//     Caddy with live off, alternated;
//   - the pulls that a restart of an instance with 1,000 streams causes,
//     as live.js reconnected before and as it does now (-only-reconnect
//     with -only-live: this row alone).
func runLive(ctx context.Context, bin string, out *outcome) error {
	raiseFileLimit()
	c, pool, err := startDatabase(ctx)
	if err != nil {
		return err
	}
	defer c.Destroy()
	pool.Close()
	if *onlyReconnect {
		return runReconnect(bin, c.DSN, out)
	}
	users := []string{"u0", "idle"}
	a, err := startCaddyWith(bin, c.DSN, users, liveExtra)
	if err != nil {
		return err
	}
	defer a.stop()
	b, err := startCaddyWith(bin, c.DSN, users, liveExtra)
	if err != nil {
		return err
	}
	defer b.stop()

	idle, err := b.openStreams("idle", 1000)
	if err != nil {
		return err
	}
	p50, p99, err := pokeLatency(a, b, 200)
	closeAll(idle)
	if err != nil {
		return err
	}
	out.shared = append(out.shared, sharedRow{name: "poke latency across two instances on PostgreSQL, 1,000 idle streams, p50 / p99",
		value: fmt.Sprintf("%.1f / %.1f ms", p50, p99), target: "< 50 / < 250 ms", met: p50 < 50 && p99 < 250})

	// push throughput: live on with 1,000 streams, against live off
	off, err := startCaddyWith(bin, c.DSN, users, "\t\t\tlive off\n")
	if err != nil {
		return err
	}
	defer off.stop()
	idle, err = a.openStreams("idle", 1000)
	if err != nil {
		return err
	}
	var push result
	for r := 0; r < *runs; r++ {
		on := func() (float64, error) { return measurePush(1, a.preparePush, fmt.Sprintf("lon%d-", r)) }
		offRate := func() (float64, error) { return measurePush(1, off.preparePush, fmt.Sprintf("loff%d-", r)) }
		if err := push.pair(r, on, offRate); err != nil {
			closeAll(idle)
			return err
		}
	}
	closeAll(idle)
	ratio := median(push.ratios)
	out.shared = append(out.shared, sharedRow{name: "push with live on and 1,000 streams open, against live off",
		value: fmt.Sprintf("%.0f changes/s", median(push.caddy)), reference: fmt.Sprintf("%.0f changes/s off", median(push.direct)),
		ratio: fmt.Sprintf("%.2f×", ratio), target: "≥ 0.9×", met: ratio >= 0.9, each: floats(push.ratios)})

	// memory per idle stream
	before, err := rssKB(b.cmd.Process.Pid)
	if err != nil {
		return err
	}
	many, err := b.openStreams("idle", *liveStreams)
	if err != nil {
		return err
	}
	time.Sleep(time.Second)
	after, err := rssKB(b.cmd.Process.Pid)
	closeAll(many)
	if err != nil {
		return err
	}
	per := float64(after-before) / float64(*liveStreams)
	out.shared = append(out.shared, sharedRow{name: fmt.Sprintf("Caddy's RSS per idle stream, %d streams (HTTP/1.1)", *liveStreams),
		value: fmt.Sprintf("%.1f KB", per), reference: fmt.Sprintf("%d → %d MB", before/1024, after/1024), target: "≤ 40 KB", met: per <= 40})

	if err := runReconnect(bin, c.DSN, out); err != nil {
		return err
	}

	// SQLite: one instance
	dir, err := os.MkdirTemp("", "hypersync-bench-live-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := createSQLite(dir + "/live.db"); err != nil {
		return err
	}
	lite, err := startCaddyWith(bin, "sqlite:"+dir+"/live.db", users, liveExtra)
	if err != nil {
		return err
	}
	defer lite.stop()
	p50, _, err = pokeLatency(lite, lite, 200)
	if err != nil {
		return err
	}
	out.shared = append(out.shared, sharedRow{name: "poke latency on one SQLite instance, p50",
		value: fmt.Sprintf("%.1f ms", p50), target: "< 10 ms", met: p50 < 10})
	return nil
}

// raiseFileLimit lifts the soft limit on open files to the hard one: the
// bench holds thousands of streams, and Caddy, started from here, inherits
// the limit. (In a shell: ulimit -n 20000.)
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

type openStream struct {
	resp  *http.Response
	lines chan string
}

func closeAll(ss []*openStream) {
	for _, s := range ss {
		s.resp.Body.Close()
	}
}

// openStreams opens n streams of user, each on its own connection.
func (s *caddyServer) openStreams(user string, n int) ([]*openStream, error) {
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: n, DisableCompression: true}}
	var out []*openStream
	for i := 0; i < n; i++ {
		st, err := s.stream(client, user, false)
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("stream %d: %w", i, err)
		}
		out = append(out, st)
	}
	return out, nil
}

// stream opens one stream; with read, its lines are read into a channel.
func (s *caddyServer) stream(client *http.Client, user string, read bool) (*openStream, error) {
	req, _ := http.NewRequest("GET", s.base+"/sync/events", nil)
	req.SetBasicAuth(user, "pw")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return nil, fmt.Errorf("events answered %d", resp.StatusCode)
	}
	st := &openStream{resp: resp}
	if read {
		st.lines = make(chan string, 64)
		go func() {
			defer close(st.lines)
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				st.lines <- sc.Text()
			}
		}()
	}
	return st, nil
}

// pokeLatency pushes n single changes as u0 through a, one at a time, and
// times each from its 201 to the poke on a stream of u0 on b. It returns
// the p50 and p99 in milliseconds.
func pokeLatency(a, b *caddyServer, n int) (p50, p99 float64, err error) {
	listener, err := b.stream(&http.Client{Transport: &http.Transport{DisableCompression: true}}, "u0", true)
	if err != nil {
		return 0, 0, err
	}
	defer listener.resp.Body.Close()
	time.Sleep(300 * time.Millisecond)
	var lat []float64
	for i := 0; i < n; i++ {
		send, err := a.preparePush("u0", []change{newChange("u0", "live-"+strconv.Itoa(i)+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))})
		if err != nil {
			return 0, 0, err
		}
		// drain what came before
		for len(listener.lines) > 0 {
			<-listener.lines
		}
		if err := send(); err != nil {
			return 0, 0, err
		}
		start := time.Now()
		deadline := time.After(5 * time.Second)
	wait:
		for {
			select {
			case l, ok := <-listener.lines:
				if !ok {
					return 0, 0, fmt.Errorf("the listening stream ended")
				}
				if strings.HasPrefix(l, "event: poke") {
					break wait
				}
			case <-deadline:
				return 0, 0, fmt.Errorf("push %d: no poke within 5 s", i)
			}
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
		time.Sleep(5 * time.Millisecond)
	}
	sort.Float64s(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// rssKB reads a process's resident set size.
func rssKB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// onlyReconnect limits -only-live to the reconnect row.
var onlyReconnect = flag.Bool("only-reconnect", false, "with -only-live: measure the reconnect row alone")

// The reconnect row: one instance holding reconnectDevices streams of
// reconnectUsers users is restarted, and the pulls its devices make in the
// next reconnectWindow are counted. While it is down, reconnectMissed
// users write through another instance: their devices have something to
// pull, the others nothing.
const (
	reconnectDevices = 1000
	reconnectUsers   = 100
	reconnectMissed  = 10
	reconnectWindow  = 10 * time.Second
)

// runReconnect starts two instances on dsn for the reconnect row.
func runReconnect(bin, dsn string, out *outcome) error {
	users := make([]string, reconnectUsers)
	for i := range users {
		users[i] = fmt.Sprintf("u%d", i)
	}
	a, err := startCaddyWith(bin, dsn, users, liveExtra)
	if err != nil {
		return err
	}
	defer a.stop()
	other, err := startCaddyWith(bin, dsn, users, liveExtra)
	if err != nil {
		return err
	}
	defer other.stop()
	return reconnectRow(bin, a, other, out)
}

// reconnectRow restarts a with reconnectDevices simulated devices on it,
// once as live.js did before (reopen after a fixed 2 s, sync on every
// reopen) and once as it does now (reopen after the stream's own retry:,
// send Last-Event-ID, pull only when poked), and reports the pulls.
func reconnectRow(bin string, a, other *caddyServer, out *outcome) error {
	for _, mode := range []reconnectMode{reconnectBefore, reconnectAfter} {
		r, err := a.measureReconnect(bin, other, mode)
		if err != nil {
			return fmt.Errorf("reconnect (%s): %w", mode, err)
		}
		name := fmt.Sprintf("pulls in the %d s after restarting an instance with %d streams (%d of %d users wrote while it was down), %s",
			int(reconnectWindow.Seconds()), reconnectDevices, reconnectMissed, reconnectUsers, mode)
		target, met := "", true
		if mode == reconnectAfter {
			// only the devices of the users who wrote have something to pull
			want := reconnectDevices * reconnectMissed / reconnectUsers
			target, met = fmt.Sprintf("≤ %d", want+want/10), r.pulls <= want+want/10 && r.pulls >= want
		}
		out.shared = append(out.shared, sharedRow{name: name, value: fmt.Sprintf("%d pulls", r.pulls),
			reference: fmt.Sprintf("%d reopened, the last %.1f s after the stop; busiest 100 ms: %d reopens, %d pulls", r.reopened, r.lastOpen.Seconds(), r.peakOpens, r.peakPulls),
			target:    target, met: met})
	}
	return nil
}

type reconnectMode string

const (
	reconnectBefore reconnectMode = "before: reopen after 2 s, sync on every reopen"
	reconnectAfter  reconnectMode = "now: reopen after the stream's retry: (1-5 s), Last-Event-ID, pull when poked"
)

type reconnectResult struct {
	pulls, reopened      int
	peakOpens, peakPulls int
	lastOpen             time.Duration // from the stop to the last stream back
}

// simDevice is one device as live.js drives it, reduced to what matters on
// a reconnect: its stream, the id it last saw, the delay it was told, and
// the pulls it makes.
type simDevice struct {
	user     string
	lastID   string
	retry    time.Duration
	lastPull string
}

// measureReconnect runs the devices against s, restarts s (other takes the
// writes while it is down), and counts what happens from the stop on.
func (s *caddyServer) measureReconnect(bin string, other *caddyServer, mode reconnectMode) (reconnectResult, error) {
	// every user has a cursor, so every stream starts with an id
	for u := 0; u < reconnectUsers; u++ {
		user := fmt.Sprintf("u%d", u)
		if err := other.push(user, []change{newChange(user, fmt.Sprintf("rc-%s-%d", user, time.Now().UnixNano()))}); err != nil {
			return reconnectResult{}, err
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * reconnectDevices, DisableCompression: true}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu     sync.Mutex
		pulls  []time.Time
		opens  []time.Time
		ready  sync.WaitGroup
		ended  sync.WaitGroup
		failed atomic.Value
	)
	pull := func(d *simDevice) {
		url := s.base + "/sync/pull/"
		if d.lastPull != "" {
			url += "?lastPull=" + d.lastPull
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		req.SetBasicAuth(d.user, "pw")
		mu.Lock()
		pulls = append(pulls, time.Now())
		mu.Unlock()
		resp, err := client.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		var body struct {
			SyncedAt string `json:"syncedAt"`
		}
		if json.NewDecoder(resp.Body).Decode(&body) == nil && body.SyncedAt != "" {
			d.lastPull = body.SyncedAt
		}
	}
	ready.Add(reconnectDevices)
	ended.Add(reconnectDevices)
	for i := 0; i < reconnectDevices; i++ {
		d := &simDevice{user: fmt.Sprintf("u%d", i%reconnectUsers), retry: 2 * time.Second}
		go func() {
			defer ended.Done()
			pull(d) // the page's first sync
			first := true
			for attempt := 0; attempt < 1000 && ctx.Err() == nil; attempt++ {
				req, _ := http.NewRequestWithContext(ctx, "GET", s.base+"/sync/events", nil)
				req.SetBasicAuth(d.user, "pw")
				if mode == reconnectAfter && d.lastID != "" {
					req.Header.Set("Last-Event-ID", d.lastID)
				}
				resp, err := client.Do(req)
				if err == nil && resp.StatusCode == 200 {
					if first {
						ready.Done()
					} else {
						mu.Lock()
						opens = append(opens, time.Now())
						mu.Unlock()
						if mode == reconnectBefore {
							pull(d) // the old live.js synced on every reopen
						}
					}
					first = false
					d.read(resp, func() { pull(d) })
				} else if err == nil {
					resp.Body.Close()
				}
				// EventSource waits the stream's retry: (the old server
				// said 2 s to every stream), then tries again
				delay := d.retry
				if mode == reconnectBefore {
					delay = 2 * time.Second
				}
				select {
				case <-ctx.Done():
				case <-time.After(delay):
				}
			}
			if first {
				failed.Store(fmt.Errorf("a device of %s never opened its stream", d.user))
				ready.Done()
			}
		}()
	}
	ready.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return reconnectResult{}, err
	}
	time.Sleep(500 * time.Millisecond) // the first syncs' pulls are done
	down := time.Now()
	err := s.restart(bin, func() error {
		for u := 0; u < reconnectMissed; u++ {
			user := fmt.Sprintf("u%d", u)
			if err := other.push(user, []change{newChange(user, fmt.Sprintf("rc-missed-%s-%d", user, time.Now().UnixNano()))}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return reconnectResult{}, err
	}
	time.Sleep(time.Until(down.Add(reconnectWindow)))
	mu.Lock()
	var res reconnectResult
	pullsIn := func(from, to time.Time) int { return countIn(pulls, from, to) }
	res.pulls = pullsIn(down, down.Add(reconnectWindow))
	res.reopened = countIn(opens, down, down.Add(reconnectWindow))
	for _, t := range opens {
		res.lastOpen = max(res.lastOpen, t.Sub(down))
	}
	for t := down; t.Before(down.Add(reconnectWindow)); t = t.Add(10 * time.Millisecond) {
		res.peakOpens = max(res.peakOpens, countIn(opens, t, t.Add(100*time.Millisecond)))
		res.peakPulls = max(res.peakPulls, pullsIn(t, t.Add(100*time.Millisecond)))
	}
	mu.Unlock()
	cancel()
	ended.Wait()
	return res, nil
}

func countIn(ts []time.Time, from, to time.Time) int {
	n := 0
	for _, t := range ts {
		if !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return n
}

// read reads a stream until it ends, noting its retry: and ids, and calls
// poked for each poke (live.js syncs; the pokes a sync takes coalesce, as
// they do behind its guard).
func (d *simDevice) read(resp *http.Response, poked func()) {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if event == "poke" {
				poked()
			}
			event = ""
		case strings.HasPrefix(line, "retry: "):
			if ms, err := strconv.Atoi(strings.TrimPrefix(line, "retry: ")); err == nil {
				d.retry = time.Duration(ms) * time.Millisecond
			}
		case strings.HasPrefix(line, "id: "):
			d.lastID = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		}
	}
}

// restart stops Caddy as a signal does, runs during while it is down, and
// starts it again with the same Caddyfile on the same port.
func (s *caddyServer) restart(bin string, during func() error) error {
	_ = s.cmd.Process.Signal(os.Interrupt)
	_ = s.cmd.Wait()
	if err := during(); err != nil {
		return err
	}
	cmd := exec.Command(bin, "run", "--config", filepath.Join(s.dir, "Caddyfile"))
	cmd.Dir = s.dir
	logf, _ := os.OpenFile(filepath.Join(s.dir, "caddy.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	for i := 0; ; i++ {
		if _, err := s.pullBytes("u0", "", ""); err == nil {
			return nil
		}
		if i > 300 {
			return fmt.Errorf("caddy did not come back after a restart")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
