#!/usr/bin/env bash
# What `store.synchronous` costs: the gateway on bench/gateway.toml with `normal`, then with
# `full` (the default), each carrying the shared harness's SIPp call load (media anchored,
# every call's start, answer and end committed before the call goes on) at fixed rates;
# alternating ROUNDS times. Then, at a low rate under strace, the syncs of the store's files
# per call with each setting (what a power cut can lose: with `normal`, everything since the
# last checkpoint).
#   bench/durability.sh     RATES ("1000,2000,2500"), ROUNDS (2), STRACE_CALLS (1000)
# Needs the shared peer harness (../shared/peers), sipp and strace. Not part of the test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
rates="${RATES:-1000,2000,2500}"
rounds="${ROUNDS:-2}"
strace_calls="${STRACE_CALLS:-1000}"
cd "$root"
command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 2; }
cargo build --release --quiet
mkdir -p bench/out
gw=""
trap '[ -n "$gw" ] && kill -TERM "$gw" 2>/dev/null; wait 2>/dev/null || true' EXIT

# start SETTING: the gateway with store.synchronous = SETTING (PID in $gw), once it is healthy.
start() {
  sed "s/^path = \"bench\/out\/gateway.db\"/path = \"bench\/out\/gateway.db\"\nsynchronous = \"$1\"/" \
    bench/gateway.toml > "bench/out/durability-$1.toml"
  rm -f bench/out/gateway.db*
  RUST_LOG=warn target/release/hotline-gateway --config "bench/out/durability-$1.toml" \
    2> "bench/out/durability-$1.log" &
  gw=$!
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "gateway did not start" >&2
  exit 1
}
stop() { kill -TERM "$gw"; wait "$gw" 2>/dev/null || true; gw=""; }

for round in $(seq 1 "$rounds"); do
  for setting in normal full; do
    start "$setting"
    "$peers/sip-cps.sh" 5060 --label "durability-$setting" --target-pid "$gw" --rates "$rates" \
      --runs 1 --json "bench/out/durability-$setting.json" >/dev/null 2>&1 || true
    python3 - "bench/out/durability-$setting.json" "$setting" "$round" <<'PY'
import json, sys
for step in json.load(open(sys.argv[1]))["runs"][0]["steps"]:
    print(f"round {sys.argv[3]} synchronous={sys.argv[2]}: {step['rate']} calls/s "
          f"{'pass' if step['pass'] else 'FAIL'}, failed {step['fail_pct']} %, gateway CPU "
          f"{step['cpu_pct']['target']} % = {step['target_cpu_us_per_call']} us per call, "
          f"INVITE to 200 {step['invite_to_200_ms_avg']} ms")
PY
    stop
  done
done

# Syncs per call, counted by strace over STRACE_CALLS calls at 100 calls/s.
for setting in normal full; do
  start "$setting"
  strace -f -qq -c -e trace=fsync,fdatasync -o "bench/out/durability-$setting.strace" -p "$gw" &
  tracer=$!
  sleep 1
  "$peers/sip-cps.sh" 5060 --label "durability-strace-$setting" --rates 100 --step-secs \
    "$((strace_calls / 100))" --runs 1 >/dev/null 2>&1 || true
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  syncs=$(awk '/fsync|fdatasync/ { n += $4 } END { print n + 0 }' "bench/out/durability-$setting.strace")
  echo "synchronous=$setting: $syncs syncs for $strace_calls calls"
  stop
done
