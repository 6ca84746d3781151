#!/usr/bin/env bash
# Hostile traffic against the release gateway while a peer places calls: sipvicious' svmap,
# svwar and svcrack (Debian's sipvicious) and a SIPp INVITE flood, all from addresses that are
# no peer (127.0.0.2, .3, .4: their own IPs, as scanners on the internet would have), while the
# SIPp carrier (127.0.0.1:5070, a peer) calls the SIPp hotline at PEER_RATE calls/s.
# Prints what the gateway refused (metrics), the peer's calls (SIPp's counts) and the
# gateway's resident memory before, during and after.
#   bench/hostile.sh            PEER_RATE (200), FLOOD_RATE (5000), SECS (30), HOLD_MS (1000),
#                               AFTER_SECS (40: when "after" is sampled, once the load ended;
#                               several, e.g. "40 120", sample at each)
#   FLOOD_RATE=0 bench/hostile.sh   the same peer load alone, for the memory baseline
# Not part of the test suite. Needs sipp and sipvicious (apt-get install sip-tester sipvicious).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
peer_rate="${PEER_RATE:-200}"
flood_rate="${FLOOD_RATE:-5000}"
secs="${SECS:-30}"
hold="${HOLD_MS:-1000}"
after="${AFTER_SECS:-40}"
for tool in sipp svmap svwar svcrack; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install sip-tester sipvicious)" >&2; exit 2; }
done
cargo build --release --quiet
mkdir -p bench/out
out=bench/out/hostile
rm -rf "$out" bench/out/gateway.db*
mkdir -p "$out"
RUST_LOG=warn timeout 3600 target/release/hotline-gateway --config bench/gateway.toml \
  2> "$out/gateway.log" &
gw=$!
pids=()
cleanup() { kill -TERM "$gw" "${pids[@]}" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
gw_pid=$(pgrep -P "$gw" -f hotline-gateway || echo "$gw")
rss() { awk '/VmRSS/ { print $2 }' "/proc/$gw_pid/status"; }
metric() { curl -s http://127.0.0.1:9090/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
rss_before=$(rss)

calls=$((peer_rate * secs))
sipp -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5080 -m "$calls" -timeout $((secs + 60))s -nostdin \
  >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
sipp 127.0.0.1:5060 -sf bench/sipp/citizen.xml -s 12345 -i 127.0.0.1 -p 5070 -r "$peer_rate" \
  -m "$calls" -l "$calls" -d "$hold" -timeout $((secs + 60))s -nostdin -trace_stat \
  -stf "$out/peer.csv" >/dev/null 2>&1 &
peer=$!
pids+=("$peer")

# The attackers, each from an address of its own.
svmap -b 127.0.0.2 -p 5060 127.0.0.1 > "$out/svmap.txt" 2>&1 || true
svwar -b 127.0.0.2 -p 5060 -e 100-999 -m INVITE 127.0.0.1 > "$out/svwar.txt" 2>&1 &
pids+=($!)
svcrack -b 127.0.0.3 -p 5060 -u 100 -r 1000-9999 127.0.0.1 > "$out/svcrack.txt" 2>&1 &
pids+=($!)
flood=$((flood_rate * secs))
[ "$flood" -gt 0 ] || flood=1
sipp 127.0.0.1:5060 -sf bench/sipp/citizen.xml -s 12345 -i 127.0.0.4 -p 5099 -r "$flood_rate" \
  -m "$flood" -l "$flood" -d "$hold" -timeout $((secs + 30))s -nostdin -trace_stat \
  -stf "$out/flood.csv" >/dev/null 2>&1 &
flooder=$!
pids+=("$flooder")
sleep $((secs / 2))
rss_during=$(rss)
wait "$flooder" 2>/dev/null || true
peer_status=0
wait "$peer" || peer_status=$?
# After the transactions' timers have run out (64*T1 = 32 s); each sample counted from the
# end of the load.
ended=$(date +%s)
rss_after=""
for at in $after; do
  sleep $((ended + at - $(date +%s) > 0 ? ended + at - $(date +%s) : 0))
  rss_after="$rss_after ${at} s after $(rss) kB,"
done
transactions_after=$(metric hotline_sip_transactions_active)
calls_after=$(metric hotline_calls_active)

count() { tail -1 "$1" | awk -F';' -v want="$2" 'NR == 1 { }
  { for (i = 1; i <= NF; i++) if (header[i] == want) print $i }
  BEGIN { getline line < "'"$1"'"; split(line, header, ";") }'; }
echo "peer (127.0.0.1:5070): $calls calls at $peer_rate/s: successful $(count "$out/peer.csv" 'SuccessfulCall(C)'), failed $(count "$out/peer.csv" 'FailedCall(C)') (sipp exit $peer_status)"
echo "flood (127.0.0.4:5099): $(count "$out/flood.csv" 'OutgoingCall(C)') INVITEs offered at $flood_rate/s, $(count "$out/flood.csv" 'SuccessfulCall(C)') got through"
echo "svmap found: $(grep -c '127.0.0.1:5060' "$out/svmap.txt" || true) SIP devices"
echo "svwar found: $(grep -cE '^\| [0-9]' "$out/svwar.txt" || true) extensions; svcrack found: $(grep -cE '^\| [0-9]' "$out/svcrack.txt" || true) passwords"
for name in hotline_sip_rejected_unknown_peer_total hotline_sip_dropped_scanner_total \
  hotline_sip_dropped_banned_total hotline_sip_bans_total hotline_calls_total; do
  echo "$name $(metric "$name")"
done
curl -s http://127.0.0.1:9090/metrics | grep '^hotline_calls_total' || true
echo "gateway RSS: before ${rss_before} kB, during ${rss_during} kB,${rss_after} (then transactions ${transactions_after}, calls ${calls_after})"
grep -E '^(Rss|Anonymous|Private_Dirty)' "/proc/$gw_pid/smaps_rollup" | tr -s ' ' | paste -sd' ' || true
