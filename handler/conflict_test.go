package handler_test

import (
	"testing"

	"github.com/hypersync/hypersync/internal/pgtest"
)

// A push that keeps conflicting with concurrent writers (PostgreSQL ends
// it with a serialization failure or a deadlock at every attempt) answers
// 503 with Retry-After after its retries, never 500. Here a trigger makes
// every attempt fail with 40001 (and then 40P01).
func TestPushThatKeepsConflictingIs503(t *testing.T) {
	for _, code := range []string{"40001", "40P01"} {
		t.Run(code, func(t *testing.T) {
			dsn := pgtest.NewDatabase(t)
			pgtest.Exec(t, dsn, seedDDL,
				`CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'made to conflict' USING ERRCODE = '`+code+`'; END $$`,
				`CREATE TRIGGER conflict BEFORE INSERT OR UPDATE ON todos FOR EACH ROW EXECUTE FUNCTION conflict()`)
			e := newEnvOn(t, dsn, nil)
			a := e.push("alice", todo("c1", "alice", "2026-11-25T10:00:00.000Z", `{"todoId":"t1","title":"x"}`))
			if a.status != 503 || a.header.Get("Retry-After") == "" || a.json(t)["error"] != "database-unavailable" {
				t.Fatalf("push that keeps conflicting: %d %v %s, want 503 database-unavailable with Retry-After", a.status, a.header, a.body)
			}
		})
	}
}
