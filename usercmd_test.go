package hypersync

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/pflag"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/internal/testkit"
	"github.com/hypersync/hypersync/shapes"
)

// runUserCommand runs a user command with flags (every flag the commands
// read is defined, empty unless given) and returns its exit code and
// what it printed, its error last.
func runUserCommand(t *testing.T, run caddycmd.CommandFunc, config string, flags map[string]string) (int, string) {
	t.Helper()
	fs := pflag.NewFlagSet("hypersync", pflag.ContinueOnError)
	for _, name := range []string{"user", "output", "shape", "key", "json", "yes", "dry-run"} {
		fs.String(name, flags[name], "")
	}
	fs.String("config", config, "")
	fs.String("adapter", "caddyfile", "")
	r, w, _ := os.Pipe()
	stdout := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() {
		out, _ := io.ReadAll(r)
		done <- out
	}()
	code, err := run(caddycmd.Flags{FlagSet: fs})
	os.Stdout = stdout
	w.Close()
	out := string(<-done)
	if err != nil {
		out += "error: " + err.Error() + "\n"
	}
	return code, out
}

// listsCaddyfile is the list shapes and a per-user one, as a Caddyfile.
func listsCaddyfile(t *testing.T, dsn string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	err := os.WriteFile(path, []byte(`:0 {
	hypersync {
		database `+dsn+`
		shape lists {
			key listId
			create_table
			field name text
			field deleted boolean
			share listId via list_members
		}
		shape todos {
			key todoId
			create_table
			field listId text
			field title text
			field done boolean
			field deleted boolean
			share listId via list_members
		}
		shape list_members {
			key listId memberId
			create_table
			field deleted boolean
			share listId via list_members memberId
		}
		shape notes {
			key noteId
			create_table
			field body text
		}
	}
}`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// httpPull pulls from the epoch through the handler, and returns the
// changes and the status.
func httpPull(t *testing.T, url, user string) ([]json.RawMessage, int) {
	t.Helper()
	req, _ := http.NewRequest("GET", url+"/sync/pull/", nil)
	req.Header.Set("X-Test-User", user)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Changes []json.RawMessage }
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return out.Changes, resp.StatusCode
}

// canonical sorts JSON texts, each compacted with its keys sorted.
func canonical(t *testing.T, list []json.RawMessage) []string {
	t.Helper()
	var out []string
	for _, raw := range list {
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(v)
		out = append(out, string(b))
	}
	sort.Strings(out)
	return out
}

// The four user commands, end to end, on both stores: export is a pull
// from the epoch, row for row, with the record; inspect prints the
// counts, scopes, cursor and record, and explains a row; erase refuses
// without --yes, changes nothing dry, and then erases and blocks; unblock
// lifts the block.
func TestUserCommands(t *testing.T) {
	testkit.ForEachStore(t, func(t *testing.T, b testkit.Backend) {
		dsn := b.Open(t)
		config := listsCaddyfile(t, dsn)
		cfgs := append(testkit.ListShapes(), shapes.ShapeConfig{Key: "notes", KeyFields: []string{"noteId"}, Fields: []string{"body"}, CreateTable: true})
		f := testkit.OpenStore(t, dsn, cfgs...)
		srv := testkit.NewServer(t, f.Store, handler.Config{Timeout: 10 * time.Second})
		testkit.WantOutcomes(t, f.Push("alice", testkit.Member(1, "L", "alice", false), testkit.Member(2, "L", "bob", false),
			testkit.List(3, "L", "groceries"), testkit.Todo(4, "t1", "L", "milk"), testkit.Todo(5, "p1", "", "mine"),
			testkit.Change("notes", testkit.At(6), `{"noteId":"n1","body":"a note"}`)), "applied,applied,applied,applied,applied,applied")
		testkit.WantOutcomes(t, f.Push("bob", testkit.Todo(7, "t2", "L", "bread")), "applied")
		for i := 0; i < 3; i++ { // the client sends a refused change at every sync
			if err := f.Store.RecordRejections(context.Background(), "alice", []shapes.Rejection{{ChangeID: "c9", Shape: "todos", Key: json.RawMessage(`{"todoId":"x"}`),
				Error: "forbidden", Message: "the row's scope is one you are not a member of", At: time.Now(), Last: time.Now()}}, 100); err != nil {
				t.Fatal(err)
			}
		}

		// export, to stdout and to a file
		code, out := runUserCommand(t, cmdExport, config, map[string]string{"user": "alice"})
		if code != 0 {
			t.Fatalf("export: %d\n%s", code, out)
		}
		var doc struct {
			User, ExportedAt string
			Blocks           []struct {
				Database string
				Changes  []json.RawMessage
				Rejected []handler.RejectionEntry
			}
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("export is no JSON document: %v\n%s", err, out)
		}
		if _, err := time.Parse(time.RFC3339, doc.ExportedAt); err != nil || doc.User != "alice" || len(doc.Blocks) != 1 {
			t.Fatalf("export: %s", out)
		}
		pulled, status := httpPull(t, srv.URL, "alice")
		if status != 200 {
			t.Fatalf("pull: %d", status)
		}
		if got, want := canonical(t, doc.Blocks[0].Changes), canonical(t, pulled); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("export's changes:\n%s\na pull from the epoch:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if len(pulled) != 7 {
			t.Errorf("the pull sent %d changes, want alice's 6 and bob's todo in L: %s", len(pulled), pulled)
		}
		if rj := doc.Blocks[0].Rejected; len(rj) != 1 || rj[0].ChangeID != "c9" || rj[0].Times != 3 || strings.Join(strings.Fields(string(rj[0].Key)), "") != `{"todoId":"x"}` {
			t.Errorf("export's record: %+v", rj)
		}
		if strings.Contains(doc.Blocks[0].Database, "password=") && !strings.Contains(doc.Blocks[0].Database, "xxxxx") {
			t.Errorf("the database's password is in the export: %s", doc.Blocks[0].Database)
		}
		file := filepath.Join(t.TempDir(), "alice.json")
		if code, out := runUserCommand(t, cmdExport, config, map[string]string{"user": "alice", "output": file}); code != 0 || !strings.Contains(out, "exported 7 changes") {
			t.Fatalf("export --output: %d\n%s", code, out)
		}
		if b, err := os.ReadFile(file); err != nil || !json.Valid(b) {
			t.Fatalf("export --output wrote %q: %v", b, err)
		}

		// inspect
		code, out = runUserCommand(t, cmdInspect, config, map[string]string{"user": "alice"})
		for _, want := range []string{"user alice", "cursor 20", "todos", `list_members "L": member since 20`, "refused changes (1, newest first)", "forbidden", "sent 3 times"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Fatalf("inspect: %d, no %q in:\n%s", code, want, out)
			}
		}
		code, out = runUserCommand(t, cmdInspect, config, map[string]string{"user": "alice", "json": "true"})
		var in struct {
			Blocks []struct {
				Shapes []struct {
					Shape string
					Rows  int
				}
			}
		}
		if err := json.Unmarshal([]byte(out), &in); code != 0 || err != nil || len(in.Blocks) != 1 || len(in.Blocks[0].Shapes) != 4 {
			t.Fatalf("inspect --json: %d %v\n%s", code, err, out)
		}
		for key, want := range map[string]string{"t1": `"reason": "member"`, `{"todoId":"p1"}`: `"reason": "owner"`, "nope": `"reason": "no-row"`} {
			code, out = runUserCommand(t, cmdInspect, config, map[string]string{"user": "alice", "shape": "todos", "key": key, "json": "true"})
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("inspect --key %s: %d, want %s in\n%s", key, code, want, out)
			}
		}
		code, out = runUserCommand(t, cmdInspect, config, map[string]string{"user": "bob", "shape": "todos", "key": "p1"})
		if code != 0 || !strings.Contains(out, "bob does not receive todos") || !strings.Contains(out, "(other-owner)") {
			t.Errorf("inspect --key as text: %d\n%s", code, out)
		}

		// erase: refused without --yes, dry, then for good
		if code, out = runUserCommand(t, cmdErase, config, map[string]string{"user": "alice"}); code == 0 || !strings.Contains(out, "--yes") {
			t.Fatalf("erase without --yes: %d\n%s", code, out)
		}
		if code, out = runUserCommand(t, cmdErase, config, map[string]string{"user": "alice", "dry-run": "true"}); code != 0 || !strings.Contains(out, "dry run, nothing was changed") ||
			!strings.Contains(out, "private rows deleted: list_members 0, lists 0, notes 1, todos 1") {
			t.Fatalf("erase --dry-run: %d\n%s", code, out)
		}
		if _, status := httpPull(t, srv.URL, "alice"); status != 200 {
			t.Fatalf("after a dry run, alice's pull answers %d", status)
		}
		code, out = runUserCommand(t, cmdErase, config, map[string]string{"user": "alice", "yes": "true"})
		for _, want := range []string{"erased alice", "private rows deleted: list_members 0, lists 0, notes 1, todos 1", `memberships removed: list_members "L"`,
			"shared rows re-authored: list_members 1, lists 1, todos 1", "alice is blocked"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Fatalf("erase --yes: %d, no %q in\n%s", code, want, out)
			}
		}
		if _, status := httpPull(t, srv.URL, "alice"); status != http.StatusForbidden {
			t.Fatalf("after the erase, alice's pull answers %d", status)
		}
		if code, out = runUserCommand(t, cmdExport, config, map[string]string{"user": "alice"}); code == 0 || !strings.Contains(out, "erased") {
			t.Errorf("export of an erased user: %d\n%s", code, out)
		}
		if code, out = runUserCommand(t, cmdUnblock, config, map[string]string{"user": "alice"}); code != 0 || !strings.Contains(out, "alice is unblocked") {
			t.Fatalf("unblock: %d\n%s", code, out)
		}
		if code, out = runUserCommand(t, cmdUnblock, config, map[string]string{"user": "alice"}); code != 0 || !strings.Contains(out, "alice was not blocked") {
			t.Fatalf("unblock again: %d\n%s", code, out)
		}
		if _, status := httpPull(t, srv.URL, "alice"); status != 200 {
			t.Fatalf("after unblock, alice's pull answers %d", status)
		}
		if code, out = runUserCommand(t, cmdExport, config, nil); code == 0 || !strings.Contains(out, "--user") {
			t.Errorf("export without --user: %d\n%s", code, out)
		}
	})
}
