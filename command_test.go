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
