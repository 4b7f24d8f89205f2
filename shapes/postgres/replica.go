package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
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

	mu   sync.Mutex
	up   bool
	lag  float64
	why  error // why it is down
	seen bool  // the monitor has probed it
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

// pick returns the next standby that is up, round robin; nil when none is.
func (rs *replicaSet) pick() *replica {
	n := uint64(len(rs.list))
	start := rs.next.Add(1)
	for i := uint64(0); i < n; i++ {
		r := rs.list[(start+i)%n]
		r.mu.Lock()
		up := r.up
		r.mu.Unlock()
		if up {
			return r
		}
	}
	return nil
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
	r := rs.pick()
	if r == nil {
		return rs.fallback(ctx, p, q, "down", false, emit)
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
	lag, err := rs.verify(ctx, p, r)
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		return // closing
	}
	r.mu.Lock()
	was, seen := r.up, r.seen
	r.seen = true
	if err == nil {
		r.up, r.lag, r.why = true, lag, nil
	} else {
		r.up, r.why = false, err
	}
	r.mu.Unlock()
	switch {
	case err == nil && !was && seen:
		rs.logger.Info("read_database: a standby is back; pulls go to it again", zap.String("standby", r.target))
	case err != nil && (was || !seen):
		rs.logger.Warn("read_database: a standby is not used; pulls go to the other standbys, or the primary, until it is back",
			zap.String("standby", r.target), zap.Error(err))
	}
}

// lagSQL is how far a standby's replay is behind, in seconds: 0 when it
// has replayed all it received.
const lagSQL = `SELECT pg_is_in_recovery(),
	CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
	ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8`

// errNotStandby and errOtherPrimary say why a read_database is refused.
var (
	errNotStandby   = errors.New("it is not in recovery (a primary, or a promoted standby): pulls there could miss rows written on the primary")
	errOtherPrimary = errors.New("it is a standby of another server")
)

// verify checks r is a hot standby of the primary, and returns its lag.
func (rs *replicaSet) verify(ctx context.Context, p *driver, r *replica) (float64, error) {
	var inRecovery bool
	var lag float64
	if err := r.pool.QueryRow(ctx, lagSQL).Scan(&inRecovery, &lag); err != nil {
		return 0, pgError(err)
	}
	if !inRecovery {
		return 0, errNotStandby
	}
	primary, err := rs.primaryIdentity(ctx, p)
	if err != nil {
		return lag, nil // not known yet: the primary is checked again next time
	}
	var id string
	if err := r.pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&id); err != nil {
		return 0, pgError(err)
	}
	if id != primary {
		return 0, fmt.Errorf("%w (system identifier %s; the primary's is %s)", errOtherPrimary, id, primary)
	}
	return lag, nil
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
		lag, err := p.replicas.verify(ctx, p, r)
		out = append(out, shapes.ReplicaState{Target: r.target, Up: err == nil, Lag: lag, Err: err})
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
		out[i] = shapes.ReplicaState{Target: r.target, Up: r.up, Lag: r.lag}
		r.mu.Unlock()
	}
	return out
}
