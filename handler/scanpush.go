package handler

import (
	"strings"

	"github.com/hypersync/hypersync/internal/jsonscan"
	"github.com/hypersync/hypersync/shapes"
)

// scanPush decodes a push body in one pass, without reflection, into the
// same changes that json.Unmarshal into the typed form would give. It
// answers ok=false for anything it does not decode exactly as
// encoding/json does: invalid JSON, a value of the wrong type, a name that
// matches a field only case-insensitively, an escaped name, a repeated
// field or deep nesting. The caller then takes the general path, which
// produces the right error or rejection. The body must be valid UTF-8.
//
// The changes' strings and payload values share body's memory: body must
// never be modified afterwards.
func scanPush(body []byte) (items []*typedChange, ok bool) {
	// The scanner cuts strings from body without copying them, which is
	// sound because nothing writes to body once it is read (see the doc
	// comment and jsonscan.New).
	s := pushScanner{Scanner: jsonscan.New(body)}
	s.SkipSpace()
	found := false
	ok = s.Object(func() bool {
		name, escaped, ok := s.Name()
		switch {
		case !ok || escaped:
			return false
		case name == "changes" && !found:
			found = true
			items, ok = s.changes()
			return ok
		case strings.EqualFold(name, "changes"):
			return false // a repeat, or a case-insensitive match
		}
		return s.Skip(envelopeDepth)
	})
	if !ok || !s.End() || !found || items == nil {
		return nil, false
	}
	return items, true
}

// changeField is a field of a change.
type changeField int

// The fields of a change. The string fields come first: they index
// typedChange.scanned.
const (
	fieldChangeID changeField = iota
	fieldShapeKey
	fieldUserID
	fieldUpdatedAt
	fieldPayload
	numChangeFields

	numStringFields = fieldPayload // the fields before payload are strings

	noField changeField = -1 // a member that is none of the fields
)

// changeFieldNames are the names of the fields as the client sends them.
var changeFieldNames = [numChangeFields]string{
	fieldChangeID:  "changeId",
	fieldShapeKey:  "shapeKey",
	fieldUserID:    "userId",
	fieldUpdatedAt: "updatedAt",
	fieldPayload:   "payload",
}

// stringField returns where tc points to the value of the string field f.
func (tc *typedChange) stringField(f changeField) **string {
	switch f {
	case fieldChangeID:
		return &tc.ChangeID
	case fieldShapeKey:
		return &tc.ShapeKey
	case fieldUserID:
		return &tc.UserID
	case fieldUpdatedAt:
		return &tc.UpdatedAt
	}
	panic("not a string field of a change")
}

// The depths scanPush passes to jsonscan for the values it skips, by
// where they are: members of the body, of a change, of a payload.
const (
	envelopeDepth = iota
	changeDepth
	payloadDepth
)

// Changes are allocated in chunks and payload fields in blocks, not one
// by one.
const (
	changeChunk = 64
	fieldBlock  = 8 * changeChunk // a block has room for 8 fields a change
)

// pushScanner is the scanner of one push body.
type pushScanner struct {
	jsonscan.Scanner
	fields []shapes.Field // where payloads are cut from
}

// changes scans the changes array.
func (s *pushScanner) changes() ([]*typedChange, bool) {
	var chunk []typedChange
	s.fields = make([]shapes.Field, 0, fieldBlock)
	items := []*typedChange{}
	ok := s.Array(func() bool {
		if s.Null() {
			items = append(items, nil)
			return true
		}
		if len(chunk) == 0 {
			chunk = make([]typedChange, changeChunk)
		}
		tc := &chunk[0]
		chunk = chunk[1:]
		items = append(items, tc)
		return s.change(tc)
	})
	return items, ok
}

// change scans one change object into tc.
func (s *pushScanner) change(tc *typedChange) bool {
	var seen [numChangeFields]bool
	return s.Object(func() bool {
		name, escaped, ok := s.Name()
		if !ok || escaped {
			return false
		}
		field := noField
		for f := range numChangeFields {
			if name == changeFieldNames[f] {
				field = f
				break
			}
			if strings.EqualFold(name, changeFieldNames[f]) {
				return false // encoding/json would take it as f
			}
		}
		switch {
		case field == noField:
			return s.Skip(changeDepth)
		case seen[field]:
			return false // a repeat: encoding/json would keep the last
		}
		seen[field] = true
		if field == fieldPayload {
			return s.payload(tc)
		}
		if s.Null() {
			return true
		}
		v, ok := s.StringValue()
		if !ok {
			return false
		}
		tc.scanned[field] = v
		*tc.stringField(field) = &tc.scanned[field]
		return true
	})
}

// payload scans a change's payload: null or an object whose values are
// kept as raw JSON.
func (s *pushScanner) payload(tc *typedChange) bool {
	if s.Null() {
		return true
	}
	// The payload is the fields appended to s.fields from here: when
	// they do not fit, the ones so far move to a larger block.
	from := len(s.fields)
	ok := s.Object(func() bool {
		name, _, ok := s.Name() // escaped names are decoded, as encoding/json does
		if !ok {
			return false
		}
		v, ok := s.Value(payloadDepth)
		if !ok {
			return false
		}
		if len(s.fields) == cap(s.fields) {
			grown := make([]shapes.Field, 0, max(2*(len(s.fields)-from), fieldBlock))
			s.fields = append(grown, s.fields[from:]...)
			from = 0
		}
		s.fields = append(s.fields, shapes.Field{Name: name, Value: v})
		return true
	})
	tc.Payload = s.fields[from:len(s.fields):len(s.fields)]
	return ok
}
