// Package pgtest gives tests a real PostgreSQL server.
//
// When HYPERSYNC_TEST_DSN is set, tests use that server. Otherwise the first
// call to DSN starts a throwaway cluster from the system's PostgreSQL binaries
// (initdb and pg_ctl, run as the postgres user when the tests run as root,
// because initdb refuses root) and Main stops it when the test binary exits.
// Every call to NewDatabase creates a fresh database, so tests never see each
// other's tables.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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

// TodosDDL is the table of the HyperSync README, exactly as written there.
// Tests and the benchmark use it so that the README's own table is what
// they prove things about.
const TodosDDL = `CREATE TABLE IF NOT EXISTS todos (
todoId TEXT NOT NULL PRIMARY KEY,
title TEXT NOT NULL,
done BOOLEAN NOT NULL DEFAULT false,
deleted BOOLEAN NOT NULL DEFAULT false,
userId TEXT NOT NULL,
updatedAt TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
lastSyncAt TIMESTAMP WITH TIME ZONE DEFAULT NOW()
)`

// TodosWithDescriptionDDL is the README's table with the description
// column the example Caddyfile syncs.
const TodosWithDescriptionDDL = `CREATE TABLE IF NOT EXISTS todos (
todoId TEXT NOT NULL PRIMARY KEY,
title TEXT NOT NULL,
description TEXT,
done BOOLEAN NOT NULL DEFAULT false,
deleted BOOLEAN NOT NULL DEFAULT false,
userId TEXT NOT NULL,
updatedAt TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
lastSyncAt TIMESTAMP WITH TIME ZONE DEFAULT NOW()
)`

// TodosIndex is the index the README recommends for pulls.
const TodosIndex = `CREATE INDEX todos_sync ON todos (userId, lastSyncAt)`

// EnvDSN names the variable that points the tests at an existing server.
const EnvDSN = "HYPERSYNC_TEST_DSN"

var (
	once    sync.Once
	cluster *Cluster
	baseDSN string
	initErr error
)

// Cluster is a PostgreSQL server started by this package.
type Cluster struct {
	Dir     string // data directory
	Port    int
	DSN     string // DSN of the "postgres" database
	runAsPG bool
	binDir  string
}

// Main runs the tests and stops a cluster this package started (and the
// shared standby first).
// Use it from TestMain: func TestMain(m *testing.M) { pgtest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	removeSharedStandby() // before its primary
	if cluster != nil {
		cluster.Destroy()
	}
	os.Exit(code)
}

// ServerDSN returns the DSN of the server's maintenance database, starting
// a cluster first when no DSN was given in the environment.
func ServerDSN(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		if dsn := os.Getenv(EnvDSN); dsn != "" {
			baseDSN = dsn
			return
		}
		cluster, initErr = StartCluster()
		if initErr == nil {
			baseDSN = cluster.DSN
		}
	})
	if initErr != nil {
		t.Fatalf("pgtest: starting PostgreSQL: %v", initErr)
	}
	return baseDSN
}

// SharedCluster returns the cluster this package started, or nil when the
// tests run against a server named by HYPERSYNC_TEST_DSN.
func SharedCluster(t testing.TB) *Cluster {
	ServerDSN(t)
	return cluster
}

// NewDatabase creates an empty database for one test and returns its DSN.
// The database is dropped when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	server := ServerDSN(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "hs_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, server)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return WithDatabase(server, name)
}

// WithDatabase returns dsn with its database name replaced.
func WithDatabase(dsn, name string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		// key=value form
		return dsn + " dbname=" + name
	}
	u.Path = "/" + name
	return u.String()
}

// WithParam returns dsn with a connection parameter added.
func WithParam(dsn, key, value string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return dsn + " " + key + "=" + value // key=value form
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// Exec runs SQL statements against dsn, failing the test on error.
func Exec(t testing.TB, dsn string, sql ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	for _, s := range sql {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("pgtest: %s: %v", s, err)
		}
	}
}

// BinDir finds the PostgreSQL server binaries.
func BinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		return "", fmt.Errorf("no initdb on PATH or in /usr/lib/postgresql/*/bin: install the PostgreSQL server (apt-get install postgresql)")
	}
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	return filepath.Dir(matches[0]), nil
}

func versionOf(path string) int {
	parts := strings.Split(path, "/")
	for _, p := range parts {
		if n, err := strconv.Atoi(p); err == nil {
			return n
		}
	}
	return 0
}

// StartCluster initialises and starts a new cluster in a temporary
// directory, listening on a free loopback port.
func StartCluster() (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hypersync-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: filepath.Join(dir, "data"), binDir: bin, runAsPG: os.Geteuid() == 0}
	if err := os.Mkdir(c.Dir, 0o700); err != nil {
		return nil, err
	}
	if c.runAsPG {
		pg, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres user for initdb: %w", err)
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, err
		}
		if err := os.Chown(c.Dir, uid, gid); err != nil {
			return nil, err
		}
	}
	if out, err := c.run("initdb", "-D", c.Dir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c.Port = port
	conf := fmt.Sprintf("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\nfsync = off\nsynchronous_commit = on\nfull_page_writes = off\nmax_connections = 200\nshared_buffers = 256MB\nmax_prepared_transactions = 10\n", port, c.Dir)
	f, err := os.OpenFile(filepath.Join(c.Dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, _ = f.WriteString(conf)
	_ = f.Close()
	if err := c.Start(); err != nil {
		return nil, err
	}
	c.DSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	return c, nil
}

// Start starts (or restarts) the server and waits until it accepts connections.
func (c *Cluster) Start() error {
	out, err := c.run("pg_ctl", "-D", c.Dir, "-l", filepath.Join(c.Dir, "server.log"), "-w", "-t", "60", "start")
	if err != nil {
		return fmt.Errorf("pg_ctl start: %v\n%s", err, out)
	}
	return nil
}

// Stop stops the server in the given mode ("fast", "immediate", ...).
func (c *Cluster) Stop(mode string) error {
	out, err := c.run("pg_ctl", "-D", c.Dir, "-m", mode, "-w", "-t", "60", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

// Destroy stops the server and removes its files.
func (c *Cluster) Destroy() {
	_ = c.Stop("immediate")
	_ = os.RemoveAll(filepath.Dir(c.Dir))
}

func (c *Cluster) run(tool string, args ...string) ([]byte, error) {
	path := filepath.Join(c.binDir, tool)
	var cmd *exec.Cmd
	if c.runAsPG {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = os.TempDir()
	return cmd.CombinedOutput()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
