#!/usr/bin/env bash
# Soak benchmark (not a test, not CI): CLIENTS concurrent pgbench clients run `SELECT 1;` in a loop
# through ONE SSM session of rds-auth-proxy (`--via ssm --ssm-sessions 1`) for DURATION seconds,
# against the simulator with message drops, duplicates and reordering on, every data channel
# WebSocket reset SSM_KILL_AFTER after it opened (the proxy must resume it), and AWS's limits
# (--ssm-aws-limits: 1024-byte agent payloads, 1 ms agent pacing, a gateway that cuts a client
# sending > 1000 data messages/s).
#
# Reported:
#  * errors: pgbench's failed transactions + aborted clients (goal 0) and the proxy's ERROR lines;
#  * the proxy's RSS (VmRSS) at the start of the load, the middle and the end (goal: flat);
#  * p50/p99 query latency through the proxy vs DIRECT, measured in the same run just before the
#    soak: the same pgbench (same clients, same rate) straight to the simulated RDS front — TLS
#    verify-full against the simulator's CA, an IAM token as PGPASSWORD, no proxy and no tunnel.
#    Latency is pgbench's per-transaction time, which under a fixed rate (-R) counts from the
#    scheduled start (so it includes queueing); "service" subtracts pgbench's schedule lag.
#
#   ./benches/soak.sh                          # 10 minutes, 500 clients, 250 queries/s in all
#   DURATION=60 ./benches/soak.sh              # the short version
#   CLIENTS=500 RATE=400 DURATION=600 BASELINE=60 PROFILE=release ./benches/soak.sh
#
# The simulator's PostgreSQL allows 600 connections, so CLIENTS may be up to ~590.
#
# The headline figures are also compared with the last recorded result (benches/results.json, by
# benches/record.py): errors and RSS growth as values, p50/p99 service time as ratios to DIRECT in
# the same run. RECORD=1 writes this run's figures there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_tools psql pgbench

DURATION=${DURATION:-600}
CLIENTS=${CLIENTS:-500}
RATE=${RATE:-250}
BASELINE=${BASELINE:-60}
THREADS=${THREADS:-4}
PROFILE=${PROFILE:-debug}
PROXY_PORT=${PROXY_PORT:-16545}
DROP=${DROP:-0.01}
DUPLICATE=${DUPLICATE:-0.01}
REORDER=${REORDER:-0.01}
SSM_KILL_AFTER=${SSM_KILL_AFTER:-30s}
SEED=${SEED:-7}

if [ "$PROFILE" = release ]; then
    cargo build --release --locked --quiet
else
    cargo build --locked --quiet
fi
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE/rds-auth-proxy
work=$(mktemp -d)
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

sim_flags=(--ssm-aws-limits --ssm-drop-rate "$DROP" --ssm-duplicate-rate "$DUPLICATE"
    --ssm-reorder-rate "$REORDER" --ssm-kill-ws-after "$SSM_KILL_AFTER" --ssm-seed "$SEED")
"$BIN" sim "${sim_flags[@]}" >"$work/sim.env" 2>"$work/sim.log" &
for _ in $(seq 1200); do grep -qx ready "$work/sim.env" 2>/dev/null && break; sleep 0.1; done
grep -qx ready "$work/sim.env" || { cat "$work/sim.log" >&2; echo "simulator did not start" >&2; exit 1; }
eval "$(grep '^export ' "$work/sim.env")"
front_port=${SIM_DB_ADDR##*:}

"$BIN" --target "$SIM_DB_ENDPOINT:$SIM_DB_PORT" --via ssm --ssm-target "$SIM_SSM_TARGET" \
    --ssm-sessions 1 --ca-bundle "$SIM_CA_FILE" --port "$PROXY_PORT" --quiet 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT") 2>/dev/null && break
    kill -0 "$proxy_pid" 2>/dev/null || { cat "$work/proxy.log" >&2; exit 1; }
    sleep 0.1
done
echo 'SELECT 1;' >"$work/select1.sql"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$proxy_pid/status"; }

# run NAME CONNINFO SECONDS -> pgbench output in $work/NAME.out, per-transaction logs NAME.*
run() {
    local name=$1 conninfo=$2 seconds=$3
    pgbench -n -f "$work/select1.sql" -c "$CLIENTS" -j "$THREADS" -R "$RATE" -T "$seconds" \
        --log --log-prefix="$work/$name" "$conninfo" >"$work/$name.out" 2>&1 || true
}

# pct NAME COLUMN-EXPRESSION -> "p50 p99" in ms over every transaction of NAME's logs
pct() {
    cat "$work/$1".* 2>/dev/null | awk "{ print ($2) / 1000 }" | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR == 0) { print "n/a n/a"; exit }
              i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
              i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
              printf "%.2f %.2f\n", v[i50], v[i99] }'
}

summary() {
    local name=$1 failed aborted tx
    tx=$(cat "$work/$name".* 2>/dev/null | wc -l)
    failed=$(awk -F': ' '/number of failed transactions/ {split($2, a, " "); print a[1]}' "$work/$name.out")
    aborted=$(grep -c 'aborted' "$work/$name.out" || true)
    echo "$name transactions=$tx failed=${failed:-?} aborted_clients=$aborted"
}

token=$("$BIN" token --hostname "$SIM_DB_ENDPOINT" --port "$SIM_DB_PORT" --username "$SIM_DB_USER")
direct="host=$SIM_DB_ENDPOINT hostaddr=127.0.0.1 port=$front_port user=$SIM_DB_USER dbname=$SIM_DB_NAME sslmode=verify-full sslrootcert=$SIM_CA_FILE"
via_proxy="host=127.0.0.1 port=$PROXY_PORT user=$SIM_DB_USER dbname=$SIM_DB_NAME sslmode=disable"

echo "baseline: $CLIENTS clients, $RATE queries/s, ${BASELINE}s, direct to the simulated RDS front"
PGPASSWORD=$token run direct "$direct" "$BASELINE"

echo "soak: $CLIENTS clients, $RATE queries/s, ${DURATION}s through one SSM session (${sim_flags[*]})"
rss0=$(rss_kib)
run ssm "$via_proxy" "$DURATION" &
bench_pid=$!
start=$(date +%s)
: >"$work/rss"
while kill -0 "$bench_pid" 2>/dev/null; do
    echo "$(($(date +%s) - start)) $(rss_kib)" >>"$work/rss"
    sleep 5
done
wait "$bench_pid" || true

# RSS: before any client; at the first sample with every client connected (10 s in); middle; end.
at() { awk -v t="$1" '$1 >= t { print $2; exit }' "$work/rss"; }
rss_start=$(at 10)
rss_mid=$(at $((DURATION / 2)))
rss_end=$(awk 'END { print $2 }' "$work/rss")
rss_max=$(sort -k2 -g "$work/rss" | awk 'END { print $2 }')

echo
echo "== soak result (DURATION=$DURATION CLIENTS=$CLIENTS RATE=$RATE SEED=$SEED PROFILE=$PROFILE) =="
summary direct
summary ssm
echo "proxy ERROR lines: $(grep -c 'ERROR' "$work/proxy.log" || true), WARN lines: $(grep -c 'WARN' "$work/proxy.log" || true)"
grep -E 'ERROR|WARN' "$work/proxy.log" | sed 's/^.*\(WARN\|ERROR\)/\1/' | cut -c1-160 | sort | uniq -c | sort -rn | head -5
echo "SSM data channel losses the proxy resumed from: $(grep -c 'resuming the session' "$work/proxy.log" || true)"
echo "proxy RSS KiB: idle=$rss0 start=$rss_start mid=$rss_mid end=$rss_end max=$rss_max"
read -r d50 d99 < <(pct direct '$3')
read -r s50 s99 < <(pct ssm '$3')
read -r ds50 ds99 < <(pct direct '$3 - $7')
read -r ss50 ss99 < <(pct ssm '$3 - $7')
echo "latency ms (from scheduled start): direct p50=$d50 p99=$d99 | via SSM p50=$s50 p99=$s99"
echo "service ms (minus schedule lag):   direct p50=$ds50 p99=$ds99 | via SSM p50=$ss50 p99=$ss99"
tail -n 12 "$work/ssm.out"

ssm_failed=$(awk -F': ' '/number of failed transactions/ {split($2, a, " "); print a[1]}' "$work/ssm.out")
ssm_aborted=$(grep -c 'aborted' "$work/ssm.out" || true)
echo
awk -v f="${ssm_failed:-0}" -v a="$ssm_aborted" -v r0="$rss_start" -v r1="$rss_end" \
    -v d50="$ds50" -v s50="$ss50" -v d99="$ds99" -v s99="$ss99" 'BEGIN {
    printf "errors\tfailed transactions + aborted clients (goal 0)\t%d\terrors\t-\t-\tvalue\tlower\n", f + a
    printf "rss_growth\tproxy RSS end - start (goal: flat)\t%d\tKiB\t-\t-\tvalue\tlower\n", r1 - r0
    if (d50 + 0 > 0 && s50 + 0 > 0) printf "service_p50\tservice time p50 via SSM\t%.2f\tms\t%.3f\tdirect\tratio\tlower\n", s50, s50 / d50
    if (d99 + 0 > 0 && s99 + 0 > 0) printf "service_p99\tservice time p99 via SSM\t%.2f\tms\t%.3f\tdirect\tratio\tlower\n", s99, s99 / d99
}' | python3 benches/record.py soak --note "DURATION=$DURATION CLIENTS=$CLIENTS RATE=$RATE SEED=$SEED PROFILE=$PROFILE"
