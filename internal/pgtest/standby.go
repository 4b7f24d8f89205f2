package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Time bounds of the standby helpers.
const (
	// StandbyStartTimeout bounds StartStandby and Standby.Start: the base
	// backup, pg_ctl start and the wait for read-only connections.
	StandbyStartTimeout = 2 * time.Minute
	// CatchUpTimeout bounds WaitCaughtUp and PauseReplay.
	CatchUpTimeout = 30 * time.Second
)

// Standby is a streaming hot standby of a Cluster: a copy made with
// pg_basebackup -R that replays the primary's WAL through its own
// physical replication slot, so a standby that was stopped catches up
// again after Start. It accepts read-only connections on 127.0.0.1:Port.
type Standby struct {
	Dir  string // data directory
	Port int
	Slot string // the replication slot on the primary that the standby streams from

	primary  *Cluster
	adminDSN string // the standby's "postgres" database

	mu      sync.Mutex
	removed bool
}

// StandbyOptions are the settings a test may choose for a standby.
// The zero value is a standby with hot_standby_feedback on and
// PostgreSQL's max_standby_streaming_delay (30 s).
type StandbyOptions struct {
	// NoHotStandbyFeedback turns hot_standby_feedback off, so the
	// primary's vacuum may remove rows a standby query still needs and
	// replay cancels that query after max_standby_streaming_delay.
	NoHotStandbyFeedback bool
	// MaxStandbyStreamingDelay is max_standby_streaming_delay in
	// PostgreSQL's syntax ("0", "-1" to wait forever, "100ms", "5s");
	// empty keeps PostgreSQL's default.
	MaxStandbyStreamingDelay string
	// Settings are further postgresql.conf settings of the standby
	// (name to value, for example "recovery_min_apply_delay": "2s").
	Settings map[string]string
}

// StartStandby starts a new streaming hot standby of c: pg_basebackup -R
// from c into its own data directory, through a new replication slot,
// then pg_ctl start on its own loopback port. It returns once the
// standby accepts read-only connections. Remove stops it, drops its slot
// and removes its files. On error nothing is left behind.
func (c *Cluster) StartStandby(opts StandbyOptions) (*Standby, error) {
	ctx, cancel := context.WithTimeout(context.Background(), StandbyStartTimeout)
	defer cancel()
	if c.binDir == "" {
		return nil, errors.New("pgtest: StartStandby needs a Cluster made by StartCluster")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	s := &Standby{primary: c, Slot: "hs_standby_" + hex.EncodeToString(b[:])}

	dir, err := os.MkdirTemp("", "hypersync-pg-standby-")
	if err != nil {
		return nil, err
	}
	s.Dir = filepath.Join(dir, "data")
	ok := false
	slotMade := false
	started := false
	defer func() {
		if ok {
			return
		}
		if started {
			_, _ = c.runCtx(context.Background(), "pg_ctl", "-D", s.Dir, "-m", "immediate", "-w", "-t", "60", "stop")
		}
		if slotMade {
			_ = s.dropSlot(30 * time.Second)
		}
		_ = os.RemoveAll(dir)
	}()
	if err := os.Mkdir(s.Dir, 0o700); err != nil {
		return nil, err
	}
	if c.runAsPG {
		pg, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, err
		}
		if err := os.Chown(s.Dir, uid, gid); err != nil {
			return nil, err
		}
	}

	// -C -S creates the slot before the backup starts, so no WAL the
	// standby needs is removed; -R writes standby.signal and
	// primary_conninfo/primary_slot_name; -c fast does not wait for a
	// spread checkpoint.
	slotMade = true // from here on, a failure tries to drop the slot
	out, err := c.runCtx(ctx, "pg_basebackup",
		"-D", s.Dir, "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", "-w",
		"-R", "-X", "stream", "-C", "-S", s.Slot, "-c", "fast", "--no-sync", "--no-manifest")
	if err != nil {
		return nil, fmt.Errorf("pg_basebackup: %v\n%s", err, out)
	}
	// The primary's log lives in its data directory and was copied.
	_ = os.Remove(filepath.Join(s.Dir, "server.log"))

	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s.Port = port
	// postgresql.auto.conf is read last, so these win over the settings
	// copied from the primary (its port and socket directory included).
	settings := map[string]string{
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": s.Dir,
		"listen_addresses":        "127.0.0.1",
		"hot_standby":             "on",
		"hot_standby_feedback":    "on",
		"shared_buffers":          "128MB",
		"cluster_name":            s.Slot,
	}
	if opts.NoHotStandbyFeedback {
		settings["hot_standby_feedback"] = "off"
	}
	if opts.MaxStandbyStreamingDelay != "" {
		settings["max_standby_streaming_delay"] = opts.MaxStandbyStreamingDelay
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	names := make([]string, 0, len(settings))
	for k := range settings {
		names = append(names, k)
	}
	sort.Strings(names)
	var conf strings.Builder
	conf.WriteString("\n# pgtest standby\n")
	for _, k := range names {
		fmt.Fprintf(&conf, "%s = '%s'\n", k, strings.ReplaceAll(settings[k], "'", "''"))
	}
	f, err := os.OpenFile(filepath.Join(s.Dir, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(conf.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	s.adminDSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)

	started = true
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// DSN returns primaryDSN (a DSN of the primary, from NewDatabase or
// Cluster.DSN) with the standby's port: the same database, user and
// parameters, on the standby. A database created on the primary exists on
// the standby only once replayed: call WaitCaughtUp first.
func (s *Standby) DSN(primaryDSN string) string {
	u, err := url.Parse(primaryDSN)
	if err != nil || u.Scheme == "" {
		return primaryDSN + " port=" + strconv.Itoa(s.Port) // key=value form: the last one wins
	}
	host := u.Hostname()
	if host == "" {
		host = "127.0.0.1"
	}
	u.Host = net.JoinHostPort(host, strconv.Itoa(s.Port))
	return u.String()
}

// Start starts the standby server again after Stop and waits until it
// accepts read-only connections. It then streams from its slot, so it
// catches up with what the primary wrote meanwhile (see WaitCaughtUp).
func (s *Standby) Start() error {
	ctx, cancel := context.WithTimeout(context.Background(), StandbyStartTimeout)
	defer cancel()
	return s.start(ctx)
}

func (s *Standby) start(ctx context.Context) error {
	out, err := s.primary.runCtx(ctx, "pg_ctl", "-D", s.Dir, "-l", filepath.Join(s.Dir, "server.log"), "-w", "-t", "60", "start")
	if err != nil {
		return fmt.Errorf("pg_ctl start (standby): %v\n%s%s", err, out, s.logTail())
	}
	// pg_ctl -w returns once the postmaster reports "standby" (hot
	// standby open); check that a read-only session really works.
	var last error
	for {
		last = func() error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			conn, err := pgx.Connect(cctx, s.adminDSN)
			if err != nil {
				return err
			}
			defer conn.Close(cctx)
			var rec bool
			if err := conn.QueryRow(cctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
				return err
			}
			if !rec {
				return errors.New("server is not in recovery")
			}
			return nil
		}()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("standby on port %d does not accept read-only connections: %v%s", s.Port, last, s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop stops the standby server (pg_ctl stop -m fast). Its slot on the
// primary stays, so the primary keeps the WAL it will need after Start.
func (s *Standby) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := s.primary.runCtx(ctx, "pg_ctl", "-D", s.Dir, "-m", "fast", "-w", "-t", "60", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop (standby): %v\n%s", err, out)
	}
	return nil
}

// Remove stops the standby (immediate mode), drops its replication slot
// on the primary and removes its files. Later calls do nothing. The slot
// is left when the primary is down; it is gone with the primary's files.
func (s *Standby) Remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return nil
	}
	s.removed = true
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// pg_ctl stop fails when the standby is already stopped; that is fine.
	_, _ = s.primary.runCtx(ctx, "pg_ctl", "-D", s.Dir, "-m", "immediate", "-w", "-t", "60", "stop")
	err := s.dropSlot(30 * time.Second)
	if rerr := os.RemoveAll(filepath.Dir(s.Dir)); err == nil {
		err = rerr
	}
	return err
}

// dropSlot drops the standby's slot once the primary's walsender for it
// has gone (a slot in use cannot be dropped).
func (s *Standby) dropSlot(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.primary.DSN)
	if err != nil {
		return fmt.Errorf("drop slot %s: %w", s.Slot, err)
	}
	defer conn.Close(context.Background())
	for {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(pg_drop_replication_slot(slot_name))
FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, s.Slot).Scan(&n)
		if err == nil {
			var left bool
			if err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`, s.Slot).Scan(&left); err == nil && !left {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop slot %s: still active (%v)", s.Slot, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PauseReplay pauses WAL replay on the standby (pg_wal_replay_pause()) and
// waits until pg_get_wal_replay_pause_state() is 'paused'. The standby
// keeps receiving WAL but shows nothing new until ResumeReplay.
// WaitCaughtUp times out while replay is paused.
func (s *Standby) PauseReplay(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CatchUpTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.adminDSN)
	if err != nil {
		t.Fatalf("pgtest: connect to standby: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatalf("pgtest: pg_wal_replay_pause: %v", err)
	}
	var state string
	for {
		if err := conn.QueryRow(ctx, "SELECT pg_get_wal_replay_pause_state()").Scan(&state); err != nil {
			t.Fatalf("pgtest: pg_get_wal_replay_pause_state: %v", err)
		}
		if state == "paused" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pgtest: replay pause state is still %q after %v", state, CatchUpTimeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ResumeReplay resumes WAL replay on the standby (pg_wal_replay_resume()).
// Use WaitCaughtUp to wait until what the primary wrote is visible.
func (s *Standby) ResumeReplay(t testing.TB) {
	t.Helper()
	Exec(t, s.adminDSN, "SELECT pg_wal_replay_resume()")
}

// WaitCaughtUp waits until the standby has replayed the primary's WAL up
// to the primary's current position (pg_current_wal_lsn() on primaryDSN,
// read when it is called), so everything committed on the primary before
// the call is visible on the standby, databases created by NewDatabase
// included. It fails the test after CatchUpTimeout.
func (s *Standby) WaitCaughtUp(t testing.TB, primaryDSN string) {
	t.Helper()
	if err := s.waitCaughtUp(primaryDSN, CatchUpTimeout); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// CatchUp is WaitCaughtUp for code that is not a test (the bench): it
// returns the error instead.
func (s *Standby) CatchUp(primaryDSN string) error { return s.waitCaughtUp(primaryDSN, CatchUpTimeout) }

func (s *Standby) waitCaughtUp(primaryDSN string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var target string
	if err := queryOne(ctx, primaryDSN, "SELECT pg_current_wal_lsn()::text", &target); err != nil {
		return fmt.Errorf("primary's pg_current_wal_lsn: %w", err)
	}
	conn, err := pgx.Connect(ctx, s.adminDSN)
	if err != nil {
		return fmt.Errorf("connect to standby: %w", err)
	}
	defer conn.Close(context.Background())
	var replayed string
	for {
		var done bool
		err := conn.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn()::text, ''), coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", target).Scan(&replayed, &done)
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("standby's pg_last_wal_replay_lsn: %w", err)
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("standby on port %d replayed up to %s, not %s, within %v (replay paused?)", s.Port, replayed, target, timeout)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func queryOne(ctx context.Context, dsn, sql string, dest any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql).Scan(dest)
}

// logTail returns the end of the standby's server log, for errors.
func (s *Standby) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.Dir, "server.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\nstandby log (end):\n" + string(b)
}

// requireOwnCluster skips t when the tests run against an external server.
func requireOwnCluster(t testing.TB) *Cluster {
	t.Helper()
	if os.Getenv(EnvDSN) != "" {
		t.Skipf("pgtest: a standby needs a cluster started by pgtest, and %s names an external server", EnvDSN)
	}
	c := SharedCluster(t)
	if c == nil {
		t.Skipf("pgtest: a standby needs a cluster started by pgtest")
	}
	return c
}

// NewStandby starts a standby of the shared test cluster for one test; it
// is removed (stopped, slot dropped, files deleted) when the test ends,
// also when it fails. Tests that pause, stop or restart a standby need
// their own from NewStandby. It skips the test when HYPERSYNC_TEST_DSN
// names an external server.
func NewStandby(t testing.TB, opts StandbyOptions) *Standby {
	t.Helper()
	c := requireOwnCluster(t)
	s, err := c.StartStandby(opts)
	if err != nil {
		t.Fatalf("pgtest: starting a standby: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Remove(); err != nil {
			t.Logf("pgtest: removing standby: %v", err)
		}
	})
	return s
}

var (
	standbyOnce sync.Once
	shared      *Standby
	standbyErr  error
)

// SharedStandby returns a standby of the shared test cluster (default
// options), started on first use and removed by Main before the cluster
// stops. It is for tests that only read from it: a test that pauses,
// stops or restarts a standby must use NewStandby. It skips the test when
// HYPERSYNC_TEST_DSN names an external server.
func SharedStandby(t testing.TB) *Standby {
	t.Helper()
	c := requireOwnCluster(t)
	standbyOnce.Do(func() { shared, standbyErr = c.StartStandby(StandbyOptions{}) })
	if standbyErr != nil {
		t.Fatalf("pgtest: starting the shared standby: %v", standbyErr)
	}
	return shared
}

// removeSharedStandby removes the shared standby, if one was started.
func removeSharedStandby() {
	if shared != nil {
		_ = shared.Remove()
	}
}

// runCtx runs one of the PostgreSQL tools like run, killed (with what it
// started) when ctx ends.
func (c *Cluster) runCtx(ctx context.Context, tool string, args ...string) ([]byte, error) {
	path := c.toolPath(tool)
	var cmd *exec.Cmd
	if c.runAsPG {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = os.TempDir()
	killGroupOnCancel(cmd)
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

// toolPath finds a PostgreSQL tool of the cluster's installation: BinDir
// may be a directory of links (initdb and pg_ctl on PATH) that lacks
// pg_basebackup, so the directory initdb links to is tried next.
func (c *Cluster) toolPath(tool string) string {
	path := filepath.Join(c.binDir, tool)
	if fileExists(path) {
		return path
	}
	if real, err := filepath.EvalSymlinks(filepath.Join(c.binDir, "initdb")); err == nil {
		if p := filepath.Join(filepath.Dir(real), tool); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath(tool); err == nil {
		return p
	}
	return path
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
