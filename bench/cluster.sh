#!/usr/bin/env bash
# Two gateway nodes on one PostgreSQL behind Kamailio's dispatcher (deploy/kamailio), all on
# this machine:
#   1. the work-order event latency across nodes: RATE calls/s (200) for SECS (15) through the
#      front, each held HOLD_MS (1000), with a 12345 client on each node
#      (`hotline-gateway events --delay`); the delay from the SIP event at the node that
#      carried the call to the event's arrival at the client on the other node, p50/p99/max,
#      beside the same-node delay; each node's CPU, Kamailio's and PostgreSQL's;
#   2. the call rate with media anchored across the pair: the shared peer harness's SIPp load
#      (../shared/peers/sip-cps.sh) through the front, RUNS (2) searches, CPU of the two nodes,
#      Kamailio and PostgreSQL together.
# PostgreSQL is a server of its own in bench/out/cluster/pg with its default durability
# (fsync, synchronous commit). Needs sipp, kamailio, postgresql, curl. Not part of the tests.
#   bench/cluster.sh [latency|rate|both]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
cd "$root"
rate="${RATE:-200}"
secs="${SECS:-15}"
hold="${HOLD_MS:-1000}"
runs="${RUNS:-2}"
mode="${1:-both}"
for tool in sipp kamailio curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "needs postgresql (apt-get install postgresql)" >&2; exit 2; }
cargo build --release --quiet
bin=target/release/hotline-gateway
out=bench/out/cluster
rm -rf "$out" && mkdir -p "$out"
hz=$(getconf CLK_TCK)
pids=()
pg=""
cleanup() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  [ -n "$pg" ] && kill -QUIT "$pg" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

# as_pg COMMAND...: as the postgres user when root (the server refuses root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# PostgreSQL on 127.0.0.1:55432, database hotline.
mkdir -p "$out/pg"
[ "$(id -u)" = 0 ] && chown postgres "$out/pg"
as_pg "$pgbin/initdb" -D "$out/pg/data" -A trust -U gateway -E UTF8 --locale=C >/dev/null
as_pg "$pgbin/postgres" -D "$out/pg/data" -k "$root/$out/pg" -p 55432 \
  -c listen_addresses=127.0.0.1 -c max_connections=100 2> "$out/pg/server.log" &
for _ in $(seq 1 100); do
  "$pgbin/pg_isready" -h 127.0.0.1 -p 55432 -U gateway >/dev/null 2>&1 && break
  sleep 0.1
done
# The postmaster itself (runuser stands between): its pid is the first line of postmaster.pid.
pg=$(head -1 "$out/pg/data/postmaster.pid")
psql -h 127.0.0.1 -p 55432 -U gateway -d postgres -qc "CREATE DATABASE hotline"
url="postgresql://gateway@127.0.0.1:55432/hotline"
# The server's processes: the postmaster's children (backends, writer, WAL writer).
pg_pids() { echo "$pg" $(pgrep -P "$pg" 2>/dev/null) | tr ' ' ','; }

# Kamailio's dispatcher on 127.0.0.1:5060, the nodes on 5061 and 5062.
printf '1 sip:127.0.0.1:5061\n1 sip:127.0.0.1:5062\n' > "$out/nodes.list"
setsid timeout 7200 kamailio -f deploy/kamailio/dispatcher.cfg -DD -E -Y "$root/$out" \
  -w "$root/$out" -m 256 -M 16 -A LISTEN=udp:127.0.0.1:5060 \
  -A "DS_LIST=\"$root/$out/nodes.list\"" -A "CTL=\"unix:$root/$out/ctl\"" 2> "$out/kamailio.log" &
kam=$!
pids+=("$kam")

# node NAME SIP GRPC HTTP LOW HIGH: a node's config.
node() {
  cat > "$out/$1.toml" <<EOF
[sip]
listen = "127.0.0.1:$2"
max_calls = 20000
[media]
address = "127.0.0.1"
ports = [$5, $6]
[store]
url = "$url"
[cluster]
node = "$1"
[api]
grpc = "127.0.0.1:$3"
http = "127.0.0.1:$4"
[[peer]]
name = "kamailio"
address = "127.0.0.1:5060"
front = true
[[peer]]
name = "carrier"
address = "127.0.0.1:5070"
[[peer]]
name = "hotline"
address = "127.0.0.1:5080"
platform = "12345"
[[route]]
number = "12345"
peers = ["hotline"]
[[platform]]
name = "12345"
token = "bench-token-of-the-12345-system"
EOF
}
node gw-a 5061 50061 9091 20000 25999
node gw-b 5062 50062 9092 26000 31999
RUST_LOG=warn "$bin" --config "$out/gw-a.toml" 2> "$out/gw-a.log" &
a=$!
RUST_LOG=warn "$bin" --config "$out/gw-b.toml" 2> "$out/gw-b.log" &
b=$!
pids+=("$a" "$b")
for port in 9091 9092; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
# Kamailio's probes have found both nodes.
for _ in $(seq 1 50); do
  [ "$(kamcmd -s "unix:$root/$out/ctl" dispatcher.list 2>/dev/null | grep -c 'FLAGS: AP')" = 2 ] && break
  sleep 0.2
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Kamailio's processes: its session (setsid), the main process and its forked workers.
kam_pids() { ps -o pid= -s "$kam" | tr -s ' \n' ',' | sed 's/^,//; s/,$//'; }
kam_ticks() {
  local sum=0 p
  for p in $(ps -o pid= -s "$kam"); do sum=$((sum + $(ticks "$p"))); done
  echo "$sum"
}
pg_ticks() {
  local sum=0 p
  for p in $(pgrep -P "$pg") "$pg"; do sum=$((sum + $(ticks "$p"))); done
  echo "$sum"
}
percentiles() {
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "- - -"; exit }
    p50 = v[int((NR - 1) * 0.50) + 1]; p99 = v[int((NR - 1) * 0.99) + 1]
    printf "%.2f %.2f %.2f\n", p50 / 1000, p99 / 1000, v[NR] / 1000 }'
}

latency() {
  local calls=$((rate * secs)) clients=()
  for name in gw-a gw-b; do
    "$bin" --config "$out/$name.toml" events --platform 12345 --delay > "$out/events-$name.txt" 2>&1 &
    clients+=($!)
  done
  pids+=("${clients[@]}")
  sipp -sf "$peers/sip/uas.xml" -i 127.0.0.1 -p 5080 -m "$calls" -timeout 120s -nostdin \
    >/dev/null 2>&1 &
  local uas=$!
  pids+=("$uas")
  sleep 0.5
  local a0 b0 k0 p0 t0 t1
  a0=$(ticks "$a"); b0=$(ticks "$b"); k0=$(kam_ticks); p0=$(pg_ticks); t0=$(date +%s%3N)
  sipp 127.0.0.1:5060 -sf "$peers/sip/uac.xml" -s 12345 -i 127.0.0.1 -p 5070 -r "$rate" \
    -m "$calls" -l "$calls" -d "$hold" -timeout 120s -nostdin -trace_stat -trace_err \
    -error_file "$out/uac-errors.log" -stf "$out/uac.csv" >/dev/null 2>&1 || true
  t1=$(date +%s%3N)
  local cpu
  cpu() { awk -v b="$1" -v a="$2" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
    'BEGIN { printf "%.1f", (a - b) / hz / ((t1 - t0) / 1000) * 100 }'; }
  local ca cb ck cp
  ca=$(cpu "$a0" "$(ticks "$a")"); cb=$(cpu "$b0" "$(ticks "$b")")
  ck=$(cpu "$k0" "$(kam_ticks)"); cp=$(cpu "$p0" "$(pg_ticks)")
  sleep 2
  kill -TERM "${clients[@]}" "$uas" 2>/dev/null || true
  local failed
  failed=$(tail -1 "$out/uac.csv" | awk -F';' 'BEGIN { getline line < "'"$out/uac.csv"'"; n = split(line, h, ";") }
    { for (i = 1; i <= NF; i++) if (h[i] == "FailedCall(C)") print $i }')
  psql -h 127.0.0.1 -p 55432 -U gateway -d hotline -Atc "SELECT id, node FROM calls" > "$out/nodes.txt"
  local per
  per=$(psql -h 127.0.0.1 -p 55432 -U gateway -d hotline -Atc \
    "SELECT string_agg(node || ' ' || n, ', ') FROM (SELECT node, count(*) n FROM calls GROUP BY node ORDER BY node) c")
  echo "== latency: $calls calls at $rate/s through Kamailio, held $hold ms: failed ${failed:-?}; calls per node: $per"
  echo "   CPU: gw-a $ca %, gw-b $cb %, kamailio $ck %, postgresql $cp %"
  for name in gw-a gw-b; do
    # Each event line: call=ID ... delay_us=N; the call's node from the store.
    awk -v me="$name" 'NR == FNR { split($0, f, "|"); node[f[1]] = f[2]; next }
      { call = ""; delay = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^call=/) call = substr($i, 6)
          if ($i ~ /^delay_us=/) delay = substr($i, 10)
        }
        if (call == "" || delay == "") next
        if (node[call] == me) print delay > "'"$out"'/same-" me ".txt"
        else print delay > "'"$out"'/cross-" me ".txt" }' "$out/nodes.txt" "$out/events-$name.txt"
    touch "$out/same-$name.txt" "$out/cross-$name.txt"
    read -r s50 s99 smax < <(percentiles "$out/same-$name.txt")
    read -r c50 c99 cmax < <(percentiles "$out/cross-$name.txt")
    echo "   client on $name: $(wc -l < "$out/cross-$name.txt") events of the other node's calls p50 $c50 ms p99 $c99 ms max $cmax ms; $(wc -l < "$out/same-$name.txt") of its own p50 $s50 ms p99 $s99 ms"
  done
}

rate_search() {
  "$peers/sip-cps.sh" 5060 --label cluster --runs "$runs" \
    --target-pid "$a" --target-pid "$b" --target-pid "$(kam_pids)" --target-pid "$(pg_pids)" \
    --json "$out/cps.json"
}

case "$mode" in
  latency) latency ;;
  rate) rate_search ;;
  both) latency; rate_search ;;
  *) echo "usage: bench/cluster.sh [latency|rate|both]" >&2; exit 2 ;;
esac
