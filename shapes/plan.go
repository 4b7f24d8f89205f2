package shapes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hypersync/hypersync/internal/codes"
)

// Mask says which of a shape's columns a change carries. Changes with equal
// masks are written by one statement, and a statement is cached per mask.
type Mask struct {
	bits string // one byte per column of Shape.Columns: 1 present, 0 absent
}

// Has reports whether column i is present.
func (m Mask) Has(i int) bool { return m.bits[i] == 1 }

// covers reports whether m has every column that o has.
func (m Mask) covers(o Mask) bool {
	for i := 0; i < len(o.bits); i++ {
		if o.bits[i] == 1 && m.bits[i] != 1 {
			return false
		}
	}
	return true
}

// RowOutcome is what a driver reports of one row it was asked to write.
type RowOutcome uint8

const (
	// RowApplied: the row was inserted or updated.
	RowApplied RowOutcome = iota
	// RowStale: the user's stored row was as new or newer.
	RowStale
	// RowForeign: a row with this key belongs to another user.
	RowForeign
	// RowRefused: the database refused a value (isolated writes only).
	RowRefused
)

// Row is a change validated against its shape, ready to write.
type Row struct {
	// Index is the position of the change in the push.
	Index int
	// Vals holds the payload's value per shape column, nil where the
	// payload lacks the column.
	Vals []json.RawMessage
	// UpdatedAt is the change's client time, the last-write-wins clock.
	UpdatedAt time.Time

	// Outcome and Refusal are set by the driver that writes the row.
	Outcome RowOutcome
	Refusal string

	shape *Shape
	mask  Mask
	key   string // canonical key, equal for changes to one row
}

// Mask returns which columns the row carries.
func (r *Row) Mask() Mask { return r.mask }

// Key returns the row's canonical key: equal for changes to one row of a
// shape.
func (r *Row) Key() string { return r.key }

// Row validates one change against the shape, as a push does, and returns
// the row to write.
func (s *Shape) Row(ch Change) (*Row, error) {
	var b rowBuilder
	r := &Row{}
	if err := b.build(s, &ch, r); err != nil {
		return nil, err
	}
	return r, nil
}

// Group is a set of rows written by one statement: one shape, one set of
// present columns, at most one row per key.
type Group struct {
	Shape *Shape
	Mask  Mask
	Rows  []*Row
	// New, in a push into a shared shape: no row had these keys when the
	// push locked its rows. The driver inserts them, and fails with
	// ErrRetry if one has been inserted since, for the push to run again
	// and find it.
	New bool
}

// prepare validates every change against its shape. It returns the rows to
// write, and sets the Result of every change it rejects.
func prepare(set *ShapeSet, changes []Change, results []Result) []*Row {
	rows := make([]*Row, 0, len(changes))
	all := make([]Row, len(changes))
	var b rowBuilder
	for i := range changes {
		ch := &changes[i]
		if results[i].Outcome == Rejected {
			continue
		}
		sh := set.byKey[ch.Shape]
		if sh == nil {
			results[i] = rejected(codes.UnknownShape, "no shape is configured with shapeKey %q", ch.Shape)
			continue
		}
		r := &all[i]
		if err := b.build(sh, ch, r); err != nil {
			results[i] = rejected(codes.InvalidPayload, "%v", err)
			continue
		}
		r.Index = i
		rows = append(rows, r)
	}
	return rows
}

// rowBuilder checks payloads against their shapes and fills rows. It
// hands out the rows' value slices from larger blocks, and reuses the mask
// of the previous row when it is the same, so that a push of uniform
// changes costs few allocations.
type rowBuilder struct {
	block []json.RawMessage
	mask  []byte
	last  Mask // the previous row's mask
}

// build checks a payload against the shape's columns and fills r.
func (b *rowBuilder) build(s *Shape, ch *Change, r *Row) error {
	n := len(s.cols)
	if len(b.block) < n {
		b.block = make([]json.RawMessage, 64*n)
	}
	*r = Row{shape: s, Vals: b.block[:n:n], UpdatedAt: ch.UpdatedAt}
	b.block = b.block[n:]
	b.mask = b.mask[:0]
	for i := range s.cols {
		c := &s.cols[i]
		raw, ok := ch.Payload.Get(c.Field)
		if !ok {
			b.mask = append(b.mask, 0)
			continue // fields the payload lacks are left as they are
		}
		if err := c.checkValue(raw); err != nil {
			return err
		}
		r.Vals[i] = raw
		b.mask = append(b.mask, 1)
	}
	for i := range s.Keys {
		if r.Vals[i] == nil {
			return fmt.Errorf("payload lacks key field %q", s.Keys[i].Field)
		}
		if bytes.TrimSpace(r.Vals[i])[0] == 'n' {
			return fmt.Errorf("key field %q is null", s.Keys[i].Field)
		}
	}
	if len(s.Keys) == 1 {
		r.key = s.cols[0].keyPart(r.Vals[0]) // one key column: its text is the key
	} else {
		var key strings.Builder
		for i := range s.Keys {
			key.WriteString(s.cols[i].keyPart(r.Vals[i]))
			key.WriteByte(0)
		}
		r.key = key.String()
	}
	if string(b.mask) != b.last.bits {
		b.last = Mask{string(b.mask)}
	}
	r.mask = b.last
	return nil
}

// ExtraFields counts the payload fields of a change that no column takes.
func (s *Shape) ExtraFields(payload Payload) int {
	n := 0
	for _, f := range payload {
		if _, ok := s.byField[f.Name]; !ok {
			n++
		}
	}
	return n
}

// plan orders rows into statements. Changes to the same row are applied in
// updatedAt order, one per statement round, which keeps last-write-wins
// exact for partial payloads and avoids touching a row twice in a
// statement. With collapse, a change whose fields a strictly newer change to
// the same row all carries is marked Superseded instead of written, and a
// change with the same updatedAt as an earlier one to the same row (which
// can never win) is marked Stale. With isolate, every group holds one row.
func plan(rows []*Row, collapse, isolate bool, results []Result) []Group {
	type chainKey struct {
		shape *Shape
		key   string
	}
	// Usually every change names a different row: then there is one
	// round, and no chains to build.
	seen := make(map[chainKey]struct{}, len(rows))
	for _, r := range rows {
		seen[chainKey{r.shape, r.key}] = struct{}{}
	}
	if len(seen) == len(rows) {
		return groupRound(nil, rows, isolate)
	}
	chains := map[chainKey][]*Row{}
	var order []chainKey
	for _, r := range rows {
		k := chainKey{r.shape, r.key}
		if _, ok := chains[k]; !ok {
			order = append(order, k)
		}
		chains[k] = append(chains[k], r)
	}
	var rounds [][]*Row
	for _, k := range order {
		chain := chains[k]
		sort.SliceStable(chain, func(i, j int) bool { return chain[i].UpdatedAt.Before(chain[j].UpdatedAt) })
		if collapse {
			chain = collapseChain(chain, results)
		}
		for i, r := range chain {
			if i == len(rounds) {
				rounds = append(rounds, nil)
			}
			rounds[i] = append(rounds[i], r)
		}
	}
	var groups []Group
	for _, round := range rounds {
		groups = groupRound(groups, round, isolate)
	}
	return groups
}

// groupRound appends the groups of one round: its rows by shape and mask,
// or one group per row when isolate is set.
func groupRound(groups []Group, round []*Row, isolate bool) []Group {
	if isolate {
		for _, r := range round {
			groups = append(groups, Group{Shape: r.shape, Mask: r.mask, Rows: []*Row{r}})
		}
		return groups
	}
	first := len(groups)
	for _, r := range round {
		found := false
		for g := first; g < len(groups); g++ {
			if groups[g].Shape == r.shape && groups[g].Mask == r.mask {
				groups[g].Rows = append(groups[g].Rows, r)
				found = true
				break
			}
		}
		if !found {
			var rows []*Row
			if len(groups) == first {
				rows = make([]*Row, 0, len(round)) // most rounds are one group
			}
			groups = append(groups, Group{Shape: r.shape, Mask: r.mask, Rows: append(rows, r)})
		}
	}
	return groups
}

func collapseChain(chain []*Row, results []Result) []*Row {
	out := chain[:0:0]
	for _, r := range chain {
		if n := len(out); n > 0 {
			prev := out[n-1]
			if !r.UpdatedAt.After(prev.UpdatedAt) {
				results[r.Index] = Result{Outcome: Stale}
				continue
			}
			for n > 0 && r.mask.covers(out[n-1].mask) {
				results[out[n-1].Index] = Result{Outcome: Superseded}
				out = out[:n-1]
				n--
			}
		}
		out = append(out, r)
	}
	return out
}
