#!/usr/bin/env bash
# CPU per relayed packet of this build against another gateway binary (an earlier commit's),
# with rtpengine as the yardstick, alternating all three in one run at equal load:
#   bench/ab.sh BASELINE_BINARY [CALLS] [ROUNDS]      default 800 calls, 3 rounds
# Build the baseline with e.g.: git worktree add /tmp/base <commit> &&
#   (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release)
# Needs the shared peer harness (../shared/peers) and rtpengine. Not part of the test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
baseline="${1:?usage: bench/ab.sh BASELINE_BINARY [CALLS] [ROUNDS]}"
calls="${2:-800}"
rounds="${3:-3}"
cd "$root"
cargo build --release --quiet
mkdir -p bench/out
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
    binary=target/release/hotline-gateway
    [ "$which" = baseline ] && binary="$baseline"
    rm -f bench/out/gateway.db*
    RUST_LOG=warn "$binary" --config bench/gateway.toml 2> "bench/out/ab-$which.log" &
    gw=$!
    for _ in $(seq 1 100); do
      curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
      sleep 0.1
    done
    "$peers/rtp-relay.sh" sip --target-port 5060 --label "$which" --target-pid "$gw" \
      --calls "$calls" --runs 1 --measure 15 2>&1 | per_packet
    kill -TERM "$gw"
    wait "$gw" 2>/dev/null || true
  done
done
