#!/usr/bin/env bash
# Memory per idle session for IMAP, ManageSieve and SMTP submission through
# Portico, measured the same way side by side, and the relay throughput of
# 10 MB submissions (DATA and BDAT). One fresh `portico proxy` per cell;
# imapsink and mailsink as backends. Prints one markdown table; raw JSON in
# $OUT. See bench/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
N=${N:-5000}
RATE=${RATE:-500}
SETTLE=${SETTLE:-10s}
MODES=${MODES:-"plain tls"}
PROTOCOLS=${PROTOCOLS:-"imap sieve submission"}
MESSAGES=${MESSAGES:-20}
export GOMAXPROCS=${GOMAXPROCS:-2}
OUT=${OUT:-$HERE/results/mail-$(date -u +%Y%m%dT%H%M%SZ)}

log() { printf '%s mail.sh: %s\n' "$(date +%T)" "$*" >&2; }

WORK=$(mktemp -d /tmp/portico-mailbench.XXXXXX)
mkdir -p "$OUT" "$WORK/bin"
declare -a STARTED=()
cleanup() {
	local rc=$?
	set +e
	for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${STARTED[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	rm -rf "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building"
(cd "$ROOT" && go build -o "$WORK/bin/portico" ./cmd/portico &&
	go build -o "$WORK/bin/" ./bench/cmd/imapsink ./bench/cmd/mailsink ./bench/cmd/loadmail)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
	-keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

"$WORK/bin/imapsink" -listen 127.0.0.1:26143 >"$OUT/imapsink.log" 2>&1 &
STARTED+=($!)
"$WORK/bin/mailsink" -sieve 127.0.0.1:26190 -submission 127.0.0.1:26587 >"$OUT/mailsink.log" 2>&1 &
STARTED+=($!)
sleep 1

# Listeners: 27143 imap, 27993 imaps, 27190 sieve (STARTTLS offered,
# plaintext login allowed), 27587 submission (likewise), 27465 submissions.
start_portico() {
	"$WORK/bin/portico" proxy --from imap://127.0.0.1:27143 --from imaps://127.0.0.1:27993 \
		--from sieve://127.0.0.1:27190 --from submission://127.0.0.1:27587 --from submissions://127.0.0.1:27465 \
		--to imap://127.0.0.1:26143 --to sieve://127.0.0.1:26190 --to submission://127.0.0.1:26587 \
		--cert "$WORK/cert.pem" --key "$WORK/key.pem" --allow-plaintext \
		--max-connections -1 --max-connections-per-ip -1 >"$OUT/portico-$1.log" 2>&1 &
	PORTICO_PID=$!
	STARTED+=($PORTICO_PID)
	for _ in $(seq 100); do
		(exec 3<>/dev/tcp/127.0.0.1/27465) 2>/dev/null && return 0
		sleep 0.1
	done
	log "portico did not start"; exit 1
}
stop_portico() {
	kill -TERM "$PORTICO_PID"
	wait "$PORTICO_PID" 2>/dev/null || true
}

cell() { # protocol mode
	local p=$1 m=$2 addr tls extra=()
	case "$p/$m" in
	imap/plain) addr=27143 tls=none ;;
	imap/tls) addr=27993 tls=implicit ;;
	sieve/plain) addr=27190 tls=none ;;
	sieve/tls) addr=27190 tls=starttls ;;
	submission/plain) addr=27587 tls=none ;;
	submission/tls) addr=27465 tls=implicit ;;
	esac
	start_portico "$p-$m"
	log "$p $m: N=$N"
	"$WORK/bin/loadmail" -protocol "$p" -addr "127.0.0.1:$addr" -tls "$tls" -n "$N" -rate "$RATE" \
		-settle "$SETTLE" -pid "$PORTICO_PID" -json "$OUT/$p-$m.json" "${extra[@]}" >/dev/null
	stop_portico
}

for p in $PROTOCOLS; do
	for m in $MODES; do
		cell "$p" "$m"
	done
done

# Relay throughput: 10 MB submissions through one TLS session (implicit
# TLS to Portico, plaintext to the sink), DATA then BDAT.
for how in data bdat; do
	start_portico "relay-$how"
	flag=()
	[ "$how" = bdat ] && flag=(-bdat)
	log "relay: $MESSAGES x 10 MB by $how"
	"$WORK/bin/loadmail" -protocol submission -addr 127.0.0.1:27465 -tls implicit -n 1 -settle 1s \
		-pid "$PORTICO_PID" -messages "$MESSAGES" -message-size $((10 << 20)) "${flag[@]}" \
		-json "$OUT/relay-$how.json" >/dev/null
	stop_portico
done

printf '| protocol | mode | N | established | PSS KiB/session | RSS KiB/session | login p50/p99 ms |\n|---|---|---:|---:|---:|---:|---:|\n'
for p in $PROTOCOLS; do
	for m in $MODES; do
		python3 - "$OUT/$p-$m.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("| %s | %s | %d | %d | %.1f | %.1f | %.1f / %.1f |" % (r["protocol"], r["tls"], r["n"], r["established"],
      r["pss_kib_per_session"], r["rss_kib_per_session"], r["login_p50_ms"], r["login_p99_ms"]))
EOF
	done
done
printf '\n| 10 MB submissions | messages | MB/s | proxy CPU ms/GB |\n|---|---:|---:|---:|\n'
for how in data bdat; do
	python3 - "$OUT/relay-$how.json" "$how" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("| %s, TLS client, plaintext backend | %d | %.0f | %.0f |" % (sys.argv[2].upper(), r["messages"], r["relay_mb_per_s"], r["relay_cpu_ms_per_gb"]))
EOF
done
log "results in $OUT"
