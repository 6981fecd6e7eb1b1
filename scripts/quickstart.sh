#!/usr/bin/env bash
# Runs Portico locally in front of a throwaway demo Dovecot:
#
#   sudo scripts/quickstart.sh
#
# 1. installs Dovecot if missing (Debian, as root),
# 2. starts a demo Dovecot on 127.0.0.1:10143 (IMAP) and 127.0.0.1:10110
#    (POP3) with the user demo@example.com / demo (scripts/demobackend),
# 3. runs "portico serve" on examples/portico.yaml in the foreground
#    (IMAP 127.0.0.1:1143, IMAPS 127.0.0.1:1993, POP3 127.0.0.1:1110), its
#    state in a temporary directory,
# and stops Dovecot again when Portico exits (Ctrl-C or SIGTERM).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/deps.sh
. scripts/lib/deps.sh

CONFIG=${PORTICO_CONFIG:-examples/portico.yaml}
# examples/portico.yaml routes to these; override only together with it.
BACKEND_IMAP_PORT=${PORTICO_DEMO_IMAP_PORT:-10143}
BACKEND_POP3_PORT=${PORTICO_DEMO_POP3_PORT:-10110}

say() { printf '==> %s\n' "$*"; }
die() {
	printf 'quickstart: %s\n' "$*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root: the demo Dovecot must be started as root (it then drops privileges)"
[ -d cmd/portico ] || die "cmd/portico not found in $(pwd)"
[ -f "$CONFIG" ] || die "$CONFIG not found"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$BACKEND_IMAP_PORT" "$BACKEND_POP3_PORT"; do
	if port_in_use "$p"; then
		die "127.0.0.1:$p is already in use; stop whatever listens there first"
	fi
done

say "checking packages"
deps_install dovecot-imapd dovecot-pop3d curl
deps_go

work=$(mktemp -d /tmp/portico-quickstart.XXXXXX)
backend_pid=""
portico_pid=""

# shellcheck disable=SC2317 # invoked through trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$portico_pid" ] && kill -0 "$portico_pid" 2>/dev/null; then
		kill -TERM "$portico_pid" 2>/dev/null || true
		wait "$portico_pid" 2>/dev/null || true
	fi
	if [ -n "$backend_pid" ] && kill -0 "$backend_pid" 2>/dev/null; then
		say "stopping the demo Dovecot"
		kill -TERM "$backend_pid" 2>/dev/null || true
		wait "$backend_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT

# Build first, so that a build error leaves nothing running. Binaries rather
# than "go run", so that signals reach the programs themselves.
say "building portico and the demo backend"
go build -o "$work/demobackend" ./scripts/demobackend
go build -o "$work/portico" ./cmd/portico

say "starting the demo Dovecot on 127.0.0.1:$BACKEND_IMAP_PORT (IMAP) and 127.0.0.1:$BACKEND_POP3_PORT (POP3)"
"$work/demobackend" -addr 127.0.0.1 -imap-port "$BACKEND_IMAP_PORT" -pop3-port "$BACKEND_POP3_PORT" \
	-user demo@example.com -password demo -ready-file "$work/ready" &
backend_pid=$!
for _ in $(seq 300); do
	[ -f "$work/ready" ] && break
	kill -0 "$backend_pid" 2>/dev/null || die "the demo Dovecot failed to start (see above)"
	sleep 0.1
done
[ -f "$work/ready" ] || die "the demo Dovecot did not become ready within 30 s"

cat <<'HELP'

==> Portico is starting (Ctrl-C to stop). Try it from another terminal:
      curl -v imap://127.0.0.1:1143/ --user demo@example.com:demo          # IMAP, lists INBOX
      curl -v imap://127.0.0.1:1143/INBOX --user demo@example.com:demo     # IMAP, selects INBOX
      curl -vk imaps://127.0.0.1:1993/ --user demo@example.com:demo        # IMAPS (self-signed)
      curl -v pop3://127.0.0.1:1110/ --user demo@example.com:demo          # POP3, lists messages
HELP
echo "    The demo Dovecot can be reached directly on 127.0.0.1:$BACKEND_IMAP_PORT / 127.0.0.1:$BACKEND_POP3_PORT."
echo

# The example keeps its state (data_dir) in the default /var/lib/portico:
# run a copy whose data_dir is in the work directory, removed at exit, so
# that nothing is left behind between runs. A configuration of your own
# (PORTICO_CONFIG) runs as it is.
if [ -z "${PORTICO_CONFIG:-}" ]; then
	mkdir "$work/conf"
	cp -R examples/demo-tls "$work/conf/"
	{
		printf '# %s with data_dir in the quickstart'"'"'s work directory.\ndata_dir: %s/data\n\n' "$CONFIG" "$work"
		cat "$CONFIG"
	} >"$work/conf/portico.yaml"
	CONFIG=$work/conf/portico.yaml
fi
say "portico serve --config $CONFIG"
"$work/portico" serve --config "$CONFIG" &
portico_pid=$!
# Background jobs of a non-interactive shell ignore SIGINT, so forward
# Ctrl-C and SIGTERM to Portico ourselves.
trap 'kill -TERM "$portico_pid" 2>/dev/null || true' INT TERM
status=0
wait "$portico_pid" || status=$?
# "wait" returns early (>128) when a trapped signal arrives: wait again for
# Portico to really exit.
while kill -0 "$portico_pid" 2>/dev/null; do
	wait "$portico_pid" || status=$?
done
portico_pid=""
case $status in
0 | 130 | 143) status=0 ;;
esac
exit "$status"
