package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hypersync/hypersync/internal/pgtest"
)

var (
	withStandby   = flag.Bool("standby", true, "measure pulls from a hot standby (read_database)")
	onlyStandby   = flag.Bool("only-standby", false, "measure the standby rows alone")
	standbyUsers  = flag.Int("standby-users", 40, "users in the standby measurement, each with -standby-rows rows")
	standbyRows   = flag.Int("standby-rows", 200, "rows of each user in the standby measurement")
	standbyPeriod = flag.Duration("standby-period", 4*time.Second, "how long each standby run pulls")
)

// runStandby measures pulls with a hot standby (read_database) against
// pulls on the primary alone, under the same load on two instances each:
// 8 devices pulling at once (4 per instance), each pulling a random user's
// rows from the epoch again and again, while one device pushes a change
// for a random user every 20 ms, so that pulls must wait for the standby
// to hold what the primary has (the floor). It reports pulls per second
// with and without the standby, and the share of pull statements the
// primary ran with the standby on (from the instances' metrics). Both
// pairs run on one machine, beside the primary and the standby: the
// figure is how the work moves, not what a second machine adds.
func runStandby(ctx context.Context, bin string, out *outcome) error {
	c, pool, err := startDatabase(ctx)
	if err != nil {
		return err
	}
	defer c.Destroy()
	defer pool.Close()
	var users []string
	for i := 0; i < *standbyUsers; i++ {
		users = append(users, fmt.Sprintf("s%d", i))
	}
	sb, err := c.StartStandby(pgtest.StandbyOptions{})
	if err != nil {
		return err
	}
	defer sb.Remove()
	if err := sb.CatchUp(c.DSN); err != nil {
		return err
	}
	accounts := append([]string{"u0"}, users...) // u0: startCaddyWith's probe
	var primaryOnly, withStandby [2]*caddyServer
	for i := range 2 {
		if primaryOnly[i], err = startCaddyWith(bin, c.DSN, accounts, ""); err != nil {
			return err
		}
		defer primaryOnly[i].stop()
		if withStandby[i], err = startCaddyWith(bin, c.DSN, accounts, "\t\t\tread_database "+sb.DSN(c.DSN)+"\n"); err != nil {
			return err
		}
		defer withStandby[i].stop()
	}
	for _, u := range users { // the instances made hypersync's tables
		if err := seedRows(ctx, pool, u, u+"-", *standbyRows); err != nil {
			return err
		}
	}
	if err := sb.CatchUp(c.DSN); err != nil {
		return err
	}

	var res result
	var primaryPulls, allPulls float64
	fallbacks := map[string]float64{}
	for r := 0; r < *runs; r++ {
		standby := func() (float64, error) {
			before, err := pullTargets(withStandby[:])
			if err != nil {
				return 0, err
			}
			rate, err := pullLoad(withStandby[:], users)
			if err != nil {
				return 0, err
			}
			after, err := pullTargets(withStandby[:])
			if err != nil {
				return 0, err
			}
			for k, v := range after {
				d := v - before[k]
				switch {
				case k == "primary":
					primaryPulls += d
					allPulls += d
				case strings.HasPrefix(k, "fallback:"):
					fallbacks[strings.TrimPrefix(k, "fallback:")] += d
				default:
					allPulls += d
				}
			}
			return rate, nil
		}
		primary := func() (float64, error) { return pullLoad(primaryOnly[:], users) }
		if err := res.pair(r, standby, primary); err != nil {
			return err
		}
	}
	ratio := median(res.ratios)
	out.shared = append(out.shared, sharedRow{
		name:  fmt.Sprintf("pulls of %d rows from two instances, 8 at once, one push every 20 ms: with a hot standby / on the primary alone", *standbyRows),
		value: fmt.Sprintf("%.0f pulls/s", median(res.caddy)), reference: fmt.Sprintf("%.0f pulls/s", median(res.direct)),
		ratio: fmt.Sprintf("%.2f×", ratio), target: "report", met: true, each: floats(res.ratios)})
	share := 0.0
	if allPulls > 0 {
		share = 100 * primaryPulls / allPulls
	}
	var why []string
	for k, v := range fallbacks {
		why = append(why, fmt.Sprintf("%s %.0f", k, v))
	}
	out.shared = append(out.shared, sharedRow{
		name:  "the primary's share of pull statements with the standby on (fallbacks by reason)",
		value: fmt.Sprintf("%.2f %% of %.0f", share, allPulls), reference: strings.Join(why, ", "),
		target: "< 5 %", met: share < 5})
	return nil
}

// pullLoad runs the load on the instances for -standby-period and returns
// the pulls answered per second.
func pullLoad(servers []*caddyServer, users []string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), *standbyPeriod)
	defer cancel()
	var pulls atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for d := 0; d < 8; d++ {
		wg.Add(1)
		go func(d int) {
			defer wg.Done()
			srv := servers[d%len(servers)]
			rng := rand.New(rand.NewSource(int64(d)))
			for ctx.Err() == nil {
				if _, err := srv.pullBytes(users[rng.Intn(len(users))], "1970-01-01T00:00:00.000Z", ""); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				pulls.Add(1)
			}
		}(d)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(99))
		for i := 0; ctx.Err() == nil; i++ {
			u := users[rng.Intn(len(users))]
			if err := servers[i%len(servers)].push(u, []change{newChange(u, fmt.Sprintf("%s-%d", u, rng.Intn(*standbyRows)))}); err != nil {
				if ctx.Err() == nil {
					errs <- err
				}
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(pulls.Load()) / time.Since(start).Seconds(), nil
}

// pullTargets sums the instances' hypersync_pulls_by_target_total by
// target ("primary", a standby's host:port) and their
// hypersync_pull_fallbacks_total by reason ("fallback:<reason>").
func pullTargets(servers []*caddyServer) (map[string]float64, error) {
	sum := map[string]float64{}
	for _, s := range servers {
		resp, err := http.Get(s.admin + "/metrics")
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			var key string
			switch {
			case strings.HasPrefix(line, `hypersync_pulls_by_target_total{target="`):
				key = strings.TrimPrefix(line, `hypersync_pulls_by_target_total{target="`)
			case strings.HasPrefix(line, `hypersync_pull_fallbacks_total{reason="`):
				key = "fallback:" + strings.TrimPrefix(line, `hypersync_pull_fallbacks_total{reason="`)
			default:
				continue
			}
			label, value, ok := strings.Cut(key, `"} `)
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(value, 64)
			if err == nil {
				sum[label] += v
			}
		}
		resp.Body.Close()
	}
	return sum, nil
}
