package hypersync

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// Caddy provisions a module before it validates it. A JSON config that
// cannot work must fail before it opens a database or creates a table.
func TestBadConfigHasNoSideEffects(t *testing.T) {
	dir := t.TempDir()
	dsn := "sqlite:" + filepath.Join(dir, "never.db")
	shape := `{"key":"notes","key_fields":["noteId"],"fields":["body"],"create_table":true}`
	for name, handler := range map[string]string{
		"negative max_batch":        `{"handler":"hypersync","database":"` + dsn + `","max_batch":-1,"shapes":[` + shape + `]}`,
		"a shape twice":             `{"handler":"hypersync","database":"` + dsn + `","shapes":[` + shape + `,` + shape + `]}`,
		"user_id not a placeholder": `{"handler":"hypersync","database":"` + dsn + `","user_id":"alice","shapes":[` + shape + `]}`,
		"no shapes":                 `{"handler":"hypersync","database":"` + dsn + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			cfg := `{"admin":{"disabled":true},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[` + handler + `]}]}}}}}`
			err := caddy.Load([]byte(cfg), true)
			if err == nil {
				_ = caddy.Stop()
				t.Fatal("the config loaded")
			}
			if _, statErr := os.Stat(strings.TrimPrefix(dsn, "sqlite:")); !os.IsNotExist(statErr) {
				t.Fatalf("the database file exists after a refused config (%v): %v", err, statErr)
			}
			if poolOpen(dsn) {
				t.Fatal("a database pool is open after a refused config")
			}
		})
	}
}

func poolOpen(dsn string) bool {
	open := false
	databases.Range(func(k, _ any) bool { open = open || k == dsn; return true })
	return open
}
