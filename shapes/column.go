package shapes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Kind is how a column's values travel as JSON. Each store maps its own
// column types onto these.
type Kind int

const (
	KindOther     Kind = iota // anything; the database converts it
	KindText                  // JSON string
	KindBool                  // JSON boolean
	KindInt                   // JSON integer within Column.Bits
	KindFloat                 // JSON number
	KindNumeric               // JSON number, arbitrary precision
	KindTimestamp             // JSON string in RFC 3339
	KindJSON                  // any JSON value, stored as JSON
	KindArray                 // JSON array
)

var kindNames = [...]string{"other", "text", "boolean", "integer", "number", "timestamp", "json", "array"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Column is a table column that a shape reads or writes.
type Column struct {
	// Field is the payload field name clients use (todoId).
	Field string
	// ColumnInfo is what the catalog says of the column: its Name as the
	// database spells it (todoid), its type and Kind.
	ColumnInfo
}

// IsUUID reports whether the column's type is uuid, whose values are
// checked as UUIDs and compared without case.
func (c *ColumnInfo) IsUUID() bool { return strings.EqualFold(c.Type, "uuid") }

// checkValue reports why raw, a JSON value, cannot be stored in the column,
// or returns nil. It is the same check on every store, so that a change is
// accepted or rejected alike on PostgreSQL and SQLite.
func (c *Column) checkValue(raw json.RawMessage) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return fmt.Errorf("field %q has no value", c.Field)
	}
	if raw[0] == 'n' {
		if c.NotNull {
			return fmt.Errorf("field %q is null, but column %s is NOT NULL", c.Field, c.Name)
		}
		return nil
	}
	if hasEscapedNUL(raw) {
		return fmt.Errorf("field %q contains a NUL character (\\u0000), which the database cannot store", c.Field)
	}
	want := ""
	switch c.Kind {
	case KindText:
		if raw[0] != '"' {
			want = "a string"
			break
		}
		if c.IsUUID() {
			var u string
			if json.Unmarshal(raw, &u) != nil || !isUUID(u) {
				return fmt.Errorf("field %q: %s is not a UUID", c.Field, clip(raw))
			}
		}
		if c.MaxChars > 0 {
			s, err := JSONString(raw)
			if err != nil {
				return fmt.Errorf("field %q: %v", c.Field, err)
			}
			if n := utf8.RuneCountInString(s); n > c.MaxChars {
				// PostgreSQL would cut trailing spaces to fit, and store
				// another value than the one sent
				return fmt.Errorf("field %q: %d characters, but column %s (%s) holds at most %d", c.Field, n, c.Name, c.Type, c.MaxChars)
			}
		}
	case KindBool:
		if raw[0] != 't' && raw[0] != 'f' {
			want = "true or false"
		}
	case KindInt:
		if !isNumber(raw) {
			want = "an integer"
			break
		}
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil || (c.Bits > 0 && c.Bits < 64 && (n > 1<<(c.Bits-1)-1 || n < -(1<<(c.Bits-1)))) {
			return fmt.Errorf("field %q: %s is not an integer that fits column %s (%s)", c.Field, clip(raw), c.Name, c.Type)
		}
	case KindFloat:
		if !isNumber(raw) {
			want = "a number"
			break
		}
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || math.IsInf(f, 0) || (c.Bits == 32 && math.Abs(f) > math.MaxFloat32) {
			return fmt.Errorf("field %q: %s is out of range for column %s (%s)", c.Field, clip(raw), c.Name, c.Type)
		}
	case KindNumeric:
		if !isNumber(raw) {
			want = "a number"
		}
	case KindTimestamp:
		if raw[0] != '"' {
			want = "an RFC 3339 timestamp string"
			break
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf("field %q: %v", c.Field, err)
		}
		if _, err := parseTime(s); err != nil {
			return fmt.Errorf("field %q: %q is not an RFC 3339 timestamp", c.Field, clip([]byte(s)))
		}
	case KindArray:
		if raw[0] != '[' {
			want = "an array"
		}
	}
	if want != "" {
		return fmt.Errorf("field %q: column %s (%s) wants %s, got %s", c.Field, c.Name, c.Type, want, jsonKind(raw))
	}
	return nil
}

// parseTime parses an RFC 3339 timestamp, with or without fractional
// seconds: what a payload's timestamp fields may hold.
func parseTime(s string) (time.Time, error) {
	return time.Parse(time.RFC3339Nano, s)
}

func isNumber(raw []byte) bool {
	return raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')
}

func jsonKind(raw []byte) string {
	switch raw[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

func clip(b []byte) string {
	const max = 40
	if len(b) <= max {
		return string(b)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return string(b[:cut]) + "…"
}

// hasEscapedNUL reports whether the JSON text contains the escape \u0000.
// Encoding/json decodes it into a NUL byte, which PostgreSQL refuses in
// text and jsonb alike.
func hasEscapedNUL(raw []byte) bool {
	for i := bytes.Index(raw, []byte(`u0000`)); i >= 0; {
		// count the backslashes in front: an odd number means an escape
		n := 0
		for j := i - 1; j >= 0 && raw[j] == '\\'; j-- {
			n++
		}
		if n%2 == 1 {
			return true
		}
		next := bytes.Index(raw[i+1:], []byte(`u0000`))
		if next < 0 {
			break
		}
		i += 1 + next
	}
	return false
}

// keyPart returns a canonical text for one key value, so that two changes
// naming the same row within one push are recognised as such: a uuid in
// any case, a timestamp in any offset or precision, a number in any
// spelling (1.50 and 1.5, 1e2 and 100) are one key. Two changes the
// database takes for one row must never be two rows to a push: it would
// write one row twice in one statement.
func (c *Column) keyPart(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	switch c.Kind {
	case KindTimestamp:
		if t, err := TimeValue(raw); err == nil {
			return "t" + strconv.FormatInt(t.UnixNano(), 10)
		}
	case KindInt:
		if n, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
			return "n" + strconv.FormatInt(n, 10)
		}
	case KindFloat:
		if f, err := strconv.ParseFloat(string(raw), 64); err == nil {
			return "n" + strconv.FormatFloat(f, 'g', -1, 64)
		}
	case KindNumeric:
		// a decimal without an exponent, whose value big.Rat spells
		// alone; an exponent could make it build a huge number
		var n big.Rat
		if len(raw) > 0 && len(raw) <= 200 && bytes.IndexAny(raw, "eE\"") < 0 {
			if _, ok := n.SetString(string(raw)); ok {
				return "n" + n.RatString()
			}
		}
	}
	if len(raw) >= 2 && raw[0] == '"' && bytes.IndexByte(raw, '\\') < 0 {
		// a string without escapes: its text is what lies between the quotes
		if c.IsUUID() {
			return "s" + strings.ToLower(string(raw[1:len(raw)-1]))
		}
		return "s" + string(raw[1:len(raw)-1])
	}
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			if c.IsUUID() {
				// uuids compare case-insensitively
				return "s" + strings.ToLower(s)
			}
			return "s" + s
		}
	}
	return "r" + string(raw)
}

// isUUID accepts the canonical 8-4-4-4-12 hexadecimal form, in either case.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// GoValue converts a checked JSON value into a Go value of the column's
// kind: nil, bool, int64, float64, json.Number (numeric), time.Time, or a
// string (text, and JSON or arrays as compact JSON text).
func (c *Column) GoValue(raw json.RawMessage) (any, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] == 'n' {
		return nil, nil
	}
	switch c.Kind {
	case KindBool:
		return raw[0] == 't', nil
	case KindInt:
		return strconv.ParseInt(string(raw), 10, 64)
	case KindFloat:
		return strconv.ParseFloat(string(raw), 64)
	case KindNumeric:
		return json.Number(raw), nil
	case KindTimestamp:
		return TimeValue(raw)
	}
	return c.TextValue(raw)
}

// TimeValue parses a checked, non-null timestamp value.
func TimeValue(raw []byte) (time.Time, error) {
	s, err := JSONString(raw)
	if err != nil {
		return time.Time{}, err
	}
	return parseTime(s)
}

// TextValue converts a checked, non-null value of a column whose values
// travel as text: text itself, numeric, JSON, arrays and other types.
func (c *Column) TextValue(raw []byte) (string, error) {
	switch c.Kind {
	case KindNumeric:
		return string(raw), nil
	case KindJSON, KindArray:
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			return "", err
		}
		return b.String(), nil
	}
	if raw[0] == '"' {
		s, err := JSONString(raw)
		if c.IsUUID() {
			s = strings.ToLower(s)
		}
		return s, err
	}
	if c.Kind == KindText {
		return "", fmt.Errorf("field %q: not a string", c.Field)
	}
	// KindOther: a non-string value goes in as its JSON text
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return "", err
	}
	return b.String(), nil
}

// JSONString decodes a JSON string, without the decoder when it has no
// escapes.
func JSONString(raw []byte) (string, error) {
	if len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' && bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}
