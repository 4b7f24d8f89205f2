package hypersync

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/hypersync/hypersync/shapes"
)

func init() {
	caddy.RegisterModule(adminHealth{})
}

// live holds every provisioned hypersync handler, for the health route.
var provisioned sync.Map // *HyperSync -> struct{}

// adminHealth serves GET /hypersync/health on Caddy's admin endpoint: each
// configured database's reachability and latency, and each shape's schema
// check. It answers 200 when everything is right and 503 otherwise. It is
// an admin route, not a path under the sync endpoint, so it is never public.
type adminHealth struct{}

// CaddyModule returns the Caddy module information.
func (adminHealth) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.hypersync",
		New: func() caddy.Module { return adminHealth{} },
	}
}

// Routes returns the admin routes.
func (adminHealth) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/hypersync/health", Handler: caddy.AdminHandlerFunc(serveHealth)}}
}

// Health is the answer of /hypersync/health.
type Health struct {
	Status    string           `json:"status"` // "ok" or "degraded"
	Databases []DatabaseHealth `json:"databases"`
	Shapes    []ShapeHealth    `json:"shapes"`
}

// DatabaseHealth is one database as the health route saw it.
type DatabaseHealth struct {
	Database  string  `json:"database"` // the DSN, password hidden
	Kind      string  `json:"kind"`
	Reachable bool    `json:"reachable"`
	LatencyMS float64 `json:"latency_ms"`
	Error     string  `json:"error,omitempty"`
	// Live is the live listener of the database, when it has one (live
	// sync on PostgreSQL).
	Live *LiveHealth `json:"live,omitempty"`
}

// LiveHealth is a database's live listener: whether pokes from other
// instances and from writes outside hypersync reach this instance.
type LiveHealth struct {
	Listening bool   `json:"listening"`
	Error     string `json:"error,omitempty"`
}

// listeners returns the state of every live listener, by database: nil
// when it works.
func listeners() map[string]error {
	out := map[string]error{}
	provisioned.Range(func(k, _ any) bool {
		if hs := k.(*HyperSync); hs.db != nil && hs.broker != nil && hs.broker.Transported() {
			out[hs.db.String()] = hs.broker.Listening()
		}
		return true
	})
	return out
}

// ShapeHealth is one shape's schema check.
type ShapeHealth struct {
	Database string `json:"database"`
	shapes.Diagnosis
	Error string `json:"error,omitempty"`
}

func serveHealth(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errMethod}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	h := checkHealth(ctx)
	w.Header().Set("Content-Type", "application/json")
	if h.Status != "ok" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	return json.NewEncoder(w).Encode(h)
}

type apiErr string

func (e apiErr) Error() string { return string(e) }

const errMethod = apiErr("use GET")

func checkHealth(ctx context.Context) Health {
	h := Health{Status: "ok", Databases: []DatabaseHealth{}, Shapes: []ShapeHealth{}}
	seen := map[*shapes.Database]bool{}
	var handlers []*HyperSync
	provisioned.Range(func(k, _ any) bool {
		handlers = append(handlers, k.(*HyperSync))
		return true
	})
	for _, hs := range handlers {
		if hs.db == nil || seen[hs.db] {
			continue
		}
		seen[hs.db] = true
		dh := DatabaseHealth{Database: hs.db.String(), Kind: hs.db.Kind()}
		start := time.Now()
		if err := hs.db.Ping(ctx); err != nil {
			dh.Error = err.Error()
			h.Status = "degraded"
		} else {
			dh.Reachable = true
		}
		dh.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
		if hs.broker != nil && hs.broker.Transported() {
			dh.Live = &LiveHealth{Listening: true}
			if err := hs.broker.Listening(); err != nil {
				dh.Live = &LiveHealth{Error: err.Error()}
				h.Status = "degraded"
			}
		}
		h.Databases = append(h.Databases, dh)
	}
	for _, hs := range handlers {
		for _, cfg := range hs.Shapes {
			sh := ShapeHealth{Database: hs.db.String()}
			d, err := hs.db.Diagnose(ctx, cfg, hs.Shapes...)
			sh.Diagnosis = d
			if err != nil {
				sh.Error = err.Error()
			}
			if !d.OK {
				h.Status = "degraded"
			}
			h.Shapes = append(h.Shapes, sh)
		}
	}
	sort.Slice(h.Databases, func(i, j int) bool { return h.Databases[i].Database < h.Databases[j].Database })
	return h
}

// Interface guard
var _ caddy.AdminRouter = adminHealth{}
