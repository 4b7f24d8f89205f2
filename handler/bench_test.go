package handler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/pgtest"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// BenchmarkPush runs the whole push path in one process, from the request
// body to the committed rows: decoding, checks, planning, the PostgreSQL
// statements and the answer. Each iteration pushes 300 new rows, as the
// client's batches do. -benchmem shows what one push allocates. It runs
// with pgx's default mode, which sends binary arrays, and with
// simple_protocol, which sends typed slices.
func BenchmarkPush(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchmarkPush(b, "", 0, 0) })
	b.Run("simple-protocol", func(b *testing.B) { benchmarkPush(b, "simple_protocol", 0, 0) })
}

// BenchmarkPushRecord is the push with the record of refused changes at
// keep_rejections' default against it turned off: pushes that refuse
// nothing, and pushes of which a tenth is refused (an unknown shape,
// refused before the database). The record is written after the answer,
// in the background, so a push's time should not change.
func BenchmarkPushRecord(b *testing.B) {
	for _, refused := range []int{0, 30} {
		for _, keep := range []int{0, shapes.DefaultKeepRejections} {
			b.Run(fmt.Sprintf("refused=%d/keep=%d", refused, keep), func(b *testing.B) { benchmarkPush(b, "", keep, refused) })
		}
	}
}

func benchmarkPush(b *testing.B, mode string, keep, refused int) {
	dsn := pgtest.NewDatabase(b)
	pgtest.Exec(b, dsn, pgtest.TodosDDL, pgtest.TodosIndex)
	if mode != "" {
		dsn = pgtest.WithParam(dsn, "default_query_exec_mode", mode)
	}
	store := testkit.NewStore(b, testkit.OpenDB(b, dsn), testkit.TodosShape)
	h, err := handler.New(handler.Config{Store: store, Logger: zap.NewNop(), Timeout: 10 * time.Second, KeepRejections: keep})
	if err != nil {
		b.Fatal(err)
	}
	const batch = 300
	bodies := make([][]byte, 0, 64)
	next := 0
	body := func() []byte {
		var changes []map[string]any
		for i := 0; i < batch; i++ {
			next++
			shape := "todos"
			if i < refused {
				shape = "nope"
			}
			changes = append(changes, map[string]any{
				"changeId": fmt.Sprintf("1b4e28ba-2fa1-41d2-883f-%012d", next), "shapeKey": shape, "pushed": 0, "userId": "alice",
				"updatedAt": time.Now().UTC().Format("2006-01-02T15:04:05.000Z"),
				"payload": map[string]any{"todoId": fmt.Sprintf("t%d", next), "title": fmt.Sprintf("Buy milk and bread for the week %d", next),
					"done": next%2 == 0, "deleted": false},
			})
		}
		out, _ := json.Marshal(map[string]any{"changes": changes})
		return out
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		if len(bodies) == 0 {
			for range cap(bodies) {
				bodies = append(bodies, body())
			}
		}
		in := bodies[len(bodies)-1]
		bodies = bodies[:len(bodies)-1]
		r := httptest.NewRequest("POST", "/sync/push", bytes.NewReader(in))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		b.StartTimer()
		h.Serve(w, r, "alice")
		if w.Code != 201 || refused == 0 && !bytes.Contains(w.Body.Bytes(), []byte(`"rejectedChanges":[]`)) {
			b.Fatalf("push answered %d: %.300s", w.Code, w.Body.Bytes())
		}
	}
	b.StopTimer()
	h.WaitRecords()
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "changes/s")
}

// discard is a ResponseWriter that keeps nothing.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkPull measures a full pull of 20,000 rows on PostgreSQL through
// the handler: the driver's reading and the handler's writing of the JSON.
func BenchmarkPull(b *testing.B) {
	dsn := pgtest.NewDatabase(b)
	pgtest.Exec(b, dsn, pgtest.TodosDDL, pgtest.TodosIndex)
	store := testkit.NewStore(b, testkit.OpenDB(b, dsn), testkit.TodosShape)
	const rows = 20000
	for i := 0; i < rows; i += 1000 {
		changes := make([]shapes.Change, 1000)
		for j := range changes {
			changes[j] = shapes.Change{ID: fmt.Sprint(i + j), Shape: "todos", UpdatedAt: time.Now(),
				Payload: testkit.PayloadOf(fmt.Sprintf(`{"todoId":"t%d","title":"Buy milk and bread for the week %d","done":false,"deleted":false}`, i+j, i+j))}
		}
		if _, err := store.Push(context.Background(), "alice", changes, make([]shapes.Result, len(changes))); err != nil {
			b.Fatal(err)
		}
	}
	h, err := handler.New(handler.Config{Store: store, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		w := &discard{h: http.Header{}}
		h.Serve(w, httptest.NewRequest("GET", "/sync/pull/", nil), "alice")
	}
	b.ReportMetric(float64(b.N*rows)/b.Elapsed().Seconds(), "rows/s")
}
