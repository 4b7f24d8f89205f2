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
var stampMarkers = regexp.MustCompile(`hypersync-stamp-v1-[0-9a-f]+ (INSERT|UPDATE)`)
