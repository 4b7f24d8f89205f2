// Package pgnotify carries live pokes between Caddy instances on one
// PostgreSQL database with LISTEN/NOTIFY.
//
// Each instance holds one session connection that LISTENs on Channel, and
// publishes with pg_notify after commit, never inside a push's
// transaction: NOTIFY takes a cluster-wide lock at commit, and a full
// notification queue would make the committing push fail. The stamping
// triggers notify for writes made outside hypersync (shapes/postgres).
// Payloads name users by a keyed hash, since any role can LISTEN.
package pgnotify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/hypersync/hypersync/live"
	"github.com/hypersync/hypersync/shapes/postgres"
)

// Channel is the notification channel.
const Channel = postgres.LiveChannel

// Options configure a transport.
type Options struct {
	// DSN is the database pokes are sent through; ListenDSN the direct
	// session LISTEN needs, when DSN goes through a transaction pooler.
	// Both take every form pgxpool takes, its pool_* parameters included.
	DSN, ListenDSN string
	Logger         *zap.Logger
	// Reconnected is told of every reconnect of the listener.
	Reconnected func()
	// Idle is how long the listener waits for a notification before it
	// checks that its connection is alive, and that it still hears what
	// is sent through DSN (default 15 s): a half-open connection would
	// otherwise go unnoticed until TCP gives up.
	Idle time.Duration
	// ProbeWait is how long the listener waits to hear its own probe
	// (default 5 s).
	ProbeWait time.Duration
}

// Transport is a live.Transport over LISTEN/NOTIFY.
type Transport struct {
	opts   Options
	pool   *pgxpool.Pool
	listen *pgx.ConnConfig
}

// New returns a transport; it connects on first use. A DSN it cannot
// parse is an error now, not a warning at every reconnect.
func New(opts Options) (*Transport, error) {
	if opts.ListenDSN == "" {
		opts.ListenDSN = opts.DSN
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Idle <= 0 {
		opts.Idle = 15 * time.Second
	}
	if opts.ProbeWait <= 0 {
		opts.ProbeWait = 5 * time.Second
	}
	cfg, err := pgxpool.ParseConfig(opts.DSN)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 2
	cfg.ConnConfig.RuntimeParams["application_name"] = "hypersync live"
	// The listener's session is parsed as the pool parses it: a plain
	// connection string parser would send pool_max_conns and the like to
	// the server as settings, which it refuses.
	lcfg, err := pgxpool.ParseConfig(opts.ListenDSN)
	if err != nil {
		return nil, fmt.Errorf("listen_database: %w", err)
	}
	listen := lcfg.ConnConfig
	listen.RuntimeParams["application_name"] = "hypersync listener"
	// keepalives, besides the idle check below, for a peer that vanished
	dialer := &net.Dialer{KeepAlive: 15 * time.Second, Timeout: 10 * time.Second}
	listen.DialFunc = dialer.DialContext
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	return &Transport{opts: opts, pool: pool, listen: listen}, nil
}

// Close closes the transport's connections.
func (t *Transport) Close() { t.pool.Close() }

// Secret reads the database's key, making it first if need be.
func (t *Transport) Secret(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, stmt := range postgres.LiveDDL {
		if _, err := t.pool.Exec(ctx, stmt); err != nil {
			return "", err
		}
	}
	// the stamping triggers notify from now on (Run keeps it so)
	if _, err := t.pool.Exec(ctx, postgres.LiveRefreshSQL); err != nil {
		return "", err
	}
	var s string
	err := t.pool.QueryRow(ctx, `SELECT secret FROM "`+postgres.LiveTable+`"`).Scan(&s)
	return s, err
}

// keepNotifying tells the stamping triggers, every 30 s until ctx ends,
// that an instance with live sync on listens: they notify only while one
// does (postgres.LiveDDL).
func (t *Transport) keepNotifying(ctx context.Context) {
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := t.pool.Exec(cctx, postgres.LiveRefreshSQL); err != nil && ctx.Err() == nil {
			t.opts.Logger.Debug("live: telling the stamping triggers to notify", zap.Error(err))
		}
		cancel()
	}
}

// Send publishes one poke.
func (t *Transport) Send(ctx context.Context, p live.Poke) error {
	payload, err := json.Marshal(p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = t.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, Channel, string(payload))
	return err
}

// Run listens until ctx ends. After every LISTEN it calls l.Resync: what
// was sent while the listener was away is lost. It reconnects with
// backoff, from 100 ms up to 5 s, and tells l.Status whenever it stops or
// starts working.
func (t *Transport) Run(ctx context.Context, l live.Listener) {
	done := make(chan struct{})
	go func() { defer close(done); t.keepNotifying(ctx) }()
	defer func() { <-done }()
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := t.run(ctx, l, func() {
			backoff = 100 * time.Millisecond
			if !first && t.opts.Reconnected != nil {
				t.opts.Reconnected()
			}
			first = false
			l.Resync()
		})
		if ctx.Err() != nil {
			return
		}
		l.Status(err)
		t.opts.Logger.Debug("live: the listener lost its connection; reconnecting", zap.Error(err), zap.Duration("in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// errDeaf says why a listener that LISTENs does not work.
var errDeaf = errors.New("the listener does not hear notifications sent through database: " +
	"a transaction pooler (PgBouncer in transaction mode) drops LISTEN; point listen_database at the database directly")

// run holds one listening session until it fails. Right after LISTEN, and
// after each idle period, it sends a probe through the pool and waits to
// hear it: a listener behind a transaction pooler connects and LISTENs
// without error, and then hears nothing.
func (t *Transport) run(ctx context.Context, l live.Listener, listening func()) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, t.listen)
	cancel()
	if err != nil {
		return fmt.Errorf("live: the listener cannot connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `LISTEN "`+Channel+`"`); err != nil {
		return fmt.Errorf("live: LISTEN failed: %w", err)
	}
	listening()
	var nonce string
	var probeAt time.Time
	probe := func() error {
		var b [8]byte
		_, _ = rand.Read(b[:])
		nonce, probeAt = hex.EncodeToString(b[:]), time.Now()
		return t.Send(ctx, live.Poke{Probe: nonce})
	}
	if err := probe(); err != nil {
		return fmt.Errorf("live: sending a probe through database: %w", err)
	}
	for {
		wait := t.opts.Idle
		if nonce != "" {
			wait = min(wait, time.Until(probeAt.Add(t.opts.ProbeWait)))
		}
		wctx, cancel := context.WithTimeout(ctx, max(wait, time.Millisecond))
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if nonce != "" && !time.Now().Before(probeAt.Add(t.opts.ProbeWait)) {
				// the probe was not heard in time
				nonce = ""
				l.Status(errDeaf)
				continue
			}
			// idle: is the connection still there, and still hearing?
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("live: the idle listener did not answer: %w", err)
			}
			if nonce == "" {
				if err := probe(); err != nil {
					return fmt.Errorf("live: sending a probe through database: %w", err)
				}
			}
			continue
		case err != nil:
			return fmt.Errorf("live: the listener lost its connection: %w", err)
		}
		p, ok := parse(n.Payload)
		switch {
		case !ok:
			t.opts.Logger.Debug("live: ignored a notification that is not hypersync's", zap.Int("bytes", len(n.Payload)))
		case p.Probe != "":
			if p.Probe == nonce {
				nonce = ""
				l.Status(nil)
			}
		default:
			l.Deliver(p)
		}
	}
}

// parse reads a notification as a poke: keys of 16 hex digits, or a
// probe, and nothing else. Any role that can connect can NOTIFY on the
// channel; a payload of another form is not hypersync's.
func parse(payload string) (live.Poke, bool) {
	var p live.Poke
	d := json.NewDecoder(strings.NewReader(payload))
	d.DisallowUnknownFields()
	if err := d.Decode(&p); err != nil || d.More() {
		return live.Poke{}, false
	}
	if p.Probe != "" {
		return live.Poke{Probe: p.Probe}, len(p.Keys) == 0
	}
	if len(p.Keys) == 0 {
		return live.Poke{}, false
	}
	for _, k := range p.Keys {
		if len(k) != 16 || strings.Trim(k, "0123456789abcdef") != "" {
			return live.Poke{}, false
		}
	}
	return p, true
}
