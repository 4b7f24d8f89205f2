package pgtest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/hypersync/hypersync/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func query[T any](t *testing.T, dsn, sql string, args ...any) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var v T
	if err := conn.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func titles(t *testing.T, dsn string) string {
	t.Helper()
	return query[string](t, dsn, "SELECT coalesce(string_agg(title, ',' ORDER BY title), '') FROM notes")
}

// TestPrimaryAllowsReplication checks the settings of the cluster pgtest
// makes that streaming replication needs.
func TestPrimaryAllowsReplication(t *testing.T) {
	c := pgtest.SharedCluster(t)
	if c == nil {
		t.Skip("HYPERSYNC_TEST_DSN names an external server")
	}
	if v := query[string](t, c.DSN, "SHOW wal_level"); v != "replica" && v != "logical" {
		t.Errorf("wal_level = %s", v)
	}
	if v := query[int](t, c.DSN, "SELECT current_setting('max_wal_senders')::int"); v < 2 {
		t.Errorf("max_wal_senders = %d", v)
	}
	if n := query[int](t, c.DSN, `SELECT count(*)::int FROM pg_hba_file_rules
WHERE 'replication' = ANY(database) AND auth_method = 'trust' AND type IN ('local', 'host')`); n == 0 {
		t.Errorf("no trust rule for replication in pg_hba.conf")
	}
}

// TestStandbyReads uses the shared standby: what the primary commits is
// readable there after WaitCaughtUp, and the standby is a read-only copy
// of the same cluster.
func TestStandbyReads(t *testing.T) {
	start := time.Now()
	s := pgtest.SharedStandby(t)
	t.Logf("shared standby on port %d ready after %v", s.Port, time.Since(start).Round(time.Millisecond))
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, "CREATE TABLE notes (title TEXT PRIMARY KEY)", "INSERT INTO notes VALUES ('one')")
	s.WaitCaughtUp(t, dsn)
	sdsn := s.DSN(dsn)
	if got := titles(t, sdsn); got != "one" {
		t.Fatalf("standby sees %q, want one", got)
	}
	if !query[bool](t, sdsn, "SELECT pg_is_in_recovery()") {
		t.Errorf("standby: pg_is_in_recovery() = false")
	}
	if query[bool](t, dsn, "SELECT pg_is_in_recovery()") {
		t.Errorf("primary: pg_is_in_recovery() = true")
	}
	if p, q := query[int64](t, dsn, "SELECT system_identifier FROM pg_control_system()"),
		query[int64](t, sdsn, "SELECT system_identifier FROM pg_control_system()"); p != q {
		t.Errorf("system identifiers differ: primary %d, standby %d", p, q)
	}
	if v := query[string](t, sdsn, "SHOW hot_standby_feedback"); v != "on" {
		t.Errorf("hot_standby_feedback = %s, want on by default", v)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, sdsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "INSERT INTO notes VALUES ('two')")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Fatalf("write on the standby: %v, want SQLSTATE 25006", err)
	}

	// A second write on the primary, then catch up again.
	pgtest.Exec(t, dsn, "INSERT INTO notes VALUES ('three')")
	s.WaitCaughtUp(t, dsn)
	if got := titles(t, sdsn); got != "one,three" {
		t.Fatalf("standby sees %q, want one,three", got)
	}
}

// TestStandbyPauseReplay: with replay paused, a row the standby has
// received is not visible; after ResumeReplay it is.
func TestStandbyPauseReplay(t *testing.T) {
	start := time.Now()
	s := pgtest.NewStandby(t, pgtest.StandbyOptions{NoHotStandbyFeedback: true, MaxStandbyStreamingDelay: "-1"})
	t.Logf("standby on port %d started in %v", s.Port, time.Since(start).Round(time.Millisecond))
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, "CREATE TABLE notes (title TEXT PRIMARY KEY)", "INSERT INTO notes VALUES ('one')")
	s.WaitCaughtUp(t, dsn)
	sdsn := s.DSN(dsn)
	if v := query[string](t, sdsn, "SHOW hot_standby_feedback"); v != "off" {
		t.Errorf("hot_standby_feedback = %s, want off", v)
	}
	if v := query[string](t, sdsn, "SHOW max_standby_streaming_delay"); v != "-1" {
		t.Errorf("max_standby_streaming_delay = %s, want -1", v)
	}

	s.PauseReplay(t)
	pgtest.Exec(t, dsn, "INSERT INTO notes VALUES ('two')")
	// Wait until the standby has received (not replayed) the insert.
	target := query[string](t, dsn, "SELECT pg_current_wal_lsn()::text")
	deadline := time.Now().Add(30 * time.Second)
	for !query[bool](t, sdsn, "SELECT pg_last_wal_receive_lsn() >= $1::pg_lsn", target) {
		if time.Now().After(deadline) {
			t.Fatalf("standby did not receive WAL up to %s", target)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := titles(t, sdsn); got != "one" {
		t.Fatalf("with replay paused the standby sees %q, want one", got)
	}
	if st := query[string](t, sdsn, "SELECT pg_get_wal_replay_pause_state()"); st != "paused" {
		t.Fatalf("pause state %q", st)
	}

	s.ResumeReplay(t)
	s.WaitCaughtUp(t, dsn)
	if got := titles(t, sdsn); got != "one,two" {
		t.Fatalf("after resume the standby sees %q, want one,two", got)
	}
}

// TestStandbyStopStart: a stopped standby catches up after Start, even
// when the primary switched and recycled WAL segments meanwhile (its slot
// keeps them); Remove drops the slot.
func TestStandbyStopStart(t *testing.T) {
	s := pgtest.NewStandby(t, pgtest.StandbyOptions{})
	c := pgtest.SharedCluster(t)
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, "CREATE TABLE notes (title TEXT PRIMARY KEY)", "INSERT INTO notes VALUES ('one')")
	s.WaitCaughtUp(t, dsn)
	sdsn := s.DSN(dsn)

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(context.Background(), sdsn); err == nil {
		t.Fatalf("connected to a stopped standby")
	}
	pgtest.Exec(t, dsn, "INSERT INTO notes VALUES ('two')")
	for i := 0; i < 3; i++ {
		pgtest.Exec(t, dsn, "INSERT INTO notes VALUES ('x"+string(rune('a'+i))+"')", "SELECT pg_switch_wal()", "CHECKPOINT")
	}
	if !query[bool](t, c.DSN, "SELECT restart_lsn IS NOT NULL AND NOT active FROM pg_replication_slots WHERE slot_name = $1", s.Slot) {
		t.Fatalf("slot %s is not kept inactive while the standby is stopped", s.Slot)
	}

	start := time.Now()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart took %v", time.Since(start).Round(time.Millisecond))
	s.WaitCaughtUp(t, dsn)
	if got := titles(t, sdsn); got != "one,two,xa,xb,xc" {
		t.Fatalf("after restart the standby sees %q", got)
	}

	if err := s.Remove(); err != nil {
		t.Fatal(err)
	}
	if n := query[int](t, c.DSN, "SELECT count(*)::int FROM pg_replication_slots WHERE slot_name = $1", s.Slot); n != 0 {
		t.Fatalf("slot %s left after Remove", s.Slot)
	}
}

func TestStandbyDSN(t *testing.T) {
	s := &pgtest.Standby{Port: 6543}
	if got := s.DSN("postgres://postgres@127.0.0.1:5432/hs_x?sslmode=disable"); got != "postgres://postgres@127.0.0.1:6543/hs_x?sslmode=disable" {
		t.Errorf("URL form: %s", got)
	}
	if got := s.DSN("host=127.0.0.1 port=5432 dbname=a"); !strings.HasSuffix(got, " port=6543") {
		t.Errorf("key=value form: %s", got)
	}
}

// TestStandbySkipsOnExternalServer: with HYPERSYNC_TEST_DSN set, standby
// helpers skip rather than fail.
func TestStandbySkipsOnExternalServer(t *testing.T) {
	t.Setenv(pgtest.EnvDSN, "postgres://elsewhere/postgres")
	var sub *testing.T
	t.Run("new", func(t *testing.T) { sub = t; pgtest.NewStandby(t, pgtest.StandbyOptions{}) })
	if !sub.Skipped() {
		t.Errorf("NewStandby did not skip")
	}
	t.Run("shared", func(t *testing.T) { sub = t; pgtest.SharedStandby(t) })
	if !sub.Skipped() {
		t.Errorf("SharedStandby did not skip")
	}
}
