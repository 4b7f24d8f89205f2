// Package handler speaks the HyperSync wire protocol: it routes push and
// pull requests, decodes and checks the JSON the @jaaahn/hyper-sync client
// sends, and writes the answers it expects.
//
// It owns HTTP status codes, error bodies, the wire format and the
// request's time budget. It must not know SQL or tables (that is package
// shapes) nor Caddy (the root package resolves the user and calls Serve).
//
// Files by job: handler.go routes a request; budget.go holds the push and
// pull budgets; push.go decodes and answers a push (scanpush.go is its fast
// decoder, on the schema-free scanner of internal/jsonscan);
// pull.go streams a pull; wire.go writes every JSON answer and holds the
// timestamp layout; errors.go maps failures to statuses and error codes.
package handler

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/hypersync/hypersync/internal/codes"
	"github.com/hypersync/hypersync/live"
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

// Config sets up a Handler. Zero values take the defaults above.
type Config struct {
	Store  *shapes.Store
	Logger *zap.Logger
	// MaxBatch is the most changes one push may carry.
	MaxBatch int
	// MaxBody is the largest request body read, in bytes.
	MaxBody int64
	// Timeout bounds the database work of one push, and how long a pull may
	// go without progress.
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

	// Live serves …/events; nil when live sync is off, and then …/events
	// answers 204.
	Live *live.Server

	// CursorCookie sets the cursor cookie on pull answers, and answers
	// from the epoch a pull that carries another user's (trust.go).
	CursorCookie bool
	// KeepRejections is how many refused changes the record keeps per
	// user; 0 keeps none.
	KeepRejections int
	// RefusalRate is how many refused changes per second a user's pushes
	// may have on this instance, on average (refusals.go); 0 sets no
	// limit.
	RefusalRate int
}

// Check reports a value that no default can mend.
func (c Config) Check() error {
	switch {
	case c.MaxBatch < 0:
		return fmt.Errorf("max_batch must be positive")
	case c.MaxBody < 0:
		return fmt.Errorf("max_body must be positive")
	case c.Timeout < 0:
		return fmt.Errorf("timeout must be positive")
	case c.MaxFuture < 0:
		return fmt.Errorf("max_future must be positive")
	case c.MaxPushes < 0 || c.MaxPulls < 0:
		return fmt.Errorf("max_concurrent_pushes and max_concurrent_pulls must be positive")
	case c.QueueWait < 0:
		return fmt.Errorf("the queue wait must be positive")
	case c.RefusalRate < 0:
		return fmt.Errorf("refusal_rate must be positive")
	}
	return nil
}

// withDefaults fills every zero value with its default.
func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxBatch, DefaultMaxBatch)
	def(&c.MaxPushes, DefaultMaxConcurrency)
	def(&c.MaxPulls, DefaultMaxConcurrency)
	if c.MaxBody == 0 {
		c.MaxBody = DefaultMaxBody
	}
	defDur(&c.Timeout, DefaultTimeout)
	defDur(&c.MaxFuture, DefaultMaxFuture)
	defDur(&c.QueueWait, DefaultQueueWait)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Handler serves hypersync's endpoints (Ops) for one store.
type Handler struct {
	cfg                  Config
	pushSlots, pullSlots chan struct{}
	// recording bounds the records of refused changes written in the
	// background at once; recorded counts those not written yet.
	recording chan struct{}
	recorded  sync.WaitGroup
	refusals  *refusalBudget // nil without a RefusalRate
}

// recordSlots is how many records of refused changes are written in the
// background at once (push.go).
const recordSlots = 4

// New checks c, fills in its defaults and returns the Handler.
func New(c Config) (*Handler, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	c = c.withDefaults()
	return &Handler{cfg: c, pushSlots: make(chan struct{}, c.MaxPushes), pullSlots: make(chan struct{}, c.MaxPulls),
		recording: make(chan struct{}, recordSlots), refusals: newRefusalBudget(c.RefusalRate)}, nil
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

// Unwrap lets http.ResponseController reach the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logger returns the handler's logger, naming the request when it can.
func (h *Handler) logger(r *http.Request) *zap.Logger {
	if h.cfg.RequestID != nil {
		if id := h.cfg.RequestID(r); id != "" {
			return h.cfg.Logger.With(zap.String("request_id", id))
		}
	}
	return h.cfg.Logger
}

// Op names the operation a request path asks for, by its last segment, so
// that the handler works under any route prefix: "push", "pull",
// "events", "live.js", or "" for a path that is not the handler's.
func Op(path string) string {
	path = strings.TrimSuffix(path, "/")
	op := path[strings.LastIndexByte(path, '/')+1:]
	for _, known := range Ops {
		if op == known {
			return op
		}
	}
	return ""
}

// Ops are the endpoints hypersync serves below its path, by their last
// segment.
var Ops = []string{"push", "pull", "events", "live.js", "rejections"}

// Serve answers one request for the authenticated user; user is empty when
// authentication gave no user.
func (h *Handler) Serve(w http.ResponseWriter, r *http.Request, user string) {
	op := Op(r.URL.Path)
	switch op {
	case "push":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, codes.MethodNotAllowed, "push takes POST")
			return
		}
	case "pull":
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			writeError(w, http.StatusMethodNotAllowed, codes.MethodNotAllowed, "pull takes GET")
			return
		}
	case "events":
		// HEAD: live.js asks whether live sync is on, after EventSource
		// gave up on a refusal
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, codes.MethodNotAllowed, "events takes GET")
			return
		}
	case "live.js":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, codes.MethodNotAllowed, "live.js takes GET")
			return
		}
		live.ServeScript(w, r)
		return
	case "rejections":
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			writeError(w, http.StatusMethodNotAllowed, codes.MethodNotAllowed, "rejections takes GET")
			return
		}
	default:
		writeError(w, http.StatusNotFound, codes.NotFound, "hypersync serves …/"+strings.Join(Ops, ", …/"))
		return
	}
	if msg := checkUser(user); msg != "" {
		writeError(w, http.StatusUnauthorized, codes.Unauthenticated, msg)
		return
	}
	if op == "events" {
		if !h.notErased(w, r, user) {
			return
		}
		if h.cfg.Live == nil {
			// live is off: 204 tells EventSource to stop reconnecting
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			return
		}
		h.cfg.Live.ServeEvents(w, r, user, func(status int, code, msg string) { writeError(w, status, code, msg) })
		return
	}
	ctx := r.Context()
	if op == "rejections" {
		h.rejections(ctx, w, r, user)
		return
	}
	if h.cfg.Observer != nil {
		rec := &statusRecorder{ResponseWriter: w}
		w = rec
		start := time.Now()
		defer func() { h.cfg.Observer.Request(op, rec.status, time.Since(start)) }()
	}
	if op == "push" {
		// a user in refusal debt waits before the push's time starts
		if !h.waitRefusals(ctx, w, user, time.Now()) {
			return
		}
		// A pull streams for as long as its answer takes, and is bounded
		// by watchStall instead.
		ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
		defer cancel()
		h.push(ctx, w, r, user)
	} else {
		h.pull(ctx, w, r, user)
	}
}

func checkUser(user string) string {
	switch {
	case user == "":
		return "no authenticated user: put an authentication directive in front of hypersync"
	case len(user) > 1024:
		return "the user id is longer than 1024 bytes"
	case strings.ContainsRune(user, 0) || !utf8.ValidString(user):
		return "the user id is not valid text"
	}
	return ""
}
