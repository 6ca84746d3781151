#!/usr/bin/env bash
# Concurrent three-way calls: for each N, N citizens' calls (SIPp, bench/sipp/citizen.xml, 50/s)
# answered by SIPp agents that key *3 as SIP INFO (tests/sipp/agent_conference_info.xml), each
# bringing in a SIPp 110 desk (tests/sipp/police_uas.xml). All three SIPp sides run -rtp_echo:
# the gateway's mixer sends every party a frame each 20 ms and each party sends it straight
# back, so every conference carries three streams in and three out, the full mixing load.
# Once all N conferences are up (hotline_conferences_active = N), for MEASURE seconds:
#   late%  mixer ticks run more than 5 ms late, of all ticks
#   lost%  frames the jitter buffers had to conceal or dropped (late, duplicate), of all frames
#          mixed (three per tick)
#   cpu%   the gateway's CPU (100 = one core), and per conference
# N passes with under 1 % late and under 1 % lost.
# SIPp echoes every call's RTP on one socket per instance: at 20,000 packets/s its default
# receive buffer overflows (the sipp_drops column) and the gateway sees that as loss. So the
# script raises net.core.rmem_default to 4 MiB for the run when it may (restored at the end;
# gw_drops shows the gateway's media sockets never needed it).
#   bench/conference.sh [N ...]      default: 100 200 300 400 500; MEASURE (15) seconds
# Not part of the test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
counts="${*:-100 200 300 400 500}"
measure="${MEASURE:-15}"
# CONFIG: another configuration (bench/recording.sh runs it with [recording] on).
config="${CONFIG:-bench/conference.toml}"
rate=50
command -v sipp >/dev/null || { echo "needs sipp (apt-get install sip-tester)" >&2; exit 2; }
cargo build --release --quiet
mkdir -p bench/out
rmem=$(sysctl -n net.core.rmem_default 2>/dev/null || echo 0)
if [ "$rmem" -lt 4194304 ] && sysctl -qw net.core.rmem_default=4194304 2>/dev/null; then
  echo "net.core.rmem_default raised from $rmem to 4194304 for SIPp's echo sockets" >&2
  trap 'sysctl -qw net.core.rmem_default='"$rmem" EXIT
  restore_rmem="sysctl -qw net.core.rmem_default=$rmem"
else
  restore_rmem=true
fi
metric() { curl -s http://127.0.0.1:9090/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
# Datagrams the kernel dropped for full receive buffers (/proc/net/udp's last column): at SIPp's
# three echo sockets (ports 40000, 40010, 40020), and at the gateway's media ports.
udp_drops() {
  local sipp=0 gw=0 _sl address rest port drops
  while read -r _sl address rest; do
    port=$((16#${address##*:}))
    drops=${rest##* }
    case $port in
      40000 | 40010 | 40020) sipp=$((sipp + drops)) ;;
      *) if [ "$port" -ge 20000 ] && [ "$port" -le 31999 ]; then gw=$((gw + drops)); fi ;;
    esac
  done < <(tail -n +2 /proc/net/udp)
  echo "$sipp $gw"
}
hz=$(getconf CLK_TCK)

printf '%-6s %-8s %-8s %-8s %-10s %-10s %-8s %-12s %-8s\n' N ticks late% lost% sipp_drops gw_drops cpu% \
  cpu%/conf result
for n in $counts; do
  rm -f bench/out/conference.db*
  RUST_LOG=warn timeout 3600 target/release/hotline-gateway --config "$config" \
    2> bench/out/conference-gateway.log &
  gw=$!
  pids=()
  cleanup() {
    kill -TERM "$gw" "${pids[@]}" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
  }
  trap 'cleanup; $restore_rmem' EXIT
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
  gw_pid=$(pgrep -P "$gw" -f hotline-gateway || echo "$gw")
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$gw_pid/stat"; }
  out="bench/out/conference-$n"
  rm -rf "$out"
  mkdir -p "$out"
  # Every call holds until all are up and the measurement is over.
  hold=$(( (n / rate + measure + 10) * 1000 ))
  sipp -sf tests/sipp/police_uas.xml -i 127.0.0.1 -p 5090 -mi 127.0.0.1 -mp 40000 -rtp_echo \
    -m "$n" -timeout 600s -nostdin -trace_err -error_file "$out/police.errors" >/dev/null 2>&1 &
  pids+=($!)
  sipp -sf tests/sipp/agent_conference_info.xml -i 127.0.0.1 -p 5080 -mi 127.0.0.1 -mp 40010 \
    -rtp_echo -m "$n" -timeout 600s -nostdin -trace_err -error_file "$out/agent.errors" \
    >/dev/null 2>&1 &
  pids+=($!)
  sleep 0.5
  sipp 127.0.0.1:5060 -sf bench/sipp/citizen.xml -s 12345 -i 127.0.0.1 -p 5070 \
    -mi 127.0.0.1 -mp 40020 -rtp_echo -r "$rate" -m "$n" -l "$n" -d "$hold" -timeout 600s \
    -nostdin -trace_err -error_file "$out/citizen.errors" -trace_stat -stf "$out/citizen.csv" \
    >/dev/null 2>&1 &
  pids+=($!)
  up=0
  for _ in $(seq 1 $(( n / rate * 4 + 60 ))); do
    up=$(metric hotline_conferences_active)
    [ "${up:-0}" -ge "$n" ] && break
    sleep 0.5
  done
  if [ "${up:-0}" -lt "$n" ]; then
    printf '%-6s only %s conferences came up\n' "$n" "${up:-0}"
    cleanup
    continue
  fi
  sleep 2
  read -r e0 g0 < <(udp_drops)
  t0=$(date +%s%3N); c0=$(cpu_ticks)
  k0=$(metric hotline_mixer_ticks_total); l0=$(metric hotline_mixer_late_ticks_total)
  d0=$(metric hotline_jitter_dropped_total); s0=$(metric hotline_jitter_concealed_total)
  sleep "$measure"
  t1=$(date +%s%3N); c1=$(cpu_ticks)
  read -r e1 g1 < <(udp_drops)
  k1=$(metric hotline_mixer_ticks_total); l1=$(metric hotline_mixer_late_ticks_total)
  d1=$(metric hotline_jitter_dropped_total); s1=$(metric hotline_jitter_concealed_total)
  still=$(metric hotline_conferences_active)
  awk -v n="$n" -v k="$((k1 - k0))" -v l="$((l1 - l0))" -v d="$((d1 - d0))" -v s="$((s1 - s0))" \
    -v c="$((c1 - c0))" -v hz="$hz" -v ms="$((t1 - t0))" -v still="$still" \
    -v e="$((e1 - e0))" -v g="$((g1 - g0))" 'BEGIN {
      late = k ? 100 * l / k : 100; lost = k ? 100 * (d + s) / (3 * k) : 100
      cpu = c / hz / (ms / 1000) * 100
      result = (late < 1 && lost < 1 && still >= n) ? "pass" : "fail"
      printf "%-6s %-8d %-8.3f %-8.3f %-10d %-10d %-8.1f %-12.3f %-8s\n", n, k, late, lost, e, g, cpu,
        cpu / n, result
    }'
  cleanup
  sleep 2
done
$restore_rmem
trap - EXIT
