#!/usr/bin/env bash
# Runs Portico's whole test suite; the single command for CI and developers.
#
#   scripts/test.sh            # everything, with the race detector
#   scripts/test.sh -short     # extra arguments are passed to "go test"
#
# As root on Debian it first installs the system packages the integration
# tests use (only those missing) and exports PORTICO_REQUIRE_DOVECOT=1, so
# that tests needing Dovecot fail instead of skipping. GOFLAGS is honoured.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/deps.sh
. scripts/lib/deps.sh

section() { printf '\n==== %s ====\n' "$*"; }

# zsh and groff-base: the shell completions and man pages (cmd/portico);
# lintian: the Debian package, which packaging/deb_test.go builds, lints and
# installs into a throwaway root (as root only; it skips otherwise);
# perdition: the popmap parity test (integration/perdition_test.go), which
# runs it in inetd mode (its daemon is not started: deps_install blocks
# service starts); slapd and ldap-utils: the LDAP source's tests
# (routing/source/ldapsrc, integration/ldaptest), which run their own slapd
# from a temporary directory (the packaged one is never started); postfix
# and swaks: submission through Portico (integration/submission_test.go
# starts its own Postfix master with its own configuration; the package's
# service is never started); postgresql and mariadb-server: the SQL
# source's tests (integration/sqltest starts a server of each in a temp
# dir, never the system's own).
packages=(dovecot-imapd dovecot-pop3d nginx libnginx-mod-mail python3 curl iproute2 nftables prometheus
	zsh groff-base lintian perdition slapd ldap-utils postfix swaks postgresql mariadb-server)
# The race detector needs cgo, hence a C compiler.
command -v gcc >/dev/null 2>&1 || packages+=(gcc libc6-dev)

section "system packages"
if [ "$(id -u)" -eq 0 ]; then
	deps_install "${packages[@]}"
	export PORTICO_REQUIRE_DOVECOT="${PORTICO_REQUIRE_DOVECOT:-1}"
else
	missing=$(deps_missing "${packages[@]}" 2>/dev/null || true)
	if [ -n "$missing" ]; then
		echo "not root: not installing missing packages ($(echo "$missing" | tr '\n' ' ')); tests needing them will skip"
	else
		echo "all present (not root: tests needing root will skip)"
	fi
fi

section "cyrus imap (unpacked, not installed)"
# integration/cyrus runs Cyrus from Debian's packages unpacked here (they
# conflict with Dovecot's, so they are never installed).
export PORTICO_CYRUS_ROOT="${PORTICO_CYRUS_ROOT:-/var/cache/portico-test/cyrus}"
if deps_cyrus "$PORTICO_CYRUS_ROOT"; then
	export PORTICO_REQUIRE_CYRUS="${PORTICO_REQUIRE_CYRUS:-1}"
else
	echo "Cyrus unavailable: the tests that use it will skip"
fi

section "go toolchain"
deps_go
go version
echo "GOFLAGS=${GOFLAGS:-}"
echo "PORTICO_REQUIRE_DOVECOT=${PORTICO_REQUIRE_DOVECOT:-}"
echo "PORTICO_REQUIRE_CYRUS=${PORTICO_REQUIRE_CYRUS:-} (PORTICO_CYRUS_ROOT=$PORTICO_CYRUS_ROOT)"

section "gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "these files need gofmt -w:" >&2
	echo "$unformatted" >&2
	exit 1
fi
echo "ok"

section "go vet"
go vet ./...
echo "ok"

section "staticcheck"
# Pinned here rather than in go.mod, so that the module's own dependency
# graph stays the program's; v0.8.2 supports the Go of go.mod.
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
echo "ok"

section "alert rules (promtool)"
if command -v promtool >/dev/null 2>&1; then
	promtool check rules examples/alerts.yml
	(cd examples && promtool test rules alerts_test.yml)
elif [ "${PORTICO_REQUIRE_DOVECOT:-}" = 1 ]; then
	echo "promtool not found (Debian package prometheus)" >&2
	exit 1
else
	echo "promtool not found (Debian package prometheus): skipped"
fi

section "go test -race"
go test -race -count=1 -timeout 25m "$@" ./...

# node's own tests once more with every listener on the event loops
# (listeners' event_loop; the integration tests run real processes with
# both kinds of listener).
section "go test -race ./node/ (event loops)"
PORTICO_TEST_EVENT_LOOP=1 go test -race -count=1 -timeout 5m "$@" ./node/
