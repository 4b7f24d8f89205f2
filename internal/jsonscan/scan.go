// Package jsonscan scans JSON text in one pass, without reflection and
// without a schema. It is for decoders of one fixed shape that walk the
// input themselves and must be fast: the caller takes the members it
// knows with Name, StringValue and Value, and passes over the rest with
// Skip. Strings without escapes are cut from the input, not copied.
//
// The contract is that the scanner never gets an answer different from
// encoding/json's: whatever it accepts, encoding/json accepts, and every
// string it returns is the one encoding/json decodes. It does not try to
// handle everything encoding/json does. It refuses, by answering false,
// invalid JSON and values nested deeper than MaxDepth, and it reports
// which names held escapes, so that a caller may refuse those too. It
// gives no error messages. A caller that gets false should drop what it
// scanned and decode the input on a general path, typically encoding/json,
// which gives the right error or the right result; after false the
// scanner's position means nothing.
//
// What encoding/json does on top of the JSON grammar is the caller's to
// mimic or refuse: matching names case-insensitively, taking the last of
// repeated names, and the rest of its rules for types.
//
// The input should be valid UTF-8: strings without escapes are returned as
// they are, where encoding/json would replace invalid bytes with U+FFFD.
package jsonscan

import (
	"encoding/json"
	"unsafe"
)

// MaxDepth bounds the nesting Skip and Value follow. Deeper values are
// refused, to bound the recursion; the general path has its own limit.
const MaxDepth = 200

// Scanner reads one JSON input from start to end. Its methods expect it
// at the first byte of what they scan: the caller skips whitespace with
// SkipSpace, but Object and Array skip it before each member or element,
// and Name after the colon.
type Scanner struct {
	b    []byte
	text string // b viewed as a string, for cutting strings from it
	i    int    // the next byte to read
}

// New returns a scanner at the start of b.
//
// The strings the scanner returns share b's memory: b must never be
// modified afterwards, for as long as any of them is in use.
func New(b []byte) Scanner {
	// Strings without escapes are cut from b itself, viewed as a string:
	// no copy and no allocation per string. This is sound only because
	// nothing writes to b once it is scanned, as New's contract requires;
	// a string whose bytes change breaks the language's guarantees.
	return Scanner{b: b, text: unsafe.String(unsafe.SliceData(b), len(b))}
}

// SkipSpace passes over JSON whitespace.
func (s *Scanner) SkipSpace() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// Eat passes over c when it is the next byte, and reports whether it was.
func (s *Scanner) Eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// Peek returns the next byte without passing over it, or 0 at the end: a
// caller can tell the kind of the value that follows.
func (s *Scanner) Peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// End passes over trailing whitespace and reports whether the input ends
// there.
func (s *Scanner) End() bool {
	s.SkipSpace()
	return s.i == len(s.b)
}

// Null passes over null when it comes next, and reports whether it did.
func (s *Scanner) Null() bool { return s.literal("null") }

// Object scans an object. It calls member at each member's name, with the
// whitespace before it skipped; member must scan the name, typically with
// Name, and the value, and report whether they were fine. Object and Array
// do not count depth: a caller that recurses bounds it itself.
func (s *Scanner) Object(member func() bool) bool {
	return s.list('{', '}', member)
}

// Array scans an array. It calls elem at each element, with the
// whitespace before it skipped; elem must scan the element and report
// whether it was fine.
func (s *Scanner) Array(elem func() bool) bool {
	return s.list('[', ']', elem)
}

// list scans the members of an object or the elements of an array, from
// the opening bracket to the closing one, calling each for every member or
// element. It eats the opening bracket itself so that Object and Array,
// which callers use in their hot loops, stay cheap enough to inline.
func (s *Scanner) list(opening, closing byte, each func() bool) bool {
	if !s.Eat(opening) {
		return false
	}
	s.SkipSpace()
	if s.Eat(closing) {
		return true
	}
	for {
		s.SkipSpace()
		if !each() {
			return false
		}
		s.SkipSpace()
		if s.Eat(closing) {
			return true
		}
		if !s.Eat(',') {
			return false
		}
	}
}

// Name scans an object member's name and the colon after it, and skips
// the whitespace up to the value. The name is decoded, as encoding/json
// decodes it; escaped reports whether it held escapes, for a caller that
// leaves such names, rare in practice, to its general path.
func (s *Scanner) Name() (name string, escaped, ok bool) {
	start, end, escaped, ok := s.str()
	if !ok {
		return "", false, false
	}
	if escaped {
		if name, ok = s.unescape(start, end); !ok {
			return "", false, false
		}
	} else {
		name = s.text[start+1 : end-1]
	}
	return name, escaped, s.colon()
}

// colon scans the colon between an object member's name and its value,
// and the whitespace around it.
func (s *Scanner) colon() bool {
	s.SkipSpace()
	ok := s.Eat(':')
	s.SkipSpace()
	return ok
}

// StringValue scans a string and returns its text. A string without
// escapes is cut from the input (see New); one with escapes is decoded
// into new memory.
func (s *Scanner) StringValue() (string, bool) {
	start, end, escaped, ok := s.str()
	switch {
	case !ok:
		return "", false
	case escaped:
		return s.unescape(start, end)
	}
	return s.text[start+1 : end-1], true
}

// unescape decodes the string with escapes scanned at b[start:end],
// quotes included. encoding/json does it, so that the text is exactly
// what it would decode, lone surrogates and all.
func (s *Scanner) unescape(start, end int) (string, bool) {
	var v string
	if json.Unmarshal(s.b[start:end], &v) != nil {
		return "", false
	}
	return v, true
}

// str scans a string and returns its span, quotes included, and whether
// it holds escapes.
func (s *Scanner) str() (start, end int, escaped, ok bool) {
	start = s.i
	if !s.Eat('"') {
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

// plain marks the bytes that need no attention inside a string: a table
// lookup is the cheapest test in the loop every string byte goes through.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// Value scans any value, as Skip does, and returns its bytes as they are
// in the input; they mean nothing when ok is false. Their capacity ends
// with them, so that appending to them cannot overwrite what follows.
func (s *Scanner) Value(depth int) (v []byte, ok bool) {
	// No early return on failure: it would cost Value its inlining.
	start := s.i
	ok = s.Skip(depth)
	return s.b[start:s.i:s.i], ok
}

// Skip scans any value. depth is how deep the caller has nested already,
// counted as it likes: Skip refuses to enter an object or array at depth
// MaxDepth or more, and counts one more for each it enters.
func (s *Scanner) Skip(depth int) bool {
	switch c := s.Peek(); {
	case c == '"':
		_, _, _, ok := s.str()
		return ok
	case c == '{', c == '[':
		if depth >= MaxDepth {
			return false
		}
		if c == '[' {
			return s.list('[', ']', func() bool { return s.Skip(depth + 1) })
		}
		return s.list('{', '}', func() bool {
			// Names are not decoded: nobody reads them.
			_, _, _, ok := s.str()
			return ok && s.colon() && s.Skip(depth+1)
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

func (s *Scanner) literal(word string) bool {
	if len(s.b)-s.i >= len(word) && string(s.b[s.i:s.i+len(word)]) == word {
		s.i += len(word)
		return true
	}
	return false
}

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *Scanner) number() bool {
	s.Eat('-')
	switch c := s.Peek(); {
	case c == '0':
		s.i++
	case '1' <= c && c <= '9':
		s.digits()
	default:
		return false
	}
	if s.Eat('.') && !s.digits() {
		return false
	}
	if c := s.Peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.Peek(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

func (s *Scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}
