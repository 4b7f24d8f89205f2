package handler

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestWatchStall(t *testing.T) {
	const d = 40 * time.Millisecond
	t.Run("a pull that keeps flowing past the timeout is not cut off", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var progress atomic.Int64
		stop := watchStall(ctx, cancel, d, &progress)
		defer stop()
		for end := time.Now().Add(4 * d); time.Now().Before(end); {
			progress.Add(1)
			time.Sleep(d / 8)
		}
		if ctx.Err() != nil {
			t.Fatal("a flowing pull was cancelled")
		}
	})
	// Bounds are loose on purpose: a loaded machine delays tickers.
	for _, tc := range []struct {
		name string
		rows int64 // rows sent before the pull stops
	}{
		{"a pull that stops is cancelled", 1},
		{"a pull with no first row is cancelled", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var progress atomic.Int64
			progress.Add(tc.rows)
			start := time.Now()
			stop := watchStall(ctx, cancel, d, &progress)
			defer stop()
			select {
			case <-ctx.Done():
				if took := time.Since(start); took < d {
					t.Fatalf("cancelled after %v, before the timeout", took)
				}
			case <-time.After(10 * d):
				t.Fatal("a stalled pull was not cancelled")
			}
		})
	}
}
