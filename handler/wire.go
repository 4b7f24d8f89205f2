package handler

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// TimeLayout is how every timestamp leaves hypersync: the form of the
// JavaScript client's Date.toISOString, RFC 3339 in UTC with exactly three
// fractional digits. The client keeps milliseconds only, and so does every
// timestamp hypersync writes.
const TimeLayout = shapes.TimeLayout

// AppendTime appends t in TimeLayout, in UTC (shapes.AppendTime).
func AppendTime(b []byte, t time.Time) []byte { return shapes.AppendTime(b, t) }

// ParseTime reads a timestamp a client sends: any RFC 3339 time.
func ParseTime(s string) (time.Time, error) { return time.Parse(time.RFC3339Nano, s) }

// PushResponse is the push answer. The 1.0.0 client reads acceptedChanges
// and ignores the rest.
type PushResponse struct {
	Status          string      `json:"status"`
	AcceptedChanges []string    `json:"acceptedChanges"`
	RejectedChanges []Rejection `json:"rejectedChanges"`
}

// Rejection tells why one change was not accepted.
type Rejection struct {
	ChangeID string `json:"changeId"`
	// Index is the change's position in the request.
	Index   int    `json:"index"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

// errorBody is every error answer: {"status":"error","error":"<code>","message":"..."}.
type errorBody struct {
	Status  string `json:"status"`
	Error   string `json:"error"`
	Message string `json:"message"`
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
	setJSONHeaders(w)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func setJSONHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
}

// writePushResponse answers 201 with resp. The accepted ids, which can be
// thousands, are written directly; encoding/json writes the rejections.
func writePushResponse(w http.ResponseWriter, resp *PushResponse) {
	rejected, err := json.Marshal(resp.RejectedChanges)
	if err != nil {
		writeJSON(w, http.StatusCreated, resp) // it reports the failure
		return
	}
	size := 64 + len(rejected)
	for _, id := range resp.AcceptedChanges {
		size += len(id) + 3
	}
	buf := make([]byte, 0, size)
	buf = append(buf, `{"status":`...)
	buf = AppendJSONString(buf, resp.Status)
	buf = append(buf, `,"acceptedChanges":[`...)
	for i, id := range resp.AcceptedChanges {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = AppendJSONString(buf, id)
	}
	buf = append(buf, `],"rejectedChanges":`...)
	buf = append(buf, rejected...)
	writeBody(w, http.StatusCreated, append(buf, '}'))
}

// The pull answer is written as it streams:
//
//	{"changes":[<change>,...],"syncedAt":"<time>"[,"hasMore":<bool>]}
//
// and each change as {"shapeKey":…,"payload":{…},"userId":…,"updatedAt":…}.

// rowWriter writes pulled rows as changes. It keeps, per shape, the JSON
// of the shape key and of each field name, computed once per pull.
type rowWriter struct {
	quotedUser []byte
	shapes     map[*shapes.Shape]*shapeJSON
}

type shapeJSON struct {
	key    []byte   // the shape key as a JSON string
	fields [][]byte // `"field":` per column
}

func newRowWriter(user string) *rowWriter {
	return &rowWriter{quotedUser: AppendJSONString(nil, user), shapes: map[*shapes.Shape]*shapeJSON{}}
}

func (rw *rowWriter) jsonOf(sh *shapes.Shape) *shapeJSON {
	if s := rw.shapes[sh]; s != nil {
		return s
	}
	s := &shapeJSON{key: AppendJSONString(nil, sh.Config.Key)}
	for _, c := range sh.Columns() {
		s.fields = append(s.fields, append(AppendJSONString(nil, c.Field), ':'))
	}
	rw.shapes[sh] = s
	return s
}

// appendChange appends one pulled row as a change.
func (rw *rowWriter) appendChange(buf []byte, row shapes.PulledRow) []byte {
	s := rw.jsonOf(row.Shape)
	buf = append(buf, `{"shapeKey":`...)
	buf = append(buf, s.key...)
	buf = append(buf, `,"payload":`...)
	buf = AppendRowPayload(buf, row, s.fields)
	buf = append(buf, `,"userId":`...)
	if row.User.Null || row.User.Text == nil {
		buf = append(buf, rw.quotedUser...)
	} else {
		buf = AppendJSONString(buf, string(row.User.Text))
	}
	buf = append(buf, `,"updatedAt":`...)
	buf = appendValue(buf, shapes.KindTimestamp, row.UpdatedAt)
	return append(buf, '}')
}

// AppendRowPayload appends the payload of a pulled row as the wire
// carries it: its values, or the tombstone form of a move-out, or the
// payload recorded when it left a scope. fields, when not nil, holds
// `"field":` per column.
func AppendRowPayload(buf []byte, row shapes.PulledRow, fields [][]byte) []byte {
	switch {
	case row.Payload != nil:
		return append(buf, row.Payload...)
	case row.Tombstone:
		return appendTombstone(buf, row.Shape, row.Values, fields)
	}
	return AppendPayload(buf, row.Shape, row.Values, fields)
}

// appendTombstone appends the move-out form of a shared row: its key
// fields, its scope field, and its tombstone set to true, and nothing
// else of it.
func appendTombstone(buf []byte, sh *shapes.Shape, vals []shapes.Value, fields [][]byte) []byte {
	sc := sh.Share()
	buf = append(buf, '{')
	for j, c := range sh.Columns() {
		if j != sc.Tomb && j >= len(sh.Keys) && j != sc.Scope {
			continue
		}
		if fields != nil {
			buf = append(buf, fields[j]...)
		} else {
			buf = append(AppendJSONString(buf, c.Field), ':')
		}
		if j == sc.Tomb {
			buf = append(buf, "true"...)
		} else {
			buf = appendValue(buf, c.Kind, vals[j])
		}
		buf = append(buf, ',')
	}
	buf[len(buf)-1] = '}'
	return buf
}

// AppendPayload appends a pulled row's values as the payload object, keyed
// by field name. fields, when not nil, holds `"field":` per column.
func AppendPayload(buf []byte, sh *shapes.Shape, vals []shapes.Value, fields [][]byte) []byte {
	buf = append(buf, '{')
	for j, c := range sh.Columns() {
		if j > 0 {
			buf = append(buf, ',')
		}
		if fields != nil {
			buf = append(buf, fields[j]...)
		} else {
			buf = append(AppendJSONString(buf, c.Field), ':')
		}
		buf = appendValue(buf, c.Kind, vals[j])
	}
	return append(buf, '}')
}

// appendValue appends one value as JSON (shapes.AppendValue).
func appendValue(buf []byte, k shapes.Kind, v shapes.Value) []byte {
	return shapes.AppendValue(buf, k, v)
}

// appendPullEnd closes the changes array and writes the cursor.
func appendPullEnd(buf []byte, res shapes.PullResult, paged bool) []byte {
	buf = append(buf, `],"syncedAt":"`...)
	buf = AppendTime(buf, res.Cursor)
	buf = append(buf, '"')
	if paged {
		if res.HasMore {
			buf = append(buf, `,"hasMore":true`...)
		} else {
			buf = append(buf, `,"hasMore":false`...)
		}
	}
	return append(buf, '}')
}

// AppendJSONString appends s as a JSON string (shapes.AppendJSONString).
func AppendJSONString[T string | []byte](buf []byte, s T) []byte {
	return shapes.AppendJSONString(buf, s)
}
