package shapes

import (
	"encoding/json"
	"fmt"
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

	// NumOutcomes is the number of outcomes, for arrays indexed by one.
	NumOutcomes = int(Rejected) + 1
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

// Result is the outcome of one change.
type Result struct {
	Outcome Outcome
	Code    string // set when Rejected: one of package codes
	Message string // set when Rejected
}

func rejected(code, format string, args ...any) Result {
	return Result{Outcome: Rejected, Code: code, Message: fmt.Sprintf(format, args...)}
}

// TimeLayout is how every timestamp leaves hypersync, in UTC: the form of
// the JavaScript client's toISOString, with milliseconds.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"
