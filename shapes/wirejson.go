package shapes

import "time"

// The JSON of values as the wire carries them: pulls, exports, and the
// changes erase writes in the user's stead.

// AppendTime appends t in TimeLayout, in UTC. A pull writes one or more
// per row, so the years 0 to 9999 are written digit by digit, which costs
// a fifth of AppendFormat; TestAppendTimeIsTimeLayout holds the two equal.
func AppendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, TimeLayout)
	}
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / 1e6
	two := func(b []byte, n int) []byte { return append(b, byte('0'+n/10), byte('0'+n%10)) }
	b = two(two(b, year/100), year%100)
	b = two(append(b, '-'), int(month))
	b = two(append(b, '-'), day)
	b = two(append(b, 'T'), hour)
	b = two(append(b, ':'), minute)
	b = two(append(b, ':'), sec)
	return append(b, '.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z')
}

// AppendValue appends one value as JSON, as the wire carries it (see
// Value for the forms drivers give).
func AppendValue(buf []byte, k Kind, v Value) []byte {
	switch {
	case v.Null:
		return append(buf, "null"...)
	case k == KindTimestamp && v.Text == nil:
		buf = append(buf, '"')
		buf = AppendTime(buf, v.Time)
		return append(buf, '"')
	}
	switch k {
	case KindBool, KindInt, KindJSON, KindArray, KindOther:
		return append(buf, v.Text...) // true/false, digits, or JSON text
	case KindFloat, KindNumeric:
		if t := v.Text; len(t) > 0 && (t[0] == 'N' || t[0] == 'I' || t[0] == '-' && len(t) > 1 && t[1] == 'I') {
			return AppendJSONString(buf, t) // NaN and Infinity are not JSON numbers
		}
		return append(buf, v.Text...)
	}
	return AppendJSONString(buf, v.Text)
}

// AppendJSONString appends s as a JSON string.
func AppendJSONString[T string | []byte](buf []byte, s T) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		buf = append(buf, s[start:i]...)
		switch c {
		case '"', '\\':
			buf = append(buf, '\\', c)
		case '\n':
			buf = append(buf, '\\', 'n')
		case '\r':
			buf = append(buf, '\\', 'r')
		case '\t':
			buf = append(buf, '\\', 't')
		default:
			buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}
