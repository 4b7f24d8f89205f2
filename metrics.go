package hypersync

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hypersync/hypersync/shapes"
)

// The collectors are created once and registered into every config's
// registry, so that counters survive reloads and two hypersync handlers in
// one config share them. No metric is labelled by user.
var metrics struct {
	once        sync.Once
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	changes     *prometheus.CounterVec
	rowsPulled  *prometheus.CounterVec
	dbDuration  *prometheus.HistogramVec
	lockWait    prometheus.Histogram
	pools       *poolCollector
	listeners   *listenerCollector
	streams     prometheus.Gauge
	pokes       prometheus.Counter
	pokeLatency prometheus.Histogram
	notifies    prometheus.Counter
	reconnects  prometheus.Counter
	pullTargets *prometheus.CounterVec
	fallbacks   *prometheus.CounterVec
	standbys    *standbyCollector
	collectors  []prometheus.Collector
	initialized bool
}

func initMetrics() {
	metrics.once.Do(func() {
		const ns = "hypersync"
		metrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_total",
			Help: "Sync requests by operation (push, pull) and HTTP status."}, []string{"op", "status"})
		metrics.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "request_duration_seconds",
			Help: "Time to answer a sync request, by operation.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"op"})
		metrics.changes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "changes_total",
			Help: "Pushed changes by shape and outcome: applied, stale, superseded, or the rejection code."}, []string{"shape", "outcome"})
		metrics.rowsPulled = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rows_pulled_total",
			Help: "Rows sent by pulls, by shape."}, []string{"shape"})
		metrics.dbDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "database_duration_seconds",
			Help: "Time a request spent in the database, by operation.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"op"})
		metrics.lockWait = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "lock_wait_seconds",
			Help:    "Time a push waited for its user's sync stamp (the per-user lock), including the round trip that takes it.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)})
		metrics.pools = &poolCollector{
			conns:  prometheus.NewDesc(ns+"_pool_connections", "Database pool connections by state (acquired, idle, total).", []string{"database", "state"}, nil),
			waits:  prometheus.NewDesc(ns+"_pool_acquire_waits_total", "Acquires that had to wait for a free connection.", []string{"database"}, nil),
			waited: prometheus.NewDesc(ns+"_pool_acquire_wait_seconds_total", "Time acquires spent waiting for a free connection.", []string{"database"}, nil),
		}
		metrics.listeners = &listenerCollector{up: prometheus.NewDesc(ns+"_live_listener_up",
			"1 when pokes from other instances reach this one: the LISTEN session is up and hears what is sent through the database; else 0.", []string{"database"}, nil)}
		metrics.streams = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "live_streams",
			Help: "Open live event streams."})
		metrics.pokes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "live_pokes_total",
			Help: "Pokes written to event streams."})
		metrics.pokeLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "live_poke_latency_seconds",
			Help:    "Time from a commit to its poke written to a stream.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)})
		metrics.notifies = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "live_notify_batches_total",
			Help: "pg_notify batches sent to other instances."})
		metrics.reconnects = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "live_listener_reconnects_total",
			Help: "Times the LISTEN connection was made again."})
		metrics.pullTargets = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "pulls_by_target_total",
			Help: "Pulls answered, by where they were read: primary, or a standby's host:port."}, []string{"target"})
		metrics.fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "pull_fallbacks_total",
			Help: "Pulls a standby was to answer that the primary answered, by reason: down (no standby up, or it failed), lag (it stayed behind the user's cursor for read_max_lag), conflict (it cancelled the pull for a conflict with recovery)."},
			[]string{"reason"})
		metrics.standbys = &standbyCollector{
			up: prometheus.NewDesc(ns+"_standby_up", "1 when pulls go to the standby (read_database): it answers, in recovery, of this primary; else 0.",
				[]string{"database", "standby"}, nil),
			lag: prometheus.NewDesc(ns+"_standby_lag_seconds", "How far the standby's replay is behind, as the instance last measured it (0 when it has replayed all it received).",
				[]string{"database", "standby"}, nil),
		}
		metrics.collectors = []prometheus.Collector{metrics.requests, metrics.duration, metrics.changes, metrics.rowsPulled,
			metrics.dbDuration, metrics.lockWait, metrics.pools, metrics.listeners, metrics.streams, metrics.pokes, metrics.pokeLatency,
			metrics.notifies, metrics.reconnects, metrics.pullTargets, metrics.fallbacks, metrics.standbys}
		metrics.initialized = true
	})
}

// registerMetrics registers the collectors into a config's registry.
func registerMetrics(reg *prometheus.Registry) error {
	initMetrics()
	for _, c := range metrics.collectors {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// promObserver records what the handler reports.
type promObserver struct{}

func (promObserver) Request(op string, status int, d time.Duration) {
	metrics.requests.WithLabelValues(op, strconv.Itoa(status)).Inc()
	metrics.duration.WithLabelValues(op).Observe(d.Seconds())
}

func (promObserver) Changes(shape, outcome string, n int) {
	metrics.changes.WithLabelValues(shape, outcome).Add(float64(n))
}

func (promObserver) RowsPulled(shape string, n int) {
	metrics.rowsPulled.WithLabelValues(shape).Add(float64(n))
}

func (promObserver) DatabaseTime(op string, d time.Duration) {
	metrics.dbDuration.WithLabelValues(op).Observe(d.Seconds())
}

func observeLockWait(d time.Duration) {
	if metrics.initialized {
		metrics.lockWait.Observe(d.Seconds())
	}
}

// observePullTarget records where a pull ran, and why not on a standby.
func observePullTarget(target, fallback string) {
	if !metrics.initialized {
		return
	}
	metrics.pullTargets.WithLabelValues(target).Inc()
	if fallback != "" {
		metrics.fallbacks.WithLabelValues(fallback).Inc()
	}
}

// liveObserver records what the live broker reports.
type liveObserver struct{}

func (liveObserver) Streams(n int) {
	if metrics.initialized {
		metrics.streams.Set(float64(n))
	}
}

func (liveObserver) PokeSent(latency time.Duration) {
	if metrics.initialized {
		metrics.pokes.Inc()
		metrics.pokeLatency.Observe(latency.Seconds())
	}
}

func (liveObserver) NotifyBatch() {
	if metrics.initialized {
		metrics.notifies.Inc()
	}
}

func (liveObserver) ListenerReconnect() {
	if metrics.initialized {
		metrics.reconnects.Inc()
	}
}

// poolCollector reports the statistics of every open PostgreSQL pool at
// scrape time.
type poolCollector struct {
	conns, waits, waited *prometheus.Desc
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.conns
	ch <- c.waits
	ch <- c.waited
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	// one database may have two pools (blocks with and without standbys):
	// one series each, their sum
	all := map[string]shapes.PoolStats{}
	databases.Range(func(_, v any) bool {
		db, ok := v.(*shapes.Database)
		if !ok {
			return true
		}
		if st, ok := db.Stats(); ok {
			sum := all[db.String()]
			sum.Acquired += st.Acquired
			sum.Idle += st.Idle
			sum.Total += st.Total
			sum.EmptyAcquires += st.EmptyAcquires
			sum.EmptyAcquireWait += st.EmptyAcquireWait
			all[db.String()] = sum
		}
		return true
	})
	for name, st := range all {
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(st.Acquired), name, "acquired")
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(st.Idle), name, "idle")
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(st.Total), name, "total")
		ch <- prometheus.MustNewConstMetric(c.waits, prometheus.CounterValue, float64(st.EmptyAcquires), name)
		ch <- prometheus.MustNewConstMetric(c.waited, prometheus.CounterValue, st.EmptyAcquireWait.Seconds(), name)
	}
}

// listenerCollector reports, at scrape time, whether each live listener
// works.
type listenerCollector struct {
	up *prometheus.Desc
}

func (c *listenerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.up }

func (c *listenerCollector) Collect(ch chan<- prometheus.Metric) {
	for name, err := range listeners() {
		up := 0.0
		if err == nil {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, name)
	}
}

// standbyCollector reports, at scrape time, each standby's state.
type standbyCollector struct {
	up, lag *prometheus.Desc
}

func (c *standbyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.lag
}

func (c *standbyCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	databases.Range(func(_, v any) bool {
		db, ok := v.(*shapes.Database)
		if !ok {
			return true
		}
		for _, r := range db.Replicas() {
			if seen[db.String()+"\x00"+r.Target] {
				continue // the same standby of a second pool (another read_max_lag)
			}
			seen[db.String()+"\x00"+r.Target] = true
			up := 0.0
			if r.Up {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, db.String(), r.Target)
			ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, r.Lag, db.String(), r.Target)
		}
		return true
	})
}
