package hypersync

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// testGlobals are the global options of every in-process Caddy the tests
// start: loopback ports, and the admin endpoint caddytest drives.
const testGlobals = `{
	admin localhost:2999
	http_port 9080
	https_port 9443
	skip_install_trust
}
`

// serveSites loads sites (Caddyfile site blocks) into the test's Caddy.
// Loading again replaces the config, as a reload does.
func serveSites(t *testing.T, tester *caddytest.Tester, sites string) *caddytest.Tester {
	t.Helper()
	if tester == nil {
		tester = caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 30 * time.Second, TestRequestTimeout: 30 * time.Second})
	}
	tester.InitServer(testGlobals+sites, "caddyfile")
	return tester
}
