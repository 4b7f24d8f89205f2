# Shared set-up for scripts/run and scripts/test. Sourced, not run.

step() { printf '\n==> %s\n' "$*" >&2; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
		echo "need root to run: $*" >&2; return 1; fi
}

apt_updated=
apt_install() {
	if [ -z "$apt_updated" ]; then
		as_root apt-get update -qq >&2
		apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >&2
}

ensure_go() {
	command -v go >/dev/null || { echo "Go is not installed: see https://go.dev/doc/install" >&2; exit 1; }
	go mod download
}

# The Go tests and the browser suite start throwaway clusters with initdb
# and pg_ctl from the system's PostgreSQL server binaries.
ensure_postgres() {
	if [ -n "${HYPERSYNC_TEST_DSN:-}" ]; then return; fi
	if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then return; fi
	step "installing the PostgreSQL server binaries"
	apt_install postgresql
}

ensure_node() {
	if command -v node >/dev/null && command -v npm >/dev/null; then return; fi
	step "installing Node.js and npm"
	apt_install nodejs npm
}

# The browser suite drives Debian's Chromium; it never downloads a browser.
ensure_chromium() {
	if [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then return; fi
	step "installing Chromium"
	apt_install chromium
}

# The browser suite writes the demo's database as another client would:
# with psql, and with the sqlite3 shell.
ensure_sql_clients() {
	if command -v psql >/dev/null && command -v sqlite3 >/dev/null; then return; fi
	step "installing psql and the sqlite3 shell"
	apt_install postgresql-client sqlite3
}

# build_demo installs the demo's npm packages and bundles it into
# examples/todo/dist.
build_demo() {
	(cd examples/todo && npm ci --no-audit --no-fund --loglevel=error && npm run build)
}
