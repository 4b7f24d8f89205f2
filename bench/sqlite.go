package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/hypersync/hypersync/internal/pgtest"
)

// sqliteDDL is the README's table for SQLite: TIMESTAMP columns without a
// default, as hypersync writes both timestamps itself. Then its index.
var sqliteDDL = []string{
	strings.ReplaceAll(pgtest.TodosDDL, "TIMESTAMP WITH TIME ZONE DEFAULT NOW()", "TIMESTAMP"),
	pgtest.TodosIndex,
}

// sqliteStampLayout is how hypersync stores timestamps in SQLite: fixed
// width UTC text with microseconds, so that text order is time order.
const sqliteStampLayout = "2006-01-02T15:04:05.000000Z"

// sqlitePragmas are the ones hypersync opens its file with.
const sqlitePragmas = "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"

// openSQLite opens file as hypersync does: a writer of one connection
// whose transactions take the write lock at BEGIN, and a reader pool.
func openSQLite(file string) (w, r *sql.DB, err error) {
	base := "file:" + (&url.URL{Path: file}).EscapedPath() + "?" + sqlitePragmas
	if w, err = sql.Open("sqlite", base+"&_txlock=immediate"); err != nil {
		return nil, nil, err
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	if r, err = sql.Open("sqlite", base); err != nil {
		w.Close()
		return nil, nil, err
	}
	r.SetMaxOpenConns(8)
	return w, r, nil
}

// createSQLite creates file with the README's table and index.
func createSQLite(file string) error {
	w, r, err := openSQLite(file)
	if err != nil {
		return err
	}
	defer r.Close()
	defer w.Close()
	for _, stmt := range sqliteDDL {
		if _, err := w.Exec(stmt); err != nil {
			return fmt.Errorf("sqlite: %s: %w", stmt, err)
		}
	}
	return nil
}

// runSQLite measures the SQLite rows: a second Caddy whose database is
// one SQLite file, against modernc.org/sqlite on another file, so that
// neither side's table is larger than the other's. Both files are gone
// when it returns.
func runSQLite(ctx context.Context, bin string, out *outcome) error {
	dir, err := os.MkdirTemp("", "hypersync-bench-sqlite-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	caddyFile, directFile := filepath.Join(dir, "bench.db"), filepath.Join(dir, "direct.db")
	for _, f := range []string{caddyFile, directFile} {
		if err := createSQLite(f); err != nil {
			return err
		}
	}
	w, rd, err := openSQLite(directFile)
	if err != nil {
		return err
	}
	defer rd.Close()
	defer w.Close()
	upsert, err := w.PrepareContext(ctx, sqliteUpsert)
	if err != nil {
		return err
	}
	defer upsert.Close()
	srv, err := startCaddy(bin, "sqlite:"+caddyFile, []string{"u0", "big"})
	if err != nil {
		return err
	}
	defer srv.stop()
	directPush := func(user string, batch []change) (func() error, error) {
		return prepareSQLitePush(ctx, w, upsert, user, batch), nil
	}

	// push, 1 user
	push := result{unit: "changes/s", target: "≥ 0.6×", better: "higher"}
	sums := breakdown{label: "SQLite, 1 user"}
	for r := 0; r < *runs; r++ {
		prefix := fmt.Sprintf("sp-%d-", r)
		viaCaddy := func() (float64, error) {
			prof := ""
			if r == 0 {
				prof = *sqliteProf
			}
			return caddyPush(srv, 1, prefix+"c", prof, &sums.sums)
		}
		direct := func() (float64, error) { return measurePush(1, directPush, prefix+"d") }
		if err := push.pair(r, viaCaddy, direct); err != nil {
			return err
		}
	}
	push.name = fmt.Sprintf("SQLite push, 1 user, batches of %d", *batchSize)
	out.sqlite = append(out.sqlite, push)
	out.breakdown = append(out.breakdown, sums)

	// full pull: the same changes pushed on both sides, in batches, so that
	// the Caddy side's stamps and cursor are hypersync's own
	n := *sqlitePull
	if n <= 0 {
		n = *pullRows
	}
	seedStart := time.Now()
	for i := 0; i < n; i += *batchSize {
		batch := make([]change, 0, *batchSize)
		for j := i; j < i+*batchSize && j < n; j++ {
			batch = append(batch, newChange("big", fmt.Sprintf("sb%d", j)))
		}
		if err := srv.push("big", batch); err != nil {
			return fmt.Errorf("seeding the SQLite pull: %w", err)
		}
		if err := prepareSQLitePush(ctx, w, upsert, "big", batch)(); err != nil {
			return fmt.Errorf("seeding the SQLite pull: %w", err)
		}
	}
	fmt.Fprintf(os.Stderr, "seeded %d SQLite rows on both sides in %.1f s\n", n, time.Since(seedStart).Seconds())
	var size int64
	pull := result{unit: "ms", target: "≤ 1.2×", better: "lower"}
	for r := 0; r < *runs; r++ {
		viaCaddy := func() (float64, error) {
			start := time.Now()
			b, err := srv.pullBytes("big", "1970-01-01T00:00:00.000Z", "")
			size = b
			return float64(time.Since(start).Microseconds()) / 1000, err
		}
		direct := func() (float64, error) {
			start := time.Now()
			err := directSQLitePull(ctx, rd, "big", io.Discard)
			return float64(time.Since(start).Microseconds()) / 1000, err
		}
		if err := pull.pair(r, viaCaddy, direct); err != nil {
			return err
		}
	}
	pull.name = fmt.Sprintf("SQLite full pull of %d rows (%.1f MB JSON)", n, float64(size)/1e6)
	out.sqlite = append(out.sqlite, pull)
	return nil
}

// sqliteUpsert is the reference push of one row: last write wins, and only
// on the user's own row. It writes the sync stamp too.
const sqliteUpsert = `INSERT INTO todos (todoId, title, done, deleted, userId, updatedAt, lastSyncAt)
	VALUES (?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (todoId) DO UPDATE SET title = excluded.title, done = excluded.done, deleted = excluded.deleted,
		updatedAt = excluded.updatedAt, lastSyncAt = excluded.lastSyncAt
	WHERE todos.userId = excluded.userId AND excluded.updatedAt > todos.updatedAt`

// prepareSQLitePush is the reference, as an application would write it by
// hand with database/sql: one immediate transaction per batch, the
// prepared upsert once per row, stamped with the time of the batch, on a
// file in WAL mode with synchronous=FULL, so that a commit is as durable
// as hypersync's.
func prepareSQLitePush(ctx context.Context, db *sql.DB, upsert *sql.Stmt, user string, batch []change) func() error {
	type args struct {
		id, title     string
		done, deleted bool
		updatedAt     string
	}
	rows := make([]args, len(batch))
	for i, c := range batch {
		rows[i] = args{c.Payload["todoId"].(string), c.Payload["title"].(string), c.Payload["done"].(bool), c.Payload["deleted"].(bool),
			c.UpdatedAt.UTC().Format(sqliteStampLayout)}
	}
	return func() error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		stmt := tx.StmtContext(ctx, upsert)
		stamp := time.Now().UTC().Truncate(time.Millisecond).Format(sqliteStampLayout)
		for _, r := range rows {
			if _, err := stmt.ExecContext(ctx, r.id, r.title, r.done, r.deleted, user, r.updatedAt, stamp); err != nil {
				return err
			}
		}
		return tx.Commit()
	}
}

// msTime is a time that encodes as a pull answer's: RFC 3339, UTC,
// milliseconds.
type msTime time.Time

func (t msTime) MarshalJSON() ([]byte, error) {
	b := append([]byte{'"'}, time.Time(t).UTC().Format("2006-01-02T15:04:05.000Z")...)
	return append(b, '"'), nil
}

// directSQLitePull is the reference: the rows of a user queried and
// scanned with database/sql, and encoded as the pull answer with
// encoding/json, as directPull does on PostgreSQL.
func directSQLitePull(ctx context.Context, db *sql.DB, user string, w io.Writer) error {
	now := time.Now().UTC().Format(sqliteStampLayout)
	rows, err := db.QueryContext(ctx, `SELECT todoId, title, done, deleted, userId, updatedAt FROM todos
		WHERE userId = ? AND lastSyncAt > ? AND lastSyncAt <= ? ORDER BY lastSyncAt`, user, time.Unix(0, 0).UTC().Format(sqliteStampLayout), now)
	if err != nil {
		return err
	}
	defer rows.Close()
	type payload struct {
		TodoID  string `json:"todoId"`
		Title   string `json:"title"`
		Done    bool   `json:"done"`
		Deleted bool   `json:"deleted"`
	}
	type change struct {
		ShapeKey  string  `json:"shapeKey"`
		Payload   payload `json:"payload"`
		UserID    string  `json:"userId"`
		UpdatedAt msTime  `json:"updatedAt"`
	}
	var changes []change
	for rows.Next() {
		var c change
		var upd time.Time
		if err := rows.Scan(&c.Payload.TodoID, &c.Payload.Title, &c.Payload.Done, &c.Payload.Deleted, &c.UserID, &upd); err != nil {
			return err
		}
		c.ShapeKey, c.UpdatedAt = "todos", msTime(upd)
		changes = append(changes, c)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return json.NewEncoder(w).Encode(struct {
		Changes  []change `json:"changes"`
		SyncedAt msTime   `json:"syncedAt"`
	}{changes, msTime(time.Now())})
}
