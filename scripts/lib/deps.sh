# shellcheck shell=bash
# Helpers shared by scripts/test.sh and scripts/quickstart.sh. Source it.

# deps_missing PKG... prints the Debian packages among PKG that are not
# installed.
deps_missing() {
	local p
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
			printf '%s\n' "$p"
		fi
	done
}

# deps_install PKG... installs the missing ones with apt-get when running as
# root on a Debian-like system. Package maintainer scripts must not try to
# start services (there is no init system on CI machines): a policy-rc.d
# that denies every start is put in place for the install when there is none,
# and removed again afterwards. Returns non-zero if packages stay missing.
deps_install() {
	local missing
	if ! command -v dpkg-query >/dev/null 2>&1; then
		echo "deps: not a Debian-like system (no dpkg-query); install by hand: $*" >&2
		return 1
	fi
	missing=$(deps_missing "$@")
	if [ -z "$missing" ]; then
		echo "deps: all installed: $*"
		return 0
	fi
	# shellcheck disable=SC2086
	set -- $missing
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing packages (not root, not installing): $*" >&2
		return 1
	fi
	echo "deps: installing: $*"
	local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# Added by portico scripts/lib/deps.sh during apt-get install.\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		created_policy=1
	fi
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
	} || rc=$?
	if [ "$created_policy" = 1 ]; then
		rm -f "$policy"
	fi
	if [ "$rc" -ne 0 ]; then
		echo "deps: apt-get failed (exit $rc)" >&2
		return "$rc"
	fi
	missing=$(deps_missing "$@")
	if [ -n "$missing" ]; then
		echo "deps: still missing after install: $missing" >&2
		return 1
	fi
}

# deps_go makes sure "go" is on PATH (it lives in /usr/local/go/bin on the
# project's machines).
deps_go() {
	if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
		PATH=/usr/local/go/bin:$PATH
		export PATH
	fi
	command -v go >/dev/null 2>&1 || {
		echo "go not found (expected /usr/local/go/bin/go)" >&2
		return 1
	}
}

# deps_cyrus DIR unpacks Cyrus IMAP (Debian's cyrus-common, cyrus-imapd,
# cyrus-pop3d) into DIR for integration/cyrus, without installing it: those
# packages conflict with dovecot-imapd and dovecot-pop3d (both provide
# imap-server and pop3-server), so installing them would remove Dovecot. The
# shared libraries Cyrus needs are installed normally (no conflict). Safe to
# run again: it does nothing when DIR already holds the candidate version.
# Returns non-zero, with a message, when Cyrus cannot be had.
deps_cyrus() {
	local dir=$1 version stamp tmp p
	if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
		echo "cyrus: needs root and apt-get; tests needing Cyrus will skip" >&2
		return 1
	fi
	deps_install libxapian30 libpcre3 libical3 libsasl2-modules || return 1
	version=$(apt-cache policy cyrus-imapd 2>/dev/null | awk '/Candidate:/ {print $2}')
	if [ -z "$version" ] || [ "$version" = "(none)" ]; then
		DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || true
		version=$(apt-cache policy cyrus-imapd 2>/dev/null | awk '/Candidate:/ {print $2}')
	fi
	if [ -z "$version" ] || [ "$version" = "(none)" ]; then
		echo "cyrus: no cyrus-imapd package known to apt; tests needing Cyrus will skip" >&2
		return 1
	fi
	stamp="$dir/.portico-cyrus-version"
	if [ -x "$dir/usr/lib/cyrus/bin/master" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
		echo "cyrus: $version already unpacked in $dir"
		return 0
	fi
	tmp=$(mktemp -d)
	# apt-get download fetches as user _apt when it can write here.
	chown _apt "$tmp" 2>/dev/null || true
	if ! (cd "$tmp" && apt-get download -q "cyrus-common=$version" "cyrus-imapd=$version" "cyrus-pop3d=$version" >/dev/null); then
		rm -rf "$tmp"
		echo "cyrus: apt-get download failed; tests needing Cyrus will skip" >&2
		return 1
	fi
	rm -rf "$dir"
	mkdir -p "$dir"
	for p in "$tmp"/*.deb; do
		dpkg -x "$p" "$dir" || {
			rm -rf "$tmp" "$dir"
			echo "cyrus: dpkg -x $p failed" >&2
			return 1
		}
	done
	rm -rf "$tmp"
	echo "$version" >"$stamp"
	echo "cyrus: $version unpacked in $dir"
}
