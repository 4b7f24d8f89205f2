package shapes

import (
	"encoding/json"
	"testing"
)

func TestAppendPGTime(t *testing.T) {
	cases := map[string]string{
		"2026-11-25 10:00:00+00":        "2026-11-25T10:00:00.000Z",
		"2026-11-25 10:00:00.1+00":      "2026-11-25T10:00:00.100Z",
		"2026-11-25 10:00:00.123456+00": "2026-11-25T10:00:00.123Z",
		"2026-11-25 10:00:00.9999+00":   "2026-11-25T10:00:00.999Z", // truncated, as the client truncates
		"2026-11-25 10:00:00.12":        "2026-11-25T10:00:00.120Z", // timestamp without time zone
		"2026-11-25 12:00:00.5+02":      "2026-11-25T10:00:00.500Z", // a session not in UTC
		"infinity":                      "infinity",
	}
	for in, want := range cases {
		if got := string(appendPGTime(nil, []byte(in))); got != want {
			t.Errorf("%q -> %q, want %q", in, got, want)
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", `quo"te`, `back\\slash`, "tab\tnew\nline\rcr", "ctl\x01\x1f", "é 用户 🚀", "\u2028"} {
		var got string
		out := AppendJSONString(nil, []byte(s))
		if err := json.Unmarshal(out, &got); err != nil || got != s {
			t.Errorf("%q -> %s -> %q (%v)", s, out, got, err)
		}
	}
}

func TestAppendPGValueSpecialNumbers(t *testing.T) {
	for in, want := range map[string]string{"NaN": `"NaN"`, "Infinity": `"Infinity"`, "-Infinity": `"-Infinity"`, "-1.5": "-1.5", "1e+300": "1e+300"} {
		if got := string(appendPGValue(nil, KindFloat, []byte(in))); got != want {
			t.Errorf("%s -> %s, want %s", in, got, want)
		}
	}
}
