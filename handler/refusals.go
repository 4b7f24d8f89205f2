package handler

import (
	"sync"
	"time"
)

// A user's refused changes cost the server as much as accepted ones: the
// body is read, every change decided, the answer and the record written.
// The 1.0.0 client resends a refused change at every sync, so an honest
// device refuses a handful per sync, and only a misbehaving or hostile one
// refuses thousands a second: it would take the CPU every other user's
// pushes need (a flood of refused memberships, issue 17).
//
// refusalBudget gives each user a bucket of refusals that refills at rate
// per second, up to burst. A push takes from it what it refused, after the
// fact (the count is only known then), and may drive it below zero. The
// next push of a user in debt waits until the bucket is back at zero, up to
// maxRefusalWait, before its body is read; a longer debt is answered 429
// with Retry-After once it has waited maxRefusalWait, so that a client
// retrying at once costs one request every maxRefusalWait. A waiting push
// holds a goroutine and no database slot or CPU, so a flood slows itself
// down to the rate, and other users' pushes are not held up. The budget is
// per instance.
type refusalBudget struct {
	rate, burst float64 // refusals per second; the most a bucket holds

	mu    sync.Mutex
	users map[string]*refusals
}

// refusals is one user's bucket: tokens at the time at.
type refusals struct {
	tokens float64
	at     time.Time
}

// maxRefusalWait is the longest a push waits for its user's budget
// before it is answered 429.
const maxRefusalWait = 2 * time.Second

// refusalBurst is how many seconds of the rate a bucket holds.
const refusalBurst = 10

// sweepAt is how many buckets trigger a sweep of the full ones.
const sweepAt = 10_000

func newRefusalBudget(rate int) *refusalBudget {
	if rate <= 0 {
		return nil
	}
	return &refusalBudget{rate: float64(rate), burst: float64(rate * refusalBurst), users: map[string]*refusals{}}
}

// refill brings r to now.
func (b *refusalBudget) refill(r *refusals, now time.Time) {
	r.tokens = min(b.burst, r.tokens+now.Sub(r.at).Seconds()*b.rate)
	r.at = now
}

// debt is how long user must wait before their next push: zero when their
// bucket is not below zero.
func (b *refusalBudget) debt(user string, now time.Time) time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.users[user]
	if !ok {
		return 0
	}
	b.refill(r, now)
	if r.tokens >= 0 {
		return 0
	}
	return time.Duration(-r.tokens / b.rate * float64(time.Second))
}

// charge takes n refusals from user's bucket.
func (b *refusalBudget) charge(user string, n int, now time.Time) {
	if b == nil || n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.users[user]
	if !ok {
		if len(b.users) >= sweepAt {
			b.sweep(now)
		}
		r = &refusals{tokens: b.burst, at: now}
		b.users[user] = r
	}
	b.refill(r, now)
	// pushes that passed together may all be charged at once: the debt
	// is kept within one bucket, at most ten seconds' wait
	r.tokens = max(r.tokens-float64(n), -b.burst)
}

// sweep forgets the buckets that are full again: they would be made anew
// just as they are.
func (b *refusalBudget) sweep(now time.Time) {
	for u, r := range b.users {
		if b.refill(r, now); r.tokens >= b.burst {
			delete(b.users, u)
		}
	}
}
