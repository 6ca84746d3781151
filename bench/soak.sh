#!/usr/bin/env bash
# Soak: the release gateway under a steady call load for a long while, sampling its resident
# memory, open file descriptors, calls and transactions, to show they do not grow.
#   bench/soak.sh            RATE (1000 calls/s: half the sustainable 2,000), MINUTES (30),
#                            HOLD_MS (1000), SAMPLE_SECS (30)
# The SIPp carrier (127.0.0.1:5070) calls the SIPp hotline (127.0.0.1:5080) through the
# gateway on bench/gateway.toml. Prints one line per sample and the first/last comparison.
# Not part of the test suite. Needs sipp (apt-get install sip-tester).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
rate="${RATE:-1000}"
minutes="${MINUTES:-30}"
hold="${HOLD_MS:-1000}"
every="${SAMPLE_SECS:-30}"
command -v sipp >/dev/null || { echo "needs sipp (apt-get install sip-tester)" >&2; exit 2; }
cargo build --release --quiet
mkdir -p bench/out
out=bench/out/soak
rm -rf "$out" bench/out/gateway.db*
mkdir -p "$out"
RUST_LOG=warn timeout $((minutes * 60 + 600)) target/release/hotline-gateway \
  --config bench/gateway.toml 2> "$out/gateway.log" &
gw=$!
pids=()
sleep 0.2
# timeout's child is the gateway.
gw_pid=$(pgrep -P "$gw" -f hotline-gateway || echo "$gw")
cleanup() { kill -TERM "$gw" "${pids[@]}" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
metric() { curl -s http://127.0.0.1:9090/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
sample() {
  printf '%s rss_kB=%s fds=%s calls=%s transactions=%s ports=%s answered=%s\n' \
    "$(date -u +%H:%M:%S)" "$(awk '/VmRSS/ { print $2 }' "/proc/$gw_pid/status")" \
    "$(ls "/proc/$gw_pid/fd" | wc -l)" "$(metric hotline_calls_active)" \
    "$(metric hotline_sip_transactions_active)" "$(metric hotline_media_ports_in_use)" \
    "$(curl -s http://127.0.0.1:9090/metrics | awk '/result="answered"/ { print $2 }')"
}
echo "idle: $(sample)" | tee "$out/samples.txt"
secs=$((minutes * 60))
calls=$((rate * secs))
sipp -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5080 -m "$calls" -timeout $((secs + 120))s \
  -max_socket 4000 -nostdin >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
sipp 127.0.0.1:5060 -sf bench/sipp/citizen.xml -s 12345 -i 127.0.0.1 -p 5070 -r "$rate" \
  -m "$calls" -l $((rate * 10)) -d "$hold" -timeout $((secs + 120))s -nostdin -trace_stat \
  -stf "$out/carrier.csv" -fd 10 >/dev/null 2>&1 &
carrier=$!
pids+=("$carrier")
end=$((SECONDS + secs))
while [ "$SECONDS" -lt "$end" ] && kill -0 "$carrier" 2>/dev/null; do
  sleep "$every"
  sample | tee -a "$out/samples.txt"
done
status=0
wait "$carrier" || status=$?
sleep 40
echo "after 40 s: $(sample)" | tee -a "$out/samples.txt"
field() { tail -1 "$out/carrier.csv" | awk -F';' -v want="$1" '
  BEGIN { getline line < "'"$out/carrier.csv"'"; split(line, header, ";") }
  { for (i = 1; i <= NF; i++) if (header[i] == want) print $i }'; }
echo "carrier: $calls calls at $rate/s: successful $(field 'SuccessfulCall(C)'), failed $(field 'FailedCall(C)') (sipp exit $status)"
# The first and last samples under load, to compare.
first=$(sed -n 2p "$out/samples.txt"); last=$(grep -v '^after' "$out/samples.txt" | tail -1)
echo "first under load: $first"
echo "last under load:  $last"
