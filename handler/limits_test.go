package handler

import (
	_ "github.com/hypersync/hypersync/shapes/sqlite" // registers sqlite: DSNs

	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/hypersync/hypersync/shapes"
)

// A full pull budget answers 503 at once instead of queueing without
// bound, and does not hold up pushes, which have their own budget.
func TestConcurrencyBudgets(t *testing.T) {
	dsn := "sqlite:" + filepath.Join(t.TempDir(), "limits.db")
	db, err := shapes.Open(dsn, shapes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Destruct()
	cfg := shapes.ShapeConfig{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"title"}, CreateTable: true}
	store, err := shapes.NewStore(db, []shapes.ShapeConfig{cfg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{Store: store, Logger: zap.NewNop(), MaxPulls: 2, MaxPushes: 1, QueueWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var held []func()
	for i := 0; i < 2; i++ {
		held = append(held, h.acquire(context.Background(), false))
	}
	start := time.Now()
	w := httptest.NewRecorder()
	h.Serve(w, httptest.NewRequest("GET", "/sync/pull", nil), "alice")
	if w.Code != 503 || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), `"overloaded"`) {
		t.Fatalf("pull with the budget full: %d %s, want 503 overloaded with Retry-After", w.Code, w.Body)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Fatalf("the refused pull waited %v", waited)
	}
	w = httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/sync/push", strings.NewReader(`{"changes":[{"changeId":"c1","shapeKey":"todos","userId":"alice","updatedAt":"2026-11-25T10:00:00Z","payload":{"todoId":"t1","title":"x"}}]}`))
	req.Header.Set("Content-Type", "application/json")
	h.Serve(w, req, "alice")
	if w.Code != 201 {
		t.Fatalf("push while pulls are saturated: %d %s", w.Code, w.Body)
	}
	held[0]()
	w = httptest.NewRecorder()
	h.Serve(w, httptest.NewRequest("GET", "/sync/pull", nil), "alice")
	if w.Code != 200 {
		t.Fatalf("pull after a slot freed: %d %s", w.Code, w.Body)
	}
	held[1]()
}
