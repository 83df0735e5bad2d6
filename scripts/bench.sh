#!/usr/bin/env bash
# make bench: the load runs of BENCHMARKS.md. One bin/coredns pinned to core 0 serves
# whoami (the framework's ceiling), deviceid signed with ECDSA P-256 and deviceid signed
# with Ed25519; another bin/coredns, also pinned to core 0, serves file + dnssec with the
# same key and records (apart, so that neither process's garbage collector walks the
# other's zone); dnsperf runs on core 1. Every figure is compared with whoami measured in
# the same run. Results go to bench-out/results.md. Needs dnsperf (Debian package) and
# about 2 GB of disk.
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
  for _ in $(seq 6000); do curl -fs "$1" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "CoreDNS not ready" >&2; exit 1
}

qps() { # qps PORT FILE [dnsperf flags]: saturating throughput
  local port=$1 file=$2; shift 2
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$SECONDS_PER_RUN" -c 4 -q 200 "$@" 2>&1 |
    awk '/Queries per second/ {print int($4)}'
}

p99() { # p99 PORT FILE RATE [dnsperf flags]: 99th percentile latency in ms at RATE q/s
  local port=$1 file=$2 rate=$3; shift 3
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l 5 -c 4 -Q "$rate" -v "$@" 2>/dev/null |
    awk '/^> / {print $NF}' | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int(NR*0.99)]*1000}'
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk "BEGIN {printf \"%.2f\", $1/$2}"; }

echo "== $N devices with certificates (3 1 1 + 4 0 0)"
mkdir -p $out/data $out/keys
start_data $out/data -n "$N"
rm -f $out/keys/K*
ecdsa=$(bin/deviceid-signer keygen -zone iot.example -dir $out/keys | awk '/^Corefile:/ {print $4}')
ed25519=$(bin/deviceid-signer keygen -zone iot.example -algorithm ED25519 -dir $out/keys | awk '/^Corefile:/ {print $4}')
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
        key file $ecdsa
    }
}
iot.example:5304 {
    bind 127.0.0.1
    deviceid {
        endpoint http://127.0.0.1:23790
        key file $ed25519
    }
}
CF
cat > $out/bench-file.Corefile <<CF
iot.example:5302 {
    bind 127.0.0.1
    ready 127.0.0.1:18183
    file $out/data/zone.db
    dnssec {
        key file $ecdsa
    }
}
CF
taskset -c 0 bin/coredns -conf $out/bench.Corefile > $out/coredns.log 2>&1 &
cdns=$!; pids+=($cdns)
taskset -c 0 bin/coredns -conf $out/bench-file.Corefile > $out/coredns-file.log 2>&1 &
cfile=$!; pids+=($cfile)
wait_ready http://127.0.0.1:18181/ready
wait_ready http://127.0.0.1:18183/ready
sleep 3 # the file plugin loads its zone in the background
# Warm the signature caches: steady state is every device's answer signed once.
for port in 5301 5302; do taskset -c 1 dnsperf -s 127.0.0.1 -p $port -d $out/data/wide.txt -n 1 -c 4 -q 200 -D >/dev/null 2>&1; done

declare -A runs
run() { # run NAME PORT MIX [dnsperf flags]
  local name=$1 port=$2 mix=$3; shift 3
  local file=$out/data/$mix.txt
  if [ "$mix" = nonexistent ]; then
    # Names never asked before in this run: dnsperf reads its file from the top each
    # time, and names a server has signed already would come from its cache.
    file=$out/data/nonexistent-r$round.txt
    [ -f "$file" ] || sed "s/^/r$round-/" $out/data/nonexistent.txt > "$file"
  fi
  local q; q=$(qps "$port" "$file" "$@")
  runs[$name.$mix]+="$q "
  echo "round $round $mix $name: $q q/s"
}
rm -f $out/data/nonexistent-r*.txt
for round in $(seq "$ROUNDS"); do
  for mix in hot wide nonexistent; do
    run whoami 5300 $mix
    run deviceid 5301 $mix
    run file 5302 $mix
    run whoami-do 5300 $mix -D
    run deviceid-do 5301 $mix -D
    run file-dnssec-do 5302 $mix -D
  done
  run deviceid-ed25519-do 5304 nonexistent -D
done

hot_sat=$(median <<<"${runs[deviceid-do.hot]}")
lat_hot=$(p99 5301 $out/data/hot.txt $((hot_sat / 2)) -D)
wide_sat=$(median <<<"${runs[deviceid-do.wide]}")
lat_wide=$(p99 5301 $out/data/wide.txt $((wide_sat / 2)) -D)
kill $cdns $cfile; wait $cdns $cfile 2>/dev/null || true

rows() { # rows WHOAMI DEVICEID FILE: one table row a mix, medians and ratios to whoami
  local mix w d f
  for mix in hot wide nonexistent; do
    w=$(median <<<"${runs[$1.$mix]}"); d=$(median <<<"${runs[$2.$mix]}"); f=$(median <<<"${runs[$3.$mix]}")
    echo "| $mix | $w | $d | $(ratio "$d" "$w") | $f | $(ratio "$f" "$w") |"
  done
}
{
  echo "# make bench results, $(date -u +%Y-%m-%dT%H:%MZ), $N devices, median of $ROUNDS runs of ${SECONDS_PER_RUN}s"
  echo
  echo "Plain queries (no DO bit):"
  echo
  echo "| mix | whoami q/s | deviceid q/s | deviceid / whoami | file q/s | file / whoami |"
  echo "|---|---|---|---|---|---|"
  rows whoami deviceid file
  echo
  echo "DO bit set (signed answers; whoami answers unsigned, the ceiling):"
  echo
  echo "| mix | whoami q/s | deviceid (ECDSA) q/s | / whoami | file + dnssec q/s | / whoami |"
  echo "|---|---|---|---|---|---|"
  rows whoami-do deviceid-do file-dnssec-do
  w=$(median <<<"${runs[whoami-do.nonexistent]}"); e=$(median <<<"${runs[deviceid-ed25519-do.nonexistent]}")
  echo "| nonexistent, Ed25519 | $w | $e | $(ratio "$e" "$w") | | |"
  echo
  echo "p99 latency of signed answers at half the saturating load: hot $lat_hot ms (at $((hot_sat / 2)) q/s), wide $lat_wide ms (at $((wide_sat / 2)) q/s)."
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
# The load may use both cores (etcd, on the same machine, serves it meanwhile); the
# queries after it run with the server pinned to core 0 as above.
start=$(date +%s.%N)
bin/coredns -conf $out/big.Corefile > $out/coredns-big.log 2>&1 &
cdns=$!; pids+=($cdns)
wait_ready http://127.0.0.1:18182/ready
end=$(date +%s.%N)
taskset -a -p -c 0 $cdns >/dev/null
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

echo "== enrollment through the admin API against raw etcd puts; TLS handshakes by DANE against a CA pool"
go test -run XXX -bench 'EnrollAdminAPI|RawEtcdPut|Handshake' -benchtime 5s ./test/ > $out/gobench.txt
cat $out/gobench.txt
# rate NAME: the per-second figure a benchmark reported
rate() { awk -v n="$1" '$1 ~ "^Benchmark"n"-" {for (i = 1; i <= NF; i++) if ($(i+1) ~ /\/s$/) print $i}' $out/gobench.txt; }
csr=$(rate EnrollAdminAPI); bare=$(rate EnrollAdminAPIBareKey); hsm=$(rate EnrollAdminAPIHSM); raw=$(rate RawEtcdPut)
pool=$(rate HandshakeCAPool); cached=$(rate HandshakeDANECached); uncached=$(rate HandshakeDANEUncached)
{
  echo
  echo "Enrollment through the admin API (16 concurrent clients, single-node etcd): with a CSR $csr/s ($(ratio "$csr" "$raw")× raw puts),"
  echo "with a bare public key $bare/s ($(ratio "$bare" "$raw")×); raw etcd puts of the same record size $raw/s."
  echo "With the CA key in SoftHSM2 (PKCS#11), with a CSR $hsm/s ($(ratio "$hsm" "$csr")× the file key)."
  echo
  echo "TLS 1.3 handshakes with client authentication: CA pool $pool/s; DANE, answers cached, $cached/s ($(ratio "$cached" "$pool")×);"
  echo "DANE with a lookup at unbound for every handshake $uncached/s ($(ratio "$uncached" "$pool")×)."
} >> $out/results.md
tail -7 $out/results.md
