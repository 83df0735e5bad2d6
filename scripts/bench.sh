#!/usr/bin/env bash
# make bench: load runs of BENCHMARKS.md. The server is pinned to core 0 and dnsperf to
# core 1; every figure is compared with whoami measured in the same run. Results go to
# bench-out/results.md. Needs dnsperf (Debian package) and about 2 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench-out
mkdir -p $out
ROUNDS=${ROUNDS:-3}       # runs of each server and mix; the median is reported
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
N=${N:-100000}
BIG_N=${BIG_N:-1000000}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start_data DIR ARGS...: benchdata with its etcd, waiting for its "ready" line.
start_data() {
  local dir=$1; shift
  go build -o bin/benchdata ./test/benchdata
  bin/benchdata -dir "$dir" "$@" > "$dir.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 3600); do grep -q '^ready' "$dir.log" 2>/dev/null && return; sleep 1; done
  echo "benchdata did not get ready" >&2; cat "$dir.log" >&2; exit 1
}

wait_ready() { # wait_ready URL: until CoreDNS's ready plugin says so
  for _ in $(seq 600); do curl -fs "$1" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "CoreDNS not ready" >&2; exit 1
}

qps() { # qps PORT FILE
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$SECONDS_PER_RUN" -c 4 -q 200 2>&1 |
    awk '/Queries per second/ {print int($4)}'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== $N devices with certificates (3 1 1 + 4 0 0): whoami, deviceid, file"
mkdir -p $out/data
start_data $out/data -n "$N"
cat > $out/bench.Corefile <<CF
.:5300 {
    bind 127.0.0.1
    whoami
}
iot.example:5301 {
    bind 127.0.0.1
    ready 127.0.0.1:18181
    deviceid {
        endpoint http://127.0.0.1:23790
    }
}
iot.example:5302 {
    bind 127.0.0.1
    file $out/data/zone.db
}
CF
taskset -c 0 bin/coredns -conf $out/bench.Corefile > $out/coredns.log 2>&1 &
cdns=$!; pids+=($cdns)
wait_ready http://127.0.0.1:18181/ready
sleep 2 # the file plugin loads its zone in the background

declare -A runs
for round in $(seq "$ROUNDS"); do
  for mix in hot wide nonexistent; do
    for srv in whoami:5300 deviceid:5301 file:5302; do
      q=$(qps "${srv#*:}" $out/data/$mix.txt)
      runs[${srv%:*}.$mix]+="$q "
      echo "round $round $mix ${srv%:*}: $q q/s"
    done
  done
done
kill $cdns; wait $cdns 2>/dev/null || true

{
  echo "# make bench results, $(date -u +%Y-%m-%dT%H:%MZ), $N devices, median of $ROUNDS runs of ${SECONDS_PER_RUN}s"
  echo
  echo "| mix | whoami q/s | deviceid q/s | deviceid / whoami | file q/s | file / whoami |"
  echo "|---|---|---|---|---|---|"
  for mix in hot wide nonexistent; do
    w=$(tr ' ' '\n' <<<"${runs[whoami.$mix]}" | grep . | median)
    d=$(tr ' ' '\n' <<<"${runs[deviceid.$mix]}" | grep . | median)
    f=$(tr ' ' '\n' <<<"${runs[file.$mix]}" | grep . | median)
    echo "| $mix | $w | $d | $(awk "BEGIN {printf \"%.2f\", $d/$w}") | $f | $(awk "BEGIN {printf \"%.2f\", $f/$w}") |"
  done
} > $out/results.md
cleanup; pids=()

echo "== $BIG_N SPKI-only devices: load time and resident memory"
mkdir -p $out/big
start_data $out/big -n "$BIG_N" -spki-only -etcd http://127.0.0.1:23791 -etcd-peer http://127.0.0.1:23801
cat > $out/big.Corefile <<CF
iot.example:5303 {
    bind 127.0.0.1
    ready 127.0.0.1:18182
    deviceid {
        endpoint http://127.0.0.1:23791
    }
}
CF
start=$(date +%s.%N)
taskset -c 0 bin/coredns -conf $out/big.Corefile > $out/coredns-big.log 2>&1 &
cdns=$!; pids+=($cdns)
for _ in $(seq 6000); do curl -fs http://127.0.0.1:18182/ready >/dev/null 2>&1 && break; sleep 0.01; done
end=$(date +%s.%N)
sleep 1
rss=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$cdns/status)
answer=$(dig +short @127.0.0.1 -p 5303 TLSA dev0999999._device.iot.example | head -1 || true)
big_qps=$(qps 5303 $out/big/wide.txt)
rss_load=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$cdns/status)
{
  echo
  echo "$BIG_N SPKI-only devices: ready after $(awk "BEGIN {printf \"%.1f\", $end-$start}") s (process start to /ready);"
  echo "resident memory $rss MiB after the load, $rss_load MiB after ${SECONDS_PER_RUN}s of queries over all names ($big_qps q/s)."
  echo "Last device answers: ${answer:-NO ANSWER}"
} >> $out/results.md
cat $out/results.md
