#!/usr/bin/env bash
# What recording (`[recording]`) costs, with it off and on in one run, alternating:
#   relayed calls: CPU per relayed packet at CALLS concurrent G.711 calls (the shared harness's
#     rtp-relay, as bench/ab.sh), each call recorded when on;
#   three-way calls: bench/conference.sh at CONFERENCES conferences, each recorded when on;
#   disk: bytes written per call-minute, from hotline_recording_bytes_written_total.
#   bench/recording.sh [CALLS] [ROUNDS] [CONFERENCES]     default 800 calls, 3 rounds, 300
# Needs the shared peer harness (../shared/peers) and sipp. Not part of the test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
calls="${1:-800}"
rounds="${2:-3}"
conferences="${3:-300}"
cd "$root"
cargo build --release --quiet
mkdir -p bench/out
recordings="$root/bench/out/recordings"
{ cat bench/gateway.toml; printf '\n[recording]\npath = "%s"\n' "$recordings"; } \
  > bench/out/gateway-recording.toml
{ cat bench/conference.toml; printf '\n[recording]\npath = "%s"\n' "$recordings"; } \
  > bench/out/conference-recording.toml
metric() { curl -s http://127.0.0.1:9090/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
per_packet() { grep -E '^\[' | sed -E 's/.*\[([a-z-]+) run.*us\/pkt=([0-9.]+).*/\1 \2 us\/packet/'; }
measure=15
for round in $(seq 1 "$rounds"); do
  echo "round $round"
  for which in off on; do
    config=bench/gateway.toml
    [ "$which" = on ] && config=bench/out/gateway-recording.toml
    rm -rf bench/out/gateway.db* "$recordings"
    RUST_LOG=warn target/release/hotline-gateway --config "$config" 2> "bench/out/recording-$which.log" &
    gw=$!
    for _ in $(seq 1 100); do
      curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
      sleep 0.1
    done
    "$peers/rtp-relay.sh" sip --target-port 5060 --label "recording-$which" --target-pid "$gw" \
      --calls "$calls" --runs 1 --measure "$measure" 2>&1 | per_packet
    if [ "$which" = on ]; then
      bytes=$(metric hotline_recording_bytes_written_total)
      started=$(metric hotline_recording_started_total)
      dropped=$(metric hotline_recording_frames_dropped_total)
      echo "recorded calls: ${started:-0}, frames dropped: ${dropped:-0}, bytes written: ${bytes:-0}"
    fi
    kill -TERM "$gw"
    wait "$gw" 2>/dev/null || true
    if [ "$which" = on ]; then
      # Completed files: bytes on disk per minute of recorded audio (the JSON included).
      python3 - "$recordings" <<'PY'
import json, os, sys
audio_ms = disk = files = 0
for directory, _, names in os.walk(sys.argv[1]):
    for name in names:
        path = os.path.join(directory, name)
        disk += os.path.getsize(path)
        if name.endswith(".json"):
            files += 1
            audio_ms += json.load(open(path)).get("duration_ms") or 0
if audio_ms:
    print(f"disk: {files} recordings, {disk} bytes for {audio_ms / 60000:.1f} call-minutes = "
          f"{disk / (audio_ms / 60000) / 1e6:.3f} MB per call-minute")
PY
    fi
  done
done
echo "three-way calls, recording off then on:"
bench/conference.sh "$conferences"
rm -rf "$recordings"
CONFIG=bench/out/conference-recording.toml bench/conference.sh "$conferences"
