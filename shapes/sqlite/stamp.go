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
// does, greatest(now, previous stamp + 1 µs), in the writer's transaction,
// and writes it into the row; a pull reads the cursor and the rows in one
// snapshot, which sees the row exactly when it sees the stamp.
//
// The triggers skip hypersync's own writes: a push writes its stamp into
// the owner's cursor and then into its rows, so a row written by hypersync
// carries the owner's current stamp, and an update by hypersync changes the
// row's stamp (to one above every earlier stamp of the owner). Another
// writer's insert carries no such stamp, and its update leaves the stamp
// as it was.
// Their UPDATE of the row does not fire them again (SQLite's recursive
// triggers are off by default, and the row then carries the stamp).
//
// updatedAt is stored in hypersync's layout, whatever form the writer gave
// it, so that last-write-wins compares text in time order.

// SQL time arithmetic on stamps in stampLayout, in microseconds since 1970.
const (
	nowMicros = `(CAST(unixepoch('subsec') * 1000 AS INTEGER) * 1000)`
)

// stampMicros is a stamp in stampLayout as microseconds.
func stampMicros(e string) string {
	return `(unixepoch(substr(` + e + `, 1, 19)) * 1000000 + CAST(substr(` + e + `, 21, 6) AS INTEGER))`
}

// anyMicros is any time SQLite reads, to the millisecond, as microseconds.
func anyMicros(e string) string {
	return `(CAST(round((julianday(` + e + `) - 2440587.5) * 86400000) AS INTEGER) * 1000)`
}

// layout writes microseconds in stampLayout.
func layout(us string) string {
	return `(strftime('%Y-%m-%dT%H:%M:%S', ` + us + ` / 1000000, 'unixepoch') || '.' || printf('%06d', ` + us + ` % 1000000) || 'Z')`
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
	bump := `INSERT INTO "` + shapes.CursorTable + `" (user_id, stamp) VALUES (NEW.` + user + `, ` + layout(nowMicros) + `)
	ON CONFLICT (user_id) DO UPDATE SET stamp = ` + layout(`max(`+nowMicros+`, `+stampMicros("stamp")+` + 1)`) + `;`
	trigger := func(event, when, newUpd string) string {
		name := q("hypersync_stamp_" + t.Table + "_" + strings.ToLower(event))
		if t.Schema != "" {
			name = q(t.Schema) + "." + name
		}
		return fmt.Sprintf(`CREATE TRIGGER IF NOT EXISTS %s AFTER %s ON %s
WHEN %s
BEGIN
	-- %s %s: stamps rows written outside hypersync, so that they reach devices
	%s
	UPDATE %s SET %s = %s, %s = %s
	WHERE %s;
END`, name, event, q(t.Table), when, marker, event, bump, q(t.Table), synced, cursor, upd, newUpd, strings.Join(keys, " AND "))
	}
	notHypersync := `NEW.` + synced + ` IS NOT ` + cursor
	insertUpd := `CASE WHEN NEW.` + upd + ` IS NULL THEN ` + layout(nowMicros) + ` ELSE ` + layout(anyMicros("NEW."+upd)) + ` END`
	updateUpd := `CASE WHEN NEW.` + upd + ` IS NULL OR julianday(NEW.` + upd + `) <= julianday(OLD.` + upd + `)
		THEN ` + layout(`max(`+nowMicros+`, coalesce(`+anyMicros("OLD."+upd)+` + 1000, 0))`) + `
		ELSE ` + layout(anyMicros("NEW."+upd)) + ` END`
	return []string{trigger("INSERT", notHypersync, insertUpd),
			trigger("UPDATE", `NEW.`+synced+` IS OLD.`+synced+` OR `+notHypersync, updateUpd)},
		[]string{marker + " INSERT", marker + " UPDATE"}
}

// stampMarkers finds the markers in a table's triggers.
var stampMarkers = regexp.MustCompile(`hypersync-stamp-v1-[0-9a-f]+ (INSERT|UPDATE)`)
