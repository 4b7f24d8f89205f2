package hypersync

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/pflag"

	"github.com/hypersync/hypersync/internal/pgtest"
)

// runCommand runs a caddy hypersync subcommand and returns its exit code
// and what it printed.
func runCommand(t *testing.T, run caddycmd.CommandFunc, config string) (int, string) {
	t.Helper()
	fs := pflag.NewFlagSet("hypersync", pflag.ContinueOnError)
	fs.String("config", config, "")
	fs.String("adapter", "caddyfile", "")
	r, w, _ := os.Pipe()
	stdout := os.Stdout
	os.Stdout = w
	code, _ := run(caddycmd.Flags{FlagSet: fs})
	os.Stdout = stdout
	w.Close()
	out, _ := io.ReadAll(r)
	return code, string(out)
}

func TestCheckAndSchemaCommands(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE todos (todoId text PRIMARY KEY, title text, userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz)`)
	config := filepath.Join(t.TempDir(), "Caddyfile")
	err := os.WriteFile(config, []byte(`:0 {
	hypersync {
		database `+dsn+`
		shape todos {
			key todoId
			fields title
		}
		shape notes {
			key noteId
			create_table
			field body text
			field pinned boolean
		}
	}
}`), 0o600)
	if err != nil {
		t.Fatal(err)
	}

	code, out := runCommand(t, cmdSchema, config)
	if code != 0 || !strings.Contains(out, `CREATE TABLE IF NOT EXISTS "notes"`) || !strings.Contains(out, `"pinned" boolean`) || !strings.Contains(out, `"todoId" text NOT NULL`) {
		t.Fatalf("schema: %d\n%s", code, out)
	}

	code, out = runCommand(t, cmdCheck, config)
	if code == 0 || !strings.Contains(out, `✗ shape "todos"`) || !strings.Contains(out, "no index leads with") || !strings.Contains(out, `✗ shape "notes"`) || !strings.Contains(out, "does not exist") {
		t.Fatalf("check on a half-ready database: %d\n%s", code, out)
	}
	// Run the SQL it printed, and check again.
	fix := printedFix(out)
	if len(fix) < 3 {
		t.Fatalf("found %d fix statements in:\n%s", len(fix), out)
	}
	pgtest.Exec(t, dsn, fix...)
	code, out = runCommand(t, cmdCheck, config)
	if code != 0 || !strings.Contains(out, `✓ shape "todos"`) || !strings.Contains(out, `✓ shape "notes"`) {
		t.Fatalf("check after the fixes: %d\n%s", code, out)
	}
	// todos, made by hand, still lacks the stamping trigger; notes, made
	// from the printed CREATE TABLE, has it.
	if strings.Count(out, "⚠ no current stamping trigger") != 1 {
		t.Fatalf("check after the fixes: want one stamping warning, for todos:\n%s", out)
	}
	pgtest.Exec(t, dsn, printedFix(out)...)
	if code, out = runCommand(t, cmdCheck, config); code != 0 || strings.Contains(out, "⚠") {
		t.Fatalf("check after the stamping fix: %d\n%s", code, out)
	}
}

// printedFix collects the statements check printed under "to fix it:".
func printedFix(out string) []string {
	var fix []string
	var stmt strings.Builder
	inFix := false
	for _, line := range strings.Split(out, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "to fix it:":
			inFix = true
		case strings.HasPrefix(trimmed, "✓"), strings.HasPrefix(trimmed, "✗"), strings.HasPrefix(trimmed, "database "):
			inFix = false
		case inFix && trimmed != "":
			stmt.WriteString(trimmed + "\n")
			// a statement ends at a semicolon outside a function body
			if strings.HasSuffix(trimmed, ";") && strings.Count(stmt.String(), "$hypersync$")%2 == 0 {
				fix = append(fix, stmt.String())
				stmt.Reset()
			}
		}
	}
	return fix
}

// check on a shared shape over tables of one's own: it names what sharing
// lacks (the scoped-at column, the backend's membership table, the scope
// index, the stamping triggers), with the SQL, and is satisfied once that
// SQL has run.
func TestCheckCommandOnSharedShapes(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE notes (noteId text PRIMARY KEY, teamId text, body text, deleted boolean, userId text NOT NULL, updatedAt timestamptz, lastSyncAt timestamptz)`,
		`CREATE INDEX ON notes (userId, lastSyncAt)`)
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(`:0 {
	hypersync {
		database `+dsn+`
		shape notes {
			key noteId
			fields teamId body deleted
			share teamId via team_members
		}
	}
}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for i := 0; i < 6; i++ {
		code, out := runCommand(t, cmdCheck, config)
		seen = append(seen, out)
		if code == 0 && !strings.Contains(out, "⚠") {
			break
		}
		fix := printedFix(out)
		if len(fix) == 0 {
			t.Fatalf("check found a problem and printed no fix:\n%s", out)
		}
		pgtest.Exec(t, dsn, fix...)
	}
	all := strings.Join(seen, "\n")
	for _, want := range []string{`scoped_at_column "scopedAt"`, "membership table team_members does not exist", "no index leads with (", "team_members has no current stamping trigger"} {
		if !strings.Contains(all, want) {
			t.Fatalf("check never said %q:\n%s", want, all)
		}
	}
	if code, out := runCommand(t, cmdCheck, config); code != 0 || strings.Contains(out, "⚠") || !strings.Contains(out, `✓ shape "notes"`) {
		t.Fatalf("check after the fixes: %d\n%s", code, out)
	}
}
