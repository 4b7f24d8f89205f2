package handler

import (
	"bytes"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// FuzzDecodePush feeds arbitrary bodies to the push decoder. It must never
// panic; a refused request is a 4xx; an accepted one yields one result per
// change, and every change it passes on is complete and within bounds.
func FuzzDecodePush(f *testing.F) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	h := &Handler{MaxBatch: 50, MaxBody: 1 << 16, Now: func() time.Time { return now }}
	f.Fuzz(func(t *testing.T, body []byte) {
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
