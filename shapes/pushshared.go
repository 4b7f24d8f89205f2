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

	"github.com/hypersync/hypersync/internal/codes"
)

// DefaultMaxMembers bounds the members of one scope. Every write into a
// scope locks and stamps the cursor of each of its members (share.go), so
// its cost grows with them: past a few thousand members a push into the
// scope takes tens of milliseconds. A membership change that would pass
// the bound is rejected forbidden.
const DefaultMaxMembers = 1000

// DefaultMaxScopesPerUser bounds the scopes one user is an active member
// of, in one membership table. A pull reads every membership of its user,
// and a stranger could otherwise be added to any number of scopes. A
// membership change that would pass the bound is rejected forbidden.
const DefaultMaxScopesPerUser = 1000

// Tx is the part of a driver's write transaction that a push into shared
// shapes works through. Scopes travel as text: the database's own text
// for a value of the scope column.
type Tx interface {
	// Stored reads the stored rows that rows name, locking them until
	// commit: per row, nil when there is none.
	Stored(sh *Shape, rows []*Row) ([]*Stored, error)
	// Members reads the state of scopes of m (see ScopeState). It is
	// called before LockScopes, for a first look, and after it.
	Members(m *Membership, scopes []string) (map[string]*ScopeState, error)
	// Memberships counts the scopes of m each of users is an active
	// member of.
	Memberships(m *Membership, users []string) (map[string]int, error)
	// Used reports which of scopes, none of which has a membership row,
	// hold or held anything: a row of a shape shared through m, a row that
	// moved out of it, or a row or membership deleted from it.
	Used(m *Membership, scopes []string) (map[string]bool, error)
	// LockMembers locks users (sorted), as members m may gain, until
	// commit: pushes that add one member to scopes count their scopes one
	// after another. A database whose writers are serialised anyway may do
	// nothing.
	LockMembers(m *Membership, users []string) error
	// LockScopes locks scopes of m until commit: in share mode, or
	// exclusively where exclusive[i]. Scopes come sorted. A database whose
	// writers are serialised anyway may do nothing.
	LockScopes(m *Membership, scopes []string, exclusive []bool) error
	// Stamp locks the cursors of users (sorted) and takes one stamp above
	// every one of them, and above any stamp it took before in the
	// transaction. The cursors move to it only if a row is written.
	Stamp(users []string) (time.Time, error)
	// Archive keeps the stored versions of rows of a shared shape, before
	// they are written over, for the move-out of members removed since
	// those versions were written (see pullshared.go).
	Archive(sh *Shape, rows []*Row) error
	// Write writes one group with the stamp Stamp returned last, and sets
	// its rows' outcomes. Rows of a shared shape are written without the
	// owner check (the policy has checked them), with the user as their
	// author. Isolated: the group is one row, written on its own, and a
	// refused value is returned as a *RefusedError with nothing written.
	Write(user string, g Group, isolated bool) error
	// Moves records rows that left a scope, for the pulls of its members.
	Moves(moves []Move) error
	// Leave records members removed from scopes of m.
	Leave(m *Membership, leaves []Leave) error
	// Named reads the rows of sh that name user, each as the values of
	// sh's columns in the form a pull gives them: with member, the user's
	// active memberships (sh is a membership shape); without, the rows of
	// a scope the user authored. It locks nothing (the policy does).
	Named(sh *Shape, user string, member bool) ([][]Value, error)
	// ScopesOf reads the scopes of m user is, or was, a member of.
	ScopesOf(m *Membership, user string) ([]ScopeOf, error)
	// Forget ends an erase (erase.go), and returns the private rows it
	// deleted, by shape.
	Forget(f Forget) (map[*Shape]int, error)
	// Blocked fails the transaction with ErrErased if ErasedTable holds
	// hash: at once or with the next statements, and again once the next
	// Stamp holds its locks, where writers are not serialised anyway.
	Blocked(hash string) error
}

// ScopeOf is one scope of a member: active since Since, or removed at
// Until (after joining at Since). Since is zero where the table does not
// say.
type ScopeOf struct {
	Scope        string
	Active       bool
	Since, Until time.Time
}

// Forget is the last part of an erase of User: delete their private rows
// in Shapes (the rows of per-user shapes, and those of shared shapes
// whose scope is null), their cursor, their refused-change record and
// their recorded removals; give the versions and moves kept for move-out
// that name them as author ErasedAuthor; and store Hash in ErasedTable.
//
// Forget deletes the user's cursor, and keeps its stamp under the hash in
// ErasedTable, where unblock finds it: a cursor only grows, and so must
// the one an unblocked user starts again from. Every syncedAt handed out
// before the erase is at or below the kept stamp, so the new cursor is
// above them all, and every row stamped after the unblock is above any
// lastPull a device kept (by the clock alone, rows stamped after the
// unblock could fall below an old lastPull that ran ahead of the clock,
// and be skipped); and a standby that has not replayed the erase holds
// the old cursor, below the primary's new one, so a pull waits for it to
// replay the erase and the unblock (postgres/replica.go) instead of
// reading the erased rows there.
type Forget struct {
	User, Hash string
	Shapes     []*Shape
	// Sharing: a shape is shared, so the tables of sharing are there.
	Sharing bool
}

// Stored is a stored row as a shared write finds it, under its lock.
type Stored struct {
	Scope     string
	ScopeNull bool
	User      string
	UpdatedAt time.Time // zero when null
	Tomb      bool
	// ScopedAt is when the row entered its scope (zero when null); for a
	// membership row, when the member last joined.
	ScopedAt time.Time
	// Synced is the row's sync stamp: when its version was written.
	Synced time.Time
}

// ScopeState is what the database holds of one scope.
type ScopeState struct {
	// Active are its members now.
	Active []string
	// Ever: a membership row of it exists, in any state.
	Ever bool
	// LastLeft is the newest removal of a member recorded in it; zero when
	// there is none.
	LastLeft time.Time
}

// Move is a row that left the scope From, stamped Stamp.
type Move struct {
	Shape *Shape
	// Row is the change that moved it: its key names the row.
	Row *Row
	// From is the scope the row left; To the one it entered, ToNull when
	// it became private to User.
	From, To string
	ToNull   bool
	// User is the author of the move, UpdatedAt the row's new updatedAt.
	User      string
	UpdatedAt time.Time
	Stamp     time.Time
	// FromScopedAt is when the row had entered From.
	FromScopedAt time.Time
	// Payload is the tombstone the old scope's members receive: the key
	// fields, the scope field set to From, and the tombstone true.
	Payload []byte
}

// Leave is a member removed from a scope at Stamp, who had joined it at
// Joined (zero when not known).
type Leave struct {
	Scope, Member string
	Joined, Stamp time.Time
}

// lastTime is the latest updatedAt hypersync writes: the wire and SQLite's
// text carry four-digit years.
var lastTime = time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC)

// enteredNow stands for the stamp of the push at hand as the time a row
// entered its scope: later than any removal before the push.
var enteredNow = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)

// pushShared writes a push that touches a shared shape, in one driver
// transaction (see share.go for the rule it keeps). The database may
// refuse a value only once it is written; the push is then written again
// with each change on its own (isolated), and if a refused change was a
// membership, decided again without it, since every later decision of the
// push may rest on it.
func (s *Store) pushShared(ctx context.Context, set *ShapeSet, user, block string, rows []*Row, results []Result) (time.Time, []string, error) {
	var stamp time.Time
	var users []string
	refused := map[int]string{} // membership changes the database refused
	isolated := false
	// at most: the first pass, the isolated one, and one more for the
	// memberships refused in it, all of which it finds at once
	for attempt := 0; attempt < 3; attempt++ {
		for _, r := range rows {
			results[r.Index] = Result{}
		}
		live := rows[:0:0]
		for _, r := range rows {
			if msg, ok := refused[r.Index]; ok {
				results[r.Index] = rejected(codes.InvalidPayload, "%s", msg)
				continue
			}
			live = append(live, r)
		}
		// No collapsing: a change that a newer one would supersede must
		// still be written when the newer one is forbidden.
		groups := plan(live, false, isolated, results)
		err := s.db.d.Shared(ctx, func(tx Tx) error {
			p := &sharedPush{tx: tx, user: user, block: block, groups: groups, isolated: isolated, results: results,
				maxMembers: s.maxMembers(), maxScopes: s.maxScopes(), perUserStamps: s.perUserStamps}
			var err error
			stamp, users, err = p.run()
			return err
		})
		var mr *memberRefused
		switch {
		case errors.Is(err, ErrRefused) && !isolated:
			isolated = true
			continue
		case errors.As(err, &mr) && len(refused) == 0:
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
	return time.Time{}, nil, fmt.Errorf("push: membership refusals did not settle")
}

func (s *Store) maxMembers() int {
	if s.MaxMembers > 0 {
		return s.MaxMembers
	}
	return DefaultMaxMembers
}

func (s *Store) maxScopes() int {
	if s.MaxScopesPerUser > 0 {
		return s.MaxScopesPerUser
	}
	return DefaultMaxScopesPerUser
}

// rowRef names one stored row.
type rowRef struct {
	shape *Shape
	key   string
}

// scopeState is what a push knows of one scope, under its lock.
type scopeState struct {
	ever     bool            // a membership row exists, or was written by this push
	used     bool            // it holds or held anything (Tx.Used), for founding
	active   map[string]bool // members now
	initial  []string        // members before the push
	lastLeft time.Time       // the newest removal before the push
	leftHere bool            // a member is removed by this push
}

// sharedPush is one attempt at a shared push, in one transaction. Its
// phases run in this order, and each keeps its part of the argument that
// pulls stay complete (share.go, and the drivers' shared.go):
//
//  1. firstLook: membership changes the user may not make are refused,
//     from a look at the memberships without any lock: refusing is always
//     safe, and so a flood of them locks nothing and holds up nobody.
//  2. readStored: the stored rows the other changes name, locked: their
//     scopes cannot change under the push.
//  3. lockScopes: the scopes those rows are in or enter, locked (share
//     mode, or exclusively where a membership changes); then the
//     memberships, read under the locks, cannot change under the push.
//  4. decideMemberships: membership changes, in batch order.
//  5. decideRows: the other shared rows, in plan order.
//  6. audience: everyone who could see a touched scope before or after.
//  7. write: one stamp above all their cursors, then each row once.
type sharedPush struct {
	tx            Tx
	user          string
	block         string // the user's hash in ErasedTable
	groups        []Group
	isolated      bool
	results       []Result
	maxMembers    int
	maxScopes     int
	perUserStamps bool
	// operator: the push is an erase's (erase.go), by the user erased. Its
	// changes of rows (those that carry no tombstone) are applied
	// wherever the row is, the rules of membership aside, only while the
	// stored row's author is the user; every row it writes takes the
	// author ErasedAuthor.
	operator bool

	memberRows, sharedRows []*Row              // in the order they are decided
	state                  map[rowRef]*Stored  // stored rows, then as the push leaves them
	stored                 map[rowRef]*Stored  // stored rows as read
	newScope               map[*Row]scopeValue // the scope a change names, when it names one
	scopes                 map[*Membership]map[string]*scopeState
	counts                 map[*Membership]map[string]int // active memberships per member
	refusal                map[*Row]Result                // changes refused by the policy
	applied                []*Row                         // in decision order
	hit                    map[*Membership]map[string]bool
}

// run runs the phases, and returns the stamp and the users stamped; a zero
// stamp when nothing was written.
func (p *sharedPush) run() (time.Time, []string, error) {
	// an erased user's push is refused whatever it carries (and checked
	// again under the locks, in write)
	if err := p.tx.Blocked(p.block); err != nil {
		return time.Time{}, nil, err
	}
	p.sortRows()
	if err := p.firstLook(); err != nil {
		return time.Time{}, nil, err
	}
	if err := p.readStored(); err != nil {
		return time.Time{}, nil, err
	}
	if err := p.lockScopes(); err != nil {
		return time.Time{}, nil, err
	}
	p.decideMemberships()
	p.decideRows()
	for r, res := range p.refusal {
		p.results[r.Index] = res
	}
	perUser := false
	for _, g := range p.groups {
		perUser = perUser || g.Shape.share == nil
	}
	if len(p.applied) == 0 && !perUser {
		// nothing to write: no stamp, and nobody's cursor moves
		p.settle()
		return time.Time{}, nil, nil
	}
	users := p.audience()
	stamp, err := p.write(users)
	if err != nil {
		return time.Time{}, nil, err
	}
	p.settle()
	return stamp, users, nil
}

// sortRows splits the push's rows: memberships in batch order, then the
// other shared rows in plan order.
func (p *sharedPush) sortRows() {
	for _, g := range p.groups {
		for _, r := range g.Rows {
			r.Outcome = RowApplied
			p.results[r.Index] = Result{}
			switch {
			case g.Shape.IsMembership():
				p.memberRows = append(p.memberRows, r)
			case g.Shape.share != nil:
				p.sharedRows = append(p.sharedRows, r)
			}
		}
	}
	sort.SliceStable(p.memberRows, func(i, j int) bool { return p.memberRows[i].Index < p.memberRows[j].Index })
	p.refusal = map[*Row]Result{}
}

// decided returns the shared rows in the order they are decided.
func (p *sharedPush) decided() []*Row {
	return append(append([]*Row{}, p.memberRows...), p.sharedRows...)
}

// readStored is phase 2: the stored rows, locked (FOR UPDATE), so that
// their scopes cannot change under the push. Keys are locked in one
// order by every writer. A key the database cannot read (a date column
// given "not a date") fails the lookup of every key with it: isolated,
// each key is looked up on its own, and a change whose key is refused is
// rejected alone.
func (p *sharedPush) readStored() error {
	p.state, p.stored = map[rowRef]*Stored{}, map[rowRef]*Stored{}
	byShape := map[*Shape][]*Row{}
	var order []*Shape
	seen := map[rowRef]bool{}
	for _, r := range p.decided() {
		k := rowRef{r.shape, r.key}
		if seen[k] || p.refusal[r].Outcome == Rejected {
			continue
		}
		seen[k] = true
		if byShape[r.shape] == nil {
			order = append(order, r.shape)
		}
		byShape[r.shape] = append(byShape[r.shape], r)
	}
	refusedKey := map[rowRef]string{}
	for _, sh := range order {
		batches := [][]*Row{byShape[sh]}
		if p.isolated {
			batches = batches[:0]
			for _, r := range byShape[sh] {
				batches = append(batches, []*Row{r})
			}
		}
		for _, rows := range batches {
			stored, err := p.tx.Stored(sh, rows)
			var refused *RefusedError
			if p.isolated && errors.As(err, &refused) {
				refusedKey[rowRef{sh, rows[0].key}] = refused.Message
				continue
			}
			if err != nil {
				return err
			}
			for i, r := range rows {
				p.state[rowRef{sh, r.key}] = stored[i]
				p.stored[rowRef{sh, r.key}] = stored[i]
			}
		}
	}
	// each row's scope after the push: the change's, or the stored one
	// when the change does not carry it
	for _, r := range p.sharedRows {
		if msg, ok := refusedKey[rowRef{r.shape, r.key}]; ok {
			p.refusal[r] = rejected(codes.InvalidPayload, "%s", msg)
			continue
		}
		v, present, err := r.scope()
		if err != nil {
			p.refusal[r] = rejected(codes.InvalidPayload, "%s", err)
			continue
		}
		if present {
			p.newScope[r] = v
		}
	}
	return nil
}

// forbidMember is the one message for a membership change by one who may
// not make it: a stranger learns nothing of whether the scope exists.
const forbidMember = "only a member of the scope can change its members; a new scope is founded by adding yourself as its first member"

// lockScopes is phase 3. Every scope the push touches is locked: in share
// mode where rows are written into it, exclusively where its membership
// changes, so that membership stays still under the writes (and the
// members a push stamps are all who can see what it writes). A change
// that passed the first look is decided again under the locks.
func (p *sharedPush) lockScopes() error {
	touched := map[*Membership]map[string]bool{}
	touch := func(m *Membership, scope string, exclusive bool) {
		if touched[m] == nil {
			touched[m] = map[string]bool{}
		}
		touched[m][scope] = touched[m][scope] || exclusive
	}
	// a change that names no scope leaves the row where the push's
	// earlier changes left it: in its stored scope, or one of theirs
	for _, r := range p.decided() {
		if p.refusal[r].Outcome == Rejected {
			continue
		}
		m := r.shape.share.Members
		if v, ok := p.newScope[r]; ok && !v.null {
			touch(m, v.text, r.shape.IsMembership())
		}
		if st := p.stored[rowRef{r.shape, r.key}]; st != nil && !st.ScopeNull {
			touch(m, st.Scope, false)
		}
	}
	tables := make([]*Membership, 0, len(touched))
	for m := range touched {
		tables = append(tables, m)
	}
	sort.Slice(tables, func(i, j int) bool { return tables[i].QualifiedName() < tables[j].QualifiedName() })
	p.scopes = map[*Membership]map[string]*scopeState{}
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
		if err := p.tx.LockScopes(m, list, excl); err != nil {
			return err
		}
		st, err := p.tx.Members(m, list)
		if err != nil {
			return err
		}
		p.scopes[m] = map[string]*scopeState{}
		var found []string
		for i, sc := range list {
			ss := &scopeState{active: map[string]bool{}}
			if s := st[sc]; s != nil {
				ss.ever, ss.lastLeft = s.Ever, s.LastLeft
				for _, u := range s.Active {
					ss.active[u] = true
					ss.initial = append(ss.initial, u)
				}
			}
			p.scopes[m][sc] = ss
			if !ss.ever && excl[i] {
				found = append(found, sc)
			}
		}
		if len(found) > 0 {
			// founding is only for a scope that nothing is, or ever was, in
			used, err := p.tx.Used(m, found)
			if err != nil {
				return err
			}
			for sc, u := range used {
				if ss := p.scopes[m][sc]; ss != nil && u {
					ss.used = true
				}
			}
		}
		// max_scopes_per_user holds against concurrent pushes too: the
		// members the push may add are locked, and their scopes counted,
		// under the lock
		if adds := p.adds(m); len(adds) > 0 {
			if err := p.tx.LockMembers(m, adds); err != nil {
				return err
			}
			counts, err := p.tx.Memberships(m, adds)
			if err != nil {
				return err
			}
			p.counts[m] = counts
		}
	}
	return nil
}

// adds returns, sorted, the members that membership changes of m not
// refused yet would add.
func (p *sharedPush) adds(m *Membership) []string {
	set := map[string]bool{}
	for _, r := range p.memberRows {
		v, ok := p.newScope[r]
		if !ok || r.shape.share.Members != m || p.refusal[r].Outcome == Rejected || p.tomb(r) {
			continue
		}
		if member, err := r.member(); err == nil && !p.scopes[m][v.text].active[member] {
			set[member] = true
		}
	}
	return keys(set)
}

// firstLook is phase 1: it refuses, without locks, the membership changes the user may
// not make: in a scope they are not a member of, unless nobody ever had a
// membership in it and the push adds the user to it (founds it); and a
// change that would add a member past max_scopes_per_user. It also reads
// how many scopes the members that changes add are in already. What
// passes is decided again under the locks, in batch order.
func (p *sharedPush) firstLook() error {
	p.newScope = map[*Row]scopeValue{}
	p.counts = map[*Membership]map[string]int{}
	scopes := map[*Membership]map[string]bool{}
	founds := map[*Membership]map[string]bool{}
	for _, r := range p.memberRows {
		// a membership's scope is in its key: always in the change
		v, _, err := r.scope()
		if err != nil {
			p.refusal[r] = rejected(codes.InvalidPayload, "%s", err)
			continue
		}
		p.newScope[r] = v
		m := r.shape.share.Members
		if scopes[m] == nil {
			scopes[m], founds[m] = map[string]bool{}, map[string]bool{}
		}
		scopes[m][v.text] = true
		if member, err := r.member(); err == nil && member == p.user && !r.tomb() {
			founds[m][v.text] = true
		}
	}
	for m, set := range scopes {
		st, err := p.tx.Members(m, keys(set))
		if err != nil {
			return err
		}
		// a scope nobody ever had a membership in, that the push founds:
		// founding a scope something is, or was, in is refused here too
		var candidates []string
		for sc := range founds[m] {
			if s := st[sc]; s == nil || !s.Ever {
				candidates = append(candidates, sc)
			}
		}
		used := map[string]bool{}
		if len(candidates) > 0 {
			sort.Strings(candidates)
			if used, err = p.tx.Used(m, candidates); err != nil {
				return err
			}
		}
		adds := map[string]bool{}
		for _, r := range p.memberRows {
			v, ok := p.newScope[r]
			if !ok || r.shape.share.Members != m || p.refusal[r].Outcome == Rejected || p.operator {
				continue
			}
			s := st[v.text]
			switch {
			case s != nil && contains(s.Active, p.user):
			case (s == nil || !s.Ever) && founds[m][v.text] && !used[v.text]:
			default:
				p.refusal[r] = rejected(codes.Forbidden, "%s", forbidMember)
				continue
			}
			if member, err := r.member(); err == nil && !r.tomb() && (s == nil || !contains(s.Active, member)) {
				adds[member] = true
			}
		}
		if len(adds) == 0 {
			continue
		}
		// the scopes the members added are in already
		if p.counts[m], err = p.tx.Memberships(m, keys(adds)); err != nil {
			return err
		}
		added := map[string]int{}
		for _, r := range p.memberRows {
			v, ok := p.newScope[r]
			if !ok || r.shape.share.Members != m || p.refusal[r].Outcome == Rejected {
				continue
			}
			member, err := r.member()
			if s := st[v.text]; err != nil || r.tomb() || s != nil && contains(s.Active, member) {
				continue
			}
			if p.counts[m][member]+added[member] >= p.maxScopes {
				p.refusal[r] = rejected(codes.Forbidden, "the member is in %d scopes, the most allowed", p.maxScopes)
				continue
			}
			added[member]++
		}
	}
	return nil
}

func keys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// tomb reports whether a membership change removes its member: its
// tombstone, or the stored row's when the change does not carry it.
func (p *sharedPush) tomb(r *Row) bool {
	if !r.Has(r.shape.share.Tomb) {
		if st := p.state[rowRef{r.shape, r.key}]; st != nil {
			return st.Tomb
		}
	}
	return r.tomb()
}

// decideMemberships is phase 4: membership changes, in batch order, each
// against the members as the changes before it left them.
//
// Permissions follow the order in which the server applies membership
// changes, not device clocks: a change that adds one who is not a member,
// or removes one who is, is applied whatever its updatedAt, and takes
// greatest(its updatedAt, the stored one + 1 ms), so that every device
// applies it too. Otherwise a member whose device dates their own
// membership a day ahead could not be removed by anyone for a day. A
// change that changes no one's membership is decided by last-write-wins,
// as any row.
func (p *sharedPush) decideMemberships() {
	for _, r := range p.memberRows {
		if p.refusal[r].Outcome == Rejected {
			continue
		}
		sh, m := r.shape, r.shape.share.Members
		scope := p.newScope[r].text
		ss := p.scopes[m][scope]
		member, _ := r.member()
		tomb := p.tomb(r)
		k := rowRef{sh, r.key}
		st := p.state[k]
		if p.operator && !r.Has(sh.share.Tomb) {
			p.reauthor(r, k, m, scope)
			continue
		}
		switch {
		case ss.active[p.user]:
		case !ss.ever && !ss.used && member == p.user && !tomb:
			// founding a scope that nothing is, or ever was, in
		default:
			p.refusal[r] = rejected(codes.Forbidden, "%s", forbidMember)
			continue
		}
		joins := !tomb && !ss.active[member]
		if joins && len(ss.active) >= p.maxMembers {
			p.refusal[r] = rejected(codes.Forbidden, "the scope has %d members, the most allowed", p.maxMembers)
			continue
		}
		if joins && p.counts[m][member] >= p.maxScopes {
			p.refusal[r] = rejected(codes.Forbidden, "the member is in %d scopes, the most allowed", p.maxScopes)
			continue
		}
		leaves := tomb && ss.active[member]
		switch {
		case tomb && !ss.active[member]:
			// removing one who is not a member changes nothing, and
			// writing it would move the row's stamp, which move-out keys on
			r.Outcome = RowStale
			continue
		case st != nil && !r.UpdatedAt.After(st.UpdatedAt) && !joins && !leaves:
			r.Outcome = RowStale
			continue
		case st != nil:
			r.UpdatedAt = after(r.UpdatedAt, st.UpdatedAt)
		}
		ss.ever = true
		switch {
		case leaves:
			delete(ss.active, member)
			ss.leftHere = true
		case joins:
			ss.active[member] = true
			if p.counts[m] != nil {
				p.counts[m][member]++
			}
		}
		joined := enteredNow // a member joins at this push's stamp
		if st != nil && !joins {
			joined = st.ScopedAt
		}
		p.state[k] = &Stored{Scope: scope, User: p.author(), UpdatedAt: r.UpdatedAt, Tomb: tomb, ScopedAt: joined}
		p.applied = append(p.applied, r)
		p.mark(m, scope)
	}
}

// after returns the updatedAt of a change applied over a stored row of
// updatedAt stored: its own, or after the stored one, within what every
// store and the wire can write: at the end of time, a tie, which devices
// apply.
func after(t, stored time.Time) time.Time {
	if t.After(stored) {
		return t
	}
	if t = stored.Add(time.Millisecond); t.After(lastTime) {
		t = lastTime
	}
	return t
}

// author is the author the push writes into rows.
func (p *sharedPush) author() string {
	if p.operator {
		return ErasedAuthor
	}
	return p.user
}

// reauthor decides an erase's change of a row: applied, with the author
// ErasedAuthor and nothing else of the row changed, while the stored
// row's author is the user erased; stale otherwise (another member wrote
// it since the erase read it, or it is gone).
func (p *sharedPush) reauthor(r *Row, k rowRef, m *Membership, scope string) {
	st := p.state[k]
	if st == nil || st.ScopeNull || st.User != p.user {
		r.Outcome = RowStale
		return
	}
	r.UpdatedAt = after(r.UpdatedAt, st.UpdatedAt)
	next := *st
	next.User, next.UpdatedAt = ErasedAuthor, r.UpdatedAt
	p.state[k] = &next
	p.applied = append(p.applied, r)
	p.mark(m, scope)
}

// mark records that the push writes into scope: its members, before and
// after, are stamped.
func (p *sharedPush) mark(m *Membership, scope string) {
	if p.hit == nil {
		p.hit = map[*Membership]map[string]bool{}
	}
	if p.hit[m] == nil {
		p.hit[m] = map[string]bool{}
	}
	p.hit[m][scope] = true
}

// memberOf reports whether the user is a member of scope, as the push has
// left its members so far.
func (p *sharedPush) memberOf(m *Membership, scope string) bool {
	ss := p.scopes[m][scope]
	return ss != nil && ss.active[p.user]
}

// decideRows is phase 5: the other shared rows, in plan order. A change is
// applied only if the user may write the stored row (a member of its
// scope, or the owner of a private row) and ends with a row they can see.
func (p *sharedPush) decideRows() {
	for _, r := range p.sharedRows {
		if p.refusal[r].Outcome == Rejected {
			continue
		}
		m := r.shape.share.Members
		k := rowRef{r.shape, r.key}
		st := p.state[k]
		if p.operator {
			if st != nil {
				p.reauthor(r, k, m, st.Scope)
			} else {
				r.Outcome = RowStale
			}
			continue
		}
		to, named := p.newScope[r]
		switch {
		case named:
		case st != nil:
			// where the stored row, or an earlier change of this push, put it
			to = scopeValue{text: st.Scope, null: st.ScopeNull}
		default:
			to = scopeValue{null: true}
		}
		switch {
		case st != nil && st.ScopeNull && st.User != p.user:
			// as in a shape without share: the key names another user's row
			p.refusal[r] = rejected(codes.UserMismatch, "the row with this key belongs to another user")
			continue
		case st != nil && !st.ScopeNull && !p.memberOf(m, st.Scope):
			p.refusal[r] = rejected(codes.Forbidden, "the row's scope is one you are not a member of")
			continue
		case !to.null && !p.memberOf(m, to.text):
			p.refusal[r] = rejected(codes.Forbidden, "the change moves the row into a scope you are not a member of")
			continue
		}
		if st != nil && !r.UpdatedAt.After(st.UpdatedAt) {
			r.Outcome = RowStale
			continue
		}
		entered := enteredNow // this push's stamp, not known yet
		if st != nil && !st.ScopeNull && !to.null && to.text == st.Scope {
			entered = st.ScopedAt
		}
		p.state[k] = &Stored{Scope: to.text, ScopeNull: to.null, User: p.user, UpdatedAt: r.UpdatedAt, ScopedAt: entered}
		p.applied = append(p.applied, r)
		if st != nil && !st.ScopeNull {
			p.mark(m, st.Scope)
		}
		if !to.null {
			p.mark(m, to.text)
		}
	}
}

// settle sets the outcomes of the changes the policy did not refuse.
func (p *sharedPush) settle() {
	for _, g := range p.groups {
		for _, r := range g.Rows {
			if p.results[r.Index].Outcome != Rejected {
				p.results[r.Index] = resultOf(r)
			}
		}
	}
}

// audience is phase 6: everyone who can see a scope the push writes,
// before or after it, and the pusher. Only the scopes of changes applied
// count: a refused change stamps nobody.
func (p *sharedPush) audience() []string {
	seen := map[string]bool{p.user: true}
	if p.operator {
		// the placeholder author's cursor takes the stamp too: SQLite's
		// stamping triggers know hypersync's writes by a row stamped with
		// its author's cursor
		seen[ErasedAuthor] = true
	}
	for m, st := range p.scopes {
		for sc, ss := range st {
			if !p.hit[m][sc] {
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
	if p.perUserStamps {
		users = []string{p.user}
		if p.operator {
			users = []string{ErasedAuthor, p.user}
		}
	}
	return users
}

// write is phase 7: one stamp above the cursors of every user of the
// audience, then the rows: memberships first (the later decisions rest on
// them), then the other shared rows, then the per-user ones as planned.
//
// Each shared row is written once, whatever number of its changes were
// applied: the applied changes to one row are merged, in the order they
// were decided, into one version (the fields of each, the later winning),
// with one stamp. So a push costs one stamp of each member's cursor
// however many changes it carries, and a row that moved twice in one push
// is one move, from where it was to where it ends. A new row is written
// with its scope (and a membership with its tombstone) even when the
// change leaves it out, so that a column default cannot put it somewhere
// else than where it was decided to be.
func (p *sharedPush) write(users []string) (time.Time, error) {
	// checked under the pusher's cursor lock, which erase takes too: a
	// push that waited for an erase of its user sees it, and writes nothing
	if err := p.tx.Blocked(p.block); err != nil {
		return time.Time{}, err
	}
	stamp, err := p.tx.Stamp(users)
	if err != nil {
		return time.Time{}, err
	}
	shared := stamp
	merged, parts := p.merge()
	var memberGroups, sharedGroups []Group
	for _, r := range merged {
		k := rowRef{r.shape, r.key}
		g := Group{Shape: r.shape, Mask: r.mask, Rows: []*Row{r}, New: p.stored[k] == nil}
		if r.shape.IsMembership() {
			memberGroups = appendGrouped(memberGroups, g, p.isolated)
		} else {
			sharedGroups = appendGrouped(sharedGroups, g, p.isolated)
		}
	}
	// the versions written over that a member removed since saw last
	for _, g := range append(append([]Group{}, memberGroups...), sharedGroups...) {
		var keep []*Row
		for _, r := range g.Rows {
			if st := p.stored[rowRef{r.shape, r.key}]; st != nil && !st.ScopeNull && p.removedSince(r.shape.share.Members, st) {
				keep = append(keep, r)
			}
		}
		if len(keep) > 0 {
			if err := p.tx.Archive(g.Shape, keep); err != nil {
				return time.Time{}, err
			}
		}
	}
	var mr *memberRefused
	for _, g := range memberGroups {
		if err := p.tx.Write(p.author(), g, p.isolated); err != nil {
			var refused *RefusedError
			if !p.isolated || !errors.As(err, &refused) {
				return time.Time{}, err
			}
			if mr == nil {
				mr = &memberRefused{refused: map[int]string{}}
			}
			for _, r := range parts[g.Rows[0]] {
				mr.refused[r.Index] = refused.Message
			}
		}
	}
	if mr != nil {
		return time.Time{}, mr
	}
	for _, g := range sharedGroups {
		if err := p.tx.Write(p.author(), g, p.isolated); err != nil {
			var refused *RefusedError
			if !p.isolated || !errors.As(err, &refused) {
				return time.Time{}, err
			}
			g.Rows[0].Outcome, g.Rows[0].Refusal = RowRefused, refused.Message
		}
	}
	// per-user rows, in the planned rounds: a row written again takes a
	// new stamp, so that its stamp changes with each version (the SQLite
	// stamping triggers tell hypersync's writes by it); only the pusher
	// sees them, so only the pusher's cursor takes it
	written := map[rowRef]bool{}
	for _, g := range p.groups {
		if g.Shape.share != nil {
			continue
		}
		again := false
		for _, r := range g.Rows {
			k := rowRef{g.Shape, r.key}
			again = again || written[k]
			written[k] = true
		}
		if again {
			if stamp, err = p.tx.Stamp([]string{p.user}); err != nil {
				return time.Time{}, err
			}
		}
		err := p.tx.Write(p.user, g, p.isolated)
		var refused *RefusedError
		if p.isolated && errors.As(err, &refused) {
			g.Rows[0].Outcome, g.Rows[0].Refusal = RowRefused, refused.Message
			continue
		}
		if err != nil {
			return time.Time{}, err
		}
	}
	// every change merged into a row shares its outcome
	for m, rs := range parts {
		for _, r := range rs {
			r.Outcome, r.Refusal = m.Outcome, m.Refusal
		}
	}
	// the moves and removals happened at the stamp of the shared rows,
	// which every member's cursor takes
	if err := p.recordMoves(merged, shared); err != nil {
		return time.Time{}, err
	}
	if err := p.recordLeaves(merged, shared); err != nil {
		return time.Time{}, err
	}
	return stamp, nil
}

// recordLeaves records the members a written membership row removed: a
// member before the push, removed after it (one removed and added again
// in one push never left, to anyone).
func (p *sharedPush) recordLeaves(merged []*Row, stamp time.Time) error {
	leaves := map[*Membership][]Leave{}
	var order []*Membership
	for _, r := range merged {
		k := rowRef{r.shape, r.key}
		st, end := p.stored[k], p.state[k]
		if !r.shape.IsMembership() || r.Outcome != RowApplied || st == nil || st.Tomb || !end.Tomb {
			continue
		}
		member, err := r.member()
		if err != nil {
			return err
		}
		m := r.shape.share.Members
		if leaves[m] == nil {
			order = append(order, m)
		}
		leaves[m] = append(leaves[m], Leave{Scope: st.Scope, Member: member, Joined: st.ScopedAt, Stamp: stamp})
	}
	for _, m := range order {
		if err := p.tx.Leave(m, leaves[m]); err != nil {
			return err
		}
	}
	return nil
}

// removedSince reports whether a member was removed from the stored row's
// scope after the row's version was written, before or by this push:
// then that member's move-out carries this version, which must be kept.
func (p *sharedPush) removedSince(m *Membership, st *Stored) bool {
	ss := p.scopes[m][st.Scope]
	return ss != nil && (ss.leftHere || st.Synced.Before(ss.lastLeft))
}

// appendGrouped adds the one-row group g to groups, into the last group of
// its shape, mask and newness unless isolated.
func appendGrouped(groups []Group, g Group, isolated bool) []Group {
	if !isolated {
		for i := range groups {
			if groups[i].Shape == g.Shape && groups[i].Mask == g.Mask && groups[i].New == g.New {
				groups[i].Rows = append(groups[i].Rows, g.Rows...)
				return groups
			}
		}
	}
	return append(groups, g)
}

// merge folds the applied changes of each row into one, in the order they
// were decided, and returns the rows to write (in that order) and the
// changes each stands for.
func (p *sharedPush) merge() ([]*Row, map[*Row][]*Row) {
	var out []*Row
	parts := map[*Row][]*Row{}
	byRef := map[rowRef]*Row{}
	for _, r := range p.applied {
		k := rowRef{r.shape, r.key}
		m := byRef[k]
		if m == nil {
			c := *r
			c.Vals = append([]json.RawMessage(nil), r.Vals...)
			m = &c
			byRef[k] = m
			out = append(out, m)
		} else {
			for i, v := range r.Vals {
				if v != nil {
					m.Vals[i] = v
				}
			}
			m.UpdatedAt = r.UpdatedAt
		}
		parts[m] = append(parts[m], r)
	}
	for _, m := range out {
		sc := m.shape.share
		if p.stored[rowRef{m.shape, m.key}] == nil {
			// a new row: where it was decided to be, whatever the
			// column's default
			if m.Vals[sc.Scope] == nil {
				m.Vals[sc.Scope] = json.RawMessage("null")
			}
			if m.shape.IsMembership() && sc.Tomb >= 0 && m.Vals[sc.Tomb] == nil {
				m.Vals[sc.Tomb] = json.RawMessage("false")
			}
		}
		m.mask = maskOf(m.Vals)
	}
	return out, parts
}

// maskOf is the mask of the columns vals carries.
func maskOf(vals []json.RawMessage) Mask {
	b := make([]byte, len(vals))
	for i, v := range vals {
		if v != nil {
			b[i] = 1
		}
	}
	return Mask{string(b)}
}

// recordMoves records, for each written row that left a scope, the move
// from the scope it was in before the push to the one it ends in.
func (p *sharedPush) recordMoves(merged []*Row, stamp time.Time) error {
	var moves []Move
	for _, r := range merged {
		if r.Outcome != RowApplied {
			continue
		}
		k := rowRef{r.shape, r.key}
		st, end := p.stored[k], p.state[k]
		if st == nil || st.ScopeNull || r.shape.share.Tomb < 0 || (!end.ScopeNull && end.Scope == st.Scope) {
			continue
		}
		moves = append(moves, Move{Shape: r.shape, Row: r, From: st.Scope, To: end.Scope, ToNull: end.ScopeNull, User: p.user,
			UpdatedAt: r.UpdatedAt, Stamp: stamp, FromScopedAt: st.ScopedAt, Payload: r.tombstonePayload(st.Scope)})
	}
	if len(moves) == 0 {
		return nil
	}
	return p.tx.Moves(moves)
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

// tombstonePayload is the payload the members of the scope from receive
// when the row leaves it: its key fields, the scope field set to from, and
// the tombstone true.
func (r *Row) tombstonePayload(from string) []byte {
	sh := r.shape
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
		switch c := &sh.cols[i]; {
		case c.IsUUID():
			if v, err := c.TextValue(raw); err == nil {
				raw = jsonQuote(v)
			}
		case c.Kind == KindTimestamp:
			if t, err := TimeValue(raw); err == nil {
				raw = jsonQuote(t.UTC().Format(TimeLayout))
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
