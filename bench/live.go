package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
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
//     Caddy with live off, alternated.
func runLive(ctx context.Context, bin string, out *outcome) error {
	raiseFileLimit()
	c, pool, err := startDatabase(ctx)
	if err != nil {
		return err
	}
	defer c.Destroy()
	pool.Close()
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
