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
	h := &Handler{MaxBatch: 50, MaxBody: 1 << 16, Now: func() time.Time { return now }}
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
		if len(changes) != len(results) || len(changes) > h.MaxBatch {
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
	var typed struct {
		Changes *[]*typedChange `json:"changes"`
	}
	if err := json.Unmarshal(body, &typed); err != nil || typed.Changes == nil {
		t.Fatalf("scanPush decoded a body encoding/json refuses (%v): %q", err, body)
	}
	want := *typed.Changes
	if len(items) != len(want) {
		t.Fatalf("scanPush found %d changes, encoding/json %d: %q", len(items), len(want), body)
	}
	for i := range want {
		got := items[i]
		if got != nil {
			c := *got
			c.scanned = [4]string{} // where the scanner keeps strings; not part of the result
			got = &c
		}
		if !reflect.DeepEqual(got, want[i]) {
			t.Fatalf("change %d: scanPush %s, encoding/json %s; body %q", i, dump(items[i]), dump(want[i]), body)
		}
	}
}

func dump(tc *typedChange) string {
	if tc == nil {
		return "nil"
	}
	s := func(p *string) string {
		if p == nil {
			return "<nil>"
		}
		return *p
	}
	payload, _ := json.Marshal(tc.Payload)
	return "{" + s(tc.ChangeID) + " " + s(tc.ShapeKey) + " " + s(tc.UserID) + " " + s(tc.UpdatedAt) + " " + string(payload) + "}"
}
