package hypersync

import (
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzUnmarshalCaddyfile feeds arbitrary text to the directive's parser. It
// must never panic, and whatever it accepts must be a valid configuration.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	f.Fuzz(func(t *testing.T, input string) {
		tokens, err := caddyfile.Tokenize([]byte(input), "Fuzzfile")
		if err != nil {
			return
		}
		h := new(HyperSync)
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			return
		}
		if len(h.Shapes) == 0 {
			t.Fatalf("accepted a config without shapes: %q", input)
		}
		for _, s := range h.Shapes {
			if err := s.Validate(); err != nil {
				t.Fatalf("accepted an invalid shape %+v: %v", s, err)
			}
		}
		if h.UserID != "" {
			if err := (&HyperSync{UserID: h.UserID, Shapes: h.Shapes}).Validate(); err != nil {
				t.Fatalf("accepted user_id %q that Validate refuses: %v", h.UserID, err)
			}
		}
	})
}
