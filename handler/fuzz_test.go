package handler

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hypersync/hypersync/shapes"
)

// FuzzDecodePush feeds arbitrary bodies to the push decoder. It must never
// panic; a refused request is a 4xx; an accepted one yields one result per
// change, and every change it passes on is complete and within bounds.
func FuzzDecodePush(f *testing.F) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	h, err := New(Config{MaxBatch: 50, MaxBody: 1 << 16, Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	// Bodies at the edges of what scanPush takes, beside those in testdata.
	change := `"shapeKey":"todos","userId":"alice","updatedAt":"2026-11-25T10:00:00Z"`
	for _, body := range []string{
		`{"changes":[{"change\u0049d":"a",` + change + `,"payload":{}}]}`,
		`{"x":[1,{"y":null}],"changes":[null,{"changeId":"a",` + change + `,"payload":{"t\u006fdoId":"t","todoId":"u"}}]}`,
		`{"changes":[{"ChangeId":"a","changeId":"b",` + change + `,"payload":{}}]}`,
		`{"changes":[{"changeId":"a","changeId":"b",` + change + `,"payload":{}}]}`,
		`{"changes":[{"changeId":"a",` + change + `,"payload":{"todoId":"t","meta":` + nestedArrays(scanPayloadLevels) + `}}]}`,
		`{"changes":[{"changeId":"a",` + change + `,"payload":{"todoId":"t","meta":` + nestedArrays(scanPayloadLevels+1) + `}}]}`,
	} {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkScanAgrees(t, body)
		r := httptest.NewRequest("POST", "/sync/push", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		changes, results, err := h.decodePush(httptest.NewRecorder(), r, "alice")
		if err != nil {
			re, ok := err.(*requestError)
			if !ok || re.status < 400 || re.status > 499 || re.code == "" || re.msg == "" {
				t.Fatalf("refusal %#v is not a 4xx with a code and message", err)
			}
			return
		}
		if len(changes) != len(results) || len(changes) > h.cfg.MaxBatch {
			t.Fatalf("%d changes, %d results", len(changes), len(results))
		}
		ids := map[string]bool{}
		for i, c := range changes {
			if results[i].Outcome == shapes.Rejected {
				if results[i].Code == "" || results[i].Message == "" {
					t.Fatalf("rejection without code or message: %+v", results[i])
				}
				continue
			}
			if c.ID == "" || c.Shape == "" || c.Payload == nil {
				t.Fatalf("incomplete change passed on: %+v", c)
			}
			if ids[c.ID] {
				t.Fatalf("changeId %q passed on twice", c.ID)
			}
			ids[c.ID] = true
			if c.UpdatedAt.Before(time.Unix(0, 0)) || c.UpdatedAt.After(now.Add(DefaultMaxFuture)) {
				t.Fatalf("updatedAt %v passed on", c.UpdatedAt)
			}
		}
	})
}

// jsonPush is a push body as encoding/json decodes it: the reference
// scanPush is held to.
type jsonPush struct {
	Changes *[]*struct {
		ChangeID  *string                    `json:"changeId"`
		ShapeKey  *string                    `json:"shapeKey"`
		UserID    *string                    `json:"userId"`
		UpdatedAt *string                    `json:"updatedAt"`
		Payload   map[string]json.RawMessage `json:"payload"`
	} `json:"changes"`
}

// checkScanAgrees holds scanPush to encoding/json: whatever body it
// decodes, json.Unmarshal must decode into the same changes.
func checkScanAgrees(t *testing.T, body []byte) {
	if !utf8.Valid(body) {
		return // the decoder refuses these before scanning
	}
	items, ok := scanPush(body)
	if !ok {
		return
	}
	var ref jsonPush
	if err := json.Unmarshal(body, &ref); err != nil || ref.Changes == nil {
		t.Fatalf("scanPush decoded a body encoding/json refuses (%v): %q", err, body)
	}
	want := *ref.Changes
	if len(items) != len(want) {
		t.Fatalf("scanPush found %d changes, encoding/json %d: %q", len(items), len(want), body)
	}
	for i, w := range want {
		got := items[i]
		if (got == nil) != (w == nil) {
			t.Fatalf("change %d: scanPush %v, encoding/json %v; body %q", i, got, w, body)
		}
		if got == nil {
			continue
		}
		// the payload as encoding/json sees it: the last of repeated names
		var payload map[string]json.RawMessage
		if got.Payload != nil {
			payload = map[string]json.RawMessage{}
			for _, f := range got.Payload {
				payload[f.Name] = f.Value
			}
		}
		if !reflect.DeepEqual(got.ChangeID, w.ChangeID) || !reflect.DeepEqual(got.ShapeKey, w.ShapeKey) ||
			!reflect.DeepEqual(got.UserID, w.UserID) || !reflect.DeepEqual(got.UpdatedAt, w.UpdatedAt) ||
			!reflect.DeepEqual(payload, w.Payload) {
			a, _ := json.Marshal([]any{got.ChangeID, got.ShapeKey, got.UserID, got.UpdatedAt, payload})
			b, _ := json.Marshal([]any{w.ChangeID, w.ShapeKey, w.UserID, w.UpdatedAt, w.Payload})
			t.Fatalf("change %d: scanPush %s, encoding/json %s; body %q", i, a, b, body)
		}
		for _, f := range got.Payload {
			if v, _ := got.Payload.Get(f.Name); string(v) != string(w.Payload[f.Name]) {
				t.Fatalf("change %d: Payload.Get(%q) = %s, encoding/json %s", i, f.Name, v, w.Payload[f.Name])
			}
		}
	}
}
