package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/hypersync/hypersync/shapes"
)

// Pulls from hot standbys (read_database).
//
// Why a pull on a standby is complete. A pull is one statement, hence one
// snapshot, that reads the user's cursor S and the rows stamped in
// (lastPull, S] (pull.go). On the primary, write.go's argument makes that
// answer whole: every write that stamps a row of the user at or below S
// takes the user's cursor lock (a push's stamp statement, Tx.Stamp for the
// members of a scope, the stamping trigger of an outside writer), and the
// lock is held to the commit; the stamp that wrote S was taken under that
// lock after every smaller stamp's writer had released it, that is, had
// committed. So every such writer's commit record comes before the commit
// record of S's writer in the WAL: a writer that waited on a lock commits
// after the one that held it. A standby replays the WAL in order and makes
// a transaction visible when it replays its commit record (a standby's
// snapshots are taken from the replayed state: whatever a snapshot sees
// committed, it sees every transaction committed before it in the WAL).
// A snapshot on the standby that holds S therefore holds every row
// stamped at or below S for the user, and the same for every member of a
// scope, whose cursors the fan-out stamps under the same locks. Writers
// on any number of instances are ordered by the same locks, on the one
// primary: the WAL is one sequence.
//
// Read your writes. A standby that lags answers completely, but as of an
// older S. A device that pushed, got its 201, and pulls must get its push,
// and so must the devices of every member it stamped. So before a pull
// goes to a standby, one statement on the primary reads the user's cursor
// there (two index probes: the cursor, and the erased users), need; the
// standby's statement reads nothing unless its cursor is at or after
// need (pull.go), and the pull waits for it, a few milliseconds at a time,
// up to read_max_lag, before it reads the primary. A push that answered
// 201 committed before the pull began, so need holds its stamp. It also
// keeps a cursor from the primary (a pull answered there, on a fallback)
// from looking like one from the future on a standby behind it, which
// would send the device everything again.
//
// Faults. A standby that fails (down, unreachable, not in recovery any
// more, of another primary) is left out until the monitor finds it well
// again; a pull it failed is read on the primary. A pull the standby
// cancels for a conflict with recovery (SQLSTATE 40001) is read on the
// primary once: the rows it emitted are voided by a Restart row.
//
// Pushes, stamps, erase, inspect's locks and LISTEN stay on the primary: a
// standby refuses writes, txid_current() and LISTEN.

// replica is one standby.
type replica struct {
	target string // host:port, for metrics and logs
	pool   *pgxpool.Pool

	mu     sync.Mutex
	up     bool
	behind bool // more than read_max_lag behind the primary: skipped
	lag    float64
	why    error // why it is down
	seen   bool  // the monitor has probed it
}

// replicaSet is a database's standbys.
type replicaSet struct {
	list    []*replica
	next    atomic.Uint64
	maxLag  time.Duration
	observe func(target, fallback string)
	logger  *zap.Logger
	stop    context.CancelFunc
	done    chan struct{}

	idMu      sync.Mutex
	primaryID string // the primary's system identifier, once read

	// the primary's WAL position at each probe, newest last, for the
	// standbys' lag (only the monitor touches it)
	positions []walPosition
}

// walPosition is where the primary's WAL was at a time.
type walPosition struct {
	at  time.Time
	lsn uint64
}

// monitorEvery is how often each standby is probed: whether it is up, a
// standby of this primary, and how far it lags.
const monitorEvery = time.Second

// standbyConnectTimeout bounds a connection to a standby, so that one
// that is unreachable costs a pull little before it reads the primary.
const standbyConnectTimeout = 2 * time.Second

func openReplicas(p *driver, opts shapes.Options) (*replicaSet, error) {
	rs := &replicaSet{maxLag: opts.ReadMaxLag, observe: opts.PullTarget, logger: opts.Logger, done: make(chan struct{})}
	if rs.maxLag <= 0 {
		rs.maxLag = shapes.DefaultReadMaxLag
	}
	if rs.observe == nil {
		rs.observe = func(string, string) {}
	}
	for _, dsn := range opts.ReadReplicas {
		cfg, err := poolConfig(dsn, opts)
		if err != nil {
			rs.close()
			return nil, fmt.Errorf("read_database: %w", err)
		}
		if !strings.Contains(dsn, "connect_timeout") {
			cfg.ConnConfig.ConnectTimeout = standbyConnectTimeout
		}
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			rs.close()
			return nil, fmt.Errorf("read_database: creating the PostgreSQL pool: %w", err)
		}
		target := net.JoinHostPort(cfg.ConnConfig.Host, fmt.Sprint(cfg.ConnConfig.Port))
		rs.list = append(rs.list, &replica{target: target, pool: pool, up: true})
	}
	ctx, cancel := context.WithCancel(context.Background())
	rs.stop = cancel
	go rs.monitor(ctx, p)
	return rs, nil
}

func (rs *replicaSet) close() {
	if rs.stop != nil {
		rs.stop()
		<-rs.done
	}
	for _, r := range rs.list {
		r.pool.Close()
	}
}

// pick returns the next standby that is up and not behind, round robin;
// nil and why ("down", or "lag" when one is up but behind) when none is.
func (rs *replicaSet) pick() (*replica, string) {
	n := uint64(len(rs.list))
	start := rs.next.Add(1)
	why := "down"
	for i := uint64(0); i < n; i++ {
		r := rs.list[(start+i)%n]
		r.mu.Lock()
		up, behind := r.up, r.behind
		r.mu.Unlock()
		if up && !behind {
			return r, ""
		}
		if up {
			why = "lag"
		}
	}
	return nil, why
}

// pull runs q on a standby that is up, as the comment at the top says,
// and on the primary when none can answer it.
func (rs *replicaSet) pull(ctx context.Context, p *driver, q shapes.PullQuery, emit func(shapes.PulledRow) error) (shapes.PullResult, error) {
	need, err := p.needed(ctx, q)
	if err != nil {
		return shapes.PullResult{}, err
	}
	if p.noStandbyFloor {
		need = time.Time{}
	}
	r, why := rs.pick()
	if r == nil {
		return rs.fallback(ctx, p, q, why, false, emit)
	}
	deadline := time.Now().Add(rs.maxLag)
	wait := 2 * time.Millisecond
	for {
		res, emitted, err := p.pullOn(ctx, r.pool, true, q, need, emit)
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			rs.observe(r.target, "")
			return res, nil
		case ctx.Err() != nil:
			return shapes.PullResult{}, err
		case errors.Is(err, shapes.ErrErased) && emitted:
			return rs.fallback(ctx, p, q, "lag", emitted, emit)
		case errors.Is(err, errBehind), errors.Is(err, shapes.ErrErased):
			// behind the user's cursor; or erased there when the primary
			// (needed) says they are not: the standby has not replayed
			// the unblock yet
			left := time.Until(deadline)
			if left <= 0 {
				return rs.fallback(ctx, p, q, "lag", false, emit)
			}
			t := time.NewTimer(min(wait, left))
			select {
			case <-ctx.Done():
				t.Stop()
				return shapes.PullResult{}, ctx.Err()
			case <-t.C:
			}
			wait = min(2*wait, 50*time.Millisecond)
		case errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01"):
			// canceled for a conflict with recovery (40P01: a buffer
			// pin deadlock with the startup process)
			return rs.fallback(ctx, p, q, "conflict", emitted, emit)
		case errors.Is(err, shapes.ErrSchemaChanged):
			// a table or column hypersync created on the primary (at
			// start-up, or by a reload) that the standby has not
			// replayed yet: behind, as far as this pull is concerned
			return rs.fallback(ctx, p, q, "lag", emitted, emit)
		case errors.Is(err, shapes.ErrUnavailable), errors.Is(err, errNotStandby), errors.As(err, &pgErr) && pgErr.Code == "25006":
			// down, unreachable, or promoted (standbyCheck)
			r.setDown(rs.logger, err)
			return rs.fallback(ctx, p, q, "down", emitted, emit)
		default:
			return shapes.PullResult{}, err
		}
	}
}

// fallback reads q on the primary, after voiding the rows a standby
// emitted.
func (rs *replicaSet) fallback(ctx context.Context, p *driver, q shapes.PullQuery, reason string, emitted bool, emit func(shapes.PulledRow) error) (shapes.PullResult, error) {
	if emitted {
		if err := emit(shapes.PulledRow{Restart: true}); err != nil {
			return shapes.PullResult{}, err
		}
	}
	rs.observe("primary", reason)
	res, _, err := p.pullOn(ctx, p.pool, false, q, time.Time{}, emit)
	return res, err
}

// neededSQL reads, on the primary, the user's cursor (what a standby's
// snapshot must hold) and whether the user is erased: two index probes.
const neededSQL = `SELECT (SELECT stamp FROM "` + shapes.CursorTable + `" WHERE user_id = $1 AND stamp > '-infinity'),
	EXISTS (SELECT FROM "` + shapes.ErasedTable + `" WHERE user_hash = $2)`

// needed reads the user's cursor on the primary; zero when they have
// none. An erased user is refused here: the standby may not know yet.
func (p *driver) needed(ctx context.Context, q shapes.PullQuery) (time.Time, error) {
	var stamp pgtype.Timestamptz
	var erased bool
	if err := p.pool.QueryRow(ctx, neededSQL, q.User, q.Block).Scan(&stamp, &erased); err != nil {
		return time.Time{}, pgError(err)
	}
	if erased {
		return time.Time{}, shapes.ErrErased
	}
	if !stamp.Valid || stamp.InfinityModifier != pgtype.Finite {
		return time.Time{}, nil
	}
	return stamp.Time, nil
}

// setDown leaves r out until the monitor finds it well, with one warning.
func (r *replica) setDown(logger *zap.Logger, err error) {
	r.mu.Lock()
	was := r.up
	r.up, r.why = false, err
	r.mu.Unlock()
	if was {
		logger.Warn("read_database: a standby failed; pulls go to the other standbys, or the primary, until it is back",
			zap.String("standby", r.target), zap.Error(err))
	}
}

// monitor probes every standby every monitorEvery until ctx ends.
func (rs *replicaSet) monitor(ctx context.Context, p *driver) {
	defer close(rs.done)
	t := time.NewTicker(monitorEvery)
	defer t.Stop()
	for {
		rs.samplePrimary(ctx, p)
		for _, r := range rs.list {
			rs.probe(ctx, p, r)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe checks one standby: it answers, it is in recovery, and it is a
// standby of this primary; and it measures its lag.
func (rs *replicaSet) probe(ctx context.Context, p *driver, r *replica) {
	ctx, cancel := context.WithTimeout(ctx, standbyConnectTimeout+time.Second)
	defer cancel()
	replayed, err := rs.verify(ctx, p, r)
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		return // closing
	}
	lag := rs.lagOf(replayed)
	behind := err == nil && lag > rs.maxLag.Seconds()
	r.mu.Lock()
	was, wasBehind, seen := r.up && !r.behind, r.behind, r.seen
	r.seen = true
	if err == nil {
		r.up, r.behind, r.lag, r.why = true, behind, lag, nil
	} else {
		r.up, r.why = false, err
	}
	r.mu.Unlock()
	switch {
	case err == nil && !behind && (!was && seen):
		rs.logger.Info("read_database: a standby is back; pulls go to it again", zap.String("standby", r.target))
	case behind && !wasBehind:
		rs.logger.Warn("read_database: a standby is more than read_max_lag behind the primary; pulls go to the other standbys, or the primary, until it catches up",
			zap.String("standby", r.target), zap.Float64("lag_seconds", lag))
	case err != nil && (was || !seen):
		rs.logger.Warn("read_database: a standby is not used; pulls go to the other standbys, or the primary, until it is back",
			zap.String("standby", r.target), zap.Error(err))
	}
}

// samplePrimary notes where the primary's WAL is, keeping the positions
// of the last read_max_lag and a few probes more.
func (rs *replicaSet) samplePrimary(ctx context.Context, p *driver) {
	ctx, cancel := context.WithTimeout(ctx, standbyConnectTimeout)
	defer cancel()
	var text string
	if err := p.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&text); err != nil {
		return // the primary's trouble is the pushes' to report
	}
	lsn, ok := parseLSN(text)
	if !ok {
		return
	}
	now := time.Now()
	rs.positions = append(rs.positions, walPosition{at: now, lsn: lsn})
	keep := rs.maxLag + 3*monitorEvery
	i := 0
	for i < len(rs.positions)-1 && now.Sub(rs.positions[i].at) > keep {
		i++
	}
	rs.positions = rs.positions[i:]
}

// lagOf is how far behind a standby that replayed up to lsn is, in
// seconds: how long ago the primary was first seen past it (0 when the
// standby has replayed what the primary had at the last sample). The
// standby's own view (replay against receipt) cannot see a standby that
// stopped receiving: it has replayed all it has.
func (rs *replicaSet) lagOf(lsn uint64) float64 {
	for _, pos := range rs.positions {
		if pos.lsn > lsn {
			return time.Since(pos.at).Seconds()
		}
	}
	return 0
}

// parseLSN reads PostgreSQL's text of a WAL position, "16/B374D848".
func parseLSN(s string) (uint64, bool) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, false
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	return h<<32 | l, err1 == nil && err2 == nil
}

// replaySQL is whether a standby is in recovery, and where its replay is.
const replaySQL = `SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, '0/0')`

// errNotStandby and errOtherPrimary say why a read_database is refused.
var (
	errNotStandby   = errors.New("it is not in recovery (a primary, or a promoted standby): pulls there could miss rows written on the primary")
	errOtherPrimary = errors.New("it is a standby of another server")
)

// verify checks r is a hot standby of the primary, and returns the WAL
// position it has replayed.
func (rs *replicaSet) verify(ctx context.Context, p *driver, r *replica) (uint64, error) {
	var inRecovery bool
	var text string
	if err := r.pool.QueryRow(ctx, replaySQL).Scan(&inRecovery, &text); err != nil {
		return 0, pgError(err)
	}
	if !inRecovery {
		return 0, errNotStandby
	}
	replayed, _ := parseLSN(text)
	primary, err := rs.primaryIdentity(ctx, p)
	if err != nil {
		return replayed, nil // not known yet: the primary is checked again next time
	}
	var id string
	if err := r.pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&id); err != nil {
		return 0, pgError(err)
	}
	if id != primary {
		return 0, fmt.Errorf("%w (system identifier %s; the primary's is %s)", errOtherPrimary, id, primary)
	}
	return replayed, nil
}

// primaryIdentity reads the primary's system identifier once.
func (rs *replicaSet) primaryIdentity(ctx context.Context, p *driver) (string, error) {
	rs.idMu.Lock()
	defer rs.idMu.Unlock()
	if rs.primaryID != "" {
		return rs.primaryID, nil
	}
	var id string
	if err := p.pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&id); err != nil {
		return "", pgError(err)
	}
	rs.primaryID = id
	return id, nil
}

// VerifyReplicas checks, at start-up, that each read_database that
// answers is a hot standby of the primary. One that does not answer is
// left to the monitor.
func (p *driver) VerifyReplicas(ctx context.Context) error {
	if p.replicas == nil {
		return nil
	}
	for _, r := range p.replicas.list {
		_, err := p.replicas.verify(ctx, p, r)
		if errors.Is(err, errNotStandby) || errors.Is(err, errOtherPrimary) {
			return fmt.Errorf("read_database %s: %w", r.target, err)
		}
	}
	return nil
}

// CheckReplicas probes every standby now, for caddy hypersync check.
func (p *driver) CheckReplicas(ctx context.Context) []shapes.ReplicaState {
	if p.replicas == nil {
		return nil
	}
	var out []shapes.ReplicaState
	for _, r := range p.replicas.list {
		replayed, err := p.replicas.verify(ctx, p, r)
		st := shapes.ReplicaState{Target: r.target}
		if err == nil {
			var text string
			if err = p.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&text); err == nil {
				if lsn, ok := parseLSN(text); ok && lsn > replayed {
					st.BytesBehind = lsn - replayed
				}
			}
		}
		st.Up, st.Err = err == nil, pgError(err)
		out = append(out, st)
	}
	return out
}

// Replicas reports the standbys' states.
func (p *driver) Replicas() []shapes.ReplicaState {
	if p.replicas == nil {
		return nil
	}
	out := make([]shapes.ReplicaState, len(p.replicas.list))
	for i, r := range p.replicas.list {
		r.mu.Lock()
		out[i] = shapes.ReplicaState{Target: r.target, Up: r.up && !r.behind, Lag: r.lag}
		r.mu.Unlock()
	}
	return out
}
