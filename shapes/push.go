package shapes

import (
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
	Payload   map[string]json.RawMessage
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
		r, err := sh.rowOf(ch)
		if err != nil {
			results[i] = rejected(CodeInvalidPayload, "%v", err)
			continue
		}
		r.idx = i
		rows = append(rows, r)
	}
	return rows
}

// rowOf checks a payload against the shape's columns.
func (s *Shape) rowOf(ch *Change) (*row, error) {
	r := &row{shape: s, vals: make([]json.RawMessage, len(s.cols)), updatedAt: ch.UpdatedAt}
	mask := make([]byte, len(s.cols))
	for i := range mask {
		mask[i] = '0'
	}
	for field, raw := range ch.Payload {
		i, ok := s.byField[field]
		if !ok {
			continue // not synced: ignored, as the reference server ignores it
		}
		if err := s.cols[i].checkValue(raw); err != nil {
			return nil, err
		}
		r.vals[i] = raw
		mask[i] = '1'
	}
	var key strings.Builder
	for i := range s.Keys {
		if r.vals[i] == nil {
			return nil, fmt.Errorf("payload lacks key field %q", s.Keys[i].Field)
		}
		if r.vals[i][0] == 'n' {
			return nil, fmt.Errorf("key field %q is null", s.Keys[i].Field)
		}
		key.WriteString(s.cols[i].keyPart(r.vals[i]))
		key.WriteByte(0)
	}
	r.key = key.String()
	r.mask = string(mask)
	return r, nil
}

// ExtraFields counts the payload fields of a change that no column takes.
func (s *Shape) ExtraFields(payload map[string]json.RawMessage) int {
	n := 0
	for f := range payload {
		if _, ok := s.byField[f]; !ok {
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
				groups = append(groups, group{shape: r.shape, mask: r.mask, rows: []*row{r}})
			}
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
