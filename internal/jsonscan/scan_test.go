package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
	"unsafe"
)

// skipAll scans b as one value, as a caller checking a whole input would.
func skipAll(b []byte) bool {
	s := New(b)
	s.SkipSpace()
	return s.Skip(0) && s.End()
}

func TestSkipTakesWhatEncodingJSONTakes(t *testing.T) {
	for _, in := range []string{
		`0`, `-0`, `1`, `-12.5e+3`, `1E-0`, `0.0`, `123456789012345678901234567890`,
		`true`, `false`, `null`, `""`, `"a"`, `"\"\\\/\b\f\n\r\t"`, `"\u00e9\uD83D\uDE00"`, `"\ud800"`,
		"\"K\xc3\xa4se\"", "\"\x7f\"", `[]`, `{}`, ` [ 1 , [ ] , { } ] `, "\t{\"a\"\r:\n1}\n",
		`{"a":{"b":[1,{"c":null}]},"a":2}`,
	} {
		if !json.Valid([]byte(in)) {
			t.Fatalf("test case %q is not valid JSON", in)
		}
		if !skipAll([]byte(in)) {
			t.Errorf("Skip refused %q", in)
		}
	}
}

func TestSkipRefusesWhatEncodingJSONRefuses(t *testing.T) {
	for _, in := range []string{
		``, ` `, `01`, `-`, `-a`, `1.`, `.5`, `1e`, `1e+`, `+1`, `0x1`, `1 2`,
		`tru`, `nul`, `nulll`, `True`, `NaN`, `Infinity`,
		`"`, `"a`, "\"\x01\"", "\"\t\"", `"\a"`, `"\u12"`, `"\u12g4"`, `"\`, `'a'`,
		`[`, `[1,]`, `[,1]`, `[1 2]`, `]`, `{`, `{"a"}`, `{"a":}`, `{"a" 1}`, `{1:2}`, `{"a":1,}`, `{,}`, `{"a":1 "b":2}`,
	} {
		if json.Valid([]byte(in)) {
			t.Fatalf("test case %q is valid JSON", in)
		}
		if skipAll([]byte(in)) {
			t.Errorf("Skip took %q", in)
		}
	}
}

func nested(depth int) string { return strings.Repeat("[", depth) + strings.Repeat("]", depth) }

// Skip follows MaxDepth levels of nesting, less the caller's depth, and
// refuses one more.
func TestSkipDepth(t *testing.T) {
	for _, c := range []struct {
		levels, depth int
		ok            bool
	}{
		{MaxDepth, 0, true},
		{MaxDepth + 1, 0, false},
		{MaxDepth - 2, 2, true},
		{MaxDepth - 1, 2, false},
		{0, MaxDepth, true}, // a scalar enters nothing
	} {
		in := nested(c.levels)
		if c.levels == 0 {
			in = "1"
		}
		s := New([]byte(in))
		if ok := s.Skip(c.depth) && s.End(); ok != c.ok {
			t.Errorf("%d levels at depth %d: ok=%v", c.levels, c.depth, ok)
		}
	}
}

// Strings without escapes share the input's memory; those with escapes
// decode as encoding/json decodes them.
func TestStringValue(t *testing.T) {
	for _, c := range []struct {
		in, want string
		shared   bool
	}{
		{`"plain text"`, "plain text", true},
		{"\"K\xc3\xa4se\"", "Käse", true},
		{`"a\nb"`, "a\nb", false},
		{`"\u00e9\ud83d\ude00"`, "é😀", false},
		{`"\ud800"`, "\ufffd", false}, // a lone surrogate, as encoding/json has it
		{`"\/"`, "/", false},
	} {
		b := []byte(c.in)
		s := New(b)
		got, ok := s.StringValue()
		if !ok || got != c.want || !s.End() {
			t.Errorf("StringValue(%s) = %q, %v; want %q", c.in, got, ok, c.want)
			continue
		}
		if shares(b, got) != c.shared {
			t.Errorf("StringValue(%s) shares the input: %v", c.in, !c.shared)
		}
	}
	for _, in := range []string{`1`, `null`, `"a`, `"\x"`, `["a"]`} {
		s := New([]byte(in))
		if v, ok := s.StringValue(); ok {
			t.Errorf("StringValue(%s) took it, as %q", in, v)
		}
	}
}

// shares reports whether s lies within b's memory.
func shares(b []byte, s string) bool {
	if len(s) == 0 || len(b) == 0 {
		return false
	}
	p, start := uintptr(unsafe.Pointer(unsafe.StringData(s))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return start <= p && p+uintptr(len(s)) <= start+uintptr(len(b))
}

func TestName(t *testing.T) {
	for _, c := range []struct {
		in, name string
		escaped  bool
	}{
		{`"changeId":1`, "changeId", false},
		{`"changeId" : 1`, "changeId", false},
		{`"change\u0049d":1`, "changeId", true},
		{`"a\"b":1`, `a"b`, true},
		{`"":1`, "", false},
	} {
		s := New([]byte(c.in))
		name, escaped, ok := s.Name()
		if !ok || name != c.name || escaped != c.escaped {
			t.Errorf("Name(%s) = %q, escaped=%v, ok=%v", c.in, name, escaped, ok)
			continue
		}
		if s.Peek() != '1' {
			t.Errorf("Name(%s) stopped before %q, not at the value", c.in, c.in[s.i:])
		}
	}
	for _, in := range []string{`"a"`, `"a";1`, `a:1`, `1:1`, `"a\q":1`} {
		s := New([]byte(in))
		if name, _, ok := s.Name(); ok {
			t.Errorf("Name(%s) took it, as %q", in, name)
		}
	}
}

// Value returns a value's bytes as they are, with no room to append into
// what follows.
func TestValue(t *testing.T) {
	b := []byte(`{"a":[1, "x" ,{}],"b":-2.5e3}`)
	s := New(b)
	var got []string
	ok := s.Object(func() bool {
		_, _, ok := s.Name()
		if !ok {
			return false
		}
		v, ok := s.Value(1)
		if cap(v) != len(v) {
			t.Errorf("Value %s has room for %d more bytes", v, cap(v)-len(v))
		}
		got = append(got, string(v))
		return ok
	})
	if !ok || !s.End() || !reflect.DeepEqual(got, []string{`[1, "x" ,{}]`, `-2.5e3`}) {
		t.Errorf("values %q, ok=%v", got, ok)
	}
}

// decode builds what json.Unmarshal into an any would, numbers as
// json.Number, with the scanner's exported methods alone. It fails where
// the scanner refuses; it checks that strings without escapes share b.
func decode(t *testing.T, b []byte, s *Scanner, depth int) (any, bool) {
	switch s.Peek() {
	case '{', '[':
		if depth >= MaxDepth {
			return nil, false // as Skip
		}
	}
	switch s.Peek() {
	case '{':
		m := map[string]any{}
		ok := s.Object(func() bool {
			name, escaped, ok := s.Name()
			if !ok {
				return false
			}
			if !escaped && name != "" && !shares(b, name) {
				t.Fatalf("name %q without escapes was copied", name)
			}
			v, ok := decode(t, b, s, depth+1)
			m[name] = v // the last of repeated names, as encoding/json
			return ok
		})
		return m, ok
	case '[':
		a := []any{}
		ok := s.Array(func() bool {
			v, ok := decode(t, b, s, depth+1)
			a = append(a, v)
			return ok
		})
		return a, ok
	case '"':
		return s.StringValue()
	case 'n':
		return nil, s.Null()
	}
	raw, ok := s.Value(depth)
	if !ok {
		return nil, false
	}
	var v any
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		t.Fatalf("Value took %q, which encoding/json refuses: %v", raw, err)
	}
	return v, true
}

// nesting is how deeply valid JSON nests, as encoding/json sees it.
func nesting(b []byte) int {
	d := json.NewDecoder(bytes.NewReader(b))
	depth, deepest := 0, 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return deepest
		}
		if err != nil {
			return -1
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
			deepest = max(deepest, depth)
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
}

// FuzzScan holds the scanner to encoding/json: it takes a value exactly
// when json.Valid does, but for nesting beyond MaxDepth; Value returns the
// value whole; and a walk with Object, Array, Name and StringValue decodes
// what json.Unmarshal decodes.
func FuzzScan(f *testing.F) {
	for _, in := range []string{
		`{"changes":[{"changeId":"c1","shapeKey":"todos","userId":"alice","updatedAt":"2026-11-25T10:00:00.000Z","payload":{"todoId":"t1","done":false}}]}`,
		`{"a":{"b":[1,{"c":null}]},"a":[true,false,-0.5e-3]}`,
		`{"change\u0049d":"\u00e9\ud800\ud83d\ude00\n","":""}`,
		`["\"\\\/\b\f\n\r\t", "\u00E9\uDE00"]`,
		"\"K\xc3\xa4se \xff\"", `"\u12"`, `{"a" : 1 , }`, `[1,]`, `01`, `-`, `1.`, `1e+`, `nulll`, `tru`,
		" \t\r\n[ ] ", `[] x`, ``, "\"\x01\"",
		nested(MaxDepth), nested(MaxDepth + 1), `{"a":` + nested(MaxDepth) + `}`,
	} {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		deep := false
		valid := json.Valid(b)
		if valid {
			deep = nesting(b) > MaxDepth
		}
		if took := skipAll(b); took != (valid && !deep) {
			t.Fatalf("Skip took=%v; json.Valid=%v, nesting beyond MaxDepth=%v; input %q", took, valid, deep, b)
		}

		s := New(b)
		s.SkipSpace()
		raw, ok := s.Value(0)
		if ok = ok && s.End(); ok != (valid && !deep) {
			t.Fatalf("Value ok=%v, Skip disagrees; input %q", ok, b)
		}
		if ok && string(raw) != string(bytes.Trim(b, " \t\r\n")) {
			t.Fatalf("Value returned %q of %q", raw, b)
		}

		s = New(b)
		s.SkipSpace()
		got, ok := decode(t, b, &s, 0)
		if ok = ok && s.End(); ok != (valid && !deep) {
			t.Fatalf("walk ok=%v, Skip disagrees; input %q", ok, b)
		}
		if !ok || !utf8.Valid(b) {
			return // invalid UTF-8 is the caller's to refuse (see the package comment)
		}
		var want any
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		if err := d.Decode(&want); err != nil {
			t.Fatalf("encoding/json refuses %q: %v", b, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("scanned %#v, encoding/json %#v; input %q", got, want, b)
		}
	})
}
