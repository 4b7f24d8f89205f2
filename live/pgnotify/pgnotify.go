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
	"encoding/json"
	"errors"
	"fmt"
	"net"
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
	DSN, ListenDSN string
	Logger         *zap.Logger
	// Reconnected is told of every reconnect of the listener.
	Reconnected func()
	// Idle is how long the listener waits for a notification before it
	// checks that its connection is alive (default 15 s): a half-open
	// connection would otherwise go unnoticed until TCP gives up.
	Idle time.Duration
}

// Transport is a live.Transport over LISTEN/NOTIFY.
type Transport struct {
	opts Options
	pool *pgxpool.Pool
}

// New returns a transport; it connects on first use.
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
	cfg, err := pgxpool.ParseConfig(opts.DSN)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 2
	cfg.ConnConfig.RuntimeParams["application_name"] = "hypersync live"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	return &Transport{opts: opts, pool: pool}, nil
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
	var s string
	err := t.pool.QueryRow(ctx, `SELECT secret FROM "`+postgres.LiveTable+`"`).Scan(&s)
	return s, err
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

// Run listens until ctx ends. After every LISTEN it calls resync: what was
// sent while the listener was away is lost. It reconnects with backoff,
// from 100 ms up to 5 s.
func (t *Transport) Run(ctx context.Context, deliver func(live.Poke), resync func()) {
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := t.listen(ctx, deliver, func() {
			backoff = 100 * time.Millisecond
			if !first && t.opts.Reconnected != nil {
				t.opts.Reconnected()
			}
			first = false
			resync()
		})
		if ctx.Err() != nil {
			return
		}
		t.opts.Logger.Warn("live: the listener lost its connection; reconnecting", zap.Error(err), zap.Duration("in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (t *Transport) listen(ctx context.Context, deliver func(live.Poke), listening func()) error {
	cfg, err := pgx.ParseConfig(t.opts.ListenDSN)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["application_name"] = "hypersync listener"
	// keepalives, besides the idle check below, for a peer that vanished
	dialer := &net.Dialer{KeepAlive: 15 * time.Second, Timeout: 10 * time.Second}
	cfg.DialFunc = dialer.DialContext
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `LISTEN "`+Channel+`"`); err != nil {
		return err
	}
	listening()
	for {
		wctx, cancel := context.WithTimeout(ctx, t.opts.Idle)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			// idle: is the connection still there?
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("the idle listener did not answer: %w", err)
			}
			continue
		case err != nil:
			return err
		}
		var p live.Poke
		if err := json.Unmarshal([]byte(n.Payload), &p); err != nil {
			t.opts.Logger.Debug("live: a notification that is not a poke", zap.String("payload", n.Payload))
			continue
		}
		deliver(p)
	}
}
