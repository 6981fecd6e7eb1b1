#!/usr/bin/env bash
# Login CPU, side by side: runs only the login phase of loadimap (N logins
# at RATE per second, no settle, no relay test) against each variant in
# turn, REPS times, a fresh proxy process per run, and prints every run and
# the median per variant and mode. Variants run interleaved (rep 1 of all,
# then rep 2 ...) so that a machine whose load drifts affects them alike.
#
#   bench/logincpu.sh VARIANT...
#
# A VARIANT is "nginx" (nginx + libnginx-mod-mail and the auth_http daemon,
# whose CPU is reported apart) or "LABEL=COMMAND", a proxy command template
# with run.sh's placeholders ({PLAIN_PORT} {TLS_PORT} {SINK} {SINK_PORT}
# {SINK_TLS_PORT} {CERT} {KEY} {OUT}), and {BIN}, where the bench tools are
# (e.g. "{BIN}/timerslack 1000000 /tmp/portico proxy ...": the timer slack
# packaging/systemd's unit sets), run with bash -c "exec ..." and
# GOMAXPROCS exported, e.g.
#
#   bench/logincpu.sh nginx 'portico=/tmp/portico proxy --from imap://127.0.0.1:{PLAIN_PORT}
#     --from imaps://127.0.0.1:{TLS_PORT} --to imap://{SINK} --cert {CERT} --key {KEY}
#     --allow-plaintext --max-connections -1 --max-connections-per-ip -1'
#
# Variables (defaults): N (3000), RATE (500), REPS (3), MODES ("plain tls"),
# CERT_TYPE (ecdsa: P-256; rsa: RSA 2048), LOADIMAP_ARGS (extra loadimap
# flags, e.g. "-tls-curves p256" or "-resume"), SINK_ARGS (extra imapsink
# flags, e.g. -bare), NGINX_WORKERS (2), GOMAXPROCS (2), OUT
# (bench/results/logincpu-<UTC time>), QUIET_PCT / QUIET_WAIT (15 %, 60 s:
# wait at most this long for a quieter machine before each run).
#
# Each run's JSON has the proxy's CPU from /proc/PID/stat
# (proxy_cpu_ms_per_1000_logins) and from its threads' schedstat
# (..._schedstat); runs.tsv has one line per run with the load average
# at its start and the share of the machine other programs used meanwhile;
# summary.txt the medians and ranges, of all runs and of those during
# which other programs used at most QUIET_OTHER_PCT (10) % of the machine.
# "bench/logincpu.sh --summary DIR" prints them again from DIR's JSON.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

N=${N:-3000}
RATE=${RATE:-500}
REPS=${REPS:-3}
MODES=${MODES:-"plain tls"}
CERT_TYPE=${CERT_TYPE:-ecdsa}
LOADIMAP_ARGS=${LOADIMAP_ARGS:-}
SINK_ARGS=${SINK_ARGS:-}
NGINX_WORKERS=${NGINX_WORKERS:-2}
export GOMAXPROCS=${GOMAXPROCS:-2}
QUIET_PCT=${QUIET_PCT:-15}
QUIET_WAIT=${QUIET_WAIT:-60}
OUT=${OUT:-$HERE/results/logincpu-$(date -u +%Y%m%dT%H%M%SZ)}

[ $# -gt 0 ] || { sed -n '2,35p' "$0"; exit 2; }

log() { printf '%s logincpu: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "$*"; exit 1; }

# One line of runs.tsv from a run's JSON (rep: its repetition). other_pct
# is the CPU that neither the proxy, its auth daemon, the sink nor loadimap
# used during the login phase (other programs, kernel threads), in % of
# the machine.
HEADER=$(printf 'label\tmode\trep\tcpu_stat\tcpu_sched\tauth\testablished\tload1\thost_busy\tother_ms\tlogin_p50\tlogin_p99\tlogins_per_s\tcpu_slices\tother_pct')
row() {
	jq -r --arg rep "$2" '[.label, .mode, $rep,
		(.proxy_cpu_ms_per_1000_logins // 0 | round), (.proxy_cpu_ms_per_1000_logins_schedstat // 0 | round),
		(.auth_cpu_ms_per_1000_logins // 0 | round), .established, ((.note // "") | ltrimstr("load1 ")),
		(.host_busy_login_pct | round), (.other_login_cpu_ms | round), (.login_latency.p50_ms * 100 | round / 100),
		(.login_latency.p99_ms * 100 | round / 100), (.established / .login_phase_s | round),
		(.proxy_cpu_slices_per_login // 0 | . * 10 | round / 10),
		(.other_login_cpu_ms / (.login_phase_s * 10 * .num_cpu) | round)] | @tsv' "$1"
}

# Median and range per label and mode: of every run, and of the runs during
# which other programs used at most QUIET_OTHER_PCT (10) % of the machine.
summarize() {
	local q=${QUIET_OTHER_PCT:-10}
	{
		echo "== all runs"
		medians 1000 <"$1/runs.tsv"
		echo "== runs with other programs at most $q % of the machine"
		medians "$q" <"$1/runs.tsv"
	} | tee "$1/summary.txt"
}
medians() {
	printf 'label\tmode\truns\tCPU ms/1000 (stat) median [range]\tschedstat median [range]\tauth median\ton-CPU slices/login median\tlogins/s median\n'
	awk -F'\t' -v q="$1" 'NR > 1 && $15 <= q { k = $1 "\t" $2; n[k]++; v[k] = v[k] " " $4; s[k] = s[k] " " $5; a[k] = a[k] " " $6; c[k] = c[k] " " $14; r[k] = r[k] " " $13 }
	function med(str,   n, x, i, j, t) {
		n = split(str, x, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] + 0 < x[i] + 0) { t = x[i]; x[i] = x[j]; x[j] = t }
		return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
	}
	function rng(str,   n, x, i, lo, hi) {
		n = split(str, x, " "); lo = hi = x[1]
		for (i = 2; i <= n; i++) { if (x[i] + 0 < lo + 0) lo = x[i]; if (x[i] + 0 > hi + 0) hi = x[i] }
		return lo "-" hi
	}
	END {
		for (k in v) printf "%s\t%d\t%s [%s]\t%s [%s]\t%s\t%s\t%s\n", k, n[k], med(v[k]), rng(v[k]), med(s[k]), rng(s[k]), med(a[k]), med(c[k]), med(r[k])
	}' | sort
}

# bench/logincpu.sh --summary DIR: rebuild DIR/runs.tsv from its JSON files
# and print the medians again (e.g. with another QUIET_OTHER_PCT).
if [ "${1:-}" = --summary ]; then
	d=$2
	printf '%s\n' "$HEADER" >"$d/runs.tsv"
	for j in "$d"/*-*-*.json; do
		b=$(basename "$j" .json)
		row "$j" "${b##*-}" >>"$d/runs.tsv"
	done
	summarize "$d"
	exit 0
fi

WORK=$(mktemp -d /tmp/portico-logincpu.XXXXXX)
mkdir -p "$OUT" "$WORK/bin" "$WORK/nginx"
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

forget() {
	local keep=() p
	for p in "${STARTED[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	STARTED=("${keep[@]}")
}
listening() { ss -Hltn "( sport = :$1 )" 2>/dev/null | grep -q .; }
wait_listen() {
	for _ in $(seq 200); do
		listening "$1" && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
stop() {
	kill -TERM "$1" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	forget "$1"
}
busy_pct() {
	local a b n
	n=$(grep -c '^cpu[0-9]' /proc/stat)
	a=$(head -1 /proc/stat); sleep 2; b=$(head -1 /proc/stat)
	awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN {
		split(a, x); split(b, y); i = (y[5] - x[5]) + (y[6] - x[6]); w = 2 * 100 * n
		p = (w - i) * 100 / w; if (p < 0) p = 0; printf "%d\n", p }'
}
wait_quiet() {
	local waited=0 pct
	while :; do
		pct=$(busy_pct)
		[ "$pct" -le "$QUIET_PCT" ] && return 0
		[ "$waited" -ge "$QUIET_WAIT" ] && { log "machine still ${pct}% busy; measuring anyway"; return 0; }
		sleep 3; waited=$((waited + 5))
	done
}
declare -A TAKEN=()
pick_port() {
	local p=$1
	while listening "$p" || [ -n "${TAKEN[$p]:-}" ]; do p=$((p + 1)); done
	TAKEN[$p]=1
	echo "$p"
}
SINK_PORT=$(pick_port 24143)
SINK_TLS_PORT=$(pick_port 24993)
AUTH_PORT=$(pick_port 24080)
PLAIN_PORT=$(pick_port 25143)
TLS_PORT=$(pick_port 25993)

(cd "$ROOT" && go build -o "$WORK/bin/" ./bench/cmd/imapsink ./bench/cmd/authhttp ./bench/cmd/loadimap ./bench/cmd/timerslack)

CERT=$WORK/cert.pem
KEY=$WORK/key.pem
case $CERT_TYPE in
ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
rsa) newkey=(-newkey rsa:2048) ;;
*) die "CERT_TYPE must be ecdsa or rsa" ;;
esac
openssl req -x509 "${newkey[@]}" -nodes -days 30 -subj /CN=localhost \
	-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$KEY" -out "$CERT" 2>/dev/null
chmod 644 "$KEY" # nginx workers run as nobody (a throwaway key)

{
	echo "date: $(date -u +%FT%TZ)"
	echo "kernel: $(uname -r), cpus: $(nproc)"
	go version
	nginx -v 2>&1
	echo "N=$N RATE=$RATE REPS=$REPS MODES=$MODES CERT_TYPE=$CERT_TYPE GOMAXPROCS=$GOMAXPROCS"
	echo "LOADIMAP_ARGS=$LOADIMAP_ARGS SINK_ARGS=$SINK_ARGS"
	for v in "$@"; do echo "variant: $v"; done
} >"$OUT/env.txt"

# shellcheck disable=SC2086
"$WORK/bin/imapsink" -listen "127.0.0.1:$SINK_PORT" -tls-listen "127.0.0.1:$SINK_TLS_PORT" \
	-tls-cert "$CERT" -tls-key "$KEY" $SINK_ARGS >"$OUT/imapsink.log" 2>&1 &
SINK_PID=$!
STARTED+=("$SINK_PID")
wait_listen "$SINK_PORT" "$SINK_PID" || die "imapsink did not start"
"$WORK/bin/authhttp" -listen "127.0.0.1:$AUTH_PORT" -server 127.0.0.1 -port "$SINK_PORT" >"$OUT/authhttp.log" 2>&1 &
AUTH_PID=$!
STARTED+=("$AUTH_PID")
wait_listen "$AUTH_PORT" "$AUTH_PID" || die "authhttp did not start"

start_proxy() { # variant logfile -> PROXY_PID, AUTHARG
	local v=$1 cmd
	AUTHARG=()
	if [ "$v" = nginx ]; then
		sed -e "s#@PREFIX@#$WORK/nginx#g; s#@WORKERS@#$NGINX_WORKERS#g" \
			-e "s#@WORKER_CONNECTIONS@#20000#g; s#@AUTH_PORT@#$AUTH_PORT#g" \
			-e "s#@PLAIN_PORT@#$PLAIN_PORT#g; s#@TLS_PORT@#$TLS_PORT#g; s#@CERT@#$CERT#g; s#@KEY@#$KEY#g" \
			-e "s#@SSL_PROTOCOLS@#TLSv1.2 TLSv1.3#g" "$HERE/nginx/nginx.conf.tmpl" >"$WORK/nginx/nginx.conf"
		nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >>"$2" 2>&1 &
		AUTHARG=(-auth-pid "$AUTH_PID")
	else
		cmd=${v#*=}
		cmd=${cmd//\{PLAIN_PORT\}/$PLAIN_PORT}
		cmd=${cmd//\{TLS_PORT\}/$TLS_PORT}
		cmd=${cmd//\{SINK_PORT\}/$SINK_PORT}
		cmd=${cmd//\{SINK_TLS_PORT\}/$SINK_TLS_PORT}
		cmd=${cmd//\{SINK\}/127.0.0.1:$SINK_PORT}
		cmd=${cmd//\{CERT\}/$CERT}
		cmd=${cmd//\{KEY\}/$KEY}
		cmd=${cmd//\{OUT\}/$OUT}
		cmd=${cmd//\{BIN\}/$WORK/bin}
		bash -c "exec $cmd" >"$2" 2>&1 &
	fi
	PROXY_PID=$!
	STARTED+=("$PROXY_PID")
}

label_of() { [ "$1" = nginx ] && echo nginx || echo "${1%%=*}"; }

printf '%s\n' "$HEADER" >"$OUT/runs.tsv"
for rep in $(seq "$REPS"); do
	for v in "$@"; do
		label=$(label_of "$v")
		for mode in $MODES; do
			base=$OUT/$label-$mode-$rep
			start_proxy "$v" "$base.log"
			port=$PLAIN_PORT
			tlsflag=()
			if [ "$mode" = tls ]; then port=$TLS_PORT; tlsflag=(-tls); fi
			wait_listen "$port" "$PROXY_PID" || die "$label did not listen on $port (see $base.log)"
			sleep 1
			wait_quiet
			load1=$(cut -d' ' -f1 /proc/loadavg)
			log "rep $rep $label $mode (load $load1)"
			# shellcheck disable=SC2086
			"$WORK/bin/loadimap" -addr "127.0.0.1:$port" "${tlsflag[@]}" -n "$N" -rate "$RATE" \
				-settle 0s -noop-sample 1 -fetch-sessions 0 -q -label "$label" -mode "$mode" \
				-pid "$PROXY_PID" "${AUTHARG[@]}" -sink-pid "$SINK_PID" -note "load1 $load1" \
				-json "$base.json" $LOADIMAP_ARGS >"$base.txt"
			stop "$PROXY_PID"
			row "$base.json" "$rep" | tee -a "$OUT/runs.tsv" >&2
			sleep 2 # the sink sees the upstream connections close
		done
	done
done

summarize "$OUT"
log "results in $OUT"
