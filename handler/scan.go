package handler

import (
	"encoding/json"
	"strings"
	"unsafe"

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
	// Strings without escapes are cut from the body itself, viewed as a
	// string: no copy, no allocation per string. This is sound because
	// nothing writes to body once it is read (see the doc comment).
	s := scanner{b: body, text: unsafe.String(unsafe.SliceData(body), len(body))}
	s.ws()
	found := false
	ok = s.eat('{') && s.list('}', func() bool {
		name, ok := s.name()
		switch {
		case !ok:
			return false
		case name == "changes" && !found:
			found = true
			items, ok = s.changes()
			return ok
		case strings.EqualFold(name, "changes"):
			return false // a repeat, or a case-insensitive match
		}
		return s.skip(0)
	})
	if !ok {
		return nil, false
	}
	s.ws()
	if s.i != len(s.b) || !found || items == nil {
		return nil, false
	}
	return items, true
}

// maxScanDepth bounds the nesting scanPush follows; deeper bodies take the
// general path, which has its own limit.
const maxScanDepth = 200

type scanner struct {
	b      []byte
	text   string // b as a string
	i      int
	fields []shapes.Field // where payloads are cut from
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// list scans the members of an object or the elements of an array, after
// the opening bracket and up to the closing one, calling each for every
// member or element.
func (s *scanner) list(closing byte, each func() bool) bool {
	s.ws()
	if s.eat(closing) {
		return true
	}
	for {
		s.ws()
		if !each() {
			return false
		}
		s.ws()
		if s.eat(closing) {
			return true
		}
		if !s.eat(',') {
			return false
		}
	}
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// str scans a JSON string and returns its span, quotes included, and
// whether it holds escapes.
func (s *scanner) str() (start, end int, escaped, ok bool) {
	start = s.i
	if !s.eat('"') {
		return 0, 0, false, false
	}
	for s.i < len(s.b) {
		c := s.b[s.i]
		if plain[c] {
			s.i++
			continue
		}
		switch {
		case c == '"':
			s.i++
			return start, s.i, escaped, true
		case c < 0x20:
			return 0, 0, false, false
		case c == '\\':
			escaped = true
			if s.i+1 >= len(s.b) {
				return 0, 0, false, false
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.b) {
					return 0, 0, false, false
				}
				for _, h := range s.b[s.i+2 : s.i+6] {
					if !isHex(h) {
						return 0, 0, false, false
					}
				}
				s.i += 6
			default:
				return 0, 0, false, false
			}
		}
	}
	return 0, 0, false, false
}

// plain marks the bytes that need no attention inside a string.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// stringValue scans a JSON string and decodes it.
func (s *scanner) stringValue() (string, bool) {
	start, end, escaped, ok := s.str()
	if !ok {
		return "", false
	}
	return s.decoded(start, end, escaped)
}

// decoded returns the text of the string scanned at b[start:end].
func (s *scanner) decoded(start, end int, escaped bool) (string, bool) {
	if !escaped {
		return s.text[start+1 : end-1], true
	}
	var v string
	if json.Unmarshal(s.b[start:end], &v) != nil {
		return "", false
	}
	return v, true
}

// name scans an object member's name and the colon after it. Escaped
// names are refused: the general path handles them.
func (s *scanner) name() (string, bool) {
	start, end, escaped, ok := s.str()
	if !ok || escaped {
		return "", false
	}
	return s.text[start+1 : end-1], s.colon()
}

// colon scans the colon between an object member's name and its value.
func (s *scanner) colon() bool {
	s.ws()
	ok := s.eat(':')
	s.ws()
	return ok
}

func (s *scanner) literal(word string) bool {
	if len(s.b)-s.i >= len(word) && string(s.b[s.i:s.i+len(word)]) == word {
		s.i += len(word)
		return true
	}
	return false
}

// skip scans any JSON value.
func (s *scanner) skip(depth int) bool {
	switch c := s.peek(); {
	case c == '"':
		_, _, _, ok := s.str()
		return ok
	case c == '{', c == '[':
		if depth >= maxScanDepth {
			return false
		}
		s.i++
		if c == '[' {
			return s.list(']', func() bool { return s.skip(depth + 1) })
		}
		return s.list('}', func() bool {
			_, _, _, ok := s.str()
			return ok && s.colon() && s.skip(depth+1)
		})
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return s.number()
	}
	return false
}

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() bool {
	s.eat('-')
	switch c := s.peek(); {
	case c == '0':
		s.i++
	case '1' <= c && c <= '9':
		s.digits()
	default:
		return false
	}
	if s.eat('.') && !s.digits() {
		return false
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

// changes scans the changes array.
func (s *scanner) changes() ([]*typedChange, bool) {
	// Changes are allocated in chunks, not one by one.
	var chunk []typedChange
	s.fields = make([]shapes.Field, 0, 8*64)
	items := []*typedChange{}
	ok := s.eat('[') && s.list(']', func() bool {
		if s.literal("null") {
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
func (s *scanner) change(tc *typedChange) bool {
	var seen uint8
	return s.eat('{') && s.list('}', func() bool {
		name, ok := s.name()
		if !ok {
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
			return s.skip(1)
		case seen&(1<<field) != 0:
			return false
		}
		seen |= 1 << field
		if field == 4 {
			return s.payload(tc)
		}
		if s.literal("null") {
			return true
		}
		v, ok := s.stringValue()
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
func (s *scanner) payload(tc *typedChange) bool {
	if s.literal("null") {
		return true
	}
	// The payload is the fields appended to s.fields from here: when
	// they do not fit, the ones so far move to a larger block.
	from := len(s.fields)
	ok := s.eat('{') && s.list('}', func() bool {
		start, end, escaped, ok := s.str()
		if !ok {
			return false
		}
		name, ok := s.decoded(start, end, escaped)
		if !ok || !s.colon() {
			return false
		}
		v := s.i
		if !s.skip(2) {
			return false
		}
		if len(s.fields) == cap(s.fields) {
			grown := make([]shapes.Field, 0, max(2*(len(s.fields)-from), 8*64))
			s.fields = append(grown, s.fields[from:]...)
			from = 0
		}
		s.fields = append(s.fields, shapes.Field{Name: name, Value: s.b[v:s.i:s.i]})
		return true
	})
	tc.Payload = s.fields[from:len(s.fields):len(s.fields)]
	return ok
}
