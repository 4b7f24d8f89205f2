package shapes

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// The decisions of a shared push, each case against a fake transaction
// that holds the stored rows and memberships: what each change becomes,
// whom the push stamps, and what it writes. The drivers' SQL is tested on
// real databases elsewhere; this is the policy alone.

// fakeTx is a Tx over maps.
type fakeTx struct {
	stored  map[string]*Stored     // by shape key and row key
	members map[string]*ScopeState // by scope
	used    map[string]bool
	counts  map[string]int

	exclusive []string // scopes locked exclusively, in order
	stamped   []string
	written   []string // "shape/key@updatedAt" per row written
	moves     []string // "from>to"
	leaves    []string // "scope/member"
	archived  []string // "shape/key"
}

// name names a row as the cases do: shape/key, or shape/key1/key2.
func name(sh *Shape, r *Row) string {
	parts := []string{sh.Config.Key}
	for _, k := range strings.Split(strings.TrimSuffix(r.Key(), "\x00"), "\x00") {
		parts = append(parts, strings.TrimPrefix(k, "s"))
	}
	return strings.Join(parts, "/")
}

func (f *fakeTx) Stored(sh *Shape, rows []*Row) ([]*Stored, error) {
	out := make([]*Stored, len(rows))
	for i, r := range rows {
		out[i] = f.stored[name(sh, r)]
	}
	return out, nil
}

func (f *fakeTx) Members(m *Membership, scopes []string) (map[string]*ScopeState, error) {
	out := map[string]*ScopeState{}
	for _, sc := range scopes {
		if st := f.members[sc]; st != nil {
			c := *st
			c.Active = append([]string(nil), st.Active...)
			out[sc] = &c
		}
	}
	return out, nil
}

func (f *fakeTx) Memberships(m *Membership, users []string) (map[string]int, error) {
	out := map[string]int{}
	for _, u := range users {
		out[u] = f.counts[u]
	}
	return out, nil
}

func (f *fakeTx) Used(m *Membership, scopes []string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, sc := range scopes {
		out[sc] = f.used[sc]
	}
	return out, nil
}

func (f *fakeTx) LockMembers(m *Membership, users []string) error { return nil }

func (f *fakeTx) LockScopes(m *Membership, scopes []string, exclusive []bool) error {
	for i, sc := range scopes {
		if exclusive[i] {
			f.exclusive = append(f.exclusive, sc)
		}
	}
	return nil
}

func (f *fakeTx) Stamp(users []string) (time.Time, error) {
	f.stamped = append(f.stamped, users...)
	return time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), nil
}

func (f *fakeTx) Archive(sh *Shape, rows []*Row) error {
	for _, r := range rows {
		f.archived = append(f.archived, name(sh, r))
	}
	return nil
}

func (f *fakeTx) Write(user string, g Group, isolated bool) error {
	for _, r := range g.Rows {
		r.Outcome = RowApplied
		f.written = append(f.written, fmt.Sprintf("%s@%d", name(g.Shape, r), r.UpdatedAt.UnixMilli()%100000))
	}
	return nil
}

func (f *fakeTx) Moves(moves []Move) error {
	for _, mv := range moves {
		to := mv.To
		if mv.ToNull {
			to = "-"
		}
		f.moves = append(f.moves, mv.From+">"+to)
	}
	return nil
}

func (f *fakeTx) Blocked(string) error { return nil }

// The parts of an erase, which these cases do not run.
func (f *fakeTx) Named(*Shape, string, bool) ([][]Value, error)   { return nil, nil }
func (f *fakeTx) ScopesOf(*Membership, string) ([]ScopeOf, error) { return nil, nil }
func (f *fakeTx) Forget(Forget) (map[*Shape]int, error)           { return nil, nil }

func (f *fakeTx) Leave(m *Membership, leaves []Leave) error {
	for _, l := range leaves {
		f.leaves = append(f.leaves, l.Scope+"/"+l.Member)
	}
	return nil
}

// listSet resolves the lists example (todos and list_members, shared
// through list_members) without a database.
func listSet(t *testing.T) *ShapeSet {
	t.Helper()
	text := func(name string) ColumnInfo {
		return ColumnInfo{Name: name, Type: "text", Cast: "text", Kind: KindText, Exact: true}
	}
	stamp := func(name string) ColumnInfo {
		return ColumnInfo{Name: name, Type: "timestamp with time zone", Cast: "timestamptz", Kind: KindTimestamp}
	}
	boolean := ColumnInfo{Name: "deleted", Type: "boolean", Cast: "boolean", Kind: KindBool}
	share := func(member string) *ShareConfig {
		return &ShareConfig{Field: "listId", Via: "list_members", Member: member}
	}
	cfgs := []ShapeConfig{
		{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"listId", "title", "deleted"}, Share: share("")},
		{Key: "list_members", KeyFields: []string{"listId", "memberId"}, Fields: []string{"deleted"}, Share: share("memberId")},
	}
	infos := []*TableInfo{
		{Name: "todos", Columns: []ColumnInfo{text("todoId"), text("listId"), text("title"), boolean, text("userId"), stamp("updatedAt"), stamp("lastSyncAt"), stamp("scopedAt")},
			Unique: [][]string{{"todoId"}}},
		{Name: "list_members", Columns: []ColumnInfo{text("listId"), text("memberId"), boolean, text("userId"), stamp("updatedAt"), stamp("lastSyncAt"), stamp("scopedAt")},
			Unique: [][]string{{"listId", "memberId"}}},
	}
	set := &ShapeSet{byKey: map[string]*Shape{}}
	byShape := map[*Shape]*TableInfo{}
	for i, cfg := range cfgs {
		sh, err := Resolve(cfg, infos[i])
		if err != nil {
			t.Fatal(err)
		}
		set.Shapes = append(set.Shapes, sh)
		set.byKey[cfg.Key] = sh
		byShape[sh] = infos[i]
	}
	if err := resolveSharing(set, cfgs, nil, byShape); err != nil {
		t.Fatal(err)
	}
	return set
}

func TestSharedPushDecisions(t *testing.T) {
	at := func(n int) time.Time {
		return time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).Add(time.Duration(n) * time.Millisecond)
	}
	todo := func(n int, id, list string) Change {
		l := "null"
		if list != "" {
			l = fmt.Sprintf("%q", list)
		}
		return Change{ID: fmt.Sprint("c", n), Shape: "todos", UpdatedAt: at(n), Payload: payloadOf(fmt.Sprintf(`{"todoId":%q,"listId":%s,"title":"x"}`, id, l))}
	}
	member := func(n int, list, who string, deleted bool) Change {
		return Change{ID: fmt.Sprint("m", n), Shape: "list_members", UpdatedAt: at(n),
			Payload: payloadOf(fmt.Sprintf(`{"listId":%q,"memberId":%q,"deleted":%t}`, list, who, deleted))}
	}
	storedTodo := func(list, author string, n int) *Stored {
		return &Stored{Scope: list, ScopeNull: list == "", User: author, UpdatedAt: at(n), ScopedAt: at(n), Synced: at(n)}
	}
	storedMember := func(list string, deleted bool, n int) *Stored {
		return &Stored{Scope: list, User: "alice", UpdatedAt: at(n), Tomb: deleted, ScopedAt: at(n), Synced: at(n)}
	}
	L := &ScopeState{Active: []string{"alice", "bob"}, Ever: true}
	cases := []struct {
		name     string
		user     string
		stored   map[string]*Stored
		members  map[string]*ScopeState
		used     map[string]bool
		counts   map[string]int
		changes  []Change
		outcomes string
		// what the push did: scopes locked exclusively, users stamped,
		// rows written, moves, removals recorded, versions kept
		exclusive, stamped, written, moves, leaves, archived string
	}{
		{name: "a member writes into the scope", user: "bob", members: map[string]*ScopeState{"L": L},
			changes: []Change{todo(1, "t1", "L")}, outcomes: "applied", stamped: "alice bob", written: "todos/t1@1"},
		{name: "a stranger writes into it", user: "mallory", members: map[string]*ScopeState{"L": L},
			changes: []Change{todo(1, "t1", "L")}, outcomes: "rejected:forbidden"},
		{name: "a member moves a row into a scope of others", user: "bob", members: map[string]*ScopeState{"L": L, "M": {Active: []string{"carol"}, Ever: true}},
			stored: map[string]*Stored{"todos/t1": storedTodo("L", "bob", 0)}, changes: []Change{todo(1, "t1", "M")}, outcomes: "rejected:forbidden"},
		{name: "a member moves a row to a scope of theirs", user: "alice", members: map[string]*ScopeState{"L": L, "M": {Active: []string{"alice"}, Ever: true}},
			stored: map[string]*Stored{"todos/t1": storedTodo("L", "bob", 0)}, changes: []Change{todo(1, "t1", "M")}, outcomes: "applied",
			stamped: "alice bob", written: "todos/t1@1", moves: "L>M"},
		{name: "another user's private row", user: "alice", stored: map[string]*Stored{"todos/p1": storedTodo("", "carol", 0)},
			changes: []Change{todo(1, "p1", "")}, outcomes: "rejected:user-mismatch"},
		{name: "an older change", user: "bob", members: map[string]*ScopeState{"L": L}, stored: map[string]*Stored{"todos/t1": storedTodo("L", "alice", 5)},
			changes: []Change{todo(1, "t1", "L")}, outcomes: "stale"},
		{name: "a stranger adds themselves", user: "mallory", members: map[string]*ScopeState{"L": L},
			changes: []Change{member(1, "L", "mallory", false)}, outcomes: "rejected:forbidden"},
		{name: "founding a scope nothing was in, with an invite and a todo", user: "alice",
			changes:  []Change{todo(3, "t1", "N"), member(1, "N", "alice", false), member(2, "N", "bob", false)},
			outcomes: "applied,applied,applied", exclusive: "N", stamped: "alice bob", written: "list_members/N/alice@1 list_members/N/bob@2 todos/t1@3"},
		{name: "founding a scope with rows in it", user: "mallory", used: map[string]bool{"N": true},
			changes: []Change{member(1, "N", "mallory", false)}, outcomes: "rejected:forbidden"},
		{name: "founding a scope that had members", user: "mallory", members: map[string]*ScopeState{"N": {Ever: true}},
			changes: []Change{member(1, "N", "mallory", false)}, outcomes: "rejected:forbidden"},
		{name: "adding others to a scope nobody founded", user: "mallory",
			changes: []Change{member(1, "N", "victim", false)}, outcomes: "rejected:forbidden"},
		{name: "removing one who is not a member", user: "alice", members: map[string]*ScopeState{"L": L},
			changes: []Change{member(1, "L", "carol", true)}, outcomes: "stale", exclusive: "L"},
		{name: "a removal dated before the stored membership applies", user: "alice", members: map[string]*ScopeState{"L": L},
			stored: map[string]*Stored{"list_members/L/bob": storedMember("L", false, 90000)}, changes: []Change{member(1, "L", "bob", true)},
			outcomes: "applied", exclusive: "L", stamped: "alice bob", written: "list_members/L/bob@90001", leaves: "L/bob", archived: "list_members/L/bob"},
		{name: "a re-add already a member, dated before, is stale", user: "alice", members: map[string]*ScopeState{"L": L},
			stored: map[string]*Stored{"list_members/L/bob": storedMember("L", false, 5)}, changes: []Change{member(1, "L", "bob", false)},
			outcomes: "stale", exclusive: "L"},
		{name: "a member past max_members", user: "alice", members: map[string]*ScopeState{"L": {Active: []string{"alice", "bob", "carol"}, Ever: true}},
			changes: []Change{member(1, "L", "dave", false)}, outcomes: "rejected:forbidden", exclusive: "L"},
		{name: "a member past max_scopes_per_user", user: "alice", members: map[string]*ScopeState{"L": L}, counts: map[string]int{"dave": 2},
			changes: []Change{member(1, "L", "dave", false)}, outcomes: "rejected:forbidden"},
		{name: "one row changed three times: written once", user: "bob", members: map[string]*ScopeState{"L": L},
			stored:  map[string]*Stored{"todos/t1": storedTodo("L", "bob", 0)},
			changes: []Change{todo(1, "t1", "L"), todo(2, "t1", "L"), todo(3, "t1", "L")}, outcomes: "applied,applied,applied",
			stamped: "alice bob", written: "todos/t1@3"},
		{name: "a row moved away and back in one push: no move", user: "alice", members: map[string]*ScopeState{"L": L, "M": {Active: []string{"alice"}, Ever: true}},
			stored:  map[string]*Stored{"todos/t1": storedTodo("L", "bob", 0)},
			changes: []Change{todo(1, "t1", "M"), todo(2, "t1", "L")}, outcomes: "applied,applied", stamped: "alice bob", written: "todos/t1@2"},
		{name: "a version written over after a removal is kept", user: "alice", members: map[string]*ScopeState{"L": {Active: []string{"alice"}, Ever: true, LastLeft: at(3)}},
			stored:  map[string]*Stored{"todos/t1": storedTodo("L", "bob", 2), "todos/t2": storedTodo("L", "bob", 4)},
			changes: []Change{todo(10, "t1", "L"), todo(11, "t2", "L")}, outcomes: "applied,applied", stamped: "alice", written: "todos/t1@10 todos/t2@11",
			archived: "todos/t1"},
	}
	set := listSet(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tx := &fakeTx{stored: c.stored, members: c.members, used: c.used, counts: c.counts}
			results := make([]Result, len(c.changes))
			rows := prepare(set, c.changes, results)
			p := &sharedPush{tx: tx, user: c.user, groups: plan(rows, false, false, results), results: results,
				maxMembers: 3, maxScopes: 2}
			if _, _, err := p.run(); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range results {
				s := r.Outcome.String()
				if r.Outcome == Rejected {
					s += ":" + r.Code
				}
				got = append(got, s)
			}
			sortedWords := func(list []string) string {
				list = append([]string(nil), list...)
				sort.Strings(list)
				return strings.Join(list, " ")
			}
			for _, check := range []struct{ what, got, want string }{
				{"outcomes", strings.Join(got, ","), c.outcomes},
				{"exclusive locks", sortedWords(tx.exclusive), c.exclusive},
				{"users stamped", sortedWords(tx.stamped), c.stamped},
				{"rows written", sortedWords(tx.written), c.written},
				{"moves", sortedWords(tx.moves), c.moves},
				{"removals recorded", sortedWords(tx.leaves), c.leaves},
				{"versions kept", sortedWords(tx.archived), c.archived},
			} {
				if check.got != check.want {
					t.Errorf("%s: %q, want %q", check.what, check.got, check.want)
				}
			}
		})
	}
}

// payloadOf decodes a payload written as JSON.
func payloadOf(s string) Payload {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		panic(err)
	}
	return PayloadOf(m)
}
