#!/usr/bin/env bash
# make bench: the load runs of BENCHMARKS.md. One bin/coredns pinned to core 0 serves
# whoami (the framework's ceiling), deviceid signed with ECDSA P-256, the same with the
# fast path (fastpath) and deviceid signed with Ed25519; another bin/coredns, also pinned
# to core 0, serves file + dnssec with the same key and records (apart, so that neither
# process's garbage collector walks the other's zone); dnsperf runs on core 1. Every
# figure is compared with whoami measured in the same run. Two Go programs answering
# every query with a fixed answer (test/udpceiling: a packet a system call, and batches
# of 64 as the fast path reads), also on core 0, are the ceilings of Go on one core
# (CEILING=0 skips them); at the end a CPU profile of the fast path under the hot mix
# and one of the batch ceiling (PROFILE=0 skips them) go to bench-out/*-top.txt. Results go to bench-out/results.md, the charts' figures to
# bench-out/*.tsv and the charts to bench-out/*.svg (test/benchplot). Needs dnsperf
# (Debian package) and about 2 GB of disk. A million devices and more:
# scripts/bench-scale.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench-out
mkdir -p $out
ROUNDS=${ROUNDS:-3}       # runs of each server and mix; the median is reported
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
N=${N:-100000}
CEILING=${CEILING:-1}
PROFILE=${PROFILE:-1}

source scripts/bench-lib.sh

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
.:5309 {
    bind 127.0.0.1
    prometheus 127.0.0.1:19154
    pprof 127.0.0.1:6053
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
iot.example:5303 {
    bind 127.0.0.1
    deviceid {
        endpoint http://127.0.0.1:23790
        key file $ecdsa
        fastpath
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
if [ "$CEILING" != 0 ]; then
  go build -o bin/udpceiling ./test/udpceiling
  taskset -c 0 bin/udpceiling -addr 127.0.0.1:5306 -mode plain > $out/udpceiling-plain.log 2>&1 &
  pids+=($!)
  taskset -c 0 bin/udpceiling -addr 127.0.0.1:5307 -mode batch -pprof 127.0.0.1:6054 > $out/udpceiling-batch.log 2>&1 &
  pids+=($!)
fi
wait_ready http://127.0.0.1:18181/ready
wait_ready http://127.0.0.1:18183/ready
sleep 3 # the file plugin loads its zone in the background
# Warm the signature caches: steady state is every device's answer signed once.
for port in 5301 5302 5303; do taskset -c 1 dnsperf -s 127.0.0.1 -p $port -d $out/data/wide.txt -n 1 -c 4 -q 200 -D >/dev/null 2>&1; done

declare -A runs busy core
run() { # run NAME PORT MIX [dnsperf flags]
  local name=$1 port=$2 mix=$3; shift 3
  local file=$out/data/$mix.txt
  if [ "$mix" = nonexistent ]; then
    # Names never asked before in this run: dnsperf reads its file from the top each
    # time, and names a server has signed already would come from its cache.
    file=$out/data/nonexistent-r$round.txt
    [ -f "$file" ] || sed "s/^/r$round-/" $out/data/nonexistent.txt > "$file"
  fi
  local q b; read -r q b <<<"$(qps_busy "$port" "$file" "$@")"
  runs[$name.$mix]+="$q "; busy[$name.$mix]+="$b "; core[$name.$mix]+="$((${q:-0} * 100 / (${b:-0} > 0 ? b : 1))) "
  echo "round $round $mix $name: $q q/s, core 0 busy $b %"
}
rm -f $out/data/nonexistent-r*.txt
for round in $(seq "$ROUNDS"); do
  for mix in hot wide nonexistent; do
    run whoami 5300 $mix
    run deviceid 5301 $mix
    run fastpath 5303 $mix
    run file 5302 $mix
    run whoami-do 5300 $mix -D
    run deviceid-do 5301 $mix -D
    run fastpath-do 5303 $mix -D
    run file-dnssec-do 5302 $mix -D
  done
  run deviceid-ed25519-do 5304 nonexistent -D
  if [ "$CEILING" != 0 ]; then # the answer does not depend on the name: the hot mix
    run echo-plain-do 5306 hot -D
    run echo-batch-do 5307 hot -D
  fi
done

hot_sat=$(median <<<"${runs[deviceid-do.hot]}")
read -ra lat_hot <<<"$(latency 5301 $out/data/hot.txt $((hot_sat / 2)) -D)"
read -ra lat_whoami <<<"$(latency 5300 $out/data/hot.txt $((hot_sat / 2)) -D)"
read -ra lat_fasthot <<<"$(latency 5303 $out/data/hot.txt $((hot_sat / 2)) -D)"
wide_sat=$(median <<<"${runs[deviceid-do.wide]}")
read -ra lat_wide <<<"$(latency 5301 $out/data/wide.txt $((wide_sat / 2)) -D)"
# The fast path's packets by path: all but the warm-up's nonexistent names "fast".
fastpackets=$(curl -fs http://127.0.0.1:19154/metrics | awk '/^coredns_deviceid_fastpath_packets_total/ {match($0, /path="[a-z]+"/); printf "%s %d, ", substr($0, RSTART + 6, RLENGTH - 7), $NF}')
if [ "$PROFILE" != 0 ]; then
  # Where a fast-path query's time goes: a CPU profile of the server (pprof plugin) under
  # the hot DO mix, and of the batch ceiling under the same load.
  profile() { # profile NAME PORT PPROF: bench-out/NAME.pprof and NAME-top.txt
    taskset -c 1 dnsperf -s 127.0.0.1 -p "$2" -d $out/data/hot.txt -l $((SECONDS_PER_RUN + 2)) -c 4 -q 200 -D > $out/$1-load.txt 2>&1 &
    local load=$!
    sleep 1
    curl -fs "http://$3/debug/pprof/profile?seconds=$SECONDS_PER_RUN" -o $out/$1.pprof
    wait $load || true
    go tool pprof -top $out/$1.pprof > $out/$1-top.txt 2>/dev/null
    echo "profile $1: $(awk '/Queries per second/ {print int($4)}' $out/$1-load.txt) q/s, $out/$1-top.txt"
  }
  profile fastpath-profile 5303 127.0.0.1:6053
  [ "$CEILING" != 0 ] && profile echo-batch-profile 5307 127.0.0.1:6054
fi
kill $cdns $cfile; wait $cdns $cfile 2>/dev/null || true

rows() { # rows WHOAMI DEVICEID FASTPATH FILE: one table row a mix, medians and ratios to whoami
  local mix w d p f
  for mix in hot wide nonexistent; do
    w=$(median <<<"${runs[$1.$mix]}"); d=$(median <<<"${runs[$2.$mix]}"); p=$(median <<<"${runs[$3.$mix]}"); f=$(median <<<"${runs[$4.$mix]}")
    echo "| $mix | $w | $d | $(ratio "$d" "$w") | $p | **$(ratio "$p" "$w")** | $f | $(ratio "$f" "$w") |"
  done
}
{
  echo "# make bench results, $(date -u +%Y-%m-%dT%H:%MZ), $N devices, median of $ROUNDS runs of ${SECONDS_PER_RUN}s"
  echo
  echo "Plain queries (no DO bit):"
  echo
  echo "| mix | whoami q/s | deviceid q/s | deviceid / whoami | fastpath q/s | fastpath / whoami | file q/s | file / whoami |"
  echo "|---|---|---|---|---|---|---|---|"
  rows whoami deviceid fastpath file
  echo
  echo "DO bit set (signed answers; whoami answers unsigned, the ceiling):"
  echo
  echo "| mix | whoami q/s | deviceid (ECDSA) q/s | / whoami | fastpath q/s | / whoami | file + dnssec q/s | / whoami |"
  echo "|---|---|---|---|---|---|---|---|"
  rows whoami-do deviceid-do fastpath-do file-dnssec-do
  w=$(median <<<"${runs[whoami-do.nonexistent]}"); e=$(median <<<"${runs[deviceid-ed25519-do.nonexistent]}")
  echo "| nonexistent, Ed25519 | $w | $e | $(ratio "$e" "$w") | | | | |"
  if [ "$CEILING" != 0 ]; then
    w=$(median <<<"${runs[whoami-do.hot]}"); p=$(median <<<"${runs[fastpath-do.hot]}")
    ep=$(median <<<"${runs[echo-plain-do.hot]}"); eb=$(median <<<"${runs[echo-batch-do.hot]}")
    echo
    echo "Ceilings on one core (test/udpceiling: a fixed answer to every query, DO hot mix): a packet a system call $ep q/s ($(ratio "$ep" "$w")× whoami), batches of 64 $eb q/s ($(ratio "$eb" "$w")×); the fast path $(ratio "$p" "$w")× whoami, $(ratio "$p" "$eb") of the batch ceiling."
  fi
  echo
  echo "Per second of core 0 (q/s over core 0's busy share; dnsperf on core 1 caps the throughput near the batch ceiling's, and the server's core then idles):"
  echo
  echo "| DO | whoami | deviceid | / whoami | fastpath | / whoami | a packet a call | / whoami | batches of 64 | / whoami |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for mix in hot wide nonexistent; do
    w=$(median <<<"${core[whoami-do.$mix]}"); row="| $mix | $w ($(median <<<"${busy[whoami-do.$mix]}") %)"
    for name in deviceid-do fastpath-do echo-plain-do echo-batch-do; do
      c=$(median <<<"${core[$name.$mix]:-}")
      if [ -n "$c" ]; then row+=" | $c ($(median <<<"${busy[$name.$mix]}") %) | **$(ratio "$c" "$w")**"; else row+=" | | "; fi
    done
    echo "$row |"
  done
  echo
  echo "p99 latency of signed answers at half the saturating load: hot ${lat_hot[2]} ms (at $((hot_sat / 2)) q/s), wide ${lat_wide[2]} ms (at $((wide_sat / 2)) q/s); whoami ${lat_whoami[2]} ms, the fast path ${lat_fasthot[2]} ms at the hot rate."
  echo
  echo "Fast path packets by path (coredns_deviceid_fastpath_packets_total): ${fastpackets%, }."
} > $out/results.md
cleanup; pids=()

# The figures for the charts (test/benchplot; docs/figures holds BENCHMARKS.md's).
{
  echo "# make bench, $(date -u +%Y-%m-%dT%H:%MZ), $N devices, DO, medians of $ROUNDS runs of ${SECONDS_PER_RUN}s"
  echo -e "devices\twhoami hot\tdeviceid hot\tdeviceid fastpath hot\twhoami wide\tdeviceid wide\tdeviceid fastpath wide\twhoami nonexistent\tdeviceid nonexistent\tdeviceid fastpath nonexistent"
  row=$N
  for mix in hot wide nonexistent; do
    for name in whoami-do deviceid-do fastpath-do; do row+=$'\t'$(median <<<"${runs[$name.$mix]}"); done
  done
  echo "$row"
} > $out/throughput.tsv
{
  echo "# make bench, $(date -u +%Y-%m-%dT%H:%MZ), $N devices, DO, medians of $ROUNDS runs of ${SECONDS_PER_RUN}s, each server on core 0"
  echo -e "mix\twhoami\tdeviceid\tdeviceid fastpath\tGo UDP, a packet a call\tGo UDP, batches of 64"
  for mix in hot wide nonexistent; do
    row=$mix
    for name in whoami-do deviceid-do fastpath-do echo-plain-do echo-batch-do; do row+=$'\t'$(median <<<"${runs[$name.$mix]:-}"); done
    echo "$row"
  done
  # The same over core 0's busy share: what each would answer with the core to itself.
  for mix in hot wide; do
    row="$mix, per second of core 0"
    for name in whoami-do deviceid-do fastpath-do echo-plain-do echo-batch-do; do row+=$'\t'$(median <<<"${core[$name.$mix]:-}"); done
    echo "$row"
  done
} > $out/fastpath.tsv
label_hot="deviceid hot, $((hot_sat / 2)) q/s" label_whoami="whoami, $((hot_sat / 2)) q/s" label_wide="deviceid wide, $((wide_sat / 2)) q/s"
label_fasthot="deviceid fastpath hot, $((hot_sat / 2)) q/s"
{ echo "# make bench, $(date -u +%Y-%m-%dT%H:%MZ), $N devices: DO answers at half deviceid's saturating load"; latency_tsv whoami hot fasthot wide; } > $out/latency.tsv

cat $out/results.md
[ "${GOBENCH:-1}" = 0 ] && { plot $out; exit 0; } # GOBENCH=0: the DNS load runs only

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
{
  echo "# make bench, $(date -u +%Y-%m-%dT%H:%MZ): enrollments through the admin API, 16 concurrent clients"
  echo -e "how\tper second"
  echo -e "raw etcd puts (reference)\t$raw"
  echo -e "bare public key\t$bare"
  echo -e "CSR, CA key in a PEM file\t$csr"
  echo -e "CSR, CA key in SoftHSM2\t$hsm"
} > $out/enrollment.tsv

echo "== the MQTT broker: connections, and revocation to disconnection"
go test -run XXX -bench 'BrokerConnect' -benchtime 3s -count 3 ./test/ | tee $out/gobench-mqtt.txt
go test -run XXX -bench 'RevocationToDisconnect' -benchtime 1x -count 3 ./test/ | tee -a $out/gobench-mqtt.txt
{
  echo "# make bench, $(date -u +%Y-%m-%dT%H:%MZ): BenchmarkRevocationToDisconnect, seconds from each revocation to the device cut off"
  echo -e "run\tp50\tp99\tmax\tbound (TTL + 1 s)"
  awk '$1 ~ /^BenchmarkRevocationToDisconnect/ {
    for (i = 2; i < NF; i++) v[$(i+1)] = $i
    printf "%d\t%.2f\t%.2f\t%.2f\t%.2f\n", ++n, v["p50-ms"]/1000, v["p99-ms"]/1000, v["max-ms"]/1000, v["ttl-ms"]/1000 + 1
  }' $out/gobench-mqtt.txt
} > $out/revocation.tsv
plot $out
