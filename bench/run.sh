#!/usr/bin/env bash
# Benchmarks of the release gateway with the shared peer harness (../shared/peers):
#   bench/run.sh sip   [harness options]   call rate (calls/s) with media anchored
#   bench/run.sh rtp   [harness options]   concurrent relayed G.711 calls
#   bench/run.sh both                       both, 3 runs each
#   bench/run.sh peers [--quick]            Kamailio, Kamailio+rtpengine, rtpengine and the gateway
#                                           side by side in one interleaved run (needs
#                                           apt-get install kamailio rtpengine-daemon)
#   bench/run.sh recovery [ABOVE] [SUSTAINABLE] [RUNS]
#                                           overload recovery: a step at ABOVE calls/s (default
#                                           4000, over capacity), then one at SUSTAINABLE (2500),
#                                           on the same process; RUNS runs (3) on fresh processes
#   bench/run.sh rtp-compare [CALLS] [ROUNDS]
#                                           CPU per relayed packet at equal load: rtpengine (ng,
#                                           userspace, 2 threads) and the gateway at CALLS calls
#                                           (default 800), alternating for ROUNDS rounds (default 3)
# Starts the gateway on bench/gateway.toml (RUST_LOG=warn), passes its PID to the harness so
# its CPU is measured, and stops it afterwards. Not part of the test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
[ -x "$peers/sip-cps.sh" ] || { echo "peer harness not found at $peers (set PEERS_DIR)" >&2; exit 2; }

cd "$root"
cargo build --release --quiet
mkdir -p bench/out
rm -f bench/out/gateway.db*
RUST_LOG=warn timeout 7200 target/release/hotline-gateway --config bench/gateway.toml \
  2> bench/out/gateway.log &
gw=$!
trap 'kill -TERM $gw 2>/dev/null; wait $gw 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
  sleep 0.1
done

mode="${1:-both}"; shift || true
case "$mode" in
  sip) "$peers/sip-cps.sh" 5060 --label gateway --target-pid "$gw" "$@" ;;
  rtp) "$peers/rtp-relay.sh" sip --target-port 5060 --label gateway --target-pid "$gw" "$@" ;;
  both)
    "$peers/sip-cps.sh" 5060 --label gateway --target-pid "$gw" --runs 3 "$@"
    "$peers/rtp-relay.sh" sip --target-port 5060 --label gateway --target-pid "$gw" --runs 3 "$@"
    ;;
  recovery)
    above="${1:-4000}"; sustainable="${2:-2500}"; runs="${3:-3}"
    for run in $(seq 1 "$runs"); do
      if [ "$run" -gt 1 ]; then
        kill -TERM "$gw"; wait "$gw" 2>/dev/null || true
        rm -f bench/out/gateway.db*
        RUST_LOG=warn timeout 7200 target/release/hotline-gateway --config bench/gateway.toml \
          2> bench/out/gateway.log &
        gw=$!
        for _ in $(seq 1 100); do
          curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
          sleep 0.1
        done
      fi
      "$peers/sip-cps.sh" 5060 --label "recovery-$run" --target-pid "$gw" \
        --rates "$above,$sustainable" --runs 1
    done
    ;;
  rtp-compare)
    calls="${1:-800}"; rounds="${2:-3}"
    mkdir -p bench/out
    "$peers/peer.sh" rtpengine --ng-port 2223 --threads 2 --secs 3600 > bench/out/rtpengine.pid &
    for _ in $(seq 1 50); do [ -s bench/out/rtpengine.pid ] && break; sleep 0.1; done
    rtpe="$(head -1 bench/out/rtpengine.pid)"
    trap 'kill -TERM $gw $rtpe 2>/dev/null; wait $gw 2>/dev/null || true' EXIT
    sleep 2
    for round in $(seq 1 "$rounds"); do
      echo "round $round" >&2
      "$peers/rtp-relay.sh" ng --ng-port 2223 --label rtpengine-ng --target-pid "$rtpe" \
        --calls "$calls" --runs 1 --measure 15
      "$peers/rtp-relay.sh" sip --target-port 5060 --label gateway --target-pid "$gw" \
        --calls "$calls" --runs 1 --measure 15
    done
    ;;
  peers)
    GATEWAY_SIP_PORT=5060 GATEWAY_PID="$gw" SECTIONS="${SECTIONS:-sip rtp}" "$peers/run-peers.sh" "$@"
    ;;
  *) echo "usage: bench/run.sh sip|rtp|both|rtp-compare|peers [harness options]" >&2; exit 2 ;;
esac
