#!/usr/bin/env bash
# The stalled-client scenario of issue 6, with the real binary and psql (not a test: it reports).
# One client asks for a 64 MiB result and does not read it for STALL seconds (default 40); every
# few seconds meanwhile a new psql connects and runs `select 1`. Prints each new connection's time,
# the proxy's SSM pool decisions, and whether the stalled client got every byte (sha256).
#
#   ./benches/stalled_client.sh                       # against the unpaced simulator
#   SIMFLAGS=--ssm-aws-limits ./benches/stalled_client.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q
BIN="${CARGO_TARGET_DIR:-target}/debug/rds-auth-proxy"
PORT="${PORT:-16543}"
work=$(mktemp -d)
cleanup() { kill "${PROXY:-}" "${SIM:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# shellcheck disable=SC2086
"$BIN" sim ${SIMFLAGS:-} > "$work/sim.env" 2> "$work/sim.log" &
SIM=$!
until grep -q '^ready$' "$work/sim.env"; do sleep 0.2; done
# shellcheck disable=SC1090
. <(grep -v '^ready$' "$work/sim.env")
"$BIN" --target "$SIM_DB_ENDPOINT:$SIM_DB_PORT" --via ssm --ssm-target "$SIM_SSM_TARGET" \
  --ca-bundle "$SIM_CA_FILE" --port "$PORT" > "$work/proxy.log" 2>&1 &
PROXY=$!
until grep -q 'ready for connections' "$work/proxy.log"; do sleep 0.2; done
export PGHOST=127.0.0.1 PGPORT="$PORT" PGUSER=db_user PGDATABASE=postgres
QUERY="COPY (SELECT repeat('x', 1023) FROM generate_series(1, 65536)) TO STDOUT"
start=$(date +%s.%N)
psql -Atc "$QUERY" | (sleep "${STALL:-40}"; sha256sum) > "$work/stalled.out" &
STALLED=$!
sleep 5
for i in 1 2 3 4 5 6; do
  t0=$(date +%s.%N)
  out=$(timeout 15 psql -Atc "select 1" 2>&1 || true)
  echo "new connection $i: '$out' in $(echo "$(date +%s.%N) - $t0" | bc) s"
  sleep 4
done
wait "$STALLED"
echo "stalled client: $(cut -c1-16 "$work/stalled.out") after $(echo "$(date +%s.%N) - $start" | bc) s"
echo "expected:       $(psql -Atc "$QUERY" | sha256sum | cut -c1-16)"
sed 's/\x1b\[[0-9;]*m//g' "$work/proxy.log" | grep -E 'congested|SSM session open' | cut -c1-160
