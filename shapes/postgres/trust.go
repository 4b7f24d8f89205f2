package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/hypersync/hypersync/shapes"
)

// trustDDL creates the tables of shapes/trust.go.
var trustDDL = []string{
	`CREATE TABLE IF NOT EXISTS "` + shapes.KeysTable + `" (name text PRIMARY KEY, secret text NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.RejectionsTable + `" (
		user_id text NOT NULL,
		change_id text NOT NULL,
		shape text NOT NULL,
		row_key text,
		error text NOT NULL,
		message text NOT NULL,
		at timestamptz NOT NULL,
		last timestamptz NOT NULL,
		times integer NOT NULL,
		PRIMARY KEY (user_id, change_id))`,
	`CREATE INDEX IF NOT EXISTS "` + shapes.RejectionsTable + `_last_idx" ON "` + shapes.RejectionsTable + `" (user_id, last)`,
	`CREATE TABLE IF NOT EXISTS "` + shapes.ErasedTable + `" (user_hash text PRIMARY KEY, at timestamptz NOT NULL)`,
	`ALTER TABLE "` + shapes.ErasedTable + `" ADD COLUMN IF NOT EXISTS stamp timestamptz`,
}

// Secret returns the secret named name, made from crypto/rand the first
// time; an instance that loses the race to make it reads the winner's.
//
// The statement's INSERT waits for a concurrent one of the same name to
// commit and then does nothing, but its SELECT reads the snapshot taken
// before that commit, and so finds no row: the loser then asks again, in a
// new statement, whose snapshot holds the winner's row.
func (p *driver) Secret(ctx context.Context, name string) (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	var s string
	var err error
	for range 3 {
		err = p.pool.QueryRow(ctx, `WITH made AS (
	INSERT INTO "`+shapes.KeysTable+`" (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING secret)
SELECT secret FROM made UNION ALL SELECT secret FROM "`+shapes.KeysTable+`" WHERE name = $1 LIMIT 1`, name, hex.EncodeToString(b[:])).Scan(&s)
		if !errors.Is(err, pgx.ErrNoRows) {
			break
		}
	}
	return s, pgError(err)
}

// RecordRejections upserts the refusals and trims the record in one
// statement. Its DELETE sees the record as it was before the upsert (a
// statement's parts share one snapshot), so it keeps, of the entries the
// upsert did not touch, the newest keep - len(recs): the upserted ones are
// the newest of all. The store passes at most keep refusals.
func (p *driver) RecordRejections(ctx context.Context, user string, recs []shapes.Rejection, keep int) error {
	n := len(recs)
	ids, shape, key, code, msg := make([]string, n), make([]string, n), make([]pgtype.Text, n), make([]string, n), make([]string, n)
	at := make([]time.Time, n)
	for i, r := range recs {
		ids[i], shape[i], code[i], msg[i], at[i] = r.ChangeID, r.Shape, r.Error, r.Message, r.Last
		key[i] = pgtype.Text{String: string(r.Key), Valid: r.Key != nil}
	}
	_, err := p.pool.Exec(ctx, `WITH up AS (
	INSERT INTO "`+shapes.RejectionsTable+`" AS r (user_id, change_id, shape, row_key, error, message, at, last, times)
	SELECT $1, v.id, v.shape, v.key, v.code, v.msg, v.at, v.at, 1
	FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) AS v(id, shape, key, code, msg, at)
	ON CONFLICT (user_id, change_id) DO UPDATE SET shape = excluded.shape, row_key = excluded.row_key, error = excluded.error,
		message = excluded.message, last = greatest(r.last, excluded.last), times = r.times + 1
	RETURNING change_id)
DELETE FROM "`+shapes.RejectionsTable+`" WHERE user_id = $1 AND change_id NOT IN (SELECT change_id FROM up) AND change_id NOT IN (
	SELECT change_id FROM "`+shapes.RejectionsTable+`" WHERE user_id = $1 AND change_id NOT IN (SELECT change_id FROM up)
	ORDER BY last DESC, change_id DESC LIMIT greatest($8::int - $9::int, 0))`, user, ids, shape, key, code, msg, at, keep, n)
	return pgError(err)
}

func (p *driver) Rejections(ctx context.Context, user string) ([]shapes.Rejection, error) {
	rows, err := p.pool.Query(ctx, `SELECT change_id, shape, row_key, error, message, at, last, times FROM "`+shapes.RejectionsTable+`"
WHERE user_id = $1 ORDER BY last DESC, change_id DESC`, user)
	if err != nil {
		return nil, pgError(err)
	}
	var out []shapes.Rejection
	var r shapes.Rejection
	var key pgtype.Text
	var times int32
	_, err = pgx.ForEachRow(rows, []any{&r.ChangeID, &r.Shape, &key, &r.Error, &r.Message, &r.At, &r.Last, &times}, func() error {
		r.Times, r.Key = int(times), nil
		if key.Valid {
			r.Key = json.RawMessage(key.String)
		}
		out = append(out, r)
		return nil
	})
	return out, pgError(err)
}

func (p *driver) Erased(ctx context.Context, hash string) (bool, error) {
	var found bool
	err := p.pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM "`+shapes.ErasedTable+`" WHERE user_hash = $1)`, hash).Scan(&found)
	return found, pgError(err)
}

// Unblock lifts the block and gives the user their cursor back, above the
// one erase deleted (see shapes.Forget.Stamp), in one statement.
func (p *driver) Unblock(ctx context.Context, hash, user string) (bool, error) {
	var n int
	err := p.pool.QueryRow(ctx, `WITH gone AS (DELETE FROM "`+shapes.ErasedTable+`" WHERE user_hash = $1 RETURNING stamp),
back AS (INSERT INTO "`+shapes.CursorTable+`" AS c (user_id, stamp)
	SELECT $2, greatest(date_trunc('milliseconds', clock_timestamp()), stamp + interval '1 millisecond') FROM gone WHERE stamp IS NOT NULL
	ON CONFLICT (user_id) DO UPDATE SET stamp = greatest(c.stamp, excluded.stamp))
SELECT count(*)::int FROM gone`, hash, user).Scan(&n)
	return n > 0, pgError(err)
}
