package shapes

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// DefaultMaxMembers bounds the members of one scope. Every write into a
// scope locks and stamps the cursor of each of its members (share.go), so
// its cost grows with them: past a few thousand members a push into the
// scope takes tens of milliseconds. A membership change that would pass
// the bound is rejected forbidden.
const DefaultMaxMembers = 1000

// CodeForbidden rejects a change the user may not make: a write into a
// scope they are not a member of, or one that takes a row out of their
// sight.
const CodeForbidden = "forbidden"

// Tx is the part of a driver's write transaction that a push into shared
// shapes works through. Scopes travel as text: the database's own text
// for a value of the scope column.
type Tx interface {
	// Stored reads the stored rows that rows name, locking them until
	// commit: per row, nil when there is none.
	Stored(sh *Shape, rows []*Row) ([]*Stored, error)
	// LockScopes locks scopes of m until commit: in share mode, or
	// exclusively where exclusive[i]. Scopes come sorted. A database whose
	// writers are serialised anyway may do nothing.
	LockScopes(m *Membership, scopes []string, exclusive []bool) error
	// Members reads every membership row of the scopes.
	Members(m *Membership, scopes []string) ([]Member, error)
	// Stamp locks the cursors of users (sorted) and sets every one of them
	// to one new stamp: greatest(clock, the greatest previous + 1 ms).
	Stamp(users []string) (time.Time, error)
	// Write writes one group with the stamp Stamp returned last, and sets
	// its rows' outcomes. Rows of a shared shape are written without the
	// owner check (the policy has checked them), with the user as their
	// author. Isolated: the group is one row, written on its own, and a
	// refused value is returned as a *RefusedError with nothing written.
	Write(user string, g Group, isolated bool) error
	// Moves records rows that left a scope, for the pulls of its members.
	Moves(moves []Move) error
}

// Stored is a stored row as a shared write finds it, under its lock.
type Stored struct {
	Scope     string
	ScopeNull bool
	User      string
	UpdatedAt time.Time // zero when null
	Tomb      bool
	// ScopedAt is when the row entered its scope (zero when null).
	ScopedAt time.Time
}

// Member is one membership row.
type Member struct {
	Scope, User string
	Removed     bool
}

// Move is a row that left the scope From, stamped Stamp.
type Move struct {
	Shape *Shape
	// From is the scope the row left; To the one it entered, ToNull when
	// it became private to User.
	From, To string
	ToNull   bool
	// User is the author of the move, UpdatedAt the row's new updatedAt.
	User      string
	UpdatedAt time.Time
	Stamp     time.Time
	// FromScopedAt is when the row had entered From: members removed from
	// From after that, and before the move, receive the tombstone too.
	FromScopedAt time.Time
	// Payload is the tombstone the old scope's members receive: the key
	// fields, the scope field set to From, and the tombstone true.
	Payload []byte
}

// enteredNow stands for the stamp of the push at hand as the time a row
// entered its scope: later than any removal before the push.
var enteredNow = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)

// ErrRetry asks the driver to run a shared write again from the start: a
// row it found missing was inserted meanwhile by another transaction.
var ErrRetry = errors.New("shapes: a concurrent write raced this one; retry")

// pushShared writes a push that touches a shared shape, in one driver
// transaction (see share.go for the rule it keeps).
func (s *Store) pushShared(ctx context.Context, set *ShapeSet, user string, rows []*Row, results []Result) (time.Time, []string, error) {
	var stamp time.Time
	var users []string
	refused := map[int]string{} // membership changes the database refused
	isolated := false
	for attempt := 0; attempt <= len(rows)+1; attempt++ { // one refusal at a time, after the isolating one
		for _, r := range rows {
			results[r.Index] = Result{}
		}
		live := rows[:0:0]
		for _, r := range rows {
			if msg, ok := refused[r.Index]; ok {
				results[r.Index] = rejected(CodeInvalidPayload, "%s", msg)
				continue
			}
			live = append(live, r)
		}
		// No collapsing: a change that a newer one would supersede must
		// still be written when the newer one is forbidden.
		groups := plan(live, false, isolated, results)
		err := s.db.d.Shared(ctx, func(tx Tx) error {
			var err error
			stamp, users, err = writeShared(tx, user, groups, isolated, results, s.maxMembers(), s.perUserStamps)
			return err
		})
		var mr *memberRefused
		switch {
		case errors.Is(err, ErrRefused) && !isolated:
			isolated = true
			continue
		case errors.As(err, &mr):
			// decided as if the memberships held: decide again without them
			for i, msg := range mr.refused {
				refused[i] = msg
			}
			continue
		case err != nil:
			s.recheckOn(set, err)
			return time.Time{}, nil, err
		}
		return stamp, users, nil
	}
	return stamp, nil, fmt.Errorf("push: membership refusals did not settle")
}

// memberRefused: the database refused membership changes that the policy
// had already counted, so every later decision of the push may rest on
// them. All the memberships of the push are tried first, so that one
// decision again settles every refusal among them: a push of many refused
// memberships costs two passes, not one per refusal.
type memberRefused struct {
	refused map[int]string // by change index
}

func (e *memberRefused) Error() string { return fmt.Sprintf("%d memberships refused", len(e.refused)) }

func (s *Store) maxMembers() int {
	if s.MaxMembers > 0 {
		return s.MaxMembers
	}
	return DefaultMaxMembers
}

// scopeState is what a push knows of one scope, under its lock.
type scopeState struct {
	ever    bool            // a membership row exists, or was written by this push
	active  map[string]bool // members now
	initial []string        // members before the push
}

type rowRef struct {
	shape *Shape
	key   string
}

// writeShared is one attempt at a shared push, in tx. It decides every
// change of a shared shape from the stored rows and memberships it read
// under lock: membership changes first, in batch order, then the other
// rows in plan order. Then it stamps the cursors of everyone who could see
// a touched scope before or after, and writes.
func writeShared(tx Tx, user string, groups []Group, isolated bool, results []Result, maxMembers int, perUserStamps bool) (time.Time, []string, error) {
	var memberRows, sharedRows []*Row
	for _, g := range groups {
		for _, r := range g.Rows {
			r.Outcome = RowApplied
			results[r.Index] = Result{}
			switch {
			case g.Shape.IsMembership():
				memberRows = append(memberRows, r)
			case g.Shape.share != nil:
				sharedRows = append(sharedRows, r)
			}
		}
	}
	sort.SliceStable(memberRows, func(i, j int) bool { return memberRows[i].Index < memberRows[j].Index })
	decided := append(append([]*Row{}, memberRows...), sharedRows...) // in the order they are decided

	// The stored rows, locked: their scopes cannot change under us.
	state := map[rowRef]*Stored{}
	byShape := map[*Shape][]*Row{}
	var order []*Shape
	for _, r := range decided {
		k := rowRef{r.shape, r.key}
		if _, seen := state[k]; seen {
			continue
		}
		state[k] = nil
		if byShape[r.shape] == nil {
			order = append(order, r.shape)
		}
		byShape[r.shape] = append(byShape[r.shape], r)
	}
	// A key the database cannot read (a date column given "not a date")
	// fails the lookup of every key with it: isolated, each key is looked
	// up on its own, and a change whose key is refused is rejected alone.
	refusedKey := map[rowRef]string{}
	for _, sh := range order {
		batches := [][]*Row{byShape[sh]}
		if isolated {
			batches = batches[:0]
			for _, r := range byShape[sh] {
				batches = append(batches, []*Row{r})
			}
		}
		for _, rows := range batches {
			stored, err := tx.Stored(sh, rows)
			var refused *RefusedError
			if isolated && errors.As(err, &refused) {
				refusedKey[rowRef{sh, rows[0].key}] = refused.Message
				continue
			}
			if err != nil {
				return time.Time{}, nil, err
			}
			for i, r := range rows {
				state[rowRef{sh, r.key}] = stored[i]
			}
		}
	}

	// Every scope touched, per membership table: exclusively where a
	// membership changes, so that membership stays still under the writes.
	forbid := map[*Row]string{}
	invalid := map[*Row]string{}
	mismatch := map[*Row]bool{}
	touched := map[*Membership]map[string]bool{}
	touch := func(m *Membership, scope string, exclusive bool) {
		if touched[m] == nil {
			touched[m] = map[string]bool{}
		}
		touched[m][scope] = touched[m][scope] || exclusive
	}
	newScope := map[*Row]scopeValue{}
	for _, r := range decided {
		if msg, ok := refusedKey[rowRef{r.shape, r.key}]; ok {
			invalid[r] = msg
			continue
		}
		sc := r.shape.share
		v, present, err := r.scope()
		if err != nil {
			invalid[r] = err.Error()
			continue
		}
		st := state[rowRef{r.shape, r.key}]
		if !present {
			v = scopeValue{null: true}
			if st != nil {
				v = scopeValue{text: st.Scope, null: st.ScopeNull}
			}
		}
		newScope[r] = v
		if !v.null {
			touch(sc.Members, v.text, r.shape.IsMembership())
		}
		if st != nil && !st.ScopeNull {
			touch(sc.Members, st.Scope, false)
		}
	}
	var tables []*Membership
	for m := range touched {
		tables = append(tables, m)
	}
	sort.Slice(tables, func(i, j int) bool { return tables[i].QualifiedName() < tables[j].QualifiedName() })
	scopes := map[*Membership]map[string]*scopeState{}
	for _, m := range tables {
		list := make([]string, 0, len(touched[m]))
		for sc := range touched[m] {
			list = append(list, sc)
		}
		sort.Strings(list)
		excl := make([]bool, len(list))
		for i, sc := range list {
			excl[i] = touched[m][sc]
		}
		if err := tx.LockScopes(m, list, excl); err != nil {
			return time.Time{}, nil, err
		}
		members, err := tx.Members(m, list)
		if err != nil {
			return time.Time{}, nil, err
		}
		st := make(map[string]*scopeState, len(list))
		for _, sc := range list {
			st[sc] = &scopeState{active: map[string]bool{}}
		}
		for _, mem := range members {
			ss := st[mem.Scope]
			if ss == nil {
				continue // a scope the database spells otherwise: not one asked for
			}
			ss.ever = true
			if !mem.Removed {
				ss.active[mem.User] = true
				ss.initial = append(ss.initial, mem.User)
			}
		}
		scopes[m] = st
	}
	memberOf := func(m *Membership, scope string) bool {
		ss := scopes[m][scope]
		return ss != nil && ss.active[user]
	}

	// Membership changes, in batch order.
	applied := map[*Row]bool{}
	isNew := map[*Row]bool{}
	// the scopes the applied rows are in, before and after: whose members
	// the push must stamp (a rejected change stamps nobody)
	hit := map[*Membership]map[string]bool{}
	mark := func(m *Membership, scope string) {
		if hit[m] == nil {
			hit[m] = map[string]bool{}
		}
		hit[m][scope] = true
	}
	for _, r := range memberRows {
		if invalid[r] != "" {
			continue
		}
		sh, m := r.shape, r.shape.share.Members
		scope := newScope[r].text
		ss := scopes[m][scope]
		member, _ := r.member()
		tomb := r.tomb()
		k := rowRef{sh, r.key}
		st := state[k]
		if st != nil && !r.Has(sh.share.Tomb) {
			tomb = st.Tomb
		}
		switch {
		case ss.active[user]:
		case !ss.ever && member == user && !tomb:
			// founding a scope that never had a member
		default:
			// one message either way: a stranger learns nothing of
			// whether the scope exists
			forbid[r] = "only a member of the scope can change its members; a new scope is founded by adding yourself as its first member"
			continue
		}
		if !tomb && !ss.active[member] && len(ss.active) >= maxMembers {
			forbid[r] = fmt.Sprintf("the scope has %d members, the most allowed", maxMembers)
			continue
		}
		if st != nil && !r.UpdatedAt.After(st.UpdatedAt) {
			r.Outcome = RowStale
			continue
		}
		if tomb && !ss.active[member] {
			// removing one who is not a member changes nothing, and
			// writing it would move the row's stamp, which move-out keys on
			r.Outcome = RowStale
			continue
		}
		ss.ever = true
		if tomb {
			delete(ss.active, member)
		} else {
			ss.active[member] = true
		}
		state[k] = &Stored{Scope: scope, User: user, UpdatedAt: r.UpdatedAt, Tomb: tomb}
		applied[r], isNew[r] = true, st == nil
		mark(m, scope)
	}

	// The other shared rows, in plan order.
	var moves []Move
	var moved []*Row
	for _, r := range sharedRows {
		if invalid[r] != "" {
			continue
		}
		m := r.shape.share.Members
		k := rowRef{r.shape, r.key}
		st := state[k]
		to := newScope[r]
		switch {
		case st != nil && st.ScopeNull && st.User != user:
			// as in a shape without share: the key names another user's row
			mismatch[r] = true
			continue
		case st != nil && !st.ScopeNull && !memberOf(m, st.Scope):
			forbid[r] = "the row's scope is one you are not a member of"
			continue
		case !to.null && !memberOf(m, to.text):
			forbid[r] = "the change moves the row into a scope you are not a member of"
			continue
		}
		if st != nil && !r.UpdatedAt.After(st.UpdatedAt) {
			r.Outcome = RowStale
			continue
		}
		if p := r.tombstone(st); p != nil {
			moves = append(moves, Move{Shape: r.shape, From: st.Scope, To: to.text, ToNull: to.null, User: user,
				UpdatedAt: r.UpdatedAt, Payload: p, FromScopedAt: st.ScopedAt})
			moved = append(moved, r)
		}
		entered := enteredNow // this push's stamp, not known yet
		if st != nil && !st.ScopeNull && !to.null && to.text == st.Scope {
			entered = st.ScopedAt
		}
		state[k] = &Stored{Scope: to.text, ScopeNull: to.null, User: user, UpdatedAt: r.UpdatedAt, ScopedAt: entered}
		applied[r], isNew[r] = true, st == nil
		if st != nil && !st.ScopeNull {
			mark(m, st.Scope)
		}
		if !to.null {
			mark(m, to.text)
		}
	}
	for r, why := range forbid {
		results[r.Index] = rejected(CodeForbidden, "%s", why)
	}
	for r, why := range invalid {
		results[r.Index] = rejected(CodeInvalidPayload, "%s", why)
	}
	for r := range mismatch {
		results[r.Index] = rejected(CodeUserMismatch, "the row with this key belongs to another user")
	}

	// Nothing to write: no stamp, and nobody's cursor moves.
	perUser := false
	for _, g := range groups {
		perUser = perUser || g.Shape.share == nil
	}
	// the outcomes of the changes not rejected above
	settle := func() {
		for _, g := range groups {
			for _, r := range g.Rows {
				if results[r.Index].Outcome != Rejected {
					results[r.Index] = resultOf(r)
				}
			}
		}
	}
	if len(applied) == 0 && !perUser {
		settle()
		return time.Time{}, nil, nil
	}

	// Everyone who can see a scope the push writes, before or after it.
	seen := map[string]bool{user: true}
	for m, st := range scopes {
		for sc, ss := range st {
			if !hit[m][sc] {
				continue
			}
			for _, u := range ss.initial {
				seen[u] = true
			}
			for u := range ss.active {
				seen[u] = true
			}
		}
	}
	users := make([]string, 0, len(seen))
	for u := range seen {
		users = append(users, u)
	}
	sort.Strings(users)
	if perUserStamps {
		users = []string{user}
	}
	stamp, err := tx.Stamp(users)
	if err != nil {
		return time.Time{}, nil, err
	}

	// Memberships first, then the rest; per-user shapes' rows are decided
	// by the driver's usual statements.
	var write []Group
	for pass := 0; pass < 2; pass++ {
		for _, g := range groups {
			if g.Shape.IsMembership() != (pass == 0) {
				continue
			}
			if g.Shape.share == nil {
				write = append(write, g)
				continue
			}
			// the new rows apart: an insert that meets a row inserted
			// meanwhile must not become an update of a row whose scope
			// the push did not lock
			old, fresh := Group{Shape: g.Shape, Mask: g.Mask}, Group{Shape: g.Shape, Mask: g.Mask, New: true}
			for _, r := range g.Rows {
				switch {
				case applied[r] && isNew[r]:
					fresh.Rows = append(fresh.Rows, r)
				case applied[r]:
					old.Rows = append(old.Rows, r)
				}
			}
			for _, keep := range []Group{old, fresh} {
				if len(keep.Rows) > 0 {
					write = append(write, keep)
				}
			}
		}
	}
	written := map[rowRef]bool{}
	moveAt := map[*Row]time.Time{}
	var mr *memberRefused
	for _, g := range write {
		again := false
		for _, r := range g.Rows {
			k := rowRef{g.Shape, r.key}
			again = again || written[k]
			written[k] = true
		}
		if again {
			// a row written again takes a new stamp, so that its stamp
			// changes with each version (the SQLite stamping triggers
			// tell hypersync's writes by it)
			if stamp, err = tx.Stamp(users); err != nil {
				return time.Time{}, nil, err
			}
		}
		for _, r := range g.Rows {
			moveAt[r] = stamp
		}
		if mr != nil && !g.Shape.IsMembership() {
			return time.Time{}, nil, mr // the memberships are written first
		}
		err := tx.Write(user, g, isolated)
		var refused *RefusedError
		if isolated && errors.As(err, &refused) {
			if g.Shape.IsMembership() {
				if mr == nil {
					mr = &memberRefused{refused: map[int]string{}}
				}
				mr.refused[g.Rows[0].Index] = refused.Message
				continue
			}
			g.Rows[0].Outcome, g.Rows[0].Refusal = RowRefused, refused.Message
			continue
		}
		if err != nil {
			return time.Time{}, nil, err
		}
	}
	if mr != nil {
		return time.Time{}, nil, mr
	}
	for i, r := range moved {
		moves[i].Stamp = moveAt[r]
	}
	if len(moves) > 0 {
		if err := tx.Moves(moves); err != nil {
			return time.Time{}, nil, err
		}
	}
	settle()
	return stamp, users, nil
}

func jsonQuote(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

// scopeValue is a scope as text, or null.
type scopeValue struct {
	text string
	null bool
}

// scope returns the row's new scope, and whether the change carries one.
func (r *Row) scope() (scopeValue, bool, error) {
	i := r.shape.share.Scope
	raw := r.Vals[i]
	if raw == nil {
		return scopeValue{}, false, nil
	}
	raw = bytes.TrimSpace(raw)
	if raw[0] == 'n' {
		if r.shape.IsMembership() {
			return scopeValue{}, true, fmt.Errorf("a membership needs a scope")
		}
		return scopeValue{null: true}, true, nil
	}
	c := &r.shape.cols[i]
	if c.Kind == KindInt {
		n, err := strconv.ParseInt(string(raw), 10, 64)
		return scopeValue{text: strconv.FormatInt(n, 10)}, true, err
	}
	s, err := c.TextValue(raw)
	if err != nil {
		return scopeValue{}, true, err
	}
	if s == "" {
		return scopeValue{}, true, fmt.Errorf("field %q: a scope cannot be empty", c.Field)
	}
	return scopeValue{text: s}, true, nil
}

// member returns the member a membership row names.
func (r *Row) member() (string, error) {
	m := r.shape.share.Members
	for i, c := range r.shape.cols {
		if c.Name == m.Member.Name {
			return c.TextValue(bytes.TrimSpace(r.Vals[i]))
		}
	}
	return "", fmt.Errorf("no member column")
}

// Has reports whether the change carries column i (false for i < 0).
func (r *Row) Has(i int) bool { return i >= 0 && r.Vals[i] != nil }

// tomb reports whether the change sets the tombstone.
func (r *Row) tomb() bool {
	i := r.shape.share.Tomb
	return r.Has(i) && bytes.TrimSpace(r.Vals[i])[0] == 't'
}

// tombstone is the payload the old scope's members receive when a change
// takes a row, stored as st, out of its scope: its key fields, the scope
// field set to the old scope, and the tombstone true. Nil when the row
// does not leave a scope, or the shape has no tombstone.
func (r *Row) tombstone(st *Stored) []byte {
	sh := r.shape
	if st == nil || st.ScopeNull || sh.share.Tomb < 0 {
		return nil
	}
	if to, _, _ := r.scope(); !r.Has(sh.share.Scope) || (!to.null && to.text == st.Scope) {
		return nil
	}
	from := st.Scope
	b := []byte{'{'}
	field := func(name string, raw []byte) {
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = append(b, jsonQuote(name)...)
		b = append(b, ':')
		b = append(b, raw...)
	}
	for i := range sh.Keys {
		// the key as the database spells it (a uuid lower-cased), as
		// pulls send it, so that devices find the row they hold
		raw := bytes.TrimSpace(r.Vals[i])
		if c := &sh.cols[i]; c.IsUUID() {
			if v, err := c.TextValue(raw); err == nil {
				raw = jsonQuote(v)
			}
		}
		field(sh.cols[i].Field, raw)
	}
	sc := sh.cols[sh.share.Scope]
	if sh.share.Scope >= len(sh.Keys) {
		if sc.Kind == KindInt {
			field(sc.Field, []byte(from))
		} else {
			field(sc.Field, jsonQuote(from))
		}
	}
	field(sh.cols[sh.share.Tomb].Field, []byte("true"))
	return append(b, '}')
}
