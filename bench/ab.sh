#!/usr/bin/env bash
# CPU per relayed packet of this build against another gateway binary (an earlier commit's),
# with rtpengine as the yardstick, alternating all three in one run at equal load:
#   bench/ab.sh BASELINE_BINARY [CALLS] [ROUNDS]      default 800 calls, 3 rounds
# The signalling path instead (the shared harness's SIPp call load, media anchored, at a fixed
# rate; no rtpengine): gateway CPU and failed calls of each build, alternating:
#   AB=sip bench/ab.sh BASELINE_BINARY [RATE] [ROUNDS]  default 1000 calls/s, 3 rounds
# Build the baseline with e.g.: git worktree add /tmp/base <commit> &&
#   (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release)
# Needs the shared peer harness (../shared/peers) and rtpengine. Not part of the test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
baseline="${1:?usage: bench/ab.sh BASELINE_BINARY [CALLS] [ROUNDS]}"
calls="${2:-$([ "${AB:-rtp}" = sip ] && echo 1000 || echo 800)}"
rounds="${3:-3}"
cd "$root"
cargo build --release --quiet
mkdir -p bench/out
# start_gateway WHICH: the baseline's or this build's gateway on bench/gateway.toml (PID in
# $gw), once it answers /healthz.
start_gateway() {
  local binary=target/release/hotline-gateway
  [ "$1" = baseline ] && binary="$baseline"
  rm -f bench/out/gateway.db*
  RUST_LOG=warn "$binary" --config bench/gateway.toml 2> "bench/out/ab-$1.log" &
  gw=$!
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
}
if [ "${AB:-rtp}" = sip ]; then
  for round in $(seq 1 "$rounds"); do
    echo "round $round"
    for which in baseline this; do
      start_gateway "$which"
      "$peers/sip-cps.sh" 5060 --label "ab-$which" --target-pid "$gw" --rates "$calls" \
        --runs 1 --json "bench/out/ab-$which.json" >/dev/null 2>&1 || true
      python3 - "bench/out/ab-$which.json" "$which" <<'PY'
import json, sys
step = json.load(open(sys.argv[1]))["runs"][0]["steps"][0]
print(f"{sys.argv[2]}: {step['rate']} calls/s, {step['calls']} calls, failed {step['failed']:.0f} "
      f"({step['fail_pct']} %), gateway CPU {step['cpu_pct']['target']} % = "
      f"{step['target_cpu_us_per_call']} us per call, INVITE to 200 {step['invite_to_200_ms_avg']} ms")
PY
      kill -TERM "$gw"
      wait "$gw" 2>/dev/null || true
    done
  done
  exit 0
fi
"$peers/peer.sh" rtpengine --ng-port 2223 --threads 2 --secs 3600 > bench/out/rtpengine.pid &
for _ in $(seq 1 50); do [ -s bench/out/rtpengine.pid ] && break; sleep 0.1; done
rtpe="$(head -1 bench/out/rtpengine.pid)"
trap 'kill -TERM "$rtpe" 2>/dev/null || true' EXIT
sleep 2
per_packet() { grep -E '^\[' | sed -E 's/.*\[([a-z-]+) run.*us\/pkt=([0-9.]+).*/\1 \2 us\/packet/'; }
for round in $(seq 1 "$rounds"); do
  echo "round $round"
  "$peers/rtp-relay.sh" ng --ng-port 2223 --label rtpengine-ng --target-pid "$rtpe" \
    --calls "$calls" --runs 1 --measure 15 2>&1 | per_packet
  for which in baseline this; do
    start_gateway "$which"
    "$peers/rtp-relay.sh" sip --target-port 5060 --label "$which" --target-pid "$gw" \
      --calls "$calls" --runs 1 --measure 15 2>&1 | per_packet
    kill -TERM "$gw"
    wait "$gw" 2>/dev/null || true
  done
done
