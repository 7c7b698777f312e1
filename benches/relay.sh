#!/usr/bin/env bash
# Relay benchmark (not a test): pgbench `SELECT 1;` through rds-auth-proxy vs straight to the
# simulated RDS front (TLS verify-full, an IAM token as PGPASSWORD) vs a plain L4 relay (socat,
# TCP_NODELAY) on the same path, in alternating rounds within one run. Reports medians and ratios;
# machines here are noisy, so only same-run ratios mean anything.
#
# The proxy's figures are also compared with the last recorded result (benches/results.json, by
# benches/record.py): as same-run ratios (proxy/socat for TPS and latency, proxy/direct for the
# connection rate), never as absolute numbers. RECORD=1 writes this run's figures there.
#
# The connection rate is also measured through a second proxy started with --allow-local-users,
# which skips the per-connection lookup of the loopback client's OS user (issue 18): the ratio
# proxy/open is what that check costs (goal >= 0.95).
#
#   ./benches/relay.sh                 # ROUNDS=3 DURATION=8 by default
#   ROUNDS=5 DURATION=15 ./benches/relay.sh
#   RECORD=1 ./benches/relay.sh        # also record the figures
#   MODES=conn ./benches/relay.sh      # only the connection rate (default: c4 c1 conn)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_tools psql pgbench socat

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
PROXY_PORT=${PROXY_PORT:-16543}
SOCAT_PORT=${SOCAT_PORT:-16544}
OPEN_PORT=${OPEN_PORT:-16545}
MODES=${MODES:-c4 c1 conn}

if [ -z "${BIN:-}" ]; then   # BIN=path measures another build (e.g. main's)
    cargo build --release --locked --quiet
    BIN=${CARGO_TARGET_DIR:-target}/release/rds-auth-proxy
fi
work=$(mktemp -d)
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$BIN" sim >"$work/sim.env" 2>"$work/sim.log" &
for _ in $(seq 600); do grep -qx ready "$work/sim.env" 2>/dev/null && break; sleep 0.1; done
grep -qx ready "$work/sim.env" || { cat "$work/sim.log" >&2; echo "simulator did not start" >&2; exit 1; }
eval "$(grep '^export ' "$work/sim.env")"
front_port=${SIM_DB_ADDR##*:}

"$BIN" --target "$SIM_DB_ENDPOINT:$SIM_DB_PORT" --via direct --connect-addr "$SIM_DB_ADDR" \
    --ca-bundle "$SIM_CA_FILE" --port "$PROXY_PORT" --quiet &
"$BIN" --target "$SIM_DB_ENDPOINT:$SIM_DB_PORT" --via direct --connect-addr "$SIM_DB_ADDR" \
    --ca-bundle "$SIM_CA_FILE" --port "$OPEN_PORT" --allow-local-users --quiet &
socat "TCP-LISTEN:$SOCAT_PORT,bind=127.0.0.1,fork,reuseaddr,nodelay" "TCP:$SIM_DB_ADDR,nodelay" &
echo 'SELECT 1;' >"$work/select1.sql"
sleep 1

conninfo() {
    case $1 in
        direct) echo "host=$SIM_DB_ENDPOINT hostaddr=127.0.0.1 port=$front_port user=$SIM_DB_USER dbname=$SIM_DB_NAME sslmode=verify-full sslrootcert=$SIM_CA_FILE" ;;
        socat)  echo "host=$SIM_DB_ENDPOINT hostaddr=127.0.0.1 port=$SOCAT_PORT user=$SIM_DB_USER dbname=$SIM_DB_NAME sslmode=verify-full sslrootcert=$SIM_CA_FILE" ;;
        proxy)  echo "host=127.0.0.1 port=$PROXY_PORT user=$SIM_DB_USER dbname=$SIM_DB_NAME sslmode=disable" ;;
        open)   echo "host=127.0.0.1 port=$OPEN_PORT user=$SIM_DB_USER dbname=$SIM_DB_NAME sslmode=disable" ;;
    esac
}

# bench PATH MODE -> prints "tps latency_ms"
bench() {
    local path=$1 mode=$2 args
    case $mode in
        c4) args=(-M prepared -c 4 -j 2) ;;
        c1) args=(-M prepared -c 1 -j 1) ;;
        conn) args=(-C -c 4 -j 2) ;;
    esac
    local token
    token=$("$BIN" token --hostname "$SIM_DB_ENDPOINT" --port "$SIM_DB_PORT" --username "$SIM_DB_USER")
    PGPASSWORD=$token pgbench -n -f "$work/select1.sql" "${args[@]}" -T "$DURATION" "$(conninfo "$path")" \
        >"$work/out" 2>&1 || { cat "$work/out" >&2; exit 1; }
    local tps lat
    tps=$(awk '/^tps = /{print $3; exit}' "$work/out")
    lat=$(awk '/^latency average = /{print $4; exit}' "$work/out")
    echo "$tps $lat"
}

echo "rounds=$ROUNDS duration=${DURATION}s per run; paths alternate within each round" >&2
: >"$work/results"
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        paths="direct socat proxy"
        # proxy and open back to back, in turns first, so drift on a shared machine hits both.
        if [ "$mode" = conn ]; then
            if [ $((round % 2)) = 1 ]; then paths="direct socat proxy open"; else paths="direct socat open proxy"; fi
        fi
        for path in $paths; do
            read -r tps lat < <(bench "$path" "$mode")
            echo "$mode $path $tps $lat" >>"$work/results"
            printf 'round %s %-5s %-7s tps=%-10s latency=%s ms\n' "$round" "$mode" "$path" "$tps" "$lat" >&2
        done
    done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
get() { awk -v m="$1" -v p="$2" -v f="$3" '$1==m && $2==p {print $f}' "$work/results" | median; }

d4=$(get c4 direct 3); s4=$(get c4 socat 3); p4=$(get c4 proxy 3)
d1=$(get c1 direct 4); s1=$(get c1 socat 4); p1=$(get c1 proxy 4)
dc=$(get conn direct 3); sc=$(get conn socat 3); pc=$(get conn proxy 3); oc=$(get conn open 3)
# The owner check's cost: the median of the per-round ratios proxy/open (each pair measured
# back to back), steadier than the ratio of the medians.
po=$(awk '$1=="conn" && $2=="proxy" {p[++i]=$3} $1=="conn" && $2=="open" {o[++j]=$3} END {for (k=1; k<=i; k++) print p[k]/o[k]}' "$work/results" | median)
if [ "$MODES" = conn ]; then
    echo
    echo "median of $ROUNDS rounds, connections/s, -C -c 4"
    awk -v dc="$dc" -v sc="$sc" -v pc="$pc" -v oc="$oc" -v po="$po" 'BEGIN {
        printf "direct %.0f  socat %.0f  proxy %.0f  proxy --allow-local-users %.0f\n", dc, sc, pc, oc
        printf "-C conn rate:  proxy/direct %.2f   owner check: proxy/open %.3f (median of per-round ratios; goal >= 0.95)\n", pc/dc, po
    }'
    exit 0
fi
echo
echo "median of $ROUNDS rounds"
awk -v d4="$d4" -v s4="$s4" -v p4="$p4" -v d1="$d1" -v s1="$s1" -v p1="$p1" -v dc="$dc" -v sc="$sc" -v pc="$pc" -v po="$po" 'BEGIN {
    printf "%-34s %10s %10s %10s\n", "", "direct", "socat", "proxy"
    printf "%-34s %10.0f %10.0f %10.0f\n", "TPS, -M prepared -c 4", d4, s4, p4
    printf "%-34s %10.3f %10.3f %10.3f\n", "latency ms, -M prepared -c 1", d1, s1, p1
    printf "%-34s %10.0f %10.0f %10.0f\n", "connections/s, -C -c 4", dc, sc, pc
    print ""
    printf "c4 TPS:        proxy/direct %.2f  socat/direct %.2f  proxy/socat %.2f   (goal proxy/socat >= 1)\n", p4/d4, s4/d4, p4/s4
    printf "c1 added RTT:  proxy %+.0f us  socat %+.0f us                          (goal proxy <= socat)\n", (p1-d1)*1000, (s1-d1)*1000
    printf "-C conn rate:  proxy/direct %.2f  socat/direct %.2f                     (goal proxy/direct >= 0.8)\n", pc/dc, sc/dc
    printf "owner check:   proxy/open %.3f (open: --allow-local-users, no lookup; median of per-round ratios) (goal >= 0.95)\n", po
}'
echo
awk -v d4="$d4" -v s4="$s4" -v p4="$p4" -v s1="$s1" -v p1="$p1" -v dc="$dc" -v pc="$pc" 'BEGIN {
    printf "c4_tps\tproxy TPS, -M prepared -c 4 (goal >= 1.1x socat)\t%.0f\ttps\t%.3f\tsocat\tratio\thigher\n", p4, p4/s4
    printf "c1_latency\tproxy latency, -M prepared -c 1\t%.3f\tms\t%.3f\tsocat\tratio\tlower\n", p1, p1/s1
    printf "conn_rate\tproxy connections/s, -C -c 4 (goal >= 0.8x direct)\t%.0f\tconn/s\t%.3f\tdirect\tratio\thigher\n", pc, pc/dc
}' | python3 benches/record.py relay --note "${NOTE:-ROUNDS=$ROUNDS DURATION=$DURATION, medians}"
