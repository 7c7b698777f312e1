#!/usr/bin/env bash
# Idle-connection memory benchmark (not a test): how much resident memory (VmRSS) the proxy holds
# per idle proxied connection. N psql clients connect through `--via direct` to the simulator's
# RDS front (TLS verify-full and IAM login upstream, as in production) and stay idle: each psql
# reads its commands from a FIFO that nobody writes to, so after its login nothing moves. The
# proxy's RSS is read from /proc/PID/status once a few warm-up connections have come and gone
# (credentials, TLS config, thread stacks: one-time costs) and again once all N are logged in
# (the proxy's connect_duration_seconds_count on /metrics); (after - before) / N is the figure.
# Goal (issue 17): <= 32 KiB per connection.
#
# BASE_BIN=path measures a second binary (e.g. main's) the same way in the same run, rounds
# alternating, and reports the ratio against it; RSS is compared with the recorded result as a
# value (benches/record.py, benches/results.json; RECORD=1 writes this run's figures there).
#
#   ./benches/idle_rss.sh                             # N=200 ROUNDS=1, the release build of this tree
#   N=500 ROUNDS=3 BASE_BIN=/tmp/main/rds-auth-proxy ./benches/idle_rss.sh
#   RECORD=1 ./benches/idle_rss.sh                    # also record the figures
#
# The simulator's PostgreSQL allows 600 connections, so N may be up to ~590.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_tools psql

N=${N:-200}
ROUNDS=${ROUNDS:-1}
WARMUP=${WARMUP:-5}
PROXY_PORT=${PROXY_PORT:-16546}
HTTP_PORT=${HTTP_PORT:-16547}

if [ -z "${BIN:-}" ]; then
    cargo build --release --locked --quiet
    BIN=${CARGO_TARGET_DIR:-target}/release/rds-auth-proxy
fi
work=$(mktemp -d)
cleanup() {
    exec 3>&- 2>/dev/null || true
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$BIN" sim >"$work/sim.env" 2>"$work/sim.log" &
for _ in $(seq 600); do grep -qx ready "$work/sim.env" 2>/dev/null && break; sleep 0.1; done
grep -qx ready "$work/sim.env" || { cat "$work/sim.log" >&2; echo "simulator did not start" >&2; exit 1; }
eval "$(grep '^export ' "$work/sim.env")"
conninfo="host=127.0.0.1 port=$PROXY_PORT user=$SIM_DB_USER dbname=$SIM_DB_NAME sslmode=disable"

# logins_done -> the proxy's count of completed logins
logins_done() {
    curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" |
        awk '/^rds_auth_proxy_connect_duration_seconds_count/ { print $2; exit }'
}

# measure BIN -> prints the KiB per connection
measure() {
    local bin=$1
    "$bin" --target "$SIM_DB_ENDPOINT:$SIM_DB_PORT" --via direct --connect-addr "$SIM_DB_ADDR" \
        --ca-bundle "$SIM_CA_FILE" --port "$PROXY_PORT" --http-port "$HTTP_PORT" --quiet \
        >/dev/null 2>"$work/proxy.log" &
    local proxy=$!
    for _ in $(seq 300); do
        [ -n "$(logins_done 2>/dev/null)" ] && break
        kill -0 "$proxy" 2>/dev/null || { cat "$work/proxy.log" >&2; exit 1; }
        sleep 0.1
    done
    for _ in $(seq "$WARMUP"); do
        psql "$conninfo" -qAt -c 'select 1' >/dev/null || { cat "$work/proxy.log" >&2; exit 1; }
    done
    # The warm-up clients are gone once the proxy counts no open connection.
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | grep -q '^rds_auth_proxy_connections_open{.*} 0$' && break
        sleep 0.1
    done
    local before after done_target=$((WARMUP + N))
    before=$(awk '/^VmRSS:/ {print $2}' "/proc/$proxy/status")

    rm -f "$work/fifo"
    mkfifo "$work/fifo"
    exec 3<>"$work/fifo"   # a writer that never writes: the clients block on their input
    local clients=()
    for _ in $(seq "$N"); do
        psql "$conninfo" -qAt <"$work/fifo" >/dev/null 2>>"$work/psql.err" 3>&- &
        clients+=($!)
    done
    local deadline=$((SECONDS + 120))
    while [ "$(logins_done)" != "$done_target" ]; do
        if [ $SECONDS -gt $deadline ]; then
            echo "only $(logins_done) of $done_target logins after 120 s" >&2
            cat "$work/psql.err" "$work/proxy.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    # Logged in: the relay is waiting on both sides. Let the runtime settle, then read.
    sleep 1
    after=$(awk '/^VmRSS:/ {print $2}' "/proc/$proxy/status")
    exec 3>&-              # EOF for every client: they leave
    wait "${clients[@]}" 2>/dev/null || true
    kill "$proxy"
    wait "$proxy" 2>/dev/null || true
    echo "rss before=${before} KiB after=${after} KiB ($bin)" >&2
    awk -v b="$before" -v a="$after" -v n="$N" 'BEGIN { printf "%.1f\n", (a - b) / n }'
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "N=$N idle connections through --via direct, ROUNDS=$ROUNDS" >&2
: >"$work/ours"
: >"$work/base"
for round in $(seq "$ROUNDS"); do
    if [ -n "${BASE_BIN:-}" ]; then
        b=$(measure "$BASE_BIN")
        echo "round $round base: $b KiB/connection" >&2
        echo "$b" >>"$work/base"
    fi
    o=$(measure "$BIN")
    echo "round $round ours: $o KiB/connection" >&2
    echo "$o" >>"$work/ours"
done

ours=$(median <"$work/ours")
ratio=-
baseline=-
if [ -n "${BASE_BIN:-}" ]; then
    base=$(median <"$work/base")
    echo "base ($BASE_BIN): $base KiB/connection (median of $ROUNDS)"
    ratio=$(awk -v o="$ours" -v b="$base" 'BEGIN { printf "%.3f", o / b }')
    baseline=${BASE_LABEL:-base}
fi
echo
printf 'rss_per_conn\tRSS per idle connection (N=%s, goal <= 32 KiB)\t%s\tKiB\t%s\t%s\tvalue\tlower\n' \
    "$N" "$ours" "$ratio" "$baseline" |
    python3 benches/record.py idle_rss --note "${NOTE:-N=$N psql via direct, median of $ROUNDS}"
