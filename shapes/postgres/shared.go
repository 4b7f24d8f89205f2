package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/hypersync/hypersync/shapes"
)

// How pull completeness is kept for shared scopes on PostgreSQL.
//
// A push into a shared shape runs in one transaction that takes its locks
// in one order: the stored rows it names (FOR UPDATE), then the scopes
// those rows are in or enter (advisory locks: share mode for a write into
// the scope, exclusive for a change of its membership), then the cursors
// of everyone who can see a touched scope before or after the push,
// sorted by user id. Only then does it take its stamp, above every one of
// those cursors, and set them all to it.
//
// A row's scope cannot change under the push (its row lock), nor can the
// members of that scope (the scope lock: a membership change holds it
// exclusively until commit). So the cursors the push locks are those of
// every user who can see any row it writes, and each of those users sees
// the push as one more push of their own: its stamp is above their
// previous stamps, and their cursor is locked until it commits. The
// per-user argument of write.go then holds for every member m: every write
// visible to m with a stamp at or below S_m committed before S_m did, so
// one snapshot holding S_m holds them all. A membership change locks the
// cursors of the members before and after it, and so is ordered the same
// way for everyone it concerns, the new or removed member included: a
// pull's move-in and move-out (pull.go) read the membership row in the
// same snapshot as the rows.
//
// Deadlocks: hypersync's shared pushes take rows, scopes, cursors in that
// order. A per-user push takes its cursor then its rows, and a stamping
// trigger its row then cursors; a cycle between them needs two writers on
// one row, and PostgreSQL ends one, which Shared retries.

// The advisory lock of a scope is one of scopeLocks, in hypersync's own
// class of two-key advisory locks: chosen by a hash of the membership
// table's name (without its schema, which a configuration may leave out)
// and the scope's canonical text (the value cast to the column's type and
// back). The stamping triggers take the same lock (scopeLockSQL). Two
// scopes that share a lock only wait for each other; the bound keeps a
// push into many scopes, or a bulk write from outside across many, within
// PostgreSQL's lock table (64 locks per connection by default).
const (
	scopeLockClass = 0x6879 // "hy"
	scopeLocks     = 256
)

func scopeLockKey(m *shapes.Membership, scope string) string {
	return scopeLockSQL(m.Table, fmt.Sprintf("%s::%s::text", scope, m.Scope.Cast))
}

// scopeLockSQL is the lock number of the scope whose canonical text is
// the expression text, in a membership table named table.
func scopeLockSQL(table, text string) string {
	return fmt.Sprintf("(hashtext(%s || %s) & %d)", quoteLiteral(table+":"), text, scopeLocks-1)
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Shared runs fn in one transaction (see retry for what runs it again).
func (p *driver) Shared(ctx context.Context, fn func(shapes.Tx) error) error {
	return retry(func() error { return p.shared(ctx, fn) })
}

func (p *driver) shared(ctx context.Context, fn func(shapes.Tx) error) error {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	t := &pgTx{ctx: ctx, conn: conn.Conn(), p: p, batch: &pgx.Batch{}}
	t.queue("BEGIN", nil, nil)
	t.queue(markWriterSQL, nil, nil)
	err = fn(t)
	if err == nil {
		t.commitStamp()
		t.queue("COMMIT", nil, nil)
		err = t.flush()
	}
	if err != nil {
		if _, rerr := conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil {
			// a connection in an unknown state is not given back
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}
	return err
}

// pgTx is a shared push's transaction on one connection. Statements whose
// answer the policy does not wait for (locks, writes, the commit) are
// queued and sent with the next that it does, so that a push takes four
// round trips: the stored rows; the scope locks and memberships; the
// cursor locks; the writes and the commit.
type pgTx struct {
	users    []string // the cursors Stamp locked
	block    string   // the hash the next Stamp checks (Blocked)
	stamped  map[string]bool
	ctx      context.Context
	conn     *pgx.Conn
	p        *driver
	batch    *pgx.Batch
	handlers []func(pgx.BatchResults) error
}

// queue adds a statement to the next round trip; read, when not nil,
// reads its answer.
func (t *pgTx) queue(sql string, args []any, read func(pgx.BatchResults) error) {
	t.batch.Queue(sql, args...)
	if read == nil {
		read = func(br pgx.BatchResults) error { _, err := br.Exec(); return err }
	}
	t.handlers = append(t.handlers, read)
}

// flush sends the queued statements and reads their answers in order.
func (t *pgTx) flush() error {
	if len(t.handlers) == 0 {
		return nil
	}
	br := t.conn.SendBatch(t.ctx, t.batch)
	var err error
	for _, read := range t.handlers {
		if err = read(br); err != nil {
			break
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	t.batch, t.handlers = &pgx.Batch{}, nil
	return err
}

// keyArgs are the key values of rows as text arrays, one per key column.
func keyArgs(sh *shapes.Shape, rows []*shapes.Row) ([]any, error) {
	args := make([]any, len(sh.Keys))
	for i := range sh.Keys {
		c := sh.Columns()[i]
		vals := make([]string, len(rows))
		for j, r := range rows {
			v, err := c.TextValue(trimmed(r.Vals[i]))
			if err != nil {
				return nil, &shapes.RefusedError{Message: fmt.Sprintf("field %q: %v", c.Field, err)}
			}
			vals[j] = v
		}
		args[i] = vals
	}
	return args, nil
}

func (t *pgTx) Stored(sh *shapes.Shape, rows []*shapes.Row) ([]*shapes.Stored, error) {
	args, err := keyArgs(sh, rows)
	if err != nil {
		return nil, err
	}
	q := shapes.QuoteIdent
	var arrays, names, match []string
	for i, k := range sh.Keys {
		arrays = append(arrays, fmt.Sprintf("$%d::text[]", i+1))
		names = append(names, fmt.Sprintf("k%d", i))
		match = append(match, fmt.Sprintf("t.%s = v.k%d::%s", q(k.Name), i, k.Cast))
	}
	tomb := "false"
	if c, ok := sh.TombColumn(); ok {
		tomb = "coalesce(t." + q(c.Name) + ", false)"
	}
	// a per-user shape's rows (for inspect) are private: no scope
	scope, scoped := "NULL", "NULL"
	if sh.Share() != nil {
		scope, scoped = "t."+q(sh.ScopeColumn().Name), "t."+q(sh.Share().ScopedAt.Name)
	}
	// One index probe per key (LATERAL): a join left to the planner may
	// scan the table, and a cached plan keeps doing so as it grows. The
	// keys are locked in one order, the same for every push.
	sql := fmt.Sprintf(`SELECT v.ord::int4, t.*
FROM (SELECT * FROM unnest(%s) WITH ORDINALITY AS v(%s, ord) ORDER BY %s) AS v,
LATERAL (SELECT %s::text, t.%s::text, t.%s::timestamptz, %s, %s::timestamptz, t.%s::timestamptz FROM %s AS t WHERE %s FOR UPDATE) AS t`,
		strings.Join(arrays, ", "), strings.Join(names, ", "), strings.Join(names, ", "),
		scope, q(sh.User.Name), q(sh.UpdatedAt.Name), tomb, scoped, q(sh.SyncedAt.Name),
		shapes.QuoteTable(sh.Schema, sh.Table), strings.Join(match, " AND "))
	out := make([]*shapes.Stored, len(rows))
	if len(rows) == 1 {
		// one key on its own (an isolated push): a key the database
		// cannot read is refused without aborting the transaction; what
		// was queued before is sent first, so that its failure is not
		// taken for the key's
		if err := t.flush(); err != nil {
			return nil, pgError(err)
		}
		t.queue("SAVEPOINT k", nil, nil)
	}
	t.queue(sql, args, func(br pgx.BatchResults) error {
		res, err := br.Query()
		if err != nil {
			return err
		}
		defer res.Close()
		for res.Next() {
			if err := scanStored(res, out); err != nil {
				return err
			}
		}
		return res.Err()
	})
	err = t.flush()
	if len(rows) == 1 {
		if err != nil {
			if _, rerr := t.conn.Exec(t.ctx, "ROLLBACK TO SAVEPOINT k"); rerr != nil {
				return nil, rerr
			}
		} else {
			t.queue("RELEASE SAVEPOINT k", nil, nil)
		}
	}
	return out, pgError(err)
}

// scanStored reads one stored row into its place in out.
func scanStored(res pgx.Rows, out []*shapes.Stored) error {
	{
		var ord int32
		var scope, user pgtype.Text
		var upd, scoped, synced pgtype.Timestamptz
		var st shapes.Stored
		if err := res.Scan(&ord, &scope, &user, &upd, &st.Tomb, &scoped, &synced); err != nil {
			return err
		}
		if synced.Valid && synced.InfinityModifier == pgtype.Finite {
			st.Synced = synced.Time
		}
		st.Scope, st.ScopeNull, st.User = scope.String, !scope.Valid, user.String
		if upd.Valid && upd.InfinityModifier == pgtype.Finite {
			st.UpdatedAt = upd.Time
		} else if upd.InfinityModifier == pgtype.Infinity {
			st.UpdatedAt = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
		}
		if scoped.Valid && scoped.InfinityModifier == pgtype.Finite {
			st.ScopedAt = scoped.Time
		}
		out[ord-1] = &st
	}
	return nil
}

// LockMembers takes, in hypersync's class of member locks, the lock of
// each of users as a member of m: a push that may add them takes it after
// its scope locks and before the cursors', in users' order.
func (t *pgTx) LockMembers(m *shapes.Membership, users []string) error {
	t.queue(fmt.Sprintf(`SELECT count(*) FROM (
	SELECT pg_advisory_xact_lock(%d, k) FROM (SELECT DISTINCT hashtext(%s || u) AS k FROM unnest($1::text[]) AS u ORDER BY 1) AS keys) AS locked`,
		memberLockClass, quoteLiteral(m.Table+":")), []any{users}, nil) // sent with Memberships, which follows
	return nil
}

// memberLockClass is hypersync's class of two-key advisory locks on
// members ("hm").
const memberLockClass = 0x686d

func (t *pgTx) LockScopes(m *shapes.Membership, scopes []string, exclusive []bool) error {
	if len(scopes) == 0 {
		return nil
	}
	// Volatile functions in a target list run after the sort, so the
	// locks are taken in key order, which every shared push follows.
	sql := fmt.Sprintf(`SELECT count(*) FROM (
	SELECT CASE WHEN x THEN pg_advisory_xact_lock(%[2]d, k)::text ELSE pg_advisory_xact_lock_shared(%[2]d, k)::text END
	FROM (SELECT %[1]s AS k, bool_or(e) AS x FROM unnest($1::text[], $2::bool[]) AS v(s, e) GROUP BY 1) AS keys
	ORDER BY k) AS locked`, scopeLockKey(m, "v.s"), scopeLockClass)
	t.queue(sql, []any{scopes, exclusive}, nil) // sent with Members, which follows
	return nil
}

func (t *pgTx) Members(m *shapes.Membership, scopes []string) (map[string]*shapes.ScopeState, error) {
	q := shapes.QuoteIdent
	table := shapes.QuoteTable(m.Schema, m.Table)
	// each scope under the text it was asked for: the database's equality
	// decides which rows are a scope's; one row per active member, or one
	// with no member
	sql := fmt.Sprintf(`SELECT v.s, a.%[1]s::text,
	EXISTS (SELECT FROM %[2]s AS e WHERE e.%[3]s = v.s::%[4]s),
	(SELECT max(h.left_at) FROM "%[6]s" AS h WHERE h.members = $2 AND h.scope = v.s)
FROM unnest($1::text[]) AS v(s) LEFT JOIN %[2]s AS a ON a.%[3]s = v.s::%[4]s AND %[5]s AND a.%[1]s IS NOT NULL`,
		q(m.Member.Name), table, q(m.Scope.Name), m.Scope.Cast, active(m, "a"), shapes.LeftTable)
	out := make(map[string]*shapes.ScopeState, len(scopes))
	t.queue(sql, []any{scopes, m.Table}, func(br pgx.BatchResults) error {
		res, err := br.Query()
		if err != nil {
			return err
		}
		defer res.Close()
		for res.Next() {
			var scope string
			var member pgtype.Text
			var ever bool
			var left pgtype.Timestamptz
			if err := res.Scan(&scope, &member, &ever, &left); err != nil {
				return err
			}
			st := out[scope]
			if st == nil {
				st = &shapes.ScopeState{Ever: ever}
				if left.Valid && left.InfinityModifier == pgtype.Finite {
					st.LastLeft = left.Time
				}
				out[scope] = st
			}
			if member.Valid {
				st.Active = append(st.Active, member.String)
			}
		}
		return res.Err()
	})
	return out, pgError(t.flush())
}

func (t *pgTx) Memberships(m *shapes.Membership, users []string) (map[string]int, error) {
	q := shapes.QuoteIdent
	out := map[string]int{}
	t.queue(fmt.Sprintf(`SELECT a.%[1]s::text, count(*)::int FROM %[2]s AS a WHERE a.%[1]s = ANY ($1::text[]) AND %[3]s GROUP BY 1`,
		q(m.Member.Name), shapes.QuoteTable(m.Schema, m.Table), active(m, "a")), []any{users}, func(br pgx.BatchResults) error {
		res, err := br.Query()
		if err != nil {
			return err
		}
		var u string
		var n int32
		_, err = pgx.ForEachRow(res, []any{&u, &n}, func() error { out[u] = int(n); return nil })
		return err
	})
	return out, pgError(t.flush())
}

func (t *pgTx) Used(m *shapes.Membership, scopes []string) (map[string]bool, error) {
	q := shapes.QuoteIdent
	var probes []string
	var shapeKeys []string
	for _, sh := range m.Shared {
		shapeKeys = append(shapeKeys, sh.Config.Key)
		probes = append(probes, fmt.Sprintf(`EXISTS (SELECT FROM %s AS t WHERE t.%s = v.s::%s)`,
			shapes.QuoteTable(sh.Schema, sh.Table), q(sh.ScopeColumn().Name), sh.ScopeColumn().Cast))
	}
	probes = append(probes, `EXISTS (SELECT FROM "`+shapes.MovesTable+`" AS mv WHERE mv.shape = ANY ($2::text[]) AND mv.scope = v.s)`,
		`EXISTS (SELECT FROM "`+shapes.ScopesTable+`" AS r WHERE r.members = $3 AND r.scope = v.s)`)
	out := map[string]bool{}
	t.queue(`SELECT v.s FROM unnest($1::text[]) AS v(s) WHERE `+strings.Join(probes, " OR "), []any{scopes, shapeKeys, m.Table}, func(br pgx.BatchResults) error {
		res, err := br.Query()
		if err != nil {
			return err
		}
		var sc string
		_, err = pgx.ForEachRow(res, []any{&sc}, func() error { out[sc] = true; return nil })
		return err
	})
	return out, pgError(t.flush())
}

// Stamp locks the cursors of users in id order and takes one stamp above
// each (write.go), and above any it took before in the transaction, kept
// in the transaction's stamp setting for the write statements. A cursor
// that does not exist yet is made first; the insert locks it like the
// others. The cursors move to the stamp at commit, if a statement applied
// a row (commitStamp).
func (t *pgTx) Stamp(users []string) (time.Time, error) {
	var s time.Time
	if t.p.naiveStamps {
		var writer string
		t.queue(naiveStampSQL, []any{users[0]}, func(br pgx.BatchResults) error { return br.QueryRow().Scan(&s, &writer) })
		return s, pgError(t.flush())
	}
	t.queue(`INSERT INTO "`+shapes.CursorTable+`" (user_id, stamp)
SELECT u, '-infinity' FROM unnest($1::text[]) AS u ORDER BY u ON CONFLICT (user_id) DO NOTHING`, []any{users}, nil)
	t.queue(`SELECT set_config('`+stampSetting+`', greatest(date_trunc('milliseconds', clock_timestamp()), max(stamp) + interval '1 millisecond',
	nullif(current_setting('`+stampSetting+`', true), '')::timestamptz + interval '1 millisecond')::text, true)::timestamptz
FROM (SELECT stamp FROM "`+shapes.CursorTable+`" WHERE user_id = ANY ($1::text[]) ORDER BY user_id FOR UPDATE) AS locked`, []any{users},
		func(br pgx.BatchResults) error { return br.QueryRow().Scan(&s) })
	if t.block != "" {
		t.queue(erasedSQL, []any{t.block}, nil)
		t.block = ""
	}
	if err := t.flush(); err != nil {
		return time.Time{}, pgError(err)
	}
	for _, u := range users {
		if !t.stamped[u] {
			if t.stamped == nil {
				t.stamped = map[string]bool{}
			}
			t.stamped[u] = true
			t.users = append(t.users, u)
		}
	}
	return s, nil
}

// Blocked queues erasedSQL for the next round trip, and has the next Stamp
// run it again after its locks, in its own round trip.
func (t *pgTx) Blocked(hash string) error {
	if hash != "" {
		t.queue(erasedSQL, []any{hash}, nil)
	}
	t.block = hash
	return nil
}

// commitStamp queues, before the commit, the move of the cursors Stamp
// locked to the push's stamp, if a write statement applied a row, and the
// removal of cursor rows Stamp made for a push that applied nothing: such
// a push stamps nobody (write.go).
func (t *pgTx) commitStamp() {
	if t.users == nil {
		return
	}
	t.queue(`UPDATE "`+shapes.CursorTable+`" SET stamp = current_setting('`+stampSetting+`')::timestamptz
WHERE user_id = ANY ($1::text[]) AND current_setting('`+appliedSetting+`', true) = 'yes'`, []any{t.users}, nil)
	t.queue(`DELETE FROM "`+shapes.CursorTable+`" WHERE user_id = ANY ($1::text[]) AND stamp = '-infinity'`, []any{t.users}, nil)
}

// keyValues is the part of a statement that reads the keys of rows from
// arrays ($first on, see keyArgs) as v.k0, v.k1 …, each in its column's
// type, and the key text of each (keyExpr).
func keyValues(sh *shapes.Shape, first int) (from string, casts []string) {
	var arrays, names []string
	for i, k := range sh.Keys {
		arrays = append(arrays, fmt.Sprintf("$%d::text[]", first+i))
		names = append(names, fmt.Sprintf("k%d", i))
		casts = append(casts, fmt.Sprintf("v.k%d::%s", i, k.Cast))
	}
	return fmt.Sprintf("unnest(%s) AS v(%s)", strings.Join(arrays, ", "), strings.Join(names, ", ")), casts
}

// keyExpr is the text that names a row by its key in the moves and
// versions tables, from the key values in their types: the value as
// text, or a JSON array of them for a key of several columns. The
// stamping triggers and pulls compute the same.
func keyExpr(vals []string) string {
	if len(vals) == 1 {
		return "(" + vals[0] + ")::text"
	}
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = "(" + v + ")::text"
	}
	return "json_build_array(" + strings.Join(parts, ", ") + ")::text"
}

// rowKeyOf is keyExpr of the key columns of the row alias.
func rowKeyOf(sh *shapes.Shape, alias string) string {
	vals := make([]string, len(sh.Keys))
	for i, k := range sh.Keys {
		vals[i] = alias + "." + shapes.QuoteIdent(k.Name)
	}
	return keyExpr(vals)
}

func (t *pgTx) Archive(sh *shapes.Shape, rows []*shapes.Row) error {
	args, err := keyArgs(sh, rows)
	if err != nil {
		return err
	}
	q := shapes.QuoteIdent
	from, casts := keyValues(sh, 2)
	match := make([]string, len(casts))
	for i, k := range sh.Keys {
		match[i] = "t." + q(k.Name) + " = " + casts[i]
	}
	t.queue(fmt.Sprintf(`INSERT INTO "%s" (shape, row_key, updated_at, user_id, stamp)
SELECT $1, %s, t.%s::timestamptz, t.%s::text, t.%s::timestamptz FROM %s JOIN %s AS t ON %s`,
		shapes.VersionsTable, rowKeyOf(sh, "t"), q(sh.UpdatedAt.Name), q(sh.User.Name), q(sh.SyncedAt.Name),
		from, shapes.QuoteTable(sh.Schema, sh.Table), strings.Join(match, " AND ")), append([]any{sh.Config.Key}, args...), nil)
	return nil
}

func (t *pgTx) Leave(m *shapes.Membership, leaves []shapes.Leave) error {
	n := len(leaves)
	scope, member := make([]string, n), make([]string, n)
	joined, left := make([]pgtype.Timestamptz, n), make([]time.Time, n)
	for i, l := range leaves {
		scope[i], member[i], left[i] = l.Scope, l.Member, l.Stamp
		joined[i] = pgtype.Timestamptz{Time: l.Joined, Valid: true}
		if l.Joined.IsZero() {
			joined[i] = pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
		}
	}
	t.queue(`INSERT INTO "`+shapes.LeftTable+`" (members, scope, member, joined, left_at)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])`, []any{m.Table, scope, member, joined, left}, nil)
	return nil
}

func (t *pgTx) Write(user string, g shapes.Group, isolated bool) error {
	args, err := t.p.groupArgs(user, g)
	if err != nil {
		return err
	}
	read := func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err != nil {
			return err
		}
		return readOutcomes(rows, g)
	}
	sql := upsertSQL(g.Shape, g.Mask)
	if g.New {
		sql = insertSharedSQL(g.Shape, g.Mask)
		read = func(br pgx.BatchResults) error {
			var n int
			var flag *string
			if err := br.QueryRow().Scan(&n, &flag); err != nil {
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && strings.Contains(pgErr.Message, raced) {
					return shapes.ErrRetry
				}
				return err
			}
			for _, r := range g.Rows {
				r.Outcome = shapes.RowApplied
			}
			return nil
		}
	}
	if !isolated {
		t.queue(sql, args, read) // sent with the commit
		return nil
	}
	// one row on its own, in a savepoint, so that a refused value undoes
	// it alone
	t.queue("SAVEPOINT w", nil, nil)
	t.queue(sql, args, read)
	if err := t.flush(); err != nil {
		if _, rerr := t.conn.Exec(t.ctx, "ROLLBACK TO SAVEPOINT w"); rerr != nil {
			return rerr
		}
		return pgError(err)
	}
	t.queue("RELEASE SAVEPOINT w", nil, nil)
	return nil
}

func (t *pgTx) Moves(moves []shapes.Move) error {
	byShape := map[*shapes.Shape][]shapes.Move{}
	var order []*shapes.Shape
	for _, mv := range moves {
		if byShape[mv.Shape] == nil {
			order = append(order, mv.Shape)
		}
		byShape[mv.Shape] = append(byShape[mv.Shape], mv)
	}
	for _, sh := range order {
		ms := byShape[sh]
		n := len(ms)
		from, to, user, payload := make([]string, n), make([]pgtype.Text, n), make([]string, n), make([]string, n)
		upd, stamp, scoped := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
		rows := make([]*shapes.Row, n)
		for i, mv := range ms {
			from[i], user[i], payload[i], rows[i] = mv.From, mv.User, string(mv.Payload), mv.Row
			to[i] = pgtype.Text{String: mv.To, Valid: !mv.ToNull}
			upd[i], stamp[i], scoped[i] = mv.UpdatedAt, mv.Stamp, mv.FromScopedAt
		}
		keys, err := keyArgs(sh, rows)
		if err != nil {
			return err
		}
		var arrays, names []string
		for i := range sh.Keys {
			arrays = append(arrays, fmt.Sprintf("$%d::text[]", 9+i))
			names = append(names, fmt.Sprintf("k%d", i))
		}
		_, casts := keyValues(sh, 9)
		t.queue(fmt.Sprintf(`INSERT INTO "%s" (shape, scope, new_scope, user_id, updated_at, stamp, from_scoped_at, payload, row_key)
SELECT $1, v.scope, v.new_scope, v.user_id, v.upd, v.stamp, v.scoped, v.payload, %s
FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::text[], %s)
	AS v(scope, new_scope, user_id, upd, stamp, scoped, payload, %s)`,
			shapes.MovesTable, keyExpr(casts), strings.Join(arrays, ", "), strings.Join(names, ", ")),
			append([]any{sh.Config.Key, from, to, user, upd, stamp, scoped, payload}, keys...), nil)
	}
	return nil
}

// insertSharedSQL inserts rows of a shared shape that did not exist when
// the push locked its rows: a row another transaction inserted since is
// left alone, and then the statement fails (raced), which aborts the
// transaction before the commit queued after it, for the push to run
// again and find the row. (Counting in Go would come too late: the commit
// has gone with the statement.)
// raced is the text of insertSharedSQL's failure (followed by the count,
// so that the planner cannot fold the failing cast into a constant).
const raced = "hypersync: a row was inserted meanwhile"

func insertSharedSQL(sh *shapes.Shape, m shapes.Mask) string {
	s, _ := sh.Statement(shapes.StatementKey{Op: opInsertShared, Mask: m}, func() (any, error) {
		u := partsOf(sh, m)
		cols := append(append([]string{}, u.cols...), u.user, u.upd)
		return inputSQL(sh, m) + fmt.Sprintf(`, ins AS (
	INSERT INTO %s AS t (%s, %s, %s)
	SELECT %s, stamp.stamp, stamp.stamp FROM input, stamp ORDER BY %s
	ON CONFLICT (%s) DO NOTHING
	RETURNING 1
)
SELECT CASE WHEN count(*) = (SELECT count(*) FROM input) THEN count(*)::int ELSE CAST('%s ' || count(*) AS int) END,
	CASE WHEN count(*) > 0 THEN set_config('%s', 'yes', true) END FROM ins`, u.table, strings.Join(cols, ", "), u.synced, u.scoped, strings.Join(prefixed("input.", cols), ", "),
			strings.Join(prefixed("input.", u.keyCols), ", "), strings.Join(u.keyCols, ", "), raced, appliedSetting), nil
	})
	return s.(string)
}
