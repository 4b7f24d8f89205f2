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
		return s.Skip(0)
	})
	if !ok || !s.End() || !found || items == nil {
		return nil, false
	}
	return items, true
}

// pushScanner is the scanner of one push body.
type pushScanner struct {
	jsonscan.Scanner
	fields []shapes.Field // where payloads are cut from
}

// changes scans the changes array.
func (s *pushScanner) changes() ([]*typedChange, bool) {
	// Changes are allocated in chunks, not one by one.
	var chunk []typedChange
	s.fields = make([]shapes.Field, 0, 8*64)
	items := []*typedChange{}
	ok := s.Array(func() bool {
		if s.Null() {
			items = append(items, nil)
			return true
		}
		if len(chunk) == 0 {
			chunk = make([]typedChange, 64)
		}
		tc := &chunk[0]
		chunk = chunk[1:]
		items = append(items, tc)
		return s.change(tc)
	})
	return items, ok
}

// The fields of a change, as bits, to notice repeats.
var changeFields = [...]string{"changeId", "shapeKey", "userId", "updatedAt", "payload"}

// change scans one change object into tc.
func (s *pushScanner) change(tc *typedChange) bool {
	var seen uint8
	return s.Object(func() bool {
		name, escaped, ok := s.Name()
		if !ok || escaped {
			return false
		}
		field := -1
		for f, fn := range changeFields {
			if name == fn {
				field = f
				break
			}
			if strings.EqualFold(name, fn) {
				return false
			}
		}
		switch {
		case field < 0:
			return s.Skip(1)
		case seen&(1<<field) != 0:
			return false
		}
		seen |= 1 << field
		if field == 4 {
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
		p := &tc.scanned[field]
		switch field {
		case 0:
			tc.ChangeID = p
		case 1:
			tc.ShapeKey = p
		case 2:
			tc.UserID = p
		case 3:
			tc.UpdatedAt = p
		}
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
		v, ok := s.Value(2)
		if !ok {
			return false
		}
		if len(s.fields) == cap(s.fields) {
			grown := make([]shapes.Field, 0, max(2*(len(s.fields)-from), 8*64))
			s.fields = append(grown, s.fields[from:]...)
			from = 0
		}
		s.fields = append(s.fields, shapes.Field{Name: name, Value: v})
		return true
	})
	tc.Payload = s.fields[from:len(s.fields):len(s.fields)]
	return ok
}
