package shapes

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Erasing a user (caddy hypersync erase).
//
// One transaction per database, under the locks a push takes, does what
// a push by the user could not do alone:
//
//  1. The user's active memberships of membership shapes are removed, as
//     a removal they pushed themselves would: the scopes are locked
//     exclusively, every member before and after is stamped, and the
//     removal is recorded for move-out. The other members' devices
//     receive the tombstone.
//  2. The rows of a scope the user authored, in every shared shape (the
//     membership shapes among them), are written again with the
//     placeholder author ErasedAuthor, in the same push: they stay with
//     their scope, and the scope's members receive the change. Memberships
//     are decided before rows, so this push is an operator's: it may
//     rewrite rows in scopes the user is no longer a member of, but only
//     rows whose stored author is still the user, and it changes nothing
//     else of them (the change carries the key fields alone).
//  3. Forget deletes the user's private rows, their cursor, their
//     refused-change record and their removals; it rewrites the author of
//     the versions and moves kept for move-out; and it stores the keyed
//     hash of the user id in ErasedTable, so that from then on every push,
//     pull and stream of theirs answers 403.
//
// Rows the user writes while the erase runs: the push of step 1 locks the
// user's cursor (they are in its audience) until the commit, and every
// push of the user takes that lock before it writes and checks
// ErasedTable after it (Tx.Blocked). A push of theirs that committed
// after step 2 read the user's rows, but before the lock was taken, may
// have left a row authored by them: the rows are read again under the
// lock, and written in a second push of the same transaction. No push of
// theirs commits after that, so a third read finds nothing. (The second
// push takes row locks while holding scope and cursor locks, against the
// order of pushes; a deadlock that makes is resolved by the database, and
// the erase runs again.)
//
// The placeholder author's cursor takes every erase's stamp too: SQLite's
// stamping triggers tell hypersync's writes by a row stamped with its
// author's cursor.
//
// Memberships in tables the app's backend keeps are not hypersync's to
// write: they are reported.

// ErasedAuthor is the author of the shared rows an erased user wrote: no
// authenticated user can have it (the handler refuses an empty user id).
const ErasedAuthor = ""

// EraseReport is what an erase did, or, dry, would do.
type EraseReport struct {
	// Deleted counts the private rows deleted, by shape key.
	Deleted map[string]int
	// Removed lists the scopes the user was removed from, by membership
	// shape key.
	Removed map[string][]string
	// Reauthored counts the shared rows given ErasedAuthor, by shape key.
	Reauthored map[string]int
	// Kept lists the scopes of the user's active memberships in tables the
	// backend keeps, by table: reported, not touched.
	Kept map[string][]string
	// Poked are the users whose cursors the erase moved, and Stamp the
	// stamp they took: live sync tells them.
	Poked []string
	Stamp time.Time
}

// errDryRun ends a dry erase's transaction, which rolls it back.
var errDryRun = errors.New("dry run")

// Erase erases user (see above). With dryRun it does everything in a
// transaction it rolls back, and reports what it would have done.
func (s *Store) Erase(ctx context.Context, user string, dryRun bool) (*EraseReport, error) {
	if user == "" {
		return nil, fmt.Errorf("erase: no user")
	}
	set, release, err := s.shapes(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	hash, err := s.blockHash(ctx, user)
	if err != nil {
		return nil, err
	}
	var rep *EraseReport
	err = s.db.d.Shared(ctx, func(tx Tx) error {
		rep = &EraseReport{Deleted: map[string]int{}, Removed: map[string][]string{}, Reauthored: map[string]int{}, Kept: map[string][]string{}}
		// Twice at most: the first push locks the user's cursor (or Stamp
		// does, when it wrote nothing); the rows read again under that
		// lock include those a push of theirs committed meanwhile, and no
		// push of theirs can commit any more.
		locked := false
		for round := 0; ; round++ {
			changes, removal, err := eraseChanges(tx, set, user)
			if err != nil {
				return err
			}
			if len(changes) == 0 && locked {
				break
			}
			if round == 2 {
				return fmt.Errorf("erase: %d rows of the user's are still there after writing them", len(changes))
			}
			if len(changes) > 0 {
				stamp, users, err := s.erasePush(tx, set, user, changes, removal, rep)
				if err != nil {
					return err
				}
				if !stamp.IsZero() {
					rep.Stamp, rep.Poked, locked = stamp, union(rep.Poked, users), true
				}
			}
			if !locked {
				// the user's cursor lock, which their pushes wait for
				if _, err := tx.Stamp([]string{user}); err != nil {
					return err
				}
				locked = true
			}
		}
		sharing := false
		for _, sh := range set.Shapes {
			sharing = sharing || sh.share != nil
		}
		deleted, err := tx.Forget(Forget{User: user, Hash: hash, Shapes: set.Shapes, Sharing: sharing})
		if err != nil {
			return err
		}
		for sh, n := range deleted {
			rep.Deleted[sh.Config.Key] = n
		}
		for _, m := range membershipTables(set) {
			if m.Shape != nil {
				continue // hypersync's: its memberships were removed above
			}
			scopes, err := tx.ScopesOf(m, user)
			if err != nil {
				return err
			}
			for _, sc := range scopes {
				if sc.Active {
					rep.Kept[m.QualifiedName()] = append(rep.Kept[m.QualifiedName()], sc.Scope)
				}
			}
		}
		if dryRun {
			return errDryRun
		}
		return nil
	})
	switch {
	case errors.Is(err, errDryRun):
		rep.Poked, rep.Stamp = nil, time.Time{}
		return rep, nil
	case err != nil:
		s.recheckOn(set, err)
		return nil, err
	}
	if s.OnCommit != nil && !rep.Stamp.IsZero() {
		s.OnCommit(rep.Poked, rep.Stamp)
	}
	return rep, nil
}

// erasePush writes an erase's changes as an operator's push (see
// sharedPush.operator), and adds what it did to rep.
func (s *Store) erasePush(tx Tx, set *ShapeSet, user string, changes []Change, removal map[int]string, rep *EraseReport) (time.Time, []string, error) {
	results := make([]Result, len(changes))
	rows := prepare(set, changes, results)
	p := &sharedPush{tx: tx, user: user, groups: plan(rows, false, false, results), results: results,
		maxMembers: s.maxMembers(), maxScopes: s.maxScopes(), perUserStamps: s.perUserStamps, operator: true}
	stamp, users, err := p.run()
	if err != nil {
		return time.Time{}, nil, err
	}
	for i, r := range results {
		switch {
		case r.Outcome == Rejected:
			return time.Time{}, nil, fmt.Errorf("erase: shape %q: %s", changes[i].Shape, r.Message)
		case r.Outcome != Applied:
		case removal[i] != "":
			rep.Removed[changes[i].Shape] = append(rep.Removed[changes[i].Shape], removal[i])
		default:
			rep.Reauthored[changes[i].Shape]++
		}
	}
	return stamp, users, nil
}

// union returns the users of a and b, sorted, once each.
func union(a, b []string) []string {
	set := map[string]bool{}
	for _, u := range append(append([]string{}, a...), b...) {
		set[u] = true
	}
	return keys(set)
}

// eraseChanges builds the changes of an erase's push: for each active
// membership of the user, its removal (removal[i] is its scope); for each
// row of a scope the user authored, a change of its key fields alone.
func eraseChanges(tx Tx, set *ShapeSet, user string) ([]Change, map[int]string, error) {
	var changes []Change
	removal := map[int]string{}
	now := time.Now().UTC().Truncate(time.Millisecond)
	for _, sh := range set.Shapes {
		sc := sh.share
		if sc == nil {
			continue
		}
		seen := map[string]bool{}
		if sh.IsMembership() {
			rows, err := tx.Named(sh, user, true)
			if err != nil {
				return nil, nil, err
			}
			for _, vals := range rows {
				// the key holds the scope and the member (validateSharing)
				p := append(keyFields(sh, vals), Field{sh.cols[sc.Tomb].Field, []byte("true")})
				seen[keyText(sh, vals)] = true
				removal[len(changes)] = valueText(vals[sc.Scope])
				changes = append(changes, Change{ID: fmt.Sprintf("erase-%d", len(changes)), Shape: sh.Config.Key, UpdatedAt: now, Payload: p})
			}
		}
		rows, err := tx.Named(sh, user, false)
		if err != nil {
			return nil, nil, err
		}
		for _, vals := range rows {
			if seen[keyText(sh, vals)] {
				continue // its removal writes it with the placeholder author
			}
			changes = append(changes, Change{ID: fmt.Sprintf("erase-%d", len(changes)), Shape: sh.Config.Key, UpdatedAt: now, Payload: keyFields(sh, vals)})
		}
	}
	return changes, removal, nil
}

// keyFields returns the key fields of a row Named read, as a payload.
func keyFields(sh *Shape, vals []Value) Payload {
	p := make(Payload, len(sh.Keys))
	for j := range sh.Keys {
		p[j] = Field{sh.cols[j].Field, AppendValue(nil, sh.cols[j].Kind, vals[j])}
	}
	return p
}

// keyText is the key of a row Named read, as one string.
func keyText(sh *Shape, vals []Value) string {
	var b []byte
	for j := range sh.Keys {
		b = append(AppendValue(b, sh.cols[j].Kind, vals[j]), 0)
	}
	return string(b)
}

// valueText is a value as text, for a scope.
func valueText(v Value) string {
	if v.Text == nil && !v.Null {
		return v.Time.UTC().Format(TimeLayout)
	}
	return string(v.Text)
}
