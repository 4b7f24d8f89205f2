// Package hypersync is a Caddy HTTP handler that serves the HyperSync
// offline-first sync protocol (the @jaaahn/hyper-sync client) from SQL
// tables, with no server code.
//
// This package glues the pieces into Caddy: configuration, provisioning,
// the database pool shared across config reloads, and the user id read
// from a placeholder. The protocol lives in package handler, the tables
// and SQL in package shapes.
package hypersync

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/live"
	"github.com/hypersync/hypersync/live/pgnotify"
	"github.com/hypersync/hypersync/shapes"

	// The database drivers register their DSNs with package shapes.
	_ "github.com/hypersync/hypersync/shapes/postgres"
	_ "github.com/hypersync/hypersync/shapes/sqlite"
)

func init() {
	caddy.RegisterModule(HyperSync{})
}

// DefaultUserID is the placeholder the user id is read from by default.
// basic_auth and most authentication modules set it.
const DefaultUserID = "{http.auth.user.id}"

// databases holds one pool per DSN, shared by every config that names it,
// so a config reload keeps its connections.
var databases = caddy.NewUsagePool()

// brokers holds one live broker per database, shared across reloads as
// the pools are: a stream opened under an old config keeps its pokes.
var brokers = caddy.NewUsagePool()

// HyperSync serves HyperSync push (POST …/push) and pull (GET …/pull) for
// the shapes it maps to SQL tables.
//
// The user is the value of the user_id placeholder, by default
// {http.auth.user.id}: put an authentication handler (basic_auth, a JWT
// module, forward_auth) before it. A request without a user gets 401.
type HyperSync struct {
	// The database: a postgres:// or postgresql:// DSN, or sqlite:<path>
	// for an embedded SQLite file. {env.*} and {file.*} placeholders are
	// resolved when the config loads. Default: sqlite:./hypersync.db.
	Database string `json:"database,omitempty"`

	// The placeholder that holds the authenticated user's id.
	// Default: {http.auth.user.id}.
	UserID string `json:"user_id,omitempty"`

	// The most changes one push may carry; more gets 413. Default: 1000.
	MaxBatch int `json:"max_batch,omitempty"`

	// The most members one scope of a shared shape may have: every write
	// into a scope stamps each member's cursor, so its cost grows with
	// them. A membership past it is rejected forbidden. Default: 1000.
	MaxMembers int `json:"max_members,omitempty"`
	// The most scopes of one membership table a user is an active member
	// of (default 1000): a pull reads every membership of its user, and a
	// member can add anyone to a scope. A membership change past it is
	// rejected forbidden.
	MaxScopesPerUser int `json:"max_scopes_per_user,omitempty"`

	// Live sync (…/events): on unless set to false.
	Live *bool `json:"live,omitempty"`

	// The cursor cookie (hypersync_cursor), on unless set to false: every
	// pull answer sets it to a keyed hash of the user, and a pull that
	// carries another user's is answered from the epoch.
	CursorCookie *bool `json:"cursor_cookie,omitempty"`
	// How many refused changes the record (…/rejections) keeps per user;
	// 0 keeps none. Default: 100.
	KeepRejections *int `json:"keep_rejections,omitempty"`
	// How many refused changes per second one user's pushes may have, on
	// average, on this instance; a push past it waits, or is answered 429
	// too-many-refusals. 0 sets no limit. Default: 200.
	RefusalRate *int `json:"refusal_rate,omitempty"`
	// The comment an idle event stream gets, so that proxies keep it.
	// Default: 25s.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`
	// The most event streams this instance serves; more gets 503.
	// Default: 10000.
	MaxStreams int `json:"max_streams,omitempty"`
	// The most event streams of one user; more gets 429. Default: 16.
	MaxStreamsPerUser int `json:"max_streams_per_user,omitempty"`
	// How long a stream lives before the server closes it and the client
	// reconnects (randomized to 80-100 %). Default: 10m.
	StreamMaxAge caddy.Duration `json:"stream_max_age,omitempty"`
	// A direct session for LISTEN, when database goes through a
	// transaction pooler, which cannot LISTEN.
	ListenDatabase string `json:"listen_database,omitempty"`

	// The largest request body, in bytes; more gets 413. Default: 16 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// How long a push may spend on the database, and how long a pull may go
	// without sending a row, before the request answers 503 (or, mid-answer,
	// is cut off). A pull that keeps streaming is never cut off. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Hot standbys of database (PostgreSQL streaming replicas, made with
	// pg_basebackup -R) that pulls run on, spread across those that are
	// up. Pushes, erase and LISTEN stay on database.
	ReadDatabases []string `json:"read_databases,omitempty"`

	// How long a pull waits for a standby to hold the user's latest
	// writes before it reads database instead. Default: 2s.
	ReadMaxLag caddy.Duration `json:"read_max_lag,omitempty"`

	// How many pushes may work on the database at once; more wait up to a
	// second, then get 503 with Retry-After. Default: 8.
	MaxConcurrentPushes int `json:"max_concurrent_pushes,omitempty"`

	// How many pulls may work on the database at once, separately from
	// pushes, so that a flood of pulls cannot starve pushes. Default: 8.
	MaxConcurrentPulls int `json:"max_concurrent_pulls,omitempty"`

	// Turns off the Prometheus metrics (hypersync_*) of this handler.
	DisableMetrics bool `json:"disable_metrics,omitempty"`

	// The shapes served: each maps a shapeKey onto a table.
	Shapes []shapes.ShapeConfig `json:"shapes,omitempty"`

	dsn     string
	dbKey   string // the key of db in databases: dsn, and its standbys
	db      *shapes.Database
	store   *shapes.Store
	handler *handler.Handler
	logger  *zap.Logger

	broker     *live.Broker
	brokerKey  string
	liveServer *live.Server
}

// CaddyModule returns the Caddy module information.
func (HyperSync) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.hypersync",
		New: func() caddy.Module { return new(HyperSync) },
	}
}

// Provision checks the configuration, then opens (or reuses) the database
// pool and checks every shape against its table. A table that does not
// match fails the config load; a database that cannot be reached only logs
// a warning, and the check runs again on first use.
func (h *HyperSync) Provision(ctx caddy.Context) error {
	// Caddy calls Provision before Validate: check first, so that a config
	// that cannot work opens no pool and creates no table.
	if err := h.check(); err != nil {
		return err
	}
	h.logger = ctx.Logger()
	if h.UserID == "" {
		h.UserID = DefaultUserID
	}
	dsn := shapes.DefaultSQLite
	if h.Database == "" {
		h.logger.Info("no database configured: using the embedded SQLite file", zap.String("database", dsn))
	} else {
		var err error
		if dsn, err = caddy.NewReplacer().ReplaceOrErr(h.Database, true, true); err != nil {
			return fmt.Errorf("database: %w", err)
		}
		if err := shapes.CheckDSN(dsn); err != nil {
			return fmt.Errorf("database: %w", err)
		}
	}
	h.dsn = dsn
	replicas, err := h.resolvedReadDatabases()
	if err != nil {
		return err
	}
	if len(replicas) > 0 && shapes.KindOf(dsn) != "postgres" {
		return fmt.Errorf("read_database is for PostgreSQL: database %s is not", shapes.RedactDSN(dsn))
	}
	// one pool per primary and standbys: configs that read elsewhere do
	// not share one
	h.dbKey = dsn
	if len(replicas) > 0 {
		h.dbKey = dsn + "\x00" + strings.Join(replicas, "\x00") + "\x00" + time.Duration(h.ReadMaxLag).String()
	}
	if !h.DisableMetrics {
		if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	val, _, err := databases.LoadOrNew(h.dbKey, func() (caddy.Destructor, error) {
		return shapes.Open(dsn, shapes.Options{Logger: h.logger, LockWait: observeLockWait,
			ReadReplicas: replicas, ReadMaxLag: time.Duration(h.ReadMaxLag), PullTarget: observePullTarget})
	})
	if err != nil {
		return err
	}
	h.db = val.(*shapes.Database)

	if h.store, err = shapes.NewStore(h.db, h.Shapes, h.logger); err != nil {
		return err
	}
	h.store.MaxMembers = h.MaxMembers
	h.store.MaxScopesPerUser = h.MaxScopesPerUser
	if h.liveOn() {
		if err := h.provisionLive(); err != nil {
			return err
		}
	}
	cfg := h.handlerConfig()
	cfg.Store, cfg.Logger = h.store, h.logger
	if !h.DisableMetrics {
		cfg.Observer = promObserver{}
	}
	cfg.RequestID = func(r *http.Request) string {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			return ""
		}
		return repl.ReplaceAll("{http.request.uuid}", "")
	}
	cfg.Live = h.liveServer
	if h.handler, err = handler.New(cfg); err != nil {
		return err
	}

	provisioned.Store(h, struct{}{})

	checkCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h.db.VerifyReplicas(checkCtx); err != nil {
		return err
	}
	if err := h.store.Check(checkCtx); err != nil {
		if errors.Is(err, shapes.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
			h.logger.Warn("database unreachable; shapes will be checked on first use",
				zap.String("database", h.db.String()), zap.Error(err))
			return nil
		}
		return err
	}
	keys := make([]string, len(h.Shapes))
	for i, s := range h.Shapes {
		keys[i] = s.Key
	}
	h.logger.Info("hypersync ready", zap.String("database", h.db.String()), zap.Strings("shapes", keys))
	return nil
}

// handlerConfig is the handler's part of the configuration.
func (h *HyperSync) handlerConfig() handler.Config {
	keep := shapes.DefaultKeepRejections
	if h.KeepRejections != nil {
		keep = *h.KeepRejections
	}
	refusals := DefaultRefusalRate
	if h.RefusalRate != nil {
		refusals = *h.RefusalRate
	}
	return handler.Config{
		MaxBatch:       h.MaxBatch,
		MaxBody:        h.MaxBody,
		Timeout:        time.Duration(h.Timeout),
		MaxPushes:      h.MaxConcurrentPushes,
		MaxPulls:       h.MaxConcurrentPulls,
		CursorCookie:   h.CursorCookie == nil || *h.CursorCookie,
		KeepRejections: keep,
		RefusalRate:    refusals,
	}
}

// DefaultRefusalRate is refusal_rate's default: refused changes per second
// and user. An honest device refuses a few per sync (the client resends
// them at each); a flood refuses thousands.
const DefaultRefusalRate = 200

// Validate checks the configuration's values.
func (h *HyperSync) Validate() error { return h.check() }

// check is the one check of the configuration, without side effects: the
// Caddyfile parser, Provision and Validate all rely on it.
func (h *HyperSync) check() error {
	if len(h.Shapes) == 0 {
		return fmt.Errorf("no shapes configured")
	}
	if h.UserID != "" {
		if err := checkUserID(h.UserID); err != nil {
			return err
		}
	}
	// A DSN from a placeholder is checked once it is resolved.
	if h.Database != "" && !strings.Contains(h.Database, "{") {
		if err := shapes.CheckDSN(h.Database); err != nil {
			return fmt.Errorf("database: %w", err)
		}
	}
	if err := shapes.ValidateShapes(h.Shapes); err != nil {
		return err
	}
	if err := h.checkReadDatabases(); err != nil {
		return err
	}
	return h.handlerConfig().Check()
}

// checkReadDatabases refuses read_database beside a database that is not
// PostgreSQL's; DSNs from placeholders are checked once resolved.
func (h *HyperSync) checkReadDatabases() error {
	if len(h.ReadDatabases) == 0 {
		return nil
	}
	for _, dsn := range h.ReadDatabases {
		if !strings.Contains(dsn, "{") && shapes.KindOf(dsn) != "postgres" {
			return fmt.Errorf("read_database %q is not a postgres:// DSN: pulls run on hot standbys of a PostgreSQL database", shapes.RedactDSN(dsn))
		}
	}
	if db := h.Database; db == "" || !strings.Contains(db, "{") && shapes.KindOf(db) != "postgres" {
		if db == "" {
			db = shapes.DefaultSQLite
		}
		return fmt.Errorf("read_database is for PostgreSQL: database %s is SQLite, a file on this machine, which has no standbys", shapes.RedactDSN(db))
	}
	if h.ReadMaxLag < 0 {
		return fmt.Errorf("read_max_lag must be positive")
	}
	return nil
}

// checkUserID accepts a placeholder such as {http.auth.user.id}.
func checkUserID(s string) error {
	if !strings.Contains(s, "{") || !strings.Contains(s, "}") {
		return fmt.Errorf("user_id %q is not a placeholder such as {http.auth.user.id}", s)
	}
	return nil
}

// Cleanup releases this config's hold on the database pool; the last
// config to let go of a pool closes it.
func (h *HyperSync) Cleanup() error {
	provisioned.Delete(h)
	if h.handler != nil {
		// the records of refused changes still being written (each
		// bounded by its timeout) use the store
		h.handler.WaitRecords()
	}
	if h.store != nil {
		h.store.Close()
	}
	if h.broker != nil {
		_, _ = brokers.Delete(h.brokerKey)
	}
	if h.db != nil {
		_, err := databases.Delete(h.dbKey)
		return err
	}
	return nil
}

// ServeHTTP answers hypersync's endpoints (handler.Ops: push, pull, the
// live event stream and live.js), chosen by the path's last segment, and
// passes every other request on to next: a hypersync without a matcher
// claims only its own paths, and the site's other handlers serve the rest.
func (h *HyperSync) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if handler.Op(r.URL.Path) == "" {
		return next.ServeHTTP(w, r)
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	// ReplaceAll, not ReplaceKnown: an unset placeholder must give "", never
	// its own text as a user id.
	user := repl.ReplaceAll(h.UserID, "")
	h.handler.Serve(w, r, user)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*HyperSync)(nil)
	_ caddy.Validator             = (*HyperSync)(nil)
	_ caddy.CleanerUpper          = (*HyperSync)(nil)
	_ caddyhttp.MiddlewareHandler = (*HyperSync)(nil)
)

func (h *HyperSync) liveOn() bool { return h.Live == nil || *h.Live }

// provisionLive takes this database's broker (starting it, with its
// listener on PostgreSQL, for the first config that uses it), and makes
// the store poke after every commit.
func (h *HyperSync) provisionLive() error {
	listen := h.ListenDatabase
	if listen != "" {
		var err error
		if listen, err = caddy.NewReplacer().ReplaceOrErr(listen, true, true); err != nil {
			return fmt.Errorf("listen_database: %w", err)
		}
		if shapes.KindOf(listen) != "postgres" {
			return fmt.Errorf("listen_database %q is not a postgres:// DSN: only PostgreSQL carries pokes between instances", shapes.RedactDSN(listen))
		}
	}
	// one broker per pool (dbKey): it reads cursors through that pool's
	// Database, which must live as long as it does
	h.brokerKey = h.dbKey + "\x00" + listen
	val, _, err := brokers.LoadOrNew(h.brokerKey, func() (caddy.Destructor, error) {
		opts := live.Options{Logger: h.logger, Exiting: caddy.Exiting, Cursors: h.db.Cursors}
		if !h.DisableMetrics {
			opts.Observer = liveObserver{}
		}
		if shapes.KindOf(h.dsn) == "postgres" {
			t, err := pgnotify.New(pgnotify.Options{DSN: h.dsn, ListenDSN: listen, Logger: h.logger, Reconnected: liveObserver{}.ListenerReconnect})
			if err != nil {
				return nil, fmt.Errorf("live: %w", err)
			}
			opts.Transport = t
			return &brokerWithTransport{Broker: live.NewBroker(opts), t: t}, nil
		}
		return live.NewBroker(opts), nil
	})
	if err != nil {
		return err
	}
	switch b := val.(type) {
	case *live.Broker:
		h.broker = b
	case *brokerWithTransport:
		h.broker = b.Broker
	}
	h.store.OnCommit = h.broker.Publish
	srv := live.Server{Broker: h.broker, Heartbeat: time.Duration(h.Heartbeat), MaxStreams: h.MaxStreams,
		MaxStreamsPerUser: h.MaxStreamsPerUser, MaxAge: time.Duration(h.StreamMaxAge), Cursor: h.store.Cursor, Logger: h.logger}.WithDefaults()
	h.liveServer = &srv
	return nil
}

// brokerWithTransport closes the transport after the broker.
type brokerWithTransport struct {
	*live.Broker
	t *pgnotify.Transport
}

func (b *brokerWithTransport) Destruct() error {
	err := b.Broker.Destruct()
	b.t.Close()
	return err
}
