// Package handler speaks the HyperSync wire protocol: it routes push and
// pull requests, decodes and checks the JSON the @jaaahn/hyper-sync client
// sends, and writes the answers it expects.
//
// It owns HTTP status codes, error bodies and the request's time budget.
// It must not know SQL or tables (that is package shapes) nor Caddy (the
// root package resolves the user and calls Serve).
package handler

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/hypersync/hypersync/shapes"
)

// Defaults for the Handler's limits.
const (
	DefaultMaxBatch       = 1000
	DefaultMaxBody        = 16 << 20
	DefaultTimeout        = 10 * time.Second
	DefaultMaxFuture      = 24 * time.Hour
	DefaultMaxConcurrency = 8
	DefaultQueueWait      = time.Second
	// MaxPullLimit bounds the limit a paged pull may ask for.
	MaxPullLimit = 100000
)

// Handler serves push and pull for one store.
type Handler struct {
	Store  *shapes.Store
	Logger *zap.Logger
	// MaxBatch is the most changes one push may carry.
	MaxBatch int
	// MaxBody is the largest request body read, in bytes.
	MaxBody int64
	// Timeout bounds the database work of one request.
	Timeout time.Duration
	// MaxFuture is how far past the server's clock a change's updatedAt
	// may be. A later one would win every conflict until then.
	MaxFuture time.Duration
	// Now is the clock for MaxFuture; time.Now when nil.
	Now func() time.Time
	// MaxPushes and MaxPulls bound how many pushes and how many pulls
	// work on the database at once. The two budgets are separate, so a
	// flood of pulls cannot starve pushes, nor the reverse.
	MaxPushes, MaxPulls int
	// QueueWait is how long a request waits for a free slot before it is
	// answered 503 with Retry-After.
	QueueWait time.Duration

	// Observer, when set, is told what every request did.
	Observer Observer
	// RequestID, when set, names the request in warning and error logs.
	RequestID func(*http.Request) string

	slotsOnce            sync.Once
	pushSlots, pullSlots chan struct{}
}

// Observer receives what requests did, for metrics. It must not block.
type Observer interface {
	// Request: one request of op ("push" or "pull") answered status.
	Request(op string, status int, d time.Duration)
	// Changes: n pushed changes of shape had outcome (applied, stale,
	// superseded, or their rejection code).
	Changes(shape, outcome string, n int)
	// RowsPulled: a pull sent n rows of shape.
	RowsPulled(shape string, n int)
	// DatabaseTime: a request of op spent d in the store.
	DatabaseTime(op string, d time.Duration)
}

// statusRecorder notes the status a request was answered with.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// logger returns the handler's logger, naming the request when it can.
func (h *Handler) logger(r *http.Request) *zap.Logger {
	if h.RequestID != nil {
		if id := h.RequestID(r); id != "" {
			return h.Logger.With(zap.String("request_id", id))
		}
	}
	return h.Logger
}

// acquire takes a slot of the given budget, waiting at most QueueWait. It
// returns the release function, or nil when the budget stayed full.
func (h *Handler) acquire(ctx context.Context, push bool) func() {
	h.slotsOnce.Do(func() {
		h.pushSlots = make(chan struct{}, orDefault(h.MaxPushes, DefaultMaxConcurrency))
		h.pullSlots = make(chan struct{}, orDefault(h.MaxPulls, DefaultMaxConcurrency))
	})
	slots := h.pullSlots
	if push {
		slots = h.pushSlots
	}
	release := func() { <-slots }
	select {
	case slots <- struct{}{}:
		return release
	default:
	}
	wait := h.QueueWait
	if wait <= 0 {
		wait = DefaultQueueWait
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case slots <- struct{}{}:
		return release
	case <-timer.C:
	case <-ctx.Done():
	}
	return nil
}

func orDefault(n, def int) int {
	if n > 0 {
		return n
	}
	return def
}

func writeOverloaded(w http.ResponseWriter, op string) {
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusServiceUnavailable, errorBody{Status: "error", Error: "overloaded",
		Message: "too many " + op + "es at once on this server; try again shortly"})
}

// Serve answers one request for the authenticated user; user is empty when
// authentication gave no user. The operation is chosen by the last path
// segment, so the handler works under any route prefix.
func (h *Handler) Serve(w http.ResponseWriter, r *http.Request, user string) {
	op := lastSegment(r.URL.Path)
	switch op {
	case "push":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, "method-not-allowed", "push takes POST")
			return
		}
	case "pull":
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			writeError(w, http.StatusMethodNotAllowed, "method-not-allowed", "pull takes GET")
			return
		}
	default:
		writeError(w, http.StatusNotFound, "not-found", "hypersync serves …/push and …/pull")
		return
	}
	if msg := checkUser(user); msg != "" {
		writeError(w, http.StatusUnauthorized, "unauthenticated", msg)
		return
	}
	ctx := r.Context()
	if h.Timeout > 0 && op == "push" {
		// A pull streams for as long as its answer takes, and is bounded
		// by watchStall instead.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.Timeout)
		defer cancel()
	}
	if h.Observer != nil {
		rec := &statusRecorder{ResponseWriter: w}
		w = rec
		start := time.Now()
		defer func() { h.Observer.Request(op, rec.status, time.Since(start)) }()
	}
	if op == "push" {
		h.push(ctx, w, r, user)
	} else {
		h.pull(ctx, w, r, user)
	}
}

func lastSegment(path string) string {
	path = strings.TrimSuffix(path, "/")
	return path[strings.LastIndexByte(path, '/')+1:]
}

func checkUser(user string) string {
	switch {
	case user == "":
		return "no authenticated user: put an authentication directive in front of hypersync"
	case len(user) > 1024:
		return "the user id is longer than 1024 bytes"
	case strings.ContainsRune(user, 0) || !validUTF8(user):
		return "the user id is not valid text"
	}
	return ""
}

// Error bodies: {"status":"error","error":"<code>","message":"..."}.
type errorBody struct {
	Status  string `json:"status"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, status, errorBody{Status: "error", Error: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"status":"error","error":"internal","message":"encoding the answer failed"}`)
	}
	writeBody(w, status, body)
}

// writeBody answers status with a JSON body.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// storeError answers a failure of the store.
func (h *Handler) storeError(w http.ResponseWriter, r *http.Request, ctx context.Context, op string, err error) {
	var schemaErr *shapes.SchemaError
	switch {
	case r.Context().Err() != nil:
		// The client went away: nobody reads an answer.
		h.Logger.Debug("client gone", zap.String("op", op), zap.Error(err))
		return
	case errors.Is(err, shapes.ErrUnavailable) || ctx.Err() != nil:
		h.logger(r).Warn("database unavailable", zap.String("op", op), zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "database-unavailable", "the database cannot be reached; try again later")
	case errors.As(err, &schemaErr), errors.Is(err, shapes.ErrSchemaChanged):
		h.logger(r).Error("shape does not match its table", zap.String("op", op), zap.Error(err))
		writeError(w, http.StatusInternalServerError, "schema-mismatch", err.Error())
	default:
		h.logger(r).Error("sync failed", zap.String("op", op), zap.Error(err))
		writeError(w, http.StatusInternalServerError, "internal", "the server failed; see its log")
	}
}

func (h *Handler) pull(ctx context.Context, w http.ResponseWriter, r *http.Request, user string) {
	start := time.Now()
	since := time.Unix(0, 0).UTC()
	query := r.URL.Query()
	if v := query.Get("lastPull"); v != "" {
		t, err := shapes.ParseTime(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid-last-pull", "lastPull must be an RFC 3339 timestamp")
			return
		}
		since = t
	}
	// limit is hypersync's extension for resumable initial syncs; the
	// 1.0.0 client never sends it and gets the whole answer.
	limit := 0
	if v := query.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > MaxPullLimit {
			writeError(w, http.StatusBadRequest, "invalid-limit", fmt.Sprintf("limit must be a whole number from 1 to %d", MaxPullLimit))
			return
		}
		limit = n
	}
	release := h.acquire(ctx, false)
	if release == nil {
		writeOverloaded(w, "pull")
		return
	}
	defer release()
	var progress atomic.Int64
	if h.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		defer watchStall(ctx, cancel, h.Timeout, &progress)()
	}
	out := &pullWriter{w: w}
	buf := bufio.NewWriterSize(out, 32<<10)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	quotedUser, _ := json.Marshal(user)
	buf.WriteString(`{"changes":[`)
	n := 0
	var perShape map[*shapes.Shape]int
	if h.Observer != nil {
		perShape = map[*shapes.Shape]int{}
	}
	dbStart := time.Now()
	res, err := h.Store.Pull(ctx, user, since, limit, func(row shapes.PulledRow) error {
		if n > 0 {
			buf.WriteByte(',')
		}
		n++
		progress.Add(1)
		if perShape != nil {
			perShape[row.Shape]++
		}
		buf.WriteString(`{"shapeKey":`)
		buf.Write(row.Shape.QuotedKey())
		buf.WriteString(`,"payload":`)
		buf.Write(row.Payload)
		buf.WriteString(`,"userId":`)
		buf.Write(quotedUser)
		buf.WriteString(`,"updatedAt":`)
		if row.UpdatedAt == nil {
			buf.WriteString("null")
		} else {
			buf.WriteByte('"')
			buf.Write(row.UpdatedAt)
			buf.WriteByte('"')
		}
		_, err := buf.WriteString("}")
		return err
	})
	if err != nil {
		if out.started {
			// Part of a 200 has left: break the connection, so that the
			// client sees a failed sync instead of a truncated answer.
			h.logger(r).Warn("pull failed mid-answer", zap.Error(err))
			panic(http.ErrAbortHandler)
		}
		h.storeError(w, r, ctx, "pull", err)
		return
	}
	if h.Observer != nil {
		h.Observer.DatabaseTime("pull", time.Since(dbStart))
		for sh, k := range perShape {
			h.Observer.RowsPulled(sh.Config.Key, k)
		}
	}
	buf.WriteString(`],"syncedAt":"`)
	buf.Write(shapes.AppendTime(nil, res.Cursor))
	buf.WriteByte('"')
	if limit > 0 {
		if res.HasMore {
			buf.WriteString(`,"hasMore":true`)
		} else {
			buf.WriteString(`,"hasMore":false`)
		}
	}
	buf.WriteByte('}')
	if err := buf.Flush(); err != nil {
		h.Logger.Debug("writing pull answer", zap.Error(err))
	}
	if c := h.Logger.Check(zapcore.DebugLevel, "pull"); c != nil {
		c.Write(zap.String("user", user), zap.Time("last_pull", since), zap.Int("rows", n),
			zap.Time("synced_at", res.Cursor), zap.Duration("duration", time.Since(start)))
	}
}

// watchStall cancels a pull that sends no row in its first d, or later
// makes no progress for between d and 2d: a database that stopped
// answering, or a client that stopped reading. A long answer that keeps
// flowing is never cut off, so that a large initial sync over a slow link
// completes. It returns the function that stops the watch.
func watchStall(ctx context.Context, cancel context.CancelFunc, d time.Duration, progress *atomic.Int64) func() {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(d)
		defer t.Stop()
		last := int64(0)
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				now := progress.Load()
				if now == last {
					cancel()
					return
				}
				last = now
			}
		}
	}()
	return func() { close(done) }
}

// pullWriter notes whether any of the answer has been written.
type pullWriter struct {
	w       http.ResponseWriter
	started bool
}

func (p *pullWriter) Write(b []byte) (int, error) {
	p.started = true
	return p.w.Write(b)
}
