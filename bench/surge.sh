#!/usr/bin/env bash
# A surge with the lane kept for 110 (`[[platform]] reserved_calls`) and 12345's queue
# (bench/surge.toml): the gateway takes 600 calls at most, 60 kept for 110; 12345's desks
# (SIPp) take 150 calls at once (`max_calls`), another centre's remote seats (SIPp) 50, and
# 200 citizens may wait (`queue_max`, `queue_secs = 20`). SIPp floods 12345 at FLOOD calls/s
# for SECS seconds, each citizen holding HOLD_MS from its answer (the desk's or the queue's:
# a queued citizen not put through by then hangs up, abandoning), while citizens reach 12345
# agents (SIPp, tests/sipp/agent_refer.xml, on 12346) who REFER each to 110 at TO_110 calls/s,
# and another SIPp calls 110 directly at TO_110 calls/s, through the same gateway; then, once
# the flood's calls are over, 12345 at NORMAL calls/s. Printed: each phase's calls, successful
# and failed (at SIPp), the transfers to 110 requested and answered (the linkage records), the
# gateway's refusals by kind, and the queue's figures (queued, put through, abandoned,
# overflowed, given up, the wait's p50 and p99 from `hotline_queue_wait_seconds`, and how many
# pairs of citizens put through by 12345's desks after waiting were served out of the order
# they came in). It passes when every transfer the agents asked for and every call to 110
# connects in the flood and every call of the normal phase does. MAX_CALLS below the flood's
# 400 calls (desks, line, remote seats) fills the gateway: the reserve then refuses 12345's
# excess (and citizens on their way to the agents) while 110's calls go on.
#   bench/surge.sh        FLOOD (100), TO_110 (5), NORMAL (10), SECS (20), HOLD_MS (10000),
#                         MAX_CALLS (600; `sip.max_calls`, 60 of them kept for 110)
# Not part of the test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
flood="${FLOOD:-100}"; to110="${TO_110:-5}"; normal="${NORMAL:-10}"
secs="${SECS:-20}"; hold="${HOLD_MS:-10000}"; max_calls="${MAX_CALLS:-600}"
command -v sipp >/dev/null || { echo "needs sipp (apt-get install sip-tester)" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "needs sqlite3" >&2; exit 2; }
cargo build --release --quiet
out=bench/out/surge
rm -rf "$out" bench/out/surge.db*
mkdir -p "$out"
sed "s/^max_calls = 600$/max_calls = $max_calls/" bench/surge.toml > "$out/surge.toml"
RUST_LOG=warn timeout 3600 target/release/hotline-gateway --config "$out/surge.toml" \
  2> "$out/gateway.log" &
gw=$!
pids=()
cleanup() { kill -TERM "$gw" "${pids[@]}" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
metric() { curl -s http://127.0.0.1:9090/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
# SIPp's count `column` in the last line of its statistics file.
count() {
  awk -F';' -v want="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == want) c = i; next }
    { last = $c } END { print last + 0 }' "$1"
}
sipp -sn uas -i 127.0.0.1 -p 5080 -nostdin -timeout 600s >/dev/null 2>&1 &
pids+=($!)
sipp -sn uas -i 127.0.0.1 -p 5085 -nostdin -timeout 600s >/dev/null 2>&1 &
pids+=($!)
sipp -sn uas -i 127.0.0.1 -p 5090 -nostdin -timeout 600s >/dev/null 2>&1 &
pids+=($!)
sipp -sf tests/sipp/agent_refer.xml -key transfer_to 110 -i 127.0.0.1 -p 5081 -nostdin \
  -timeout 600s -trace_stat -stf "$out/agents.csv" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
uac() { # port rate calls number stats
  sipp 127.0.0.1:5060 -sn uac -s "$4" -i 127.0.0.1 -p "$1" -r "$2" -m "$3" -l 100000 \
    -d "$hold" -timeout 300s -nostdin -trace_stat -stf "$5" >/dev/null 2>&1 || true
}
flood_calls=$((flood * secs)); to110_calls=$((to110 * secs)); normal_calls=$((normal * secs))
uac 5070 "$flood" "$flood_calls" 12345 "$out/flood.csv" &
flood_pid=$!
uac 5071 "$to110" "$to110_calls" 110 "$out/to110.csv" &
to110_pid=$!
uac 5072 "$to110" "$to110_calls" 12346 "$out/transfers.csv" &
transfers_pid=$!
wait "$flood_pid" "$to110_pid" "$transfers_pid"
refused_reserve=$(metric hotline_calls_refused_reserve_total)
refused_overload=$(metric hotline_calls_refused_overload_total)
shed=$(metric hotline_sip_shed_overload_total)
rejected=$(metric 'hotline_calls_total{result="rejected"}')
queued=$(metric hotline_queue_calls_total)
put_through=$(metric hotline_queue_answered_total)
abandoned=$(metric hotline_queue_abandons_total)
overflowed=$(metric hotline_queue_overflows_total)
gave_up=$(metric hotline_queue_gave_up_total)
offers=$(metric hotline_queue_offers_total)
# The q-quantile of the queue's waits: the first bucket holding q of them ("<= bound s").
quantile() {
  curl -s http://127.0.0.1:9090/metrics | awk -v q="$1" '
    $1 ~ /^hotline_queue_wait_seconds_bucket/ { split($1, p, "\""); le[n] = p[2]; c[n++] = $2 }
    $1 == "hotline_queue_wait_seconds_count" { total = $2 }
    END { if (total == 0) { print "-"; exit } for (i = 0; i < n; i++) if (c[i] >= q * total) { print "<= " le[i] " s"; exit } }'
}
p50=$(quantile 0.5); p99=$(quantile 0.99)
db=bench/out/surge.db
read -r requested connected < <(sqlite3 -separator ' ' "$db" "
  SELECT COUNT(*), COALESCE(SUM(outcome = 'answered'), 0) FROM linkages WHERE target = '110';")
# Citizens 12345's desks put through after a wait (answered a second or more after they
# came): pairs in which the later comer was answered first.
out_of_order=$(sqlite3 "$db" "
  WITH w AS (SELECT started_at AS s, answered_at AS a FROM calls
             WHERE called = '12345' AND b_peer = 'hotline' AND answered_at >= started_at + 1000)
  SELECT COUNT(*) FROM w x JOIN w y ON x.s < y.s AND x.a > y.a;")
waited=$(sqlite3 "$db" "SELECT COUNT(*) FROM calls WHERE called = '12345'
  AND b_peer = 'hotline' AND answered_at >= started_at + 1000;")
uac 5070 "$normal" "$normal_calls" 12345 "$out/normal.csv"
printf '%-22s %-8s %-8s %-10s %-8s\n' phase rate calls successful failed
row() { printf '%-22s %-8s %-8s %-10s %-8s\n' "$1" "$2" "$3" \
  "$(count "$4" 'SuccessfulCall(C)')" "$(count "$4" 'FailedCall(C)')"; }
row "flood: to 12345" "$flood" "$flood_calls" "$out/flood.csv"
row "flood: to 110" "$to110" "$to110_calls" "$out/to110.csv"
row "flood: REFER to 110" "$to110" "$to110_calls" "$out/transfers.csv"
row "after: to 12345" "$normal" "$normal_calls" "$out/normal.csv"
echo "refused in the flood: reserve ${refused_reserve:-0}, no slot/ports ${refused_overload:-0}, shed by overload control ${shed:-0}, turned away (queue full, 486) ${rejected:-0}"
echo "transfers to 110 in the flood: requested ${requested:-0}, connected ${connected:-0}"
echo "served in order: ${out_of_order:-?} pairs out of order among ${waited:-0} citizens put through by the desks after waiting"
echo "queue in the flood: queued ${queued:-0}, put through ${put_through:-0}, abandoned ${abandoned:-0}, overflowed ${overflowed:-0}, given up ${gave_up:-0}; offers ${offers:-0}; wait p50 ${p50}, p99 ${p99}"
ok110=$(count "$out/to110.csv" 'SuccessfulCall(C)')
oknormal=$(count "$out/normal.csv" 'SuccessfulCall(C)')
if [ "$ok110" -eq "$to110_calls" ] && [ "$oknormal" -eq "$normal_calls" ] \
  && [ "${requested:-0}" -gt 0 ] && [ "${connected:-0}" -eq "${requested:-0}" ]; then
  echo "pass: every call and transfer to 110 connected in the flood, every call after it"
else
  echo "fail"
fi
