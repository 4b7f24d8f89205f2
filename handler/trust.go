package handler

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// CursorCookie is the cookie that binds a pull's lastPull to the user it
// was handed to. The 1.0.0 client keeps one lastPull per browser profile
// (localStorage), not per user: when alice signs out and bob signs in,
// bob's first pull sends alice's cursor, and every row of bob's stamped
// before it would be skipped for good. Every pull answer sets the cookie
// to a keyed hash of its user; a pull that carries another user's is
// answered from the epoch. A pull without the cookie (a client that is no
// browser) trusts its lastPull.
const CursorCookie = "hypersync_cursor"

// cursorCookie checks the pull's cookie against user and sets it for the
// answer. It reports whether the pull's lastPull was handed to another
// user, and then must be read from the epoch.
func (h *Handler) cursorCookie(ctx context.Context, w http.ResponseWriter, r *http.Request, user string) (foreign bool, err error) {
	tag, err := h.cfg.Store.CursorTag(ctx, user)
	if err != nil {
		return false, err
	}
	if c, err := r.Cookie(CursorCookie); err == nil && c.Value != tag {
		foreign = true
	}
	http.SetCookie(w, &http.Cookie{Name: CursorCookie, Value: tag, Path: endpoint(r), HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	return foreign, nil
}

// endpoint is the path the sync endpoints sit under, as the client asked
// for it (before any rewrite strips a prefix): /sync for /sync/pull/.
func endpoint(r *http.Request) string {
	path := r.URL.Path
	if r.RequestURI != "" && strings.HasPrefix(r.RequestURI, "/") {
		path, _, _ = strings.Cut(r.RequestURI, "?")
	}
	path = strings.TrimSuffix(path, "/")
	if i := strings.LastIndexByte(path, '/'); i > 0 {
		return path[:i]
	}
	return "/"
}

// RejectionEntry is one refused change in the answer of …/rejections.
type RejectionEntry struct {
	ChangeID string          `json:"changeId"`
	At       string          `json:"at"`
	Last     string          `json:"last"`
	Times    int             `json:"times"`
	ShapeKey string          `json:"shapeKey"`
	Key      json.RawMessage `json:"key"`
	Error    string          `json:"error"`
	Message  string          `json:"message"`
}

// notErased answers 403 for a user the operator erased, for the requests
// whose statements do not check it themselves (pushes and pulls do), and
// reports whether the request may go on.
func (h *Handler) notErased(w http.ResponseWriter, r *http.Request, user string) bool {
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Timeout)
	defer cancel()
	erased, err := h.cfg.Store.Erased(ctx, user)
	if err == nil && erased {
		err = shapes.ErrErased
	}
	if err != nil {
		h.storeError(w, r, ctx, Op(r.URL.Path), err)
		return false
	}
	return true
}

// rejections answers the authenticated user's record of refused changes,
// newest first.
func (h *Handler) rejections(ctx context.Context, w http.ResponseWriter, r *http.Request, user string) {
	if !h.notErased(w, r, user) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	recs, err := h.cfg.Store.Rejections(ctx, user)
	if err != nil {
		h.storeError(w, r, ctx, "rejections", err)
		return
	}
	out := struct {
		Rejections []RejectionEntry `json:"rejections"`
	}{Rejections: make([]RejectionEntry, 0, len(recs))}
	for _, rec := range recs {
		out.Rejections = append(out.Rejections, RejectionOf(rec))
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}

// RejectionOf is one entry of the record as …/rejections answers it.
func RejectionOf(rec shapes.Rejection) RejectionEntry {
	key := rec.Key
	if key == nil {
		key = json.RawMessage("null")
	}
	return RejectionEntry{ChangeID: rec.ChangeID, At: rec.At.UTC().Format(TimeLayout), Last: rec.Last.UTC().Format(TimeLayout),
		Times: rec.Times, ShapeKey: rec.Shape, Key: key, Error: rec.Error, Message: rec.Message}
}

// EpochChanges returns the changes a pull from the epoch answers user,
// each in the pull's own form (caddy hypersync export).
func EpochChanges(ctx context.Context, st *shapes.Store, user string) ([]json.RawMessage, error) {
	rw := newRowWriter(user)
	out := []json.RawMessage{}
	_, err := st.Pull(ctx, user, time.Unix(0, 0).UTC(), 0, func(row shapes.PulledRow) error {
		if row.Restart {
			out = out[:0]
			return nil
		}
		out = append(out, rw.appendChange(nil, row))
		return nil
	})
	return out, err
}
