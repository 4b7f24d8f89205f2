package handler

import (
	"context"
	"time"
)

// The budgets bound how many pushes and how many pulls work on the
// database at once (Config.MaxPushes, MaxPulls). A request takes its slot
// once its body is read, so that a slow upload holds none.

// acquire takes a slot of the given budget, waiting at most QueueWait. It
// returns the release function, or nil when the budget stayed full.
func (h *Handler) acquire(ctx context.Context, push bool) func() {
	slots := h.pullSlots
	if push {
		slots = h.pushSlots
	}
	release := func() { <-slots }
	select {
	case slots <- struct{}{}:
		return release
	default:
	}
	timer := time.NewTimer(h.cfg.QueueWait)
	defer timer.Stop()
	select {
	case slots <- struct{}{}:
		return release
	case <-timer.C:
	case <-ctx.Done():
	}
	return nil
}
