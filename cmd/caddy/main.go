// Command caddy is Caddy with the standard modules and hypersync, for
// `go run ./cmd/caddy` without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/hypersync/hypersync"
)

func main() {
	caddycmd.Main()
}
