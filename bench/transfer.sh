#!/usr/bin/env bash
# Transfers per second: each a full citizen call (SIPp, bench/sipp/citizen.xml) answered by a
# SIPp agent that REFERs it to 110 (tests/sipp/agent_refer.xml), a SIPp 110 desk that checks
# the citizen's identity and answers (tests/sipp/police_uas.xml), the citizen hanging up after
# HOLD_MS. For each rate: calls that failed at any of the three, the gateway's CPU, and the time
# from the REFER to 110 ringing (median and p99, from the linkage records). A rate passes when
# fewer than 0.1 % of its calls failed or were not transferred.
#   bench/transfer.sh [RATE ...]        default: 50 100 200 400; SECS (10) and HOLD_MS (2000)
# Not part of the test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
rates="${*:-50 100 200 400}"
secs="${SECS:-10}"
hold="${HOLD_MS:-2000}"
command -v sipp >/dev/null || { echo "needs sipp (apt-get install sip-tester)" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "needs sqlite3" >&2; exit 2; }
cargo build --release --quiet
mkdir -p bench/out
rm -f bench/out/transfer.db*
RUST_LOG=warn timeout 3600 target/release/hotline-gateway --config bench/transfer.toml \
  2> bench/out/transfer-gateway.log &
gw=$!
pids=()
cleanup() { kill -TERM "$gw" "${pids[@]}" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
# The gateway itself (its parent is the `timeout` wrapper).
gw_pid=$(pgrep -P "$gw" -f hotline-gateway || echo "$gw")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$gw_pid/stat"; }
hz=$(getconf CLK_TCK)

printf '%-8s %-8s %-10s %-10s %-10s %-12s %-12s %-10s\n' rate calls failed answered gw_cpu% ring_p50_ms ring_p99_ms result
for rate in $rates; do
  calls=$((rate * secs))
  out="bench/out/transfer-$rate"
  rm -rf "$out"
  mkdir -p "$out"
  start_ms=$(date +%s%3N)
  sipp -sf tests/sipp/police_uas.xml -i 127.0.0.1 -p 5090 -m "$calls" -timeout 120s \
    -timeout_error -nostdin -trace_err -error_file "$out/police.errors" >/dev/null 2>&1 &
  police=$!
  sipp -sf tests/sipp/agent_refer.xml -key transfer_to 110 -i 127.0.0.1 -p 5080 -m "$calls" -timeout 120s \
    -timeout_error -nostdin -trace_err -error_file "$out/agent.errors" >/dev/null 2>&1 &
  agent=$!
  pids=("$police" "$agent")
  sleep 0.5
  before=$(cpu_ticks)
  t0=$(date +%s%3N)
  citizen_ok=0
  sipp 127.0.0.1:5060 -sf bench/sipp/citizen.xml -s 12345 -i 127.0.0.1 -p 5070 -r "$rate" \
    -m "$calls" -l $((calls)) -d "$hold" -timeout 120s -timeout_error -nostdin -trace_stat \
    -stf "$out/citizen.csv" -trace_err -error_file "$out/citizen.errors" >/dev/null 2>&1 \
    || citizen_ok=$?
  t1=$(date +%s%3N)
  after=$(cpu_ticks)
  # The UAS sides finish their last BYEs, then stop (they exit by themselves after -m calls,
  # unless a citizen call failed before reaching them).
  for _ in $(seq 1 50); do
    kill -0 "$agent" 2>/dev/null || kill -0 "$police" 2>/dev/null || break
    sleep 0.2
  done
  kill -TERM "$agent" "$police" 2>/dev/null || true
  wait "$agent" "$police" 2>/dev/null || true
  pids=()
  failed=$(tail -1 "$out/citizen.csv" | awk -F';' '{
    for (i = 1; i <= NF; i++) if (header[i] == "FailedCall(C)") print $i }
    BEGIN { getline line < "'"$out/citizen.csv"'"; n = split(line, header, ";") }')
  cpu=$(awk -v b="$before" -v a="$after" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
    'BEGIN { printf "%.1f", (a - b) / hz / ((t1 - t0) / 1000) * 100 }')
  read -r answered p50 p99 < <(sqlite3 -separator ' ' bench/out/transfer.db "
    WITH l AS (SELECT ringing_at - requested_at AS d FROM linkages
               WHERE requested_at >= $start_ms AND outcome = 'answered'),
         n AS (SELECT COUNT(*) AS c FROM l)
    SELECT (SELECT c FROM n),
           (SELECT d FROM l ORDER BY d LIMIT 1 OFFSET (SELECT c / 2 FROM n)),
           (SELECT d FROM l ORDER BY d LIMIT 1 OFFSET (SELECT (c * 99) / 100 FROM n));")
  # Pass: fewer than 0.1 % of the calls failed at the citizen or did not end up answered by
  # 110 (both counted, so a call failing before its transfer counts twice).
  lost=$(( ${failed:-$calls} + calls - ${answered:-0} ))
  result=pass
  if [ $(( lost * 1000 )) -ge "$calls" ]; then
    result=fail
  fi
  printf '%-8s %-8s %-10s %-10s %-10s %-12s %-12s %-10s\n' \
    "$rate" "$calls" "${failed:-?}" "${answered:-0}" "$cpu" "${p50:-}" "${p99:-}" "$result"
  sleep 3
done
