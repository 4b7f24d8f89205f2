package handler_test

import (
	"os"
	"testing"
	"time"

	"github.com/hypersync/hypersync/internal/testkit"
)

// TestConvergenceUnderLoad: several users, each with several devices whose
// clocks are off, push and pull at random against two instances on one
// PostgreSQL, go offline, and lose push answers. Set HYPERSYNC_SOAK (for
// example 60s) for a long run.
func TestConvergenceUnderLoad(t *testing.T) {
	dur := 6 * time.Second
	if v := os.Getenv("HYPERSYNC_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("HYPERSYNC_SOAK: %v", err)
		}
		dur = d
	}
	dsn := testkit.Postgres().Open(t, seedDDL, `CREATE INDEX todos_sync ON todos (userId, lastSyncAt)`)
	a, b := newEnvOn(t, dsn, nil), newEnvOn(t, dsn, nil)
	rep := testkit.Converge(t, testkit.Convergence{Servers: []string{a.srv.URL, b.srv.URL}, DSN: dsn,
		Users: []string{"alice", "bob", "carol"}, Devices: 3, Keys: 25, Resend: true, Offline: true, Duration: dur,
		Skews: []time.Duration{0, -3 * time.Second, 2 * time.Second, -700 * time.Millisecond}})
	t.Logf("%v on 2 instances: %v", dur, rep)
	if rep.Misses != 0 {
		t.Fatalf("%d misses: devices or the database do not hold the newest accepted versions", rep.Misses)
	}
}
