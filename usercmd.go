package hypersync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/hypersync/hypersync/handler"
	"github.com/hypersync/hypersync/live"
	"github.com/hypersync/hypersync/live/pgnotify"
	"github.com/hypersync/hypersync/shapes"
)

// The commands an operator runs for one user: export, inspect, erase and
// unblock. Each opens every hypersync block of the config on its
// database, and works through the store, under the locks pushes take, so
// that it is safe against running servers.

// userTimeout bounds one command's work on one database.
const userTimeout = 5 * time.Minute

// userBlock is one hypersync block, opened for a user command.
type userBlock struct {
	h     *HyperSync
	db    *shapes.Database
	store *shapes.Store
}

// openUserBlocks opens every block of the config and checks its shapes.
// close closes what it opened.
func openUserBlocks(ctx context.Context, fl caddycmd.Flags) (blocks []*userBlock, user string, close func(), err error) {
	user = fl.String("user")
	if user == "" {
		return nil, "", nil, fmt.Errorf("--user is required: the user id, as the authentication gives it")
	}
	handlers, err := configuredHandlers(fl)
	if err != nil {
		return nil, "", nil, err
	}
	close = func() {
		for _, b := range blocks {
			b.store.Close()
			_ = b.db.Destruct()
		}
	}
	for _, h := range handlers {
		dsn, err := h.resolvedDSN()
		if err != nil {
			close()
			return nil, "", nil, err
		}
		db, err := shapes.Open(dsn, shapes.Options{})
		if err != nil {
			close()
			return nil, "", nil, err
		}
		st, err := shapes.NewStore(db, h.Shapes, nil)
		if err == nil {
			st.MaxMembers, st.MaxScopesPerUser = h.MaxMembers, h.MaxScopesPerUser
			err = st.Check(ctx)
		}
		if err != nil {
			_ = db.Destruct()
			close()
			return nil, "", nil, fmt.Errorf("database %s: %w", db, err)
		}
		blocks = append(blocks, &userBlock{h: h, db: db, store: st})
	}
	return blocks, user, close, nil
}

// userCommand runs one user command with its blocks open.
func userCommand(fl caddycmd.Flags, run func(ctx context.Context, blocks []*userBlock, user string) error) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), userTimeout)
	defer cancel()
	blocks, user, close, err := openUserBlocks(ctx, fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	defer close()
	if err := run(ctx, blocks, user); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	return caddy.ExitCodeSuccess, nil
}

// exportDoc is what export writes.
type exportDoc struct {
	User       string        `json:"user"`
	ExportedAt string        `json:"exportedAt"`
	Blocks     []exportBlock `json:"blocks"`
}

type exportBlock struct {
	Database string                   `json:"database"`
	Changes  []json.RawMessage        `json:"changes"`
	Rejected []handler.RejectionEntry `json:"rejected"`
}

func cmdExport(fl caddycmd.Flags) (int, error) {
	return userCommand(fl, func(ctx context.Context, blocks []*userBlock, user string) error {
		doc := exportDoc{User: user, ExportedAt: time.Now().UTC().Format(time.RFC3339), Blocks: []exportBlock{}}
		for _, b := range blocks {
			changes, err := handler.EpochChanges(ctx, b.store, user)
			if err != nil {
				return fmt.Errorf("database %s: %w", b.db, userError(err))
			}
			recs, err := b.store.Rejections(ctx, user)
			if err != nil {
				return fmt.Errorf("database %s: %w", b.db, err)
			}
			eb := exportBlock{Database: b.db.String(), Changes: changes, Rejected: []handler.RejectionEntry{}}
			for _, r := range recs {
				eb.Rejected = append(eb.Rejected, handler.RejectionOf(r))
			}
			doc.Blocks = append(doc.Blocks, eb)
		}
		out, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			return err
		}
		out = append(out, '\n')
		if path := fl.String("output"); path != "" {
			if err := os.WriteFile(path, out, 0o600); err != nil {
				return err
			}
			n := 0
			for _, b := range doc.Blocks {
				n += len(b.Changes)
			}
			fmt.Printf("exported %d changes of %s to %s\n", n, user, path)
			return nil
		}
		_, err = os.Stdout.Write(out)
		return err
	})
}

// userError says what ErrErased means to an operator.
func userError(err error) error {
	if errors.Is(err, shapes.ErrErased) {
		return fmt.Errorf("the user was erased (caddy hypersync unblock lifts the block)")
	}
	return err
}

// stamp writes a time for inspect, "never" for zero.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(shapes.TimeLayout)
}

// jsonTime is a time for inspect's JSON: null when zero.
func jsonTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(shapes.TimeLayout)
	return &s
}

func cmdInspect(fl caddycmd.Flags) (int, error) {
	return userCommand(fl, func(ctx context.Context, blocks []*userBlock, user string) error {
		shape, key := fl.String("shape"), fl.String("key")
		switch {
		case key != "" && shape == "":
			return fmt.Errorf("--key needs --shape: the shape whose row it names")
		case key != "":
			return explain(ctx, os.Stdout, blocks, user, shape, key, fl.Bool("json"))
		case shape != "":
			return fmt.Errorf("--shape needs --key: the key of the row to explain")
		}
		return inspect(ctx, os.Stdout, blocks, user, fl.Bool("json"))
	})
}

// inspectJSON is inspect's --json without --key, per block.
type inspectJSON struct {
	Database   string                   `json:"database"`
	Cursor     *string                  `json:"cursor"`
	Shapes     []shapeJSON              `json:"shapes"`
	Scopes     []scopeJSON              `json:"scopes"`
	Rejections []handler.RejectionEntry `json:"rejections"`
}

type shapeJSON struct {
	Shape      string `json:"shape"`
	Rows       int    `json:"rows"`
	Tombstones int    `json:"tombstones"`
}

type scopeJSON struct {
	Table  string  `json:"table"`
	Scope  string  `json:"scope"`
	Active bool    `json:"active"`
	Since  *string `json:"since"`
	Until  *string `json:"until"`
}

// newestShown is how many refused changes inspect prints as text.
const newestShown = 5

func inspect(ctx context.Context, w io.Writer, blocks []*userBlock, user string, asJSON bool) error {
	var docs []inspectJSON
	for _, b := range blocks {
		in, err := b.store.Inspect(ctx, user)
		if err != nil {
			return fmt.Errorf("database %s: %w", b.db, userError(err))
		}
		doc := inspectJSON{Database: b.db.String(), Cursor: jsonTime(in.Cursor), Shapes: []shapeJSON{}, Scopes: []scopeJSON{}, Rejections: []handler.RejectionEntry{}}
		for _, c := range in.Shapes {
			doc.Shapes = append(doc.Shapes, shapeJSON{Shape: c.Shape, Rows: c.Rows, Tombstones: c.Tombstones})
		}
		for _, sc := range in.Scopes {
			doc.Scopes = append(doc.Scopes, scopeJSON{Table: sc.Table, Scope: sc.Scope, Active: sc.Active, Since: jsonTime(sc.Since), Until: jsonTime(sc.Until)})
		}
		for _, r := range in.Rejections {
			doc.Rejections = append(doc.Rejections, handler.RejectionOf(r))
		}
		docs = append(docs, doc)
		if asJSON {
			continue
		}
		fmt.Fprintf(w, "database %s\n  user %s\n  cursor %s\n  receives (a pull from the epoch):\n", b.db, user, stamp(in.Cursor))
		width := 0
		for _, c := range in.Shapes {
			width = max(width, len(c.Shape))
		}
		for _, c := range in.Shapes {
			line := fmt.Sprintf("    %-*s %6d %s", width, c.Shape, c.Rows, plural(c.Rows, "row", "rows"))
			if c.Tombstones > 0 {
				line += fmt.Sprintf(" (%d move-out tombstones)", c.Tombstones)
			}
			fmt.Fprintln(w, line)
		}
		if len(in.Scopes) > 0 {
			fmt.Fprintln(w, "  scopes:")
		}
		for _, sc := range in.Scopes {
			if sc.Active {
				fmt.Fprintf(w, "    %s %q: member since %s\n", sc.Table, sc.Scope, stamp(sc.Since))
			} else {
				fmt.Fprintf(w, "    %s %q: removed %s (member since %s)\n", sc.Table, sc.Scope, stamp(sc.Until), stamp(sc.Since))
			}
		}
		if n := len(in.Rejections); n == 0 {
			fmt.Fprintln(w, "  refused changes: none")
		} else {
			fmt.Fprintf(w, "  refused changes (%d, newest first):\n", n)
		}
		for i, r := range in.Rejections {
			if i == newestShown {
				fmt.Fprintf(w, "    … and %d more (--json lists them all)\n", len(in.Rejections)-i)
				break
			}
			times := "once"
			if r.Times > 1 {
				times = fmt.Sprintf("%d times", r.Times)
			}
			fmt.Fprintf(w, "    %s %s %s %s: %s: %s (sent %s)\n", stamp(r.Last), r.Shape, r.Key, r.ChangeID, r.Error, r.Message, times)
		}
	}
	if asJSON {
		return writeJSONTo(w, map[string]any{"user": user, "blocks": docs})
	}
	return nil
}

// explainJSON is inspect's --json with --key.
type explainJSON struct {
	User      string          `json:"user"`
	Database  string          `json:"database"`
	Shape     string          `json:"shape"`
	Key       json.RawMessage `json:"key"`
	Receives  bool            `json:"receives"`
	Reason    string          `json:"reason"`
	Tombstone bool            `json:"tombstone"`
	Scope     *string         `json:"scope"`
	Since     *string         `json:"since"`
	Until     *string         `json:"until"`
}

// reasonText says a reason in words, for inspect's text.
var reasonText = map[string]string{
	shapes.ReasonOwner:      "it is their own row",
	shapes.ReasonMember:     "they are a member of its scope",
	shapes.ReasonRemoved:    "they were removed from its scope: they receive its move-out tombstone, not the row",
	shapes.ReasonNotMember:  "they are not a member of its scope",
	shapes.ReasonOtherOwner: "it is another user's private row",
	shapes.ReasonNoRow:      "no row has this key",
}

func explain(ctx context.Context, w io.Writer, blocks []*userBlock, user, shape, key string, asJSON bool) error {
	for _, b := range blocks {
		if _, ok := b.store.Known(shape); !ok {
			continue
		}
		p, err := b.store.KeyArg(ctx, shape, key)
		if err != nil {
			return err
		}
		ex, err := b.store.Explain(ctx, user, shape, p)
		if err != nil {
			return fmt.Errorf("database %s: %w", b.db, userError(err))
		}
		keyJSON := b.store.KeyOf(shape, p)
		if asJSON {
			doc := explainJSON{User: user, Database: b.db.String(), Shape: shape, Key: keyJSON, Receives: ex.Receives, Reason: ex.Reason,
				Tombstone: ex.Tombstone, Since: jsonTime(ex.Since), Until: jsonTime(ex.Until)}
			if ex.Scope != "" {
				doc.Scope = &ex.Scope
			}
			return writeJSONTo(w, doc)
		}
		verb := "does not receive"
		if ex.Receives {
			verb = "receives"
		}
		fmt.Fprintf(w, "%s %s %s %s: %s (%s)\n", user, verb, shape, keyJSON, reasonText[ex.Reason], ex.Reason)
		if ex.Scope != "" {
			fmt.Fprintf(w, "  scope %q", ex.Scope)
			switch {
			case ex.Reason == shapes.ReasonMember:
				fmt.Fprintf(w, ", member since %s", stamp(ex.Since))
			case !ex.Until.IsZero():
				fmt.Fprintf(w, ", member from %s to %s", stamp(ex.Since), stamp(ex.Until))
			}
			fmt.Fprintln(w)
		}
		return nil
	}
	return fmt.Errorf("no hypersync block of the config has a shape %q", shape)
}

func writeJSONTo(w io.Writer, v any) error {
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(out, '\n'))
	return err
}

func cmdErase(fl caddycmd.Flags) (int, error) {
	dry := fl.Bool("dry-run")
	if !dry && !fl.Bool("yes") {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("erase deletes a user's data for good: add --yes to erase, or --dry-run to see what it would do")
	}
	return userCommand(fl, func(ctx context.Context, blocks []*userBlock, user string) error {
		for _, b := range blocks {
			rep, err := b.store.Erase(ctx, user, dry)
			if err != nil {
				return fmt.Errorf("database %s: %w", b.db, userError(err))
			}
			printErase(os.Stdout, b.db.String(), user, rep, dry)
			if !dry {
				b.poke(ctx, user, rep)
			}
		}
		return nil
	})
}

// printErase prints what an erase did, or would do.
func printErase(w io.Writer, db, user string, rep *shapes.EraseReport, dry bool) {
	if dry {
		fmt.Fprintf(w, "database %s: dry run, nothing was changed; erasing %s would:\n", db, user)
	} else {
		fmt.Fprintf(w, "database %s: erased %s\n", db, user)
	}
	counts := func(m map[string]int) string {
		var parts []string
		for _, k := range sortedKeys(m) {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
		if len(parts) == 0 {
			return "none"
		}
		return strings.Join(parts, ", ")
	}
	scopes := func(m map[string][]string) string {
		var parts []string
		for _, k := range sortedKeys(m) {
			var q []string
			for _, s := range m[k] {
				q = append(q, fmt.Sprintf("%q", s))
			}
			parts = append(parts, k+" "+strings.Join(q, ", "))
		}
		if len(parts) == 0 {
			return "none"
		}
		return strings.Join(parts, "; ")
	}
	fmt.Fprintf(w, "  private rows deleted: %s\n", counts(rep.Deleted))
	fmt.Fprintf(w, "  memberships removed: %s\n", scopes(rep.Removed))
	fmt.Fprintf(w, "  shared rows re-authored: %s\n", counts(rep.Reauthored))
	if len(rep.Kept) > 0 {
		fmt.Fprintf(w, "  memberships in tables your backend keeps, NOT removed: %s\n", scopes(rep.Kept))
	}
	if !dry {
		fmt.Fprintf(w, "  %s is blocked: their pushes, pulls and streams answer 403 user-erased (caddy hypersync unblock lifts it)\n", user)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// poke tells the running instances' streams of the members an erase
// stamped, and the user's own, through PostgreSQL as a push's pokes
// travel. On SQLite live sync does not cross processes: the devices learn
// at their next sync.
func (b *userBlock) poke(ctx context.Context, user string, rep *shapes.EraseReport) {
	if !b.h.liveOn() || b.db.Kind() != "postgres" {
		return
	}
	dsn, err := b.h.resolvedDSN()
	if err != nil {
		return
	}
	t, err := pgnotify.New(pgnotify.Options{DSN: dsn})
	if err != nil {
		fmt.Fprintf(os.Stderr, "  live: %v; devices learn at their next sync\n", err)
		return
	}
	defer t.Close()
	secret, err := t.Secret(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "  live: %v; devices learn at their next sync\n", err)
		return
	}
	users := append(append([]string{}, rep.Poked...), user)
	var keys []string
	for _, u := range users {
		if u != shapes.ErasedAuthor {
			keys = append(keys, live.KeyOf(secret, u))
		}
	}
	for len(keys) > 0 {
		n := min(len(keys), live.KeysPerPoke)
		if err := t.Send(ctx, live.Poke{Keys: keys[:n], Stamp: rep.Stamp.UnixMilli(), At: time.Now().UnixMicro()}); err != nil {
			fmt.Fprintf(os.Stderr, "  live: %v; devices learn at their next sync\n", err)
			return
		}
		keys = keys[n:]
	}
}

func cmdUnblock(fl caddycmd.Flags) (int, error) {
	return userCommand(fl, func(ctx context.Context, blocks []*userBlock, user string) error {
		for _, b := range blocks {
			was, err := b.store.Unblock(ctx, user)
			if err != nil {
				return fmt.Errorf("database %s: %w", b.db, err)
			}
			if was {
				fmt.Printf("database %s: %s is unblocked\n", b.db, user)
			} else {
				fmt.Printf("database %s: %s was not blocked\n", b.db, user)
			}
		}
		return nil
	})
}

// plural picks the word for n.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
