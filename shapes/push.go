package shapes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Change is one client change, already decoded and checked for its
// envelope (changeId, userId, updatedAt) by the caller.
type Change struct {
	ID        string
	Shape     string
	UpdatedAt time.Time
	// Payload is nil when the change has none.
	Payload Payload
}

// Field is one payload field: its name and its value as raw JSON.
type Field struct {
	Name  string
	Value json.RawMessage
}

// Payload is a change's fields in the order the client sent them. A name
// that repeats counts with its last value, as in encoding/json. A slice
// costs less than a map for the few fields a payload has.
type Payload []Field

// Get returns the value of the field name: the last one when it repeats.
func (p Payload) Get(name string) (json.RawMessage, bool) {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i].Name == name {
			return p[i].Value, true
		}
	}
	return nil, false
}

// PayloadOf converts a decoded JSON object into a Payload. It returns nil
// for a nil map.
func PayloadOf(m map[string]json.RawMessage) Payload {
	if m == nil {
		return nil
	}
	p := make(Payload, 0, len(m))
	for name, v := range m {
		p = append(p, Field{name, v})
	}
	return p
}

// Outcome is what became of one change.
type Outcome uint8

const (
	// Applied: the change was written.
	Applied Outcome = iota
	// Stale: the stored row was as new or newer, so last-write-wins kept it.
	Stale
	// Superseded: a newer change to the same row in the same push covered
	// every field it carried, so it was not written on its own.
	Superseded
	// Rejected: the change was not processed; Code says why.
	Rejected
)

func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Stale:
		return "stale"
	case Superseded:
		return "superseded"
	}
	return "rejected"
}

// Accepted reports whether the client may drop the change from its queue.
func (o Outcome) Accepted() bool { return o != Rejected }

// Rejection codes. They are part of the wire contract: keep them stable.
const (
	CodeUnknownShape   = "unknown-shape"
	CodeInvalidPayload = "invalid-payload"
	CodeUserMismatch   = "user-mismatch"
)

// Result is the outcome of one change.
type Result struct {
	Outcome Outcome
	Code    string // set when Rejected
	Message string // set when Rejected
}

func rejected(code, format string, args ...any) Result {
	return Result{Outcome: Rejected, Code: code, Message: fmt.Sprintf(format, args...)}
}

// row is a change validated against its shape, ready to write.
type row struct {
	idx       int // index of the change in the push
	shape     *Shape
	vals      []json.RawMessage // per shape column; nil when the payload lacks it
	mask      string            // which columns are present: one byte per column
	key       string            // canonical key, equal for changes to one row
	updatedAt time.Time
}

// prepare validates every change against its shape. It returns the rows to
// write, and sets the Result of every change it rejects.
func prepare(shapes map[string]*Shape, changes []Change, results []Result) []*row {
	rows := make([]*row, 0, len(changes))
	all := make([]row, len(changes))
	var b rowBuilder
	for i := range changes {
		ch := &changes[i]
		if results[i].Outcome == Rejected {
			continue
		}
		sh := shapes[ch.Shape]
		if sh == nil {
			results[i] = rejected(CodeUnknownShape, "no shape is configured with shapeKey %q", ch.Shape)
			continue
		}
		r := &all[i]
		if err := b.build(sh, ch, r); err != nil {
			results[i] = rejected(CodeInvalidPayload, "%v", err)
			continue
		}
		r.idx = i
		rows = append(rows, r)
	}
	return rows
}

// rowBuilder checks payloads against their shapes and fills rows. It
// hands out the rows' value slices from larger blocks, and reuses the mask
// string of the previous row when it is the same, so that a push of
// uniform changes costs few allocations.
type rowBuilder struct {
	block []json.RawMessage
	mask  []byte
	last  string // the previous row's mask
}

// build checks a payload against the shape's columns and fills r.
func (b *rowBuilder) build(s *Shape, ch *Change, r *row) error {
	n := len(s.cols)
	if len(b.block) < n {
		b.block = make([]json.RawMessage, 64*n)
	}
	*r = row{shape: s, vals: b.block[:n:n], updatedAt: ch.UpdatedAt}
	b.block = b.block[n:]
	b.mask = b.mask[:0]
	for i := range s.cols {
		c := &s.cols[i]
		raw, ok := ch.Payload.Get(c.Field)
		if !ok {
			b.mask = append(b.mask, '0')
			continue // fields the payload lacks are left as they are
		}
		if err := c.checkValue(raw); err != nil {
			return err
		}
		r.vals[i] = raw
		b.mask = append(b.mask, '1')
	}
	for i := range s.Keys {
		if r.vals[i] == nil {
			return fmt.Errorf("payload lacks key field %q", s.Keys[i].Field)
		}
		if bytes.TrimSpace(r.vals[i])[0] == 'n' {
			return fmt.Errorf("key field %q is null", s.Keys[i].Field)
		}
	}
	if len(s.Keys) == 1 {
		r.key = s.cols[0].keyPart(r.vals[0]) // one key column: its text is the key
	} else {
		var key strings.Builder
		for i := range s.Keys {
			key.WriteString(s.cols[i].keyPart(r.vals[i]))
			key.WriteByte(0)
		}
		r.key = key.String()
	}
	if string(b.mask) != b.last {
		b.last = string(b.mask)
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

// group is a set of rows written by one statement: one shape, one set of
// present columns, at most one row per key.
type group struct {
	shape *Shape
	mask  string
	rows  []*row
}

// plan orders rows into statements. Changes to the same row are applied in
// updatedAt order, one per statement round, which keeps last-write-wins
// exact for partial payloads and avoids touching a row twice in a
// statement. With collapse, a change whose fields a strictly newer change to
// the same row all carries is marked Superseded instead of written, and a
// change with the same updatedAt as an earlier one to the same row (which
// can never win) is marked Stale.
func plan(rows []*row, collapse bool, results []Result) []group {
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
		return groupRound(nil, rows)
	}
	chains := map[chainKey][]*row{}
	var order []chainKey
	for _, r := range rows {
		k := chainKey{r.shape, r.key}
		if _, ok := chains[k]; !ok {
			order = append(order, k)
		}
		chains[k] = append(chains[k], r)
	}
	var rounds [][]*row
	for _, k := range order {
		chain := chains[k]
		sort.SliceStable(chain, func(i, j int) bool { return chain[i].updatedAt.Before(chain[j].updatedAt) })
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
	var groups []group
	for _, round := range rounds {
		groups = groupRound(groups, round)
	}
	return groups
}

// groupRound appends the groups of one round: its rows by shape and mask.
func groupRound(groups []group, round []*row) []group {
	first := len(groups)
	for _, r := range round {
		found := false
		for g := first; g < len(groups); g++ {
			if groups[g].shape == r.shape && groups[g].mask == r.mask {
				groups[g].rows = append(groups[g].rows, r)
				found = true
				break
			}
		}
		if !found {
			var rows []*row
			if len(groups) == first {
				rows = make([]*row, 0, len(round)) // most rounds are one group
			}
			groups = append(groups, group{shape: r.shape, mask: r.mask, rows: append(rows, r)})
		}
	}
	return groups
}

func collapseChain(chain []*row, results []Result) []*row {
	out := chain[:0:0]
	for _, r := range chain {
		if n := len(out); n > 0 {
			prev := out[n-1]
			if !r.updatedAt.After(prev.updatedAt) {
				results[r.idx] = Result{Outcome: Stale}
				continue
			}
			for n > 0 && covers(r.mask, out[n-1].mask) {
				results[out[n-1].idx] = Result{Outcome: Superseded}
				out = out[:n-1]
				n--
			}
		}
		out = append(out, r)
	}
	return out
}

// covers reports whether mask a has every column that mask b has.
func covers(a, b string) bool {
	for i := 0; i < len(b); i++ {
		if b[i] == '1' && a[i] != '1' {
			return false
		}
	}
	return true
}
