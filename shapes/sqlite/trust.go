package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// trustDDL creates the tables of shapes/trust.go.
var trustDDL = []string{
	`CREATE TABLE IF NOT EXISTS "` + shapes.KeysTable + `" (name TEXT PRIMARY KEY, secret TEXT NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.RejectionsTable + `" (user_id TEXT NOT NULL, change_id TEXT NOT NULL, shape TEXT NOT NULL,
		row_key TEXT, error TEXT NOT NULL, message TEXT NOT NULL, at TEXT NOT NULL, last TEXT NOT NULL, times INTEGER NOT NULL,
		PRIMARY KEY (user_id, change_id))`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.RejectionsTable + `_last_idx" ON "` + shapes.RejectionsTable + `" (user_id, last)`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.ErasedTable + `" (user_hash TEXT PRIMARY KEY, at TEXT NOT NULL)`,
	addColumn(shapes.ErasedTable, "stamp TEXT"),
}

// Secret returns the secret named name, made from crypto/rand the first
// time.
func (s *driver) Secret(ctx context.Context, name string) (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	if _, err := s.w.ExecContext(ctx, `INSERT INTO "`+shapes.KeysTable+`" (name, secret) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`,
		name, hex.EncodeToString(b[:])); err != nil {
		return "", classify(err)
	}
	var secret string
	err := s.w.QueryRowContext(ctx, `SELECT secret FROM "`+shapes.KeysTable+`" WHERE name = ?`, name).Scan(&secret)
	return secret, classify(err)
}

func (s *driver) RecordRejections(ctx context.Context, user string, recs []shapes.Rejection, keep int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return classify(err)
	}
	defer tx.Rollback()
	for _, r := range recs {
		var key any
		if r.Key != nil {
			key = string(r.Key)
		}
		at := r.Last.UTC().Format(stampLayout)
		if _, err := tx.ExecContext(ctx, `INSERT INTO "`+shapes.RejectionsTable+`" AS r (user_id, change_id, shape, row_key, error, message, at, last, times)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, 1)
ON CONFLICT (user_id, change_id) DO UPDATE SET shape = excluded.shape, row_key = excluded.row_key, error = excluded.error,
	message = excluded.message, last = max(r.last, excluded.last), times = r.times + 1`, user, r.ChangeID, r.Shape, key, r.Error, r.Message, at); err != nil {
			return classify(err)
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM "`+shapes.RejectionsTable+`" WHERE user_id = ?1 AND change_id NOT IN (
	SELECT change_id FROM "`+shapes.RejectionsTable+`" WHERE user_id = ?1 ORDER BY last DESC, change_id DESC LIMIT ?2)`, user, keep); err != nil {
		return classify(err)
	}
	return classify(tx.Commit())
}

func (s *driver) Rejections(ctx context.Context, user string) ([]shapes.Rejection, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT change_id, shape, row_key, error, message, at, last, times FROM "`+shapes.RejectionsTable+`"
WHERE user_id = ? ORDER BY last DESC, change_id DESC`, user)
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	var out []shapes.Rejection
	for rows.Next() {
		var r shapes.Rejection
		var key sql.NullString
		var at, last string
		if err := rows.Scan(&r.ChangeID, &r.Shape, &key, &r.Error, &r.Message, &at, &last, &r.Times); err != nil {
			return nil, classify(err)
		}
		if key.Valid {
			r.Key = json.RawMessage(key.String)
		}
		r.At, _ = time.Parse(stampLayout, at)
		r.Last, _ = time.Parse(stampLayout, last)
		out = append(out, r)
	}
	return out, classify(rows.Err())
}

// blocked fails with shapes.ErrErased when the erased users hold hash.
func blocked(ctx context.Context, tx *sql.Tx, hash string) error {
	var found bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM "`+shapes.ErasedTable+`" WHERE user_hash = ?)`, hash).Scan(&found); err != nil {
		return classify(err)
	}
	if found {
		return shapes.ErrErased
	}
	return nil
}

func (s *driver) Erased(ctx context.Context, hash string) (bool, error) {
	var found bool
	err := s.r.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM "`+shapes.ErasedTable+`" WHERE user_hash = ?)`, hash).Scan(&found)
	return found, classify(err)
}

// Unblock lifts the block and gives the user their cursor back, above the
// one erase deleted (see shapes.Forget.Stamp), in one transaction.
func (s *driver) Unblock(ctx context.Context, hash, user string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, classify(err)
	}
	defer tx.Rollback()
	var stamp sql.NullString
	err = tx.QueryRowContext(ctx, `SELECT stamp FROM "`+shapes.ErasedTable+`" WHERE user_hash = ?`, hash).Scan(&stamp)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, classify(err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM "`+shapes.ErasedTable+`" WHERE user_hash = ?`, hash); err != nil {
		return false, classify(err)
	}
	if old, err := time.Parse(time.RFC3339Nano, stamp.String); stamp.Valid && err == nil {
		back := time.Now().UTC().Truncate(time.Millisecond)
		if next := old.Add(time.Millisecond); next.After(back) {
			back = next
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO "`+shapes.CursorTable+`" (user_id, stamp) VALUES (?, ?)
			ON CONFLICT (user_id) DO UPDATE SET stamp = max(stamp, excluded.stamp)`, user, back.UTC().Format(stampLayout)); err != nil {
			return false, classify(err)
		}
	}
	return true, classify(tx.Commit())
}
