#!/usr/bin/env bash
# The work-order link under load: RATE transfer stories per second (as bench/transfer.sh: a
# SIPp citizen calls 12345, the SIPp agent REFERs the call to 110, the SIPp 110 desk answers,
# the citizen hangs up after HOLD_MS), so the 12345 and 110 systems each get about seven events
# per call. Two clients follow the platforms' streams (`hotline-gateway events --delay`): the
# delay of each event, from the gateway's clock when its SIP event happened to the event's
# arrival at the client, p50/p99/max per platform. Meanwhile bench/workorder_unary.py times
# GetCall on calls carrying a ticket; it is also timed on a quiet gateway (one call in
# progress). The same load without any [[platform]] (no outbox, no waiting for commits) is run
# first, for the gateway's CPU and the REFER -> 110 ringing time.
#   bench/workorder.sh            RATE (200), SECS (15), HOLD_MS (2000), UNARY (1000 samples)
# Needs sipp, sqlite3, python3 with grpcio and grpcio-tools. Not part of the test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
rate="${RATE:-200}"
secs="${SECS:-15}"
hold="${HOLD_MS:-2000}"
unary="${UNARY:-1000}"
command -v sipp >/dev/null || { echo "needs sipp (apt-get install sip-tester)" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "needs sqlite3" >&2; exit 2; }
python3 -c 'import grpc, grpc_tools' || { echo "needs pip install grpcio grpcio-tools" >&2; exit 2; }
cargo build --release --quiet
mkdir -p bench/out/stubs
python3 -m grpc_tools.protoc -I proto --python_out=bench/out/stubs --grpc_python_out=bench/out/stubs \
  proto/hotline/workorder/v1/workorder.proto
bin=target/release/hotline-gateway
hz=$(getconf CLK_TCK)
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

# percentiles FILE: "p50 p99 max" of the numbers in FILE (milliseconds, from microseconds).
percentiles() {
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "- - -"; exit }
    p50 = v[int((NR - 1) * 0.50) + 1]; p99 = v[int((NR - 1) * 0.99) + 1]
    printf "%.2f %.2f %.2f\n", p50 / 1000, p99 / 1000, v[NR] / 1000 }'
}

# start_gateway CONFIG DB OUT: a fresh store, the gateway on CONFIG (its PID in $gw), once it
# answers /healthz.
start_gateway() {
  rm -rf "$3" && mkdir -p "$3"
  rm -f "$2" "$2-wal" "$2-shm"
  RUST_LOG=warn "$bin" --config "$1" 2> "$3/gateway.log" &
  gw=$!
  pids=("$gw")
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
}

# run NAME CONFIG DB: one load; prints a row.
run() {
  local name=$1 config=$2 db=$3 out="bench/out/workorder-$1"
  start_gateway "$config" "$db" "$out"
  local clients=()
  if [ "$name" = platforms ]; then
    for platform in 12345 110; do
      "$bin" --config "$config" events --platform "$platform" --delay > "$out/events-$platform.txt" 2>&1 &
      clients+=($!)
    done
    pids+=("${clients[@]}")
  fi
  local calls=$((rate * secs))
  sipp -sf tests/sipp/police_uas.xml -i 127.0.0.1 -p 5090 -m "$calls" -timeout 120s \
    -timeout_error -nostdin >/dev/null 2>&1 &
  local police=$!
  sipp -sf tests/sipp/agent_refer.xml -key transfer_to 110 -i 127.0.0.1 -p 5080 -m "$calls" \
    -timeout 120s -timeout_error -nostdin >/dev/null 2>&1 &
  local agent=$!
  pids+=("$police" "$agent")
  sleep 0.5
  local before t0 t1 after unary_line="-"
  before=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  t0=$(date +%s%3N)
  local start_ms=$t0
  if [ "$name" = platforms ]; then
    PYTHONPATH=bench/out/stubs python3 bench/workorder_unary.py 127.0.0.1:50051 \
      bench-token-of-the-12345-system "$unary" > "$out/unary.txt" 2>&1 &
    local timer=$!
  fi
  sipp 127.0.0.1:5060 -sf bench/sipp/citizen.xml -s 12345 -i 127.0.0.1 -p 5070 -r "$rate" \
    -m "$calls" -l "$calls" -d "$hold" -timeout 120s -timeout_error -nostdin -trace_stat \
    -stf "$out/citizen.csv" >/dev/null 2>&1 || true
  t1=$(date +%s%3N)
  after=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  if [ "$name" = platforms ]; then
    wait "$timer" || true
    unary_line=$(cat "$out/unary.txt")
  fi
  for _ in $(seq 1 50); do
    kill -0 "$agent" 2>/dev/null || kill -0 "$police" 2>/dev/null || break
    sleep 0.2
  done
  # Let the clients take the last events, then stop everything.
  sleep 1
  kill -TERM "$agent" "$police" "${clients[@]}" 2>/dev/null || true
  kill -TERM "$gw" 2>/dev/null || true
  wait "$gw" 2>/dev/null || true
  pids=()
  local failed answered p50 p99
  failed=$(tail -1 "$out/citizen.csv" | awk -F';' '{
    for (i = 1; i <= NF; i++) if (header[i] == "FailedCall(C)") print $i }
    BEGIN { getline line < "'"$out/citizen.csv"'"; n = split(line, header, ";") }')
  read -r answered p50 p99 < <(sqlite3 -separator ' ' "$db" "
    WITH l AS (SELECT ringing_at - requested_at AS d FROM linkages
               WHERE requested_at >= $start_ms AND outcome = 'answered'),
         n AS (SELECT COUNT(*) AS c FROM l)
    SELECT (SELECT c FROM n),
           (SELECT d FROM l ORDER BY d LIMIT 1 OFFSET (SELECT c / 2 FROM n)),
           (SELECT d FROM l ORDER BY d LIMIT 1 OFFSET (SELECT (c * 99) / 100 FROM n));")
  local cpu
  cpu=$(awk -v b="$before" -v a="$after" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
    'BEGIN { printf "%.1f", (a - b) / hz / ((t1 - t0) / 1000) * 100 }')
  echo "== $name: $calls calls at $rate/s: failed ${failed:-?}, transferred ${answered:-0}, gateway CPU $cpu %, REFER -> 110 ringing p50 ${p50:-?} ms p99 ${p99:-?} ms"
  if [ "$name" = platforms ]; then
    for platform in 12345 110; do
      local file="$out/events-$platform.txt"
      grep -o 'delay_us=[0-9]*' "$file" | cut -d= -f2 > "$out/delays-$platform.txt" || true
      local count
      count=$(wc -l < "$out/delays-$platform.txt")
      read -r d50 d99 dmax < <(percentiles "$out/delays-$platform.txt")
      echo "   platform $platform: $count events, SIP event -> client p50 $d50 ms p99 $d99 ms max $dmax ms"
    done
    echo "   GetCall with a ticket: $unary_line"
  fi
}

# quiet: GetCall with a ticket on a gateway with one call in progress and nothing else to do.
quiet() {
  local out=bench/out/workorder-quiet
  start_gateway bench/workorder.toml bench/out/workorder.db "$out"
  sipp -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5080 -m 1 -nostdin >/dev/null 2>&1 &
  local agent=$!
  sipp 127.0.0.1:5060 -sf bench/sipp/citizen.xml -s 12345 -i 127.0.0.1 -p 5070 -m 1 -d 120000 \
    -nostdin >/dev/null 2>&1 &
  local citizen=$!
  pids+=("$agent" "$citizen")
  local line
  line=$(PYTHONPATH=bench/out/stubs python3 bench/workorder_unary.py 127.0.0.1:50051 \
    bench-token-of-the-12345-system "$unary" 2>&1)
  kill -TERM "$citizen" "$agent" "$gw" 2>/dev/null || true
  wait "$gw" 2>/dev/null || true
  pids=()
  echo "== quiet (one call in progress): GetCall with a ticket: $line"
}

echo "work-order benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
quiet
sleep 2
run none bench/transfer.toml bench/out/transfer.db
sleep 3
run platforms bench/workorder.toml bench/out/workorder.db
