package live

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"strings"
)

//go:embed live.js
var script []byte

// scriptETag names this build's live.js.
var scriptETag = func() string {
	h := sha256.Sum256(script)
	return `"` + hex.EncodeToString(h[:8]) + `"`
}()

// ServeScript serves live.js: an ES module, cacheable, with an ETag.
func ServeScript(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/javascript; charset=utf-8")
	h.Set("Cache-Control", "public, max-age=300")
	h.Set("ETag", scriptETag)
	if match := r.Header.Get("If-None-Match"); match != "" {
		for _, tag := range strings.Split(match, ",") {
			if t := strings.TrimSpace(tag); t == scriptETag || t == "*" {
				w.WriteHeader(http.StatusNotModified)
				return
			}
		}
	}
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(script)
}
