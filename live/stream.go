package live

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/hypersync/hypersync/internal/codes"
)

// Defaults of the Caddyfile's live options.
const (
	DefaultHeartbeat         = 25 * time.Second
	DefaultMaxStreams        = 10000
	DefaultMaxStreamsPerUser = 16
	DefaultStreamMaxAge      = 10 * time.Minute
)

// The reconnect delay a stream asks of EventSource (retry:) is drawn for
// each stream, uniformly between these. EventSource waits exactly that
// long, with no jitter of its own: with one fixed delay, every device of a
// restarted Caddy came back in the same instant. Spread over 4 s, 1,000
// streams come back at about 250 a second (each one authentication and
// one cursor read); no stream waits longer than 5 s, and what it missed
// meanwhile comes as one poke when it is back (Last-Event-ID).
const (
	retryMin = 1000 * time.Millisecond
	retryMax = 5000 * time.Millisecond
)

// retryDelay draws one stream's reconnect delay.
func retryDelay() time.Duration {
	return retryMin + rand.N(retryMax-retryMin+time.Millisecond)
}

// writeTimeout bounds one write to a stream. It is armed for the write
// alone and cleared after it: an armed deadline left between writes would
// reset an idle HTTP/2 stream when it passes.
const writeTimeout = 10 * time.Second

// Server serves the event streams of one configuration.
type Server struct {
	Broker            *Broker
	Heartbeat         time.Duration
	MaxStreams        int
	MaxStreamsPerUser int
	MaxAge            time.Duration
	// Cursor reads a user's sync stamp, for the id a stream starts with.
	Cursor func(ctx context.Context, user string) (time.Time, error)
	Logger *zap.Logger
}

// WithDefaults fills in what is not set.
func (s Server) WithDefaults() Server {
	if s.Heartbeat <= 0 {
		s.Heartbeat = DefaultHeartbeat
	}
	if s.MaxStreams <= 0 {
		s.MaxStreams = DefaultMaxStreams
	}
	if s.MaxStreamsPerUser <= 0 {
		s.MaxStreamsPerUser = DefaultMaxStreamsPerUser
	}
	if s.MaxAge <= 0 {
		s.MaxAge = DefaultStreamMaxAge
	}
	if s.Logger == nil {
		s.Logger = zap.NewNop()
	}
	return s
}

// ServeEvents streams pokes to an authenticated user until the client
// goes, the stream reaches its age, or the process exits.
//
// Every event carries an id: the user's sync stamp as of the poke. A
// client that reconnects sends the last one back (Last-Event-ID), and gets
// one poke at once if the user's cursor moved on since, and none if it did
// not, so that a restart of Caddy does not make every device pull. A new
// EventSource cannot set that header: it may give the id as the query
// parameter lastEventId instead (the header wins when both are there,
// since EventSource's own reconnects keep the URL and send the newer id).
func (s *Server) ServeEvents(w http.ResponseWriter, r *http.Request, user string, writeError func(status int, code, msg string)) {
	st := newStream(user)
	switch s.Broker.join(st, s.MaxStreams, s.MaxStreamsPerUser) {
	case tooManyStreams:
		w.Header().Set("Retry-After", "5")
		writeError(http.StatusServiceUnavailable, codes.TooManyStreams, fmt.Sprintf("this instance has %d event streams open, the most it serves", s.MaxStreams))
		return
	case tooManyForUser:
		w.Header().Set("Retry-After", "10")
		writeError(http.StatusTooManyRequests, codes.TooManyStreams, fmt.Sprintf("this user has %d event streams open, the most allowed", s.MaxStreamsPerUser))
		return
	}
	defer s.Broker.leave(st)

	ctx := r.Context()
	id := int64(0)
	if s.Cursor != nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cur, err := s.Cursor(cctx, user)
		cancel()
		if err != nil {
			// no id yet: the first poke brings one
			s.Logger.Debug("live: reading the cursor", zap.Error(err))
		} else if !cur.IsZero() {
			id = cur.UnixMilli()
			st.tell(id)
		}
	}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("lastEventId")
	}
	if last != "" {
		seen, err := strconv.ParseInt(last, 10, 64)
		if err != nil || seen < 0 || seen < id || id == 0 {
			// missed something (or cannot tell): one poke at once
			st.offer(id, time.Now().UnixMicro())
		}
	}

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	// no-transform: Caddy's encode would otherwise compress the stream,
	// which holds a compressor (1 to 3 MB) per open stream
	h.Set("Cache-Control", "no-cache, no-transform")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	buf := make([]byte, 0, 128)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		_, err := w.Write(b)
		if err == nil {
			err = rc.Flush()
		}
		_ = rc.SetWriteDeadline(time.Time{})
		return err == nil
	}
	buf = fmt.Appendf(buf[:0], "retry: %d\n", retryDelay().Milliseconds())
	if id > 0 {
		buf = fmt.Appendf(buf, "id: %d\n", id)
	}
	buf = append(buf, ": hypersync live\n\n"...)
	if !write(buf) {
		return
	}

	// 80 to 100 % of the age, so that streams opened together do not all
	// reconnect together
	age := time.Duration(float64(s.MaxAge) * (0.8 + 0.2*rand.Float64()))
	end := time.NewTimer(age)
	defer end.Stop()
	beat := time.NewTicker(s.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.Broker.closing:
			return
		case <-end.C:
			return // the client reconnects: authentication is checked again
		case <-beat.C:
			if !write(append(buf[:0], ":\n\n"...)) {
				return
			}
		case <-st.wake:
			stamp, at, ok := st.take()
			if !ok {
				continue
			}
			id = max(id, stamp)
			buf = append(buf[:0], "event: poke\n"...)
			if id > 0 {
				buf = fmt.Appendf(buf, "id: %d\n", id)
			}
			buf = append(buf, "data: {}\n\n"...)
			if !write(buf) {
				return
			}
			if s.Broker.observer != nil && at > 0 {
				s.Broker.observer.PokeSent(time.Since(time.UnixMicro(at)))
			}
		}
	}
}
