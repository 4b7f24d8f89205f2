package postgres

import (
	"fmt"
	"regexp"

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

func stamping(t shapes.StampTarget) ([]string, []string) {
	q := shapes.QuoteIdent
	marker := t.Marker()
	fn := shapes.QuoteTable(t.Schema, "hypersync_stamp_"+t.Table)
	upd, synced := "NEW."+q(t.UpdatedAt), "NEW."+q(t.SyncedAt)
	// the clock as each column holds time: a timestamp without time zone
	// holds UTC, whatever the writing session's time zone
	nowUpd, stampExpr := "now_ms", "new_stamp"
	if t.UpdatedAtLocal {
		nowUpd = "(now_ms AT TIME ZONE 'UTC')"
	}
	if t.SyncedAtLocal {
		stampExpr = "(new_stamp AT TIME ZONE 'UTC')"
	}
	fnSQL := fmt.Sprintf(`CREATE OR REPLACE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $hypersync$
-- %[2]s: stamps rows written outside hypersync, so that they reach devices
DECLARE
	now_ms timestamptz := date_trunc('milliseconds', clock_timestamp());
	new_stamp timestamptz;
BEGIN
	IF NEW.%[6]s IS NULL THEN
		RETURN NEW; -- a row without an owner reaches nobody
	END IF;
	-- the wire carries milliseconds: so does updatedAt, the clock devices compare
	%[3]s := date_trunc('milliseconds', %[3]s);
	IF TG_OP = 'UPDATE' AND (%[3]s IS NULL OR %[3]s <= OLD.%[4]s) THEN
		%[3]s := greatest(%[5]s, OLD.%[4]s + interval '1 millisecond');
	ELSIF %[3]s IS NULL THEN
		%[3]s := %[5]s;
	END IF;
	INSERT INTO "`+shapes.CursorTable+`" AS c (user_id, stamp) VALUES (NEW.%[6]s, now_ms)
	ON CONFLICT (user_id) DO UPDATE SET stamp = CASE
		-- the cursor row was written by this transaction: its stamp is this transaction's
		WHEN c.xmin::text = (txid_current() %% 4294967296)::text THEN c.stamp
		ELSE greatest(now_ms, c.stamp + interval '1 millisecond') END
	RETURNING c.stamp INTO new_stamp;
	%[8]s := %[7]s;
	RETURN NEW;
END
$hypersync$`, fn, marker, upd, q(t.UpdatedAt), nowUpd, q(t.User), stampExpr, synced)
	trigger := fmt.Sprintf(`DROP TRIGGER IF EXISTS "hypersync_stamp" ON %[1]s;
CREATE TRIGGER "hypersync_stamp" BEFORE INSERT OR UPDATE ON %[1]s FOR EACH ROW
	WHEN (current_setting('`+writerSetting+`', true) IS DISTINCT FROM 'hypersync')
	EXECUTE FUNCTION %[2]s()`, shapes.QuoteTable(t.Schema, t.Table), fn)
	return []string{fnSQL, trigger}, []string{marker}
}

// stampMarker finds the marker in a trigger function's source.
var stampMarker = regexp.MustCompile(`hypersync-stamp-v1-[0-9a-f]+`)
