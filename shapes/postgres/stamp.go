package postgres

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/hypersync/hypersync/shapes"
)

// The stamping objects of a table (see shapes/stamp.go): a trigger
// function and a BEFORE INSERT OR UPDATE trigger that runs it for writes
// made outside hypersync.
//
// The function takes the owner's stamp as a push does: the upsert of the
// owner's row in hypersync_cursors holds its row lock until the writing
// transaction commits, so the write is ordered with the owner's pushes and
// the completeness argument of write.go holds for it unchanged. As a push
// does, a transaction takes one stamp per owner, whole milliseconds above
// the owner's previous one: a later row of the owner in the same
// transaction finds the cursor row written by it (its xmin is the
// transaction's) and keeps that stamp. (In a subtransaction the xmin is
// the subtransaction's, and such a row takes a new stamp, one millisecond
// on.)
//
// The upsert per row is most of the trigger's cost: a bulk insert of
// 10,000 rows takes about 7 times as long as without it (go run ./bench).
//
// hypersync's pushes set hypersync.writer for their transaction and stamp
// their rows themselves; the trigger's WHEN clause skips them, at the cost
// of one setting lookup per row. The function runs as its owner (SECURITY
// DEFINER), so that a writer needs no rights on hypersync_cursors, and SET
// search_path FROM CURRENT binds it to the schema of hypersync_cursors as
// the creating session sees it, whatever the writing session's.

const writerSetting = "hypersync.writer"

// LiveChannel is the channel live pokes travel on between instances, and
// LiveTable holds the database's key for hashing user ids in them (see
// package live/pgnotify). The stamping objects notify it for writes made
// outside hypersync; hypersync's own pushes notify after commit instead.
const (
	LiveChannel = "hypersync_poke"
	LiveTable   = "hypersync_live"
)

// LiveDDL creates LiveTable and its one row, with a random key.
// Instances starting together, and an admin running what check prints,
// may create it at once: CREATE TABLE IF NOT EXISTS checks before it
// inserts into the catalog, so the loser's error is caught, whichever
// catalog entry it trips on (the table's name, its row type's, or its
// primary key's row).
//
// live_until is how long some instance with live sync on has said it
// listens (LiveRefreshSQL): the stamping triggers notify only until then.
// With live sync off everywhere they send nothing, so that an outside
// writer's commit takes no cluster-wide notify lock, and PREPARE
// TRANSACTION, which a transaction that notified cannot do, works.
var LiveDDL = []string{
	`DO $hypersync$ BEGIN
	CREATE TABLE IF NOT EXISTS "` + LiveTable + `" (id int PRIMARY KEY DEFAULT 1 CHECK (id = 1), secret text NOT NULL);
EXCEPTION WHEN duplicate_table OR duplicate_object OR unique_violation THEN NULL;
END $hypersync$`,
	`INSERT INTO "` + LiveTable + `" (secret) VALUES (md5(random()::text || clock_timestamp()::text)) ON CONFLICT (id) DO NOTHING`,
	`ALTER TABLE "` + LiveTable + `" ADD COLUMN IF NOT EXISTS live_until timestamptz`,
}

// LiveRefreshSQL says that an instance with live sync on listens, for the
// next two minutes: it runs every 30 s while one does.
const LiveRefreshSQL = `UPDATE "` + LiveTable + `" SET live_until = greatest(live_until, now() + interval '2 minutes') WHERE id = 1`

// notifySQL pokes the live streams of the users in the text[] expression
// users, with the stamp expression stamp as the event id: their keys,
// left(md5(key || user), 16), as package live hashes them, 300 to a
// notification (about 6,000 bytes, under PostgreSQL's 8,000). Within a
// transaction PostgreSQL sends equal notifications once, so a bulk write
// of one scope's rows sends each once. Nothing is sent unless an instance
// with live sync on listens (live_until).
func notifySQL(users, stamp string) string {
	return `PERFORM pg_notify('` + LiveChannel + `', json_build_object('u', json_agg(left(md5(k.secret || x.u), 16)), 's', (extract(epoch FROM ` + stamp + `) * 1000)::bigint)::text)
		FROM (SELECT u, (row_number() OVER () - 1) / 300 AS n FROM unnest(` + users + `) AS u) AS x, "` + LiveTable + `" AS k
		WHERE k.live_until > now() GROUP BY x.n;`
}

func stamping(t shapes.StampTarget) ([]string, []string) {
	if t.Share != nil {
		return sharedStamping(t)
	}
	q := shapes.QuoteIdent
	marker := t.Marker()
	fn := shapes.QuoteTable(t.Schema, "hypersync_stamp_"+t.Table)
	synced := "NEW." + q(t.SyncedAt)
	// the clock as each column holds time: a timestamp without time zone
	// holds UTC, whatever the writing session's time zone (bumpUpdatedAt)
	stampExpr := "new_stamp"
	if t.SyncedAtLocal {
		stampExpr = "(new_stamp AT TIME ZONE 'UTC')"
	}
	fnSQL := fmt.Sprintf(`CREATE OR REPLACE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $hypersync$
-- %[2]s: stamps rows written outside hypersync, so that they reach devices
DECLARE
	now_ms timestamptz := date_trunc('milliseconds', clock_timestamp());
	new_stamp timestamptz;
BEGIN
	IF NEW.%[4]s IS NULL THEN
		RETURN NEW; -- a row without an owner reaches nobody
	END IF;
%[3]s	INSERT INTO "`+shapes.CursorTable+`" AS c (user_id, stamp) VALUES (NEW.%[4]s, now_ms)
	ON CONFLICT (user_id) DO UPDATE SET stamp = CASE
		-- the cursor row was written by this transaction: its stamp is this transaction's
		WHEN c.xmin::text = (txid_current() %% 4294967296)::text THEN c.stamp
		ELSE greatest(now_ms, c.stamp + interval '1 millisecond') END
	RETURNING c.stamp INTO new_stamp;
	%[6]s := %[5]s;
	%[7]s
	RETURN NEW;
END
$hypersync$`, fn, marker, bumpUpdatedAt(t), q(t.User), stampExpr, synced, notifySQL("ARRAY[NEW."+q(t.User)+"::text]", "new_stamp"))
	trigger := fmt.Sprintf(`DROP TRIGGER IF EXISTS "hypersync_stamp" ON %[1]s;
CREATE TRIGGER "hypersync_stamp" BEFORE INSERT OR UPDATE ON %[1]s FOR EACH ROW
	WHEN (current_setting('`+writerSetting+`', true) IS DISTINCT FROM 'hypersync')
	EXECUTE FUNCTION %[2]s()`, shapes.QuoteTable(t.Schema, t.Table), fn)
	return append(append([]string{}, LiveDDL...), fnSQL, trigger), []string{marker}
}

// bumpUpdatedAt is the part of a trigger function that keeps
// last-write-wins working for a writer that leaves updatedAt as it was, or
// sets it no later: it takes greatest(the clock, previous + 1 ms).
func bumpUpdatedAt(t shapes.StampTarget) string {
	nowUpd := "now_ms"
	if t.UpdatedAtLocal {
		nowUpd = "(now_ms AT TIME ZONE 'UTC')"
	}
	return fmt.Sprintf(`	-- the wire carries milliseconds: so does updatedAt, the clock devices compare
	%[1]s := date_trunc('milliseconds', %[1]s);
	IF TG_OP = 'UPDATE' AND (%[1]s IS NULL OR %[1]s <= OLD.%[2]s) THEN
		%[1]s := greatest(%[3]s, OLD.%[2]s + interval '1 millisecond');
	ELSIF %[1]s IS NULL THEN
		%[1]s := %[3]s;
	END IF;
`, "NEW."+shapes.QuoteIdent(t.UpdatedAt), shapes.QuoteIdent(t.UpdatedAt), nowUpd)
}

// stampMarker finds the marker in a trigger function's source.
var stampMarker = regexp.MustCompile(`hypersync-stamp-v[0-9]+-[0-9a-f]+(` + forgetMark + `)?`)

// sharedStamping renders the stamping objects of a shared shape's table,
// or of a membership table. The function does what a shared push does
// (shared.go), in the same lock order: the row is locked; then its scopes,
// before and after, are locked in key order, in share mode, or
// exclusively for a membership row; then the cursors of everyone who can
// see the row before or after, in user id order: the scopes' members, the
// member a membership row names, and the owner of a private row. They all
// take one stamp above each of their previous ones, which the row gets.
// A transaction that already wrote every one of those cursors keeps their
// greatest stamp, as the per-user trigger keeps its owner's. A row leaving
// a scope is recorded in the moves table, with the tombstone the old
// scope's members receive.
func sharedStamping(t shapes.StampTarget) ([]string, []string) {
	q := shapes.QuoteIdent
	sh := t.Share
	marker := t.Marker()
	fn := shapes.QuoteTable(t.Schema, "hypersync_stamp_"+t.Table)
	members := shapes.QuoteTable(sh.MSchema, sh.MTable)
	scope := q(sh.Scope)
	var b strings.Builder
	// TimeZone UTC: the moves table and scoped_at take the stamp as it is,
	// whatever time zone the writing session has
	fmt.Fprintf(&b, `CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET TimeZone TO 'UTC' AS $hypersync$
-- %s: stamps rows written outside hypersync, for every member of their scope, so that they reach devices
DECLARE
	now_ms timestamptz := date_trunc('milliseconds', clock_timestamp());
	new_stamp timestamptz;
	prev timestamptz;
	mine boolean;
	users text[];
	old_scope %s;
	old_user text;
	old_member text;
BEGIN
	IF TG_OP = 'UPDATE' THEN
		old_scope := OLD.%s;
`, fn, marker, sh.ScopeType, scope)
	if t.User != "" {
		fmt.Fprintf(&b, "\t\told_user := OLD.%s;\n", q(t.User))
	}
	if sh.Membership {
		fmt.Fprintf(&b, "\t\told_member := OLD.%s::text;\n", q(sh.Member))
	}
	b.WriteString("\tEND IF;\n")
	if sh.Membership && sh.MTomb != "" {
		// a member removed before and after: nothing changes for anyone,
		// and a new stamp would send move-out again
		fmt.Fprintf(&b, "\tIF TG_OP = 'UPDATE' AND coalesce(OLD.%[1]s, false) AND coalesce(NEW.%[1]s, false) THEN\n\t\tNEW.%[2]s := OLD.%[2]s;\n\t\tRETURN NEW;\n\tEND IF;\n", q(sh.MTomb), q(t.SyncedAt))
	}
	if t.UpdatedAt != "" {
		b.WriteString(bumpUpdatedAt(t))
	}
	lock := "pg_advisory_xact_lock_shared"
	if sh.Membership {
		lock = "pg_advisory_xact_lock"
	}
	fmt.Fprintf(&b, `	-- the scopes, before and after, in key order
	PERFORM %[1]s(%[8]d, k) FROM (SELECT DISTINCT %[2]s AS k
		FROM unnest(ARRAY[old_scope, NEW.%[3]s]) AS s WHERE s IS NOT NULL ORDER BY 1) AS keys;
	-- everyone who can see the row, before or after
	SELECT array_agg(u ORDER BY u) INTO users FROM (
		SELECT m.%[4]s::text AS u FROM %[5]s AS m WHERE m.%[6]s IN (old_scope, NEW.%[3]s) AND %[7]s
`, lock, scopeLockSQL(sh.MTable, "s::text"), scope, q(sh.MMember), members, q(sh.MScope), activeIn(sh, "m"), scopeLockClass)
	if t.User != "" {
		fmt.Fprintf(&b, "\t\tUNION SELECT NEW.%[1]s::text WHERE NEW.%[2]s IS NULL\n\t\tUNION SELECT old_user WHERE TG_OP = 'UPDATE' AND old_scope IS NULL\n", q(t.User), scope)
	}
	if sh.Membership {
		fmt.Fprintf(&b, "\t\tUNION SELECT NEW.%s::text\n\t\tUNION SELECT old_member\n", q(sh.Member))
	}
	scopedDefault := ""
	if sh.ScopedAt != "" {
		scopedDefault = fmt.Sprintf("\n\t\tNEW.%[1]s := coalesce(NEW.%[1]s, now_ms);", q(sh.ScopedAt))
	}
	stampExpr := "new_stamp"
	if t.SyncedAtLocal {
		stampExpr = "(new_stamp AT TIME ZONE 'UTC')"
	}
	fmt.Fprintf(&b, `	) AS x WHERE u IS NOT NULL;
	IF users IS NULL THEN
		-- a row nobody can see now is stamped with the clock; it still
		-- leaves its traces (moves, kept versions) for members removed
		-- before, below
		new_stamp := now_ms;%[4]s
	ELSE
		INSERT INTO "%[1]s" (user_id, stamp) SELECT u, '-infinity' FROM unnest(users) AS u ORDER BY u ON CONFLICT (user_id) DO NOTHING;
		SELECT max(c.stamp), bool_and(c.x = (txid_current() %% 4294967296)::text) INTO prev, mine
		FROM (SELECT stamp, xmin::text AS x FROM "%[1]s" WHERE user_id = ANY (users) ORDER BY user_id FOR UPDATE) AS c;
		IF mine AND prev > '-infinity' THEN
			new_stamp := prev; -- every cursor was written by this transaction: its stamp is this transaction's
		ELSE
			new_stamp := greatest(now_ms, prev + interval '1 millisecond');
		END IF;
		-- only the cursors behind: a bulk write of one transaction would
		-- otherwise make a new version of each cursor row per row it writes
		UPDATE "%[1]s" SET stamp = new_stamp WHERE user_id = ANY (users) AND stamp < new_stamp;
	END IF;
	NEW.%[2]s := %[3]s;
`, shapes.CursorTable, q(t.SyncedAt), stampExpr, scopedDefault)
	if sh.ScopedAt != "" {
		// the row enters a scope: its scope changes, or a member comes back
		enters := fmt.Sprintf("NEW.%s IS DISTINCT FROM old_scope", scope)
		if sh.Membership && sh.Tomb != "" {
			enters = fmt.Sprintf("coalesce(OLD.%[1]s, false) AND NOT coalesce(NEW.%[1]s, false)", q(sh.Tomb))
		}
		fmt.Fprintf(&b, "\tIF TG_OP = 'INSERT' OR (%[1]s) THEN\n\t\tNEW.%[2]s := new_stamp;\n\tEND IF;\n", enters, q(sh.ScopedAt))
	}
	if sh.Membership {
		// a member removed (or a membership row moved to another scope or
		// member): the period of their membership, for the move-out of
		// what their devices held (shapes/pullshared.go)
		wasActive := fmt.Sprintf("OLD.%s IS NOT NULL AND OLD.%s IS NOT NULL", scope, q(sh.Member))
		isActive := fmt.Sprintf("NEW.%[1]s IS NOT DISTINCT FROM OLD.%[1]s AND NEW.%[2]s IS NOT DISTINCT FROM OLD.%[2]s", scope, q(sh.Member))
		if sh.MTomb != "" {
			wasActive += fmt.Sprintf(" AND NOT coalesce(OLD.%s, false)", q(sh.MTomb))
			isActive += fmt.Sprintf(" AND NOT coalesce(NEW.%s, false)", q(sh.MTomb))
		}
		joined := "'-infinity'::timestamptz"
		if sh.ScopedAt != "" {
			joined = fmt.Sprintf("coalesce(OLD.%s, '-infinity')", q(sh.ScopedAt))
		}
		fmt.Fprintf(&b, `	IF TG_OP = 'UPDATE' AND %[1]s AND NOT (%[2]s) THEN
		INSERT INTO "%[3]s" (members, scope, member, joined, left_at) VALUES (%[4]s, OLD.%[5]s::text, OLD.%[6]s::text, %[7]s, new_stamp);
	END IF;
`, wasActive, isActive, shapes.LeftTable, quoteLiteral(sh.MTable), scope, q(sh.Member), joined)
	}
	if sh.Shape != "" {
		// the version written over, when a member was removed from its
		// scope since it was written: their move-out carries it
		fmt.Fprintf(&b, `	IF TG_OP = 'UPDATE' AND old_scope IS NOT NULL
		AND OLD.%[1]s < (SELECT max(h.left_at) FROM "%[2]s" AS h WHERE h.members = %[3]s AND h.scope = old_scope::text) THEN
		INSERT INTO "%[4]s" (shape, row_key, updated_at, user_id, stamp) VALUES (%[5]s, %[6]s, OLD.%[7]s, OLD.%[8]s::text, OLD.%[1]s);
	END IF;
`, q(t.SyncedAt), shapes.LeftTable, quoteLiteral(sh.MTable), shapes.VersionsTable, quoteLiteral(sh.Shape), keyOf(t.Keys, "OLD"),
			q(t.UpdatedAt), q(t.User))
	}
	if sh.Shape != "" && sh.Tomb != "" {
		var obj []string
		for i, k := range t.Keys {
			obj = append(obj, quoteLiteral(sh.KeyFields[i]), wireKey(sh, i, "NEW."+q(k)))
		}
		obj = append(obj, quoteLiteral(sh.ScopeField), "old_scope", quoteLiteral(sh.TombField), "true")
		fmt.Fprintf(&b, `	IF TG_OP = 'UPDATE' AND old_scope IS NOT NULL AND NEW.%[1]s IS DISTINCT FROM old_scope THEN
		INSERT INTO "%[2]s" (shape, scope, new_scope, user_id, updated_at, stamp, from_scoped_at, payload, row_key)
		VALUES (%[3]s, old_scope::text, NEW.%[1]s::text, coalesce(NEW.%[4]s::text, ''), NEW.%[5]s, new_stamp, OLD.%[7]s, json_build_object(%[6]s)::text, %[8]s);
	END IF;
`, scope, shapes.MovesTable, quoteLiteral(sh.Shape), q(t.User), q(t.UpdatedAt), strings.Join(obj, ", "), q(sh.ScopedAt), keyOf(t.Keys, "NEW"))
	}
	b.WriteString("\t" + notifySQL("users", "new_stamp") + "\n\tRETURN NEW;\nEND\n$hypersync$")
	trigger := fmt.Sprintf(`DROP TRIGGER IF EXISTS "hypersync_stamp" ON %[1]s;
CREATE TRIGGER "hypersync_stamp" BEFORE INSERT OR UPDATE ON %[1]s FOR EACH ROW
	WHEN (current_setting('`+writerSetting+`', true) IS DISTINCT FROM 'hypersync')
	EXECUTE FUNCTION %[2]s()`, shapes.QuoteTable(t.Schema, t.Table), fn)
	ddl := append(append(append([]string{}, LiveDDL...), sharingDDL...), b.String(), trigger)
	return append(ddl, forgetting(t, marker)...), []string{marker, marker + forgetMark}
}

// forgetMark follows the marker in the function of forgetting.
const forgetMark = " DELETE"

// forgetting renders the objects that record, after a DELETE from a
// shared table or a membership table, the scopes it deleted rows from:
// such a scope can never be founded again (shapes/pushshared.go), or a
// stranger could found a list whose memberships an admin deleted, and
// receive its rows.
func forgetting(t shapes.StampTarget, marker string) []string {
	sh := t.Share
	fn := shapes.QuoteTable(t.Schema, "hypersync_forget_"+t.Table)
	truncFn := shapes.QuoteTable(t.Schema, "hypersync_forget_all_"+t.Table)
	table := shapes.QuoteTable(t.Schema, t.Table)
	record := func(from string) string {
		return fmt.Sprintf(`INSERT INTO "%[1]s" (members, scope) SELECT DISTINCT %[2]s, g.%[3]s::text FROM %[4]s AS g WHERE g.%[3]s IS NOT NULL ON CONFLICT DO NOTHING`,
			shapes.ScopesTable, quoteLiteral(sh.MTable), shapes.QuoteIdent(sh.Scope), from)
	}
	return []string{fmt.Sprintf(`CREATE OR REPLACE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $hypersync$
-- %[2]s%[3]s: records the scopes rows were deleted from, which can never be founded again
BEGIN
	%[4]s;
	RETURN NULL;
END
$hypersync$`, fn, marker, forgetMark, record("gone")),
		fmt.Sprintf(`DROP TRIGGER IF EXISTS "hypersync_forget" ON %[1]s;
CREATE TRIGGER "hypersync_forget" AFTER DELETE ON %[1]s REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION %[2]s()`, table, fn),
		// TRUNCATE deletes without DELETE triggers: before it, every scope
		// the table holds is recorded
		fmt.Sprintf(`CREATE OR REPLACE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $hypersync$
-- %[2]s%[3]s: records the scopes of a table about to be truncated, which can never be founded again
BEGIN
	%[4]s;
	RETURN NULL;
END
$hypersync$`, truncFn, marker, forgetMark, record(table)),
		fmt.Sprintf(`DROP TRIGGER IF EXISTS "hypersync_forget_all" ON %[1]s;
CREATE TRIGGER "hypersync_forget_all" BEFORE TRUNCATE ON %[1]s FOR EACH STATEMENT EXECUTE FUNCTION %[2]s()`, table, truncFn)}
}

// wireKey is key i of a tombstone, the column expression col, as pulls
// write it: a time in UTC, with milliseconds.
func wireKey(sh *shapes.StampShare, i int, col string) string {
	if i >= len(sh.KeyTimes) {
		return col
	}
	switch sh.KeyTimes[i] {
	case "tz":
		col += " AT TIME ZONE 'UTC'"
	case "local":
	default:
		return col
	}
	return `to_char(` + col + `, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`
}

// keyOf is keyExpr of the key columns of the record rec (NEW or OLD).
func keyOf(keys []string, rec string) string {
	vals := make([]string, len(keys))
	for i, k := range keys {
		vals[i] = rec + "." + shapes.QuoteIdent(k)
	}
	return keyExpr(vals)
}

// activeIn is the condition that the membership row alias is not removed.
func activeIn(sh *shapes.StampShare, alias string) string {
	if sh.MTomb == "" {
		return "true"
	}
	return "NOT coalesce(" + alias + "." + shapes.QuoteIdent(sh.MTomb) + ", false)"
}
