package handler

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/hypersync/hypersync/internal/codes"
	"github.com/hypersync/hypersync/shapes"
)

// pull streams the rows of the user written after lastPull, as they come
// from the store, and ends the answer with the cursor the store gives.
func (h *Handler) pull(ctx context.Context, w http.ResponseWriter, r *http.Request, user string) {
	start := time.Now()
	since := time.Unix(0, 0).UTC()
	query := r.URL.Query()
	if v := query.Get("lastPull"); v != "" {
		t, err := ParseTime(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, codes.InvalidLastPull, "lastPull must be an RFC 3339 timestamp")
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
			writeError(w, http.StatusBadRequest, codes.InvalidLimit, fmt.Sprintf("limit must be a whole number from 1 to %d", MaxPullLimit))
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
	if h.cfg.CursorCookie {
		foreign, err := h.cursorCookie(ctx, w, r, user)
		if err != nil {
			h.storeError(w, r, ctx, "pull", err)
			return
		}
		if foreign {
			since = time.Unix(0, 0).UTC() // lastPull was another user's
		}
	}
	var progress atomic.Int64
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer watchStall(ctx, cancel, h.cfg.Timeout, &progress)()

	out := &pullWriter{w: w}
	setJSONHeaders(w)
	rw := newRowWriter(user)
	const head = `{"changes":[`
	buf := append(make([]byte, 0, 32<<10), head...)
	n := 0
	var perShape map[*shapes.Shape]int
	if h.cfg.Observer != nil {
		perShape = map[*shapes.Shape]int{}
	}
	dbStart := time.Now()
	res, err := h.cfg.Store.Pull(ctx, user, since, limit, func(row shapes.PulledRow) error {
		if row.Restart {
			// a standby's rows, void: read again elsewhere
			if out.started {
				return errSentAlready
			}
			buf, n = append(buf[:0], head...), 0
			clear(perShape)
			return nil
		}
		if n > 0 {
			buf = append(buf, ',')
		}
		n++
		progress.Add(1)
		if perShape != nil {
			perShape[row.Shape]++
		}
		buf = rw.appendChange(buf, row)
		if len(buf) >= 32<<10 {
			_, err := out.Write(buf)
			buf = buf[:0]
			return err
		}
		return nil
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
	if h.cfg.Observer != nil {
		h.cfg.Observer.DatabaseTime("pull", time.Since(dbStart))
		for sh, k := range perShape {
			h.cfg.Observer.RowsPulled(sh.Config.Key, k)
		}
	}
	buf = appendPullEnd(buf, res, limit > 0)
	if _, err := out.Write(buf); err != nil {
		h.cfg.Logger.Debug("writing pull answer", zap.Error(err))
	}
	if c := h.cfg.Logger.Check(zapcore.DebugLevel, "pull"); c != nil {
		c.Write(zap.String("user", user), zap.Time("last_pull", since), zap.Int("rows", n),
			zap.Time("synced_at", res.Cursor), zap.Duration("duration", time.Since(start)))
	}
}

// errSentAlready: a pull must start again (shapes.PulledRow.Restart) once
// part of its answer has left.
var errSentAlready = errors.New("the pull had to start again after part of its answer was sent")

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
