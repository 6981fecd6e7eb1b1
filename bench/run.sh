#!/usr/bin/env bash
# Runs the IMAP proxy comparison: nginx's mail proxy and, when PORTICO_CMD is
# set, Portico; for every N in $NS and every mode in $MODES (plain, tls).
# Prints one markdown table and keeps raw JSON and logs in $OUT.
# See bench/README.md for the variables and what each figure means.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

NS=${NS:-"1000 9000"}
MODES=${MODES:-"plain tls"}
RATE=${RATE:-500}
SETTLE=${SETTLE:-10s}
FETCH_SESSIONS=${FETCH_SESSIONS:-4}
FETCH_COUNT=${FETCH_COUNT:-128}
FETCH_SIZE=${FETCH_SIZE:-1048576}
LOADIMAP_ARGS=${LOADIMAP_ARGS:-}
TLS_MAX=${TLS_MAX:-1.3}
NGINX=${NGINX:-1}
NGINX_WORKERS=${NGINX_WORKERS:-2}
NGINX_WORKER_CONNECTIONS=${NGINX_WORKER_CONNECTIONS:-20000}
NGINX_SSL_PROTOCOLS=${NGINX_SSL_PROTOCOLS:-"TLSv1.2 TLSv1.3"}
DIRECT=${DIRECT:-1}
PORTICO_CMD=${PORTICO_CMD:-}
PORTICO_LABEL=${PORTICO_LABEL:-portico}
export GOMAXPROCS=${GOMAXPROCS:-2}
QUIET_PCT=${QUIET_PCT:-15}
QUIET_WAIT=${QUIET_WAIT:-180}
# Ports: unset ones are picked free, starting from these bases.
SINK_PORT=${SINK_PORT:-}
SINK_TLS_PORT=${SINK_TLS_PORT:-}
AUTH_PORT=${AUTH_PORT:-}
PLAIN_PORT=${PLAIN_PORT:-}
TLS_PORT=${TLS_PORT:-}
OUT=${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}

log() { printf '%s run.sh: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "$*"; exit 1; }

WORK=$(mktemp -d /tmp/portico-bench.XXXXXX)
mkdir -p "$OUT" "$WORK/bin" "$WORK/nginx"
declare -a STARTED=()

cleanup() {
	local rc=$?
	set +e
	for pid in "${STARTED[@]}"; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${STARTED[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	[ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget() { # drop a pid from STARTED
	local keep=() p
	for p in "${STARTED[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	STARTED=("${keep[@]}")
}

listening() { ss -Hltn "( sport = :$1 )" 2>/dev/null | grep -q .; }

wait_listen() { # port pid
	for _ in $(seq 200); do
		listening "$1" && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

stop() { # pid
	kill -TERM "$1" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	forget "$1"
}

busy_pct() { # whole-machine busy % over 2 s: 100 - idle share (idle is exact, busy fields are tick-sampled)
	local a b n
	n=$(grep -c '^cpu[0-9]' /proc/stat)
	a=$(head -1 /proc/stat); sleep 2; b=$(head -1 /proc/stat)
	awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN {
		split(a, x); split(b, y); i = (y[5] - x[5]) + (y[6] - x[6]); w = 2 * 100 * n
		p = (w - i) * 100 / w; if (p < 0) p = 0
		printf "%d\n", p }'
}

wait_quiet() {
	local waited=0 pct
	while :; do
		pct=$(busy_pct)
		[ "$pct" -le "$QUIET_PCT" ] && return 0
		if [ "$waited" -ge "$QUIET_WAIT" ]; then
			log "WARNING: machine still ${pct}% busy after ${QUIET_WAIT}s; measuring anyway (CPU figures will be noisy)"
			return 0
		fi
		[ "$waited" = 0 ] && log "machine ${pct}% busy (other programs); waiting up to ${QUIET_WAIT}s for <= ${QUIET_PCT}%"
		sleep 3; waited=$((waited + 5))
	done
}

declare -A TAKEN=()
pick_port() { # base -> first port >= base that nobody listens on
	local p=$1
	while listening "$p" || [ -n "${TAKEN[$p]:-}" ]; do p=$((p + 1)); done
	TAKEN[$p]=1
	echo "$p"
}
for v in SINK_PORT:24143 SINK_TLS_PORT:24993 AUTH_PORT:24080 PLAIN_PORT:25143 TLS_PORT:25993; do
	name=${v%%:*}
	if [ -z "${!name}" ]; then
		printf -v "$name" '%s' "$(pick_port "${v#*:}")"
	else
		listening "${!name}" && die "$name ${!name} is already in use"
		TAKEN[${!name}]=1
	fi
done
log "ports: proxy plain $PLAIN_PORT, proxy tls $TLS_PORT, sink $SINK_PORT/$SINK_TLS_PORT, auth_http $AUTH_PORT"

log "building bench tools into $WORK/bin"
(cd "$ROOT" && go build -o "$WORK/bin/" ./bench/cmd/...)

CERT=$WORK/cert.pem
KEY=$WORK/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
	-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
	-keyout "$KEY" -out "$CERT" 2>/dev/null
chmod 644 "$KEY" # nginx workers run as nobody (the key is a throwaway)

{
	echo "date: $(date -u +%FT%TZ)"
	echo "kernel: $(uname -r), cpus: $(nproc), nofile: $(ulimit -Sn)/$(ulimit -Hn)"
	echo "$(go version)"
	nginx -v 2>&1
	echo "NS=$NS MODES=$MODES RATE=$RATE SETTLE=$SETTLE FETCH=${FETCH_SESSIONS}x${FETCH_COUNT}x${FETCH_SIZE}B"
	echo "NGINX_WORKERS=$NGINX_WORKERS NGINX_SSL_PROTOCOLS=$NGINX_SSL_PROTOCOLS GOMAXPROCS=$GOMAXPROCS TLS_MAX=$TLS_MAX"
	echo "PORTICO_CMD=$PORTICO_CMD"
} >"$OUT/env.txt"

"$WORK/bin/imapsink" -listen "127.0.0.1:$SINK_PORT" -tls-listen "127.0.0.1:$SINK_TLS_PORT" \
	-tls-cert "$CERT" -tls-key "$KEY" -fetch-size "$FETCH_SIZE" >"$OUT/imapsink.log" 2>&1 &
SINK_PID=$!
STARTED+=("$SINK_PID")
wait_listen "$SINK_PORT" "$SINK_PID" || die "imapsink did not start (see $OUT/imapsink.log)"

"$WORK/bin/authhttp" -listen "127.0.0.1:$AUTH_PORT" -server 127.0.0.1 -port "$SINK_PORT" >"$OUT/authhttp.log" 2>&1 &
AUTH_PID=$!
STARTED+=("$AUTH_PID")
wait_listen "$AUTH_PORT" "$AUTH_PID" || die "authhttp did not start (see $OUT/authhttp.log)"

PROXY_PID=
start_nginx() {
	sed -e "s#@PREFIX@#$WORK/nginx#g; s#@WORKERS@#$NGINX_WORKERS#g" \
		-e "s#@WORKER_CONNECTIONS@#$NGINX_WORKER_CONNECTIONS#g; s#@AUTH_PORT@#$AUTH_PORT#g" \
		-e "s#@PLAIN_PORT@#$PLAIN_PORT#g; s#@TLS_PORT@#$TLS_PORT#g; s#@CERT@#$CERT#g; s#@KEY@#$KEY#g" \
		-e "s#@SSL_PROTOCOLS@#$NGINX_SSL_PROTOCOLS#g" \
		"$HERE/nginx/nginx.conf.tmpl" >"$WORK/nginx/nginx.conf"
	cp "$WORK/nginx/nginx.conf" "$OUT/nginx.conf"
	nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >>"$OUT/nginx.out" 2>&1 &
	PROXY_PID=$!
	STARTED+=("$PROXY_PID")
}

start_portico() { # log file
	local cmd=$PORTICO_CMD
	cmd=${cmd//\{PLAIN_PORT\}/$PLAIN_PORT}
	cmd=${cmd//\{TLS_PORT\}/$TLS_PORT}
	cmd=${cmd//\{SINK_PORT\}/$SINK_PORT}
	cmd=${cmd//\{SINK_TLS_PORT\}/$SINK_TLS_PORT}
	cmd=${cmd//\{SINK\}/127.0.0.1:$SINK_PORT}
	cmd=${cmd//\{AUTH_PORT\}/$AUTH_PORT}
	cmd=${cmd//\{CERT\}/$CERT}
	cmd=${cmd//\{KEY\}/$KEY}
	cmd=${cmd//\{OUT\}/$OUT}
	echo "$cmd" >>"$OUT/portico-cmd.txt"
	bash -c "exec $cmd" >"$1" 2>&1 &
	PROXY_PID=$!
	STARTED+=("$PROXY_PID")
}

declare -a RESULTS=()

run_load() { # label mode n addr json [extra loadimap args...]
	local label=$1 mode=$2 n=$3 addr=$4 json=$5
	shift 5
	local tlsflag=()
	[ "$mode" = tls ] && tlsflag=(-tls -tls-max "$TLS_MAX")
	wait_quiet
	log "$label $mode N=$n -> $addr"
	# shellcheck disable=SC2086
	"$WORK/bin/loadimap" -addr "$addr" "${tlsflag[@]}" -n "$n" -rate "$RATE" -settle "$SETTLE" \
		-fetch-sessions "$FETCH_SESSIONS" -fetch-count "$FETCH_COUNT" \
		-label "$label" -mode "$mode" -sink-pid "$SINK_PID" -json "$json" "$@" $LOADIMAP_ARGS \
		| tee "${json%.json}.txt"
	RESULTS+=("$json")
}

first_n=${NS%% *}
proxy_port() { [ "$1" = tls ] && echo "$TLS_PORT" || echo "$PLAIN_PORT"; }

if [ "$DIRECT" = 1 ]; then
	for mode in $MODES; do
		port=$SINK_PORT
		[ "$mode" = tls ] && port=$SINK_TLS_PORT
		run_load direct "$mode" "$first_n" "127.0.0.1:$port" "$OUT/direct-$mode-$first_n.json" \
			-note "no proxy: loadimap straight to imapsink (latency baseline)"
		sleep 2
	done
fi

PROXIES=()
[ "$NGINX" = 1 ] && PROXIES+=(nginx)
[ -n "$PORTICO_CMD" ] && PROXIES+=("$PORTICO_LABEL")
[ "${#PROXIES[@]}" -gt 0 ] || die "no proxy to measure (NGINX=0 and no PORTICO_CMD)"

for proxy in "${PROXIES[@]}"; do
	for mode in $MODES; do
		for n in $NS; do
			if [ "$proxy" = nginx ]; then
				start_nginx
				extra=(-pid "$PROXY_PID" -auth-pid "$AUTH_PID"
					-note "nginx $(nginx -v 2>&1 | sed 's#.*/##'), worker_processes $NGINX_WORKERS, ssl_protocols $NGINX_SSL_PROTOCOLS")
			else
				start_portico "$OUT/$proxy-$mode-$n.log"
				extra=(-pid "$PROXY_PID" -note "GOMAXPROCS=$GOMAXPROCS")
			fi
			port=$(proxy_port "$mode")
			wait_listen "$port" "$PROXY_PID" || die "$proxy did not listen on $port (see $OUT)"
			sleep 1
			run_load "$proxy" "$mode" "$n" "127.0.0.1:$port" "$OUT/$proxy-$mode-$n.json" "${extra[@]}"
			stop "$PROXY_PID"
			sleep 3 # let the sink see the upstream connections close
		done
	done
done

"$WORK/bin/benchtable" "${RESULTS[@]}" | tee "$OUT/table.md"
log "raw results in $OUT"
