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

# The Go tests start their own throwaway cluster from initdb and pg_ctl.
ensure_postgres() {
	if [ -n "${HYPERSYNC_TEST_DSN:-}" ]; then return; fi
	if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then return; fi
	step "installing the PostgreSQL server binaries"
	apt_install postgresql
}

