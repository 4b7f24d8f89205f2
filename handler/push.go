package handler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/hypersync/hypersync/internal/codes"
	"github.com/hypersync/hypersync/shapes"
)

func (h *Handler) push(ctx context.Context, w http.ResponseWriter, r *http.Request, user string) {
	start := time.Now()
	changes, results, err := h.decodePush(w, r, user)
	if err != nil {
		var re *requestError
		if errors.As(err, &re) {
			writeError(w, re.status, re.code, re.msg)
		} else {
			h.storeError(w, r, ctx, "push", err)
		}
		return
	}
	release := h.acquire(ctx, true)
	if release == nil {
		writeOverloaded(w, "push")
		return
	}
	// Changes rejected here reach the store marked, and it skips them.
	dbStart := time.Now()
	_, err = h.cfg.Store.Push(ctx, user, changes, results)
	release()
	if h.cfg.Observer != nil {
		h.cfg.Observer.DatabaseTime("push", time.Since(dbStart))
	}
	if err != nil {
		h.storeError(w, r, ctx, "push", err)
		return
	}
	resp := PushResponse{Status: "OK", AcceptedChanges: make([]string, 0, len(changes)), RejectedChanges: []Rejection{}}
	var counts [shapes.NumOutcomes]int
	var rejectedBy map[string]int // code -> count, for one log line
	var tally outcomeTally
	for i, ch := range changes {
		rr := results[i]
		counts[rr.Outcome]++
		if h.cfg.Observer != nil {
			outcome := rr.Code
			if outcome == "" {
				outcome = rr.Outcome.String()
			}
			// A made-up shape key must not become a label, and a label
			// must not point into the request body.
			shape, known := h.cfg.Store.Known(ch.Shape)
			if !known {
				shape = "(unknown)"
			}
			tally.add(shape, outcome)
		}
		if rr.Outcome.Accepted() {
			resp.AcceptedChanges = append(resp.AcceptedChanges, ch.ID)
			continue
		}
		resp.RejectedChanges = append(resp.RejectedChanges, Rejection{ChangeID: ch.ID, Index: i, Error: rr.Code, Message: rr.Message})
		if rejectedBy == nil {
			rejectedBy = map[string]int{}
		}
		rejectedBy[rr.Code]++
	}
	for _, t := range tally {
		h.cfg.Observer.Changes(t.shape, t.outcome, t.n)
	}
	h.refusals.charge(user, len(resp.RejectedChanges), time.Now())
	writePushResponse(w, &resp)
	if rejectedBy != nil && h.cfg.KeepRejections > 0 {
		h.recordRejections(w, r, user, changes, results)
	}
	if rejectedBy != nil {
		// One line per push, not per change: a hostile batch must not flood
		// the log. Messages can quote payload values, so only codes go here;
		// the client gets the messages.
		h.logger(r).Warn("changes rejected", zap.String("user", user), zap.Int("rejected", len(resp.RejectedChanges)),
			zap.Any("codes", rejectedBy), zap.String("first_change_id", resp.RejectedChanges[0].ChangeID))
	}
	if c := h.cfg.Logger.Check(zapcore.DebugLevel, "push"); c != nil {
		c.Write(zap.String("user", user), zap.Int("changes", len(changes)),
			zap.Int("applied", counts[shapes.Applied]), zap.Int("stale", counts[shapes.Stale]+counts[shapes.Superseded]),
			zap.Int("rejected", counts[shapes.Rejected]), zap.Duration("duration", time.Since(start)))
	}
}

// recordRejections adds the push's refused changes to the user's record,
// after the answer: in the background, so that the push's answer ends as
// soon as it is written (an HTTP/2 stream ends only when the handler
// returns), and a failure to write it never fails the push. When every
// background slot is busy (a flood of refused pushes), the record is
// written here, after the answer is flushed: the flood slows itself
// rather than pile up goroutines, and no record is lost.
func (h *Handler) recordRejections(w http.ResponseWriter, r *http.Request, user string, changes []shapes.Change, results []shapes.Result) {
	now := h.cfg.Now().UTC()
	byID := map[string]int{}
	var recs []shapes.Rejection
	for i, ch := range changes {
		rr := results[i]
		if rr.Outcome.Accepted() || ch.ID == "" {
			continue
		}
		// cloned: the request's buffers are reused once it ends
		rec := shapes.Rejection{ChangeID: strings.Clone(ch.ID), Shape: strings.Clone(ch.Shape), Key: h.cfg.Store.KeyOf(ch.Shape, ch.Payload),
			Error: rr.Code, Message: strings.Clone(rr.Message), At: now, Last: now, Times: 1}
		if j, seen := byID[rec.ChangeID]; seen {
			recs[j] = rec // one entry per changeId: the push's last word on it
			continue
		}
		byID[rec.ChangeID] = len(recs)
		recs = append(recs, rec)
	}
	user, log := strings.Clone(user), h.logger(r)
	record := func() {
		defer h.recorded.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.cfg.Store.RecordRejections(ctx, user, recs, h.cfg.KeepRejections); err != nil {
			log.Warn("recording refused changes", zap.String("user", user), zap.Error(err))
		}
	}
	h.recorded.Add(1)
	select {
	case h.recording <- struct{}{}:
		go func() {
			defer func() { <-h.recording }()
			record()
		}()
	default:
		_ = http.NewResponseController(w).Flush()
		record()
	}
}

// WaitRecords waits until the records of refused changes of the pushes
// answered so far are written (or failed).
func (h *Handler) WaitRecords() { h.recorded.Wait() }

// outcomeTally counts a push's changes by shape and outcome, for the
// Observer: one call per pair instead of one per change. Pairs are few:
// shapes are configured, and unknown ones share one label.
type outcomeTally []outcomeCount

type outcomeCount struct {
	shape, outcome string
	n              int
}

func (t *outcomeTally) add(shape, outcome string) {
	for i := range *t {
		if (*t)[i].shape == shape && (*t)[i].outcome == outcome {
			(*t)[i].n++
			return
		}
	}
	*t = append(*t, outcomeCount{shape, outcome, 1})
}

// typedChange is one change as the client sends it. A nil field was null
// or missing; invalid is set when the change could not take this form.
type typedChange struct {
	ChangeID  *string
	ShapeKey  *string
	UserID    *string
	UpdatedAt *string
	Payload   shapes.Payload

	invalid  string // why the change is not a change at all
	badField string // a field of the wrong type: changeId, shapeKey, userId, updatedAt or payload

	scanned [numStringFields]string // where scanPush keeps the strings the pointers point to, by changeField
}

// retype decodes one change field by field, noting the first field of the
// wrong type, so that the change can be rejected with the right code.
func retype(item json.RawMessage) *typedChange {
	tc := &typedChange{}
	item = bytes.TrimSpace(item)
	if len(item) == 0 || item[0] != '{' {
		tc.invalid = "a change must be a JSON object"
		return tc
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(item, &fields); err != nil {
		tc.invalid = err.Error()
		return tc
	}
	str := func(name string, dst **string) {
		raw := bytes.TrimSpace(fields[name])
		if len(raw) == 0 || raw[0] == 'n' {
			return
		}
		var s string
		if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
			if tc.badField == "" {
				tc.badField = name
			}
			return
		}
		*dst = &s
	}
	str("changeId", &tc.ChangeID)
	str("shapeKey", &tc.ShapeKey)
	str("userId", &tc.UserID)
	str("updatedAt", &tc.UpdatedAt)
	if p := bytes.TrimSpace(fields["payload"]); len(p) > 0 && p[0] != 'n' {
		var payload map[string]json.RawMessage
		if p[0] == '{' && json.Unmarshal(p, &payload) == nil {
			tc.Payload = shapes.PayloadOf(payload)
		} else if tc.badField == "" {
			tc.badField = "payload"
		}
	}
	return tc
}

// decodePush reads and checks a push body. Problems with the request as a
// whole are a *requestError; problems with one change reject that change
// alone, through the returned results.
func (h *Handler) decodePush(w http.ResponseWriter, r *http.Request, user string) ([]shapes.Change, []shapes.Result, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !hasJSONSuffix(mt)) {
			return nil, nil, &requestError{http.StatusUnsupportedMediaType, codes.UnsupportedMediaType, "push takes Content-Type: application/json"}
		}
	} else {
		return nil, nil, &requestError{http.StatusUnsupportedMediaType, codes.UnsupportedMediaType, "push takes Content-Type: application/json"}
	}
	maxBody := h.cfg.MaxBody
	body, err := readBody(w, r, maxBody)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, nil, &requestError{http.StatusRequestEntityTooLarge, codes.BodyTooLarge, fmt.Sprintf("the request body is larger than max_body (%d bytes)", maxBody)}
		}
		return nil, nil, badRequest(codes.InvalidBody, "reading the request body: %v", err)
	}
	if !utf8.Valid(body) {
		return nil, nil, badRequest(codes.InvalidJSON, "the request body is not valid UTF-8")
	}
	maxBatch := h.cfg.MaxBatch
	// Fast path: a well-typed body decodes in one pass (scanPush). Any
	// change of the wrong shape sends the whole body down the slow path,
	// which finds which change is wrong and rejects it alone.
	items, ok := scanPush(body)
	if !ok {
		var envelope struct {
			Changes json.RawMessage `json:"changes"`
		}
		if err := json.Unmarshal(body, &envelope); err != nil {
			return nil, nil, badRequest(codes.InvalidJSON, "the request body is not a JSON object: %v", err)
		}
		raw := bytes.TrimSpace(envelope.Changes)
		if len(raw) == 0 || raw[0] != '[' {
			return nil, nil, badRequest(codes.InvalidRequest, `the body must be {"changes":[...]}`)
		}
		var raws []json.RawMessage
		if err := json.Unmarshal(raw, &raws); err != nil {
			return nil, nil, badRequest(codes.InvalidJSON, "changes: %v", err)
		}
		items = make([]*typedChange, len(raws))
		for i, r := range raws {
			items[i] = retype(r)
		}
	}
	if len(items) > maxBatch {
		return nil, nil, &requestError{http.StatusRequestEntityTooLarge, codes.BatchTooLarge, fmt.Sprintf("a push may carry at most %d changes (max_batch); this one has %d", maxBatch, len(items))}
	}
	latest := h.cfg.Now().Add(h.cfg.MaxFuture)
	changes := make([]shapes.Change, len(items))
	results := make([]shapes.Result, len(items))
	seen := make(map[string]bool, len(items))
	for i, item := range items {
		ch, code, msg := decodeChange(item, user, latest)
		changes[i] = ch
		if code == "" && ch.ID != "" && seen[ch.ID] {
			code, msg = codes.DuplicateChangeID, "an earlier change in this push has the same changeId"
		}
		if ch.ID != "" {
			seen[ch.ID] = true
		}
		if code != "" {
			results[i] = shapes.Result{Outcome: shapes.Rejected, Code: code, Message: msg}
		}
	}
	return changes, results, nil
}

func hasJSONSuffix(mt string) bool { return len(mt) > 5 && mt[len(mt)-5:] == "+json" }

var epoch = time.Unix(0, 0)

// decodeChange checks one change's envelope. It returns a rejection code
// and message when the change cannot be processed.
func decodeChange(tc *typedChange, user string, latest time.Time) (ch shapes.Change, code, msg string) {
	if tc == nil {
		return ch, codes.InvalidChange, "a change must be a JSON object"
	}
	if tc.invalid != "" {
		return ch, codes.InvalidChange, tc.invalid
	}
	if tc.ChangeID == nil || *tc.ChangeID == "" || tc.badField == "changeId" {
		return ch, codes.InvalidChange, "changeId must be a non-empty string"
	}
	ch.ID = *tc.ChangeID
	if tc.ShapeKey == nil || *tc.ShapeKey == "" || tc.badField == "shapeKey" {
		return ch, codes.InvalidChange, "shapeKey must be a non-empty string"
	}
	ch.Shape = *tc.ShapeKey
	if tc.UserID == nil || tc.badField == "userId" {
		return ch, codes.InvalidChange, "userId must be a string"
	}
	if *tc.UserID != user {
		return ch, codes.UserMismatch, "userId is not the authenticated user"
	}
	if tc.UpdatedAt == nil || tc.badField == "updatedAt" {
		return ch, codes.InvalidUpdatedAt, "updatedAt must be an RFC 3339 timestamp string"
	}
	t, err := ParseTime(*tc.UpdatedAt)
	if err != nil {
		return ch, codes.InvalidUpdatedAt, "updatedAt must be an RFC 3339 timestamp"
	}
	if t.Before(epoch) {
		return ch, codes.InvalidUpdatedAt, "updatedAt is before 1970"
	}
	if t.After(latest) {
		return ch, codes.InvalidUpdatedAt, "updatedAt is too far in the future; is the device's clock right?"
	}
	ch.UpdatedAt = t
	if tc.Payload == nil || tc.badField == "payload" {
		return ch, codes.InvalidPayload, "payload must be a JSON object"
	}
	ch.Payload = tc.Payload
	return ch, "", ""
}

// readBody reads the whole body, at most max bytes, into a buffer sized
// from Content-Length when the client sent one.
func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, max)
	if r.ContentLength <= 0 || r.ContentLength > max {
		return io.ReadAll(body)
	}
	buf := make([]byte, 0, r.ContentLength+1)
	for {
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)] // grow; the client sent more than it said
		}
	}
}

// waitRefusals holds a push of a user in refusal debt until the debt is
// paid, and answers 429 when that takes longer than maxRefusalWait: after
// maxRefusalWait, so that a client that retries at once still sends one
// request every maxRefusalWait (refusals.go). It reports whether the push
// may go on.
func (h *Handler) waitRefusals(ctx context.Context, w http.ResponseWriter, user string, now time.Time) bool {
	wait := h.refusals.debt(user, now)
	if wait <= 0 {
		return true
	}
	t := time.NewTimer(min(wait, maxRefusalWait))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	if wait <= maxRefusalWait {
		return true
	}
	w.Header().Set("Retry-After", strconv.Itoa(int((wait-maxRefusalWait)/time.Second)+1))
	writeError(w, http.StatusTooManyRequests, codes.TooManyRefusals,
		fmt.Sprintf("this user's pushes had more changes refused than refusal_rate allows (%d a second); try again later", h.cfg.RefusalRate))
	return false
}
