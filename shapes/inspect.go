package shapes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// What a user receives, and why (caddy hypersync inspect). Both answers
// come from the pull itself, a pull from the epoch, so that they can never
// say what a pull would not do; the reasons come from the rows and
// memberships as a push would read them, under its locks, in a
// transaction rolled back.

// Inspection is what inspect prints of a user without --key.
type Inspection struct {
	// Cursor is the user's sync stamp; zero when they have none.
	Cursor time.Time
	// Shapes counts, per shape in configuration order, the changes a pull
	// from the epoch sends the user, and the move-out tombstones among
	// them.
	Shapes []ShapeCount
	// Scopes are the user's memberships, active and removed, in every
	// membership table.
	Scopes []MemberScope
	// Rejections is the user's record of refused changes, newest first.
	Rejections []Rejection
}

// ShapeCount is what a pull from the epoch sends of one shape.
type ShapeCount struct {
	Shape            string
	Rows, Tombstones int
}

// MemberScope is a scope of the user's in the membership table Table.
type MemberScope struct {
	Table string
	ScopeOf
}

// The reasons Explain gives; a contract of the inspect command's --json.
const (
	ReasonOwner      = "owner"       // the user's own row (a per-user shape, or a private row)
	ReasonMember     = "member"      // a row of a scope the user is a member of
	ReasonRemoved    = "removed"     // a row of a scope the user left: they receive its move-out tombstone
	ReasonNotMember  = "not-member"  // a row of a scope the user is not a member of
	ReasonOtherOwner = "other-owner" // another user's private row
	ReasonNoRow      = "no-row"      // no row has the key
)

// Explanation says whether the user receives one row, and why.
type Explanation struct {
	Receives bool
	Reason   string
	// Tombstone: the pull sends the row's move-out tombstone.
	Tombstone bool
	// Scope is the row's scope, for a row of a scope; Since and Until
	// the user's membership of it (zero where not known, or not ended).
	Scope        string
	Since, Until time.Time
}

// Inspect reads what the user receives: per shape, the rows of a pull
// from the epoch; their scopes; their cursor and their record.
func (s *Store) Inspect(ctx context.Context, user string) (*Inspection, error) {
	set, release, err := s.shapes(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	in := &Inspection{}
	counts := map[*Shape]*ShapeCount{}
	for _, sh := range set.Shapes {
		in.Shapes = append(in.Shapes, ShapeCount{Shape: sh.Config.Key})
	}
	for i, sh := range set.Shapes {
		counts[sh] = &in.Shapes[i]
	}
	if _, err := s.Pull(ctx, user, time.Unix(0, 0).UTC(), 0, func(r PulledRow) error {
		if r.Restart {
			for _, c := range counts {
				c.Rows, c.Tombstones = 0, 0
			}
			return nil
		}
		c := counts[r.Shape]
		c.Rows++
		if r.Tombstone || r.Payload != nil {
			c.Tombstones++
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if in.Cursor, err = s.Cursor(ctx, user); err != nil {
		return nil, err
	}
	if in.Rejections, err = s.Rejections(ctx, user); err != nil {
		return nil, err
	}
	err = s.readTx(ctx, func(tx Tx) error {
		for _, m := range membershipTables(set) {
			scopes, err := tx.ScopesOf(m, user)
			if err != nil {
				return err
			}
			for _, sc := range scopes {
				in.Scopes = append(in.Scopes, MemberScope{Table: m.QualifiedName(), ScopeOf: sc})
			}
		}
		return nil
	})
	return in, err
}

// Explain says whether user receives the row of shape whose key fields
// key holds, and why.
func (s *Store) Explain(ctx context.Context, user, shape string, key Payload) (*Explanation, error) {
	set, release, err := s.shapes(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	target, err := keyRow(set, shape, key)
	if err != nil {
		return nil, err
	}
	sh := target.shape
	ex := &Explanation{}
	_, err = s.Pull(ctx, user, time.Unix(0, 0).UTC(), 0, func(r PulledRow) error {
		if r.Restart {
			ex.Receives, ex.Tombstone = false, false
			return nil
		}
		if r.Shape != sh {
			return nil
		}
		var p Payload
		if r.Payload != nil {
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(r.Payload, &fields); err != nil {
				return err
			}
			p = PayloadOf(fields)
		} else {
			p = keyFields(sh, r.Values)
		}
		got, err := keyRow(set, shape, p)
		if err != nil || got.key != target.key {
			return nil
		}
		if r.Tombstone || r.Payload != nil {
			ex.Tombstone = true
		} else {
			ex.Receives = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.readTx(ctx, func(tx Tx) error {
		stored, err := tx.Stored(sh, []*Row{target})
		if err != nil {
			return err
		}
		st := stored[0]
		switch {
		case st == nil:
			ex.Reason = ReasonNoRow
			return nil
		case st.ScopeNull && st.User == user:
			ex.Reason = ReasonOwner
			return nil
		case st.ScopeNull:
			ex.Reason = ReasonOtherOwner
			return nil
		}
		ex.Scope, ex.Reason = st.Scope, ReasonNotMember
		scopes, err := tx.ScopesOf(sh.share.Members, user)
		if err != nil {
			return err
		}
		for _, sc := range scopes {
			if sc.Scope != st.Scope {
				continue
			}
			if sc.Active {
				ex.Reason, ex.Since, ex.Until = ReasonMember, sc.Since, time.Time{}
				break
			}
			ex.Reason, ex.Since, ex.Until = ReasonRemoved, sc.Since, sc.Until
		}
		if ex.Reason == ReasonNotMember && ex.Tombstone {
			// the row left a scope of theirs, or they left its scope
			// before hypersync recorded removals
			ex.Reason = ReasonRemoved
		}
		return nil
	})
	return ex, err
}

// keyRow checks key as the key fields of a row of shape, and returns the
// row a change carrying them would write.
func keyRow(set *ShapeSet, shape string, key Payload) (*Row, error) {
	sh := set.byKey[shape]
	if sh == nil {
		return nil, fmt.Errorf("no shape is configured with the key %q", shape)
	}
	var p Payload
	for _, c := range sh.Keys {
		v, ok := key.Get(c.Field)
		if !ok {
			return nil, fmt.Errorf("shape %q: the key has no field %q", shape, c.Field)
		}
		p = append(p, Field{c.Field, v})
	}
	changes, results := []Change{{ID: "key", Shape: shape, Payload: p}}, make([]Result, 1)
	rows := prepare(set, changes, results)
	if results[0].Outcome == Rejected {
		return nil, fmt.Errorf("shape %q: %s", shape, results[0].Message)
	}
	return rows[0], nil
}

// KeyFields returns the names of the key fields of shape, from the
// configuration; nil for a shape that is not configured.
func (s *Store) KeyFields(shape string) []string {
	for _, c := range s.configs {
		if c.Key == shape {
			return c.KeyFields
		}
	}
	return nil
}

// readTx runs fn in a transaction that takes the locks a push would, and
// rolls it back.
func (s *Store) readTx(ctx context.Context, fn func(Tx) error) error {
	err := s.db.d.Shared(ctx, func(tx Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return errDryRun
	})
	if errors.Is(err, errDryRun) {
		return nil
	}
	return err
}

// membershipTables returns every membership table of the configuration,
// by name.
func membershipTables(set *ShapeSet) []*Membership {
	var out []*Membership
	seen := map[*Membership]bool{}
	for _, sh := range set.Shapes {
		if m := sh.Members(); m != nil && !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].QualifiedName() < out[j].QualifiedName() })
	return out
}

// KeyArg reads the key of a row of shape as inspect takes it: a JSON
// object of the key fields, or the value of the one key field (as text
// for a text column, else as JSON when it is JSON).
func (s *Store) KeyArg(ctx context.Context, shape, k string) (Payload, error) {
	set, release, err := s.shapes(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	sh := set.byKey[shape]
	if sh == nil {
		return nil, fmt.Errorf("no shape is configured with the key %q", shape)
	}
	if t := strings.TrimSpace(k); strings.HasPrefix(t, "{") {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal([]byte(t), &fields); err != nil {
			return nil, fmt.Errorf("the key is not a JSON object: %v", err)
		}
		return PayloadOf(fields), nil
	}
	if len(sh.Keys) != 1 {
		var names []string
		for _, c := range sh.Keys {
			names = append(names, c.Field)
		}
		return nil, fmt.Errorf("shape %q has %d key fields (%s): give the key as a JSON object of them", shape, len(sh.Keys), strings.Join(names, ", "))
	}
	raw := json.RawMessage(k)
	if c := sh.Keys[0]; c.Kind == KindText || c.Kind == KindTimestamp || !json.Valid(raw) {
		raw = AppendJSONString(nil, k)
	}
	return Payload{{sh.Keys[0].Field, raw}}, nil
}
