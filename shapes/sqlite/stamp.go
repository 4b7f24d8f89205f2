package sqlite

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/hypersync/hypersync/shapes"
)

// The stamping objects of a table (see shapes/stamp.go): AFTER INSERT and
// AFTER UPDATE triggers that stamp rows written by another process, such
// as the sqlite3 shell.
//
// SQLite lets one writer at a time hold the file's write lock, across
// processes, so every write is ordered with hypersync's pushes as they are
// with each other (write.go). A trigger takes the owner's stamp as a push
// does, greatest(now, previous stamp + 1 ms), in the writer's transaction,
// and writes it into the row; a pull reads the cursor and the rows in one
// snapshot, which sees the row exactly when it sees the stamp. Stamps stay
// whole milliseconds, the precision of the client's cursor, so that a page
// of a paged pull always ends past its rows. SQLite cannot tell a trigger
// which transaction it runs in, so each row takes its own stamp: a bulk
// write of n rows moves the owner's stamps n milliseconds on, ahead of the
// clock if it is fast, which costs nothing but that.
//
// The triggers skip hypersync's own writes: a push writes each group's
// stamp into the owner's cursor and then into the group's rows (write.go),
// so a row written by hypersync carries the owner's current stamp, and a
// second write of a row in one push, in a later group, changes its stamp.
// Another writer's insert carries no such stamp, and its update leaves the
// stamp as it was. Their UPDATE of the row does not fire them again.
//
// updatedAt is stored in hypersync's layout, whatever form the writer gave
// it, so that last-write-wins compares text in time order. Nothing newer
// than SQLite 3.24's upsert is used (unixepoch and its 'subsec' are not), so
// that the sqlite3 shell of an older system can write the table too.

// millis is any time SQLite reads, to the millisecond, as milliseconds
// since 1970. julianday's double resolves a millisecond with room to spare.
func millis(e string) string {
	return `CAST(round((julianday(` + e + `) - 2440587.5) * 86400000) AS INTEGER)`
}

// layout writes milliseconds since 1970 in stampLayout.
func layout(ms string) string {
	return `(strftime('%Y-%m-%dT%H:%M:%S', (` + ms + `) / 1000, 'unixepoch') || '.' || substr('00' || ((` + ms + `) % 1000), -3) || '000Z')`
}

func stamping(t shapes.StampTarget) ([]string, []string) {
	if t.Share != nil {
		return sharedStamping(t)
	}
	q := shapes.QuoteIdent
	user, upd, synced := q(t.User), q(t.UpdatedAt), q(t.SyncedAt)
	marker := t.Marker()
	cursor := `(SELECT stamp FROM "` + shapes.CursorTable + `" WHERE user_id = NEW.` + user + `)`
	var keys []string
	for _, k := range t.Keys {
		keys = append(keys, q(k)+" IS NEW."+q(k))
	}
	now := millis(`'now'`)
	bump := `INSERT INTO "` + shapes.CursorTable + `" (user_id, stamp) VALUES (NEW.` + user + `, ` + layout(now) + `)
	ON CONFLICT (user_id) DO UPDATE SET stamp = ` + layout(`max(`+now+`, `+millis("stamp")+` + 1)`) + `;`
	var ddl []string
	trigger := func(event, when, newUpd string) {
		name := q("hypersync_stamp_" + t.Table + "_" + strings.ToLower(event))
		if t.Schema != "" {
			name = q(t.Schema) + "." + name
		}
		ddl = append(ddl, `DROP TRIGGER IF EXISTS `+name, fmt.Sprintf(`CREATE TRIGGER %s AFTER %s ON %s
WHEN NEW.%s IS NOT NULL AND (%s)
BEGIN
	-- %s %s: stamps rows written outside hypersync, so that they reach devices
	%s
	UPDATE %s SET %s = %s, %s = %s
	WHERE %s;
END`, name, event, q(t.Table), user, when, marker, event, bump, q(t.Table), synced, cursor, upd, newUpd, strings.Join(keys, " AND ")))
	}
	notHypersync := `NEW.` + synced + ` IS NULL OR NEW.` + synced + ` IS NOT ` + cursor
	trigger("INSERT", notHypersync, `CASE WHEN NEW.`+upd+` IS NULL THEN `+layout(now)+` ELSE `+layout(millis("NEW."+upd))+` END`)
	trigger("UPDATE", `NEW.`+synced+` IS OLD.`+synced+` OR `+notHypersync, `CASE WHEN NEW.`+upd+` IS NULL OR julianday(NEW.`+upd+`) <= julianday(OLD.`+upd+`)
		THEN `+layout(`max(`+now+`, coalesce(`+millis("OLD."+upd)+` + 1, 0))`)+`
		ELSE `+layout(millis("NEW."+upd))+` END`)
	return ddl, []string{marker + " INSERT", marker + " UPDATE"}
}

// stampMarkers finds the markers in a table's triggers.
var stampMarkers = regexp.MustCompile(`hypersync-stamp-v[0-9]+-[0-9a-f]+ (INSERT|UPDATE|DELETE)`)

// sharedStamping renders the triggers of a shared shape's table, or of a
// membership table. As for a shared push (shared.go), the file's write
// lock orders the write with every other, and the row takes one stamp
// above the cursors of everyone who can see it before or after (the
// scopes' members, the member a membership row names, the owner of a
// private row), which all move to it. The stamp is written into the row
// first, and copied from there into the cursors, since a trigger has no
// variables. A row leaving a scope is recorded in the moves table.
func sharedStamping(t shapes.StampTarget) ([]string, []string) {
	q := shapes.QuoteIdent
	sh := t.Share
	marker := t.Marker()
	synced, scope := q(t.SyncedAt), q(sh.Scope)
	var keys []string
	for _, k := range t.Keys {
		keys = append(keys, q(k)+" IS NEW."+q(k))
	}
	if len(t.Keys) == 0 {
		// a membership table that is no shape: its scope and member
		keys = []string{scope + " IS NEW." + scope, q(sh.Member) + " IS NEW." + q(sh.Member)}
	}
	where := strings.Join(keys, " AND ")
	active := "1"
	if sh.MTomb != "" {
		active = "NOT coalesce(m." + q(sh.MTomb) + ", 0)"
	}
	members := shapes.QuoteTable(sh.MSchema, sh.MTable)
	now := millis(`'now'`)
	var ddl []string
	trigger := func(event string, update bool) {
		name := q("hypersync_stamp_" + t.Table + "_" + strings.ToLower(event))
		if t.Schema != "" {
			name = q(t.Schema) + "." + name
		}
		scopes := "NEW." + scope
		if update {
			scopes = "OLD." + scope + ", NEW." + scope
		}
		users := []string{fmt.Sprintf("SELECT m.%s AS u FROM %s AS m WHERE m.%s IN (%s) AND %s", q(sh.MMember), members, q(sh.MScope), scopes, active)}
		if t.User != "" {
			users = append(users, fmt.Sprintf("SELECT NEW.%s WHERE NEW.%s IS NULL", q(t.User), scope))
			if update {
				users = append(users, fmt.Sprintf("SELECT OLD.%s WHERE OLD.%s IS NULL", q(t.User), scope))
			}
		}
		if sh.Membership {
			users = append(users, "SELECT NEW."+q(sh.Member))
			if update {
				users = append(users, "SELECT OLD."+q(sh.Member))
			}
		}
		userSet := "SELECT u FROM (" + strings.Join(users, " UNION ") + ") WHERE u IS NOT NULL"
		stamp := layout(`max(` + now + `, coalesce((SELECT max(` + millis("stamp") + `) FROM "` + shapes.CursorTable + `" WHERE user_id IN (` + userSet + `)), 0) + 1)`)
		sets := []string{synced + " = " + stamp}
		if sh.ScopedAt != "" {
			if update {
				// the row enters a scope: its scope changes, or a member comes back
				enters := fmt.Sprintf("NEW.%[1]s IS NOT OLD.%[1]s", scope)
				if sh.Membership && sh.Tomb != "" {
					enters = fmt.Sprintf("coalesce(OLD.%[1]s, 0) AND NOT coalesce(NEW.%[1]s, 0)", q(sh.Tomb))
				}
				sets = append(sets, fmt.Sprintf("%[1]s = CASE WHEN %[2]s THEN %[3]s ELSE %[1]s END", q(sh.ScopedAt), enters, stamp))
			} else {
				sets = append(sets, q(sh.ScopedAt)+" = "+stamp)
			}
		}
		if t.UpdatedAt != "" {
			upd := q(t.UpdatedAt)
			if update {
				sets = append(sets, upd+` = CASE WHEN NEW.`+upd+` IS NULL OR julianday(NEW.`+upd+`) <= julianday(OLD.`+upd+`)
		THEN `+layout(`max(`+now+`, coalesce(`+millis("OLD."+upd)+` + 1, 0))`)+`
		ELSE `+layout(millis("NEW."+upd))+` END`)
			} else {
				sets = append(sets, upd+` = CASE WHEN NEW.`+upd+` IS NULL THEN `+layout(now)+` ELSE `+layout(millis("NEW."+upd))+` END`)
			}
		}
		body := fmt.Sprintf(`UPDATE %[1]s SET %[2]s WHERE %[3]s;
	INSERT INTO "%[4]s" (user_id, stamp) SELECT u, (SELECT %[5]s FROM %[1]s WHERE %[3]s) FROM (%[6]s) WHERE 1
	ON CONFLICT (user_id) DO UPDATE SET stamp = excluded.stamp;`, q(t.Table), strings.Join(sets, ",\n\t\t"), where, shapes.CursorTable, synced, userSet)
		if update && sh.Membership {
			// a member removed (or a membership row moved to another scope
			// or member): the period of their membership, for the
			// move-out of what their devices held (shapes/pullshared.go)
			wasActive := fmt.Sprintf("OLD.%s IS NOT NULL AND OLD.%s IS NOT NULL", scope, q(sh.Member))
			isActive := fmt.Sprintf("NEW.%[1]s IS OLD.%[1]s AND NEW.%[2]s IS OLD.%[2]s", scope, q(sh.Member))
			if sh.MTomb != "" {
				wasActive += fmt.Sprintf(" AND NOT coalesce(OLD.%s, 0)", q(sh.MTomb))
				isActive += fmt.Sprintf(" AND NOT coalesce(NEW.%s, 0)", q(sh.MTomb))
			}
			joined := "'" + unknownJoin + "'"
			if sh.ScopedAt != "" {
				joined = fmt.Sprintf("coalesce(OLD.%s, '%s')", q(sh.ScopedAt), unknownJoin)
			}
			body += fmt.Sprintf(`
	INSERT INTO "%[1]s" (members, scope, member, joined, left_at)
	SELECT %[2]s, CAST(OLD.%[3]s AS TEXT), CAST(OLD.%[4]s AS TEXT), %[5]s, t.%[6]s FROM %[7]s AS t WHERE %[8]s AND %[9]s AND NOT (%[10]s);`,
				shapes.LeftTable, quoteLiteral(sh.MTable), scope, q(sh.Member), joined, synced, q(t.Table), where, wasActive, isActive)
		}
		if update && sh.Shape != "" {
			// the version written over, when a member was removed from its
			// scope since it was written: their move-out carries it
			body += fmt.Sprintf(`
	INSERT INTO "%[1]s" (shape, row_key, updated_at, user_id, stamp)
	SELECT %[2]s, %[3]s, OLD.%[4]s, CAST(OLD.%[5]s AS TEXT), OLD.%[6]s
	WHERE OLD.%[7]s IS NOT NULL AND OLD.%[6]s < (SELECT max(h.left_at) FROM "%[8]s" AS h WHERE h.members = %[9]s AND h.scope = CAST(OLD.%[7]s AS TEXT));`,
				shapes.VersionsTable, quoteLiteral(sh.Shape), keyOf(t.Keys, "OLD"), q(t.UpdatedAt), q(t.User), synced, scope,
				shapes.LeftTable, quoteLiteral(sh.MTable))
		}
		if update && sh.Shape != "" && sh.Tomb != "" {
			var obj []string
			for i, k := range t.Keys {
				key := "NEW." + q(k)
				if i < len(sh.KeyTimes) && sh.KeyTimes[i] != "" {
					key = timeExpr(key) // as pulls write it
				}
				obj = append(obj, quoteLiteral(sh.KeyFields[i]), key)
			}
			obj = append(obj, quoteLiteral(sh.ScopeField), "OLD."+scope, quoteLiteral(sh.TombField), "json('true')")
			body += fmt.Sprintf(`
	INSERT INTO "%[1]s" (shape, scope, new_scope, user_id, updated_at, stamp, from_scoped_at, payload, row_key)
	SELECT %[2]s, CAST(OLD.%[3]s AS TEXT), CAST(NEW.%[3]s AS TEXT), coalesce(NEW.%[4]s, ''), t.%[5]s, t.%[6]s, OLD.%[10]s, json_object(%[7]s), %[11]s
	FROM %[8]s AS t WHERE %[9]s AND OLD.%[3]s IS NOT NULL AND NEW.%[3]s IS NOT OLD.%[3]s;`,
				shapes.MovesTable, quoteLiteral(sh.Shape), scope, q(t.User), q(t.UpdatedAt), synced, strings.Join(obj, ", "), q(t.Table),
				where, q(sh.ScopedAt), keyOf(t.Keys, "NEW"))
		}
		when := "1"
		if update && sh.Membership && sh.MTomb != "" {
			// a member removed before and after: nothing changes for
			// anyone, and a new stamp would send move-out again
			when = fmt.Sprintf("NOT (coalesce(OLD.%[1]s, 0) AND coalesce(NEW.%[1]s, 0))", q(sh.MTomb))
		}
		if t.User != "" {
			cursor := `(SELECT stamp FROM "` + shapes.CursorTable + `" WHERE user_id = NEW.` + q(t.User) + `)`
			when = `NEW.` + synced + ` IS NULL OR NEW.` + synced + ` IS NOT ` + cursor
			if update {
				when = `NEW.` + synced + ` IS OLD.` + synced + ` OR ` + when
			}
			if update && sh.Membership && sh.MTomb != "" {
				when = fmt.Sprintf("(%s) AND NOT (coalesce(OLD.%[2]s, 0) AND coalesce(NEW.%[2]s, 0))", when, q(sh.MTomb))
			}
		}
		ddl = append(ddl, `DROP TRIGGER IF EXISTS `+name, fmt.Sprintf(`CREATE TRIGGER %s AFTER %s ON %s
WHEN %s
BEGIN
	-- %s %s: stamps rows written outside hypersync, for every member of their scope, so that they reach devices
	%s
END`, name, event, q(t.Table), when, marker, event, body))
	}
	trigger("INSERT", false)
	trigger("UPDATE", true)
	// after a DELETE, the scope it deleted a row from: such a scope can
	// never be founded again (shapes/pushshared.go)
	forget := q("hypersync_stamp_" + t.Table + "_delete")
	if t.Schema != "" {
		forget = q(t.Schema) + "." + forget
	}
	ddl = append(ddl, `DROP TRIGGER IF EXISTS `+forget, fmt.Sprintf(`CREATE TRIGGER %s AFTER DELETE ON %s
WHEN OLD.%s IS NOT NULL
BEGIN
	-- %s DELETE: records the scopes rows were deleted from, which can never be founded again
	INSERT OR IGNORE INTO "%s" (members, scope) VALUES (%s, CAST(OLD.%s AS TEXT));
END`, forget, q(t.Table), scope, marker, shapes.ScopesTable, quoteLiteral(sh.MTable), scope))
	return append(append([]string{}, sharingDDL...), ddl...), []string{marker + " INSERT", marker + " UPDATE", marker + " DELETE"}
}

// unknownJoin is the join time of a member whose table records none:
// before any stamp.
const unknownJoin = "0000-01-01T00:00:00.000000Z"

// keyOf is keyExpr of the key columns of the record rec (NEW or OLD).
func keyOf(keys []string, rec string) string {
	vals := make([]string, len(keys))
	for i, k := range keys {
		vals[i] = rec + "." + shapes.QuoteIdent(k)
	}
	return keyExpr(vals)
}
