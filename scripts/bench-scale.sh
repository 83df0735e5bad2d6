#!/usr/bin/env bash
# make bench-scale: the registry-sized runs of BENCHMARKS.md.
#
# For each size in SIZES (default: a million and ten million SPKI-only devices), an
# embedded etcd holds the devices; one bin/coredns serves whoami and deviceid (ECDSA
# P-256 CSK). It measures start to /ready on both cores, the time to the first signing
# pass, resident memory after ready and after 30 s of wide DO queries; then, with the
# server moved to core 0 (its GOMAXPROCS follows) and dnsperf on core 1: DO hot, wide and nonexistent against whoami (medians of
# ROUNDS), p99 latency at a fixed 2,000 q/s for every mix, and (first size only) the
# freshness of changes written while wide queries run at half the saturating rate.
# The throughput and latency are measured in a second process (after the first one's
# start, memory and first pass) that serves, beside the same two, deviceid with the fast
# path (fastpath 1) on its own port: whoami, deviceid and the fast path side by side
# (FASTPATH=0: no fast path, and no second process).
#
# Then, over 100,000 devices: DO hot and wide on one core, and on both cores (server and
# dnsperf sharing them) with and without multisocket, each with the fast path beside
# (CORES_N=0 skips it). And, beside CoreDNS file + dnssec: nonexistent names, and a
# flood of fresh random names (three times the nonexistent saturating rate) against
# wide queries offered at half their saturating rate; the fast path gets the rates of
# deviceid without it, the framework's (FLOOD_N=0 skips it).
#
# Results go to bench-out/scale/results.md; the charts of the sizes (throughput, memory,
# latency) to bench-out/scale/*.svg, drawn by test/benchplot from the .tsv beside them.
# Needs dnsperf, about 30 GB of disk and (for ten million) about an hour.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench-out/scale
mkdir -p $out
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
SIZES=${SIZES-1000000 10000000} # SIZES= (empty): none
FLOOD_N=${FLOOD_N:-100000}
FASTPATH=${FASTPATH:-1}
source scripts/bench-lib.sh
go build -o bin/freshness ./test/freshness
results=$out/results.md
echo "# make bench-scale results, $(date -u +%Y-%m-%dT%H:%MZ), median of $ROUNDS runs of ${SECONDS_PER_RUN}s" > $results

mkdir -p $out/keys
rm -f $out/keys/K*
key=$(bin/deviceid-signer keygen -zone iot.example -dir $out/keys | awk '/^Corefile:/ {print $4}')

# fresh FILE ROUND: the nonexistent names of FILE with a per-round prefix, never asked before
fresh() { local f=${1%.txt}-r$2.txt; [ -f "$f" ] || sed "s/^/r$2-/" "$1" > "$f"; echo "$f"; }

# signed LOG N: wait until N deviceid blocks of the server logging to LOG have finished
# their first signing pass.
signed() { until [ "$(grep -c 'first signing pass done' "$1")" -ge "$2" ]; do sleep 0.2; done; }

# fastblock PORT ENDPOINT SOCKETS [EXTRA]: a Corefile block of deviceid with the fast path
# (FASTPATH=0: none).
fastblock() {
  [ "$FASTPATH" = 0 ] && return
  printf 'iot.example:%s {\n    bind 127.0.0.1\n    %s\n    deviceid {\n        endpoint %s\n        key file %s\n        fastpath %s\n    }\n}\n' "$1" "${4:-}" "$2" "$key" "$3"
}

# The charts' figures (test/benchplot; docs/figures holds BENCHMARKS.md's), a row a size.
rm -f $out/*.tsv $out/*.svg
if [ -n "$SIZES" ]; then
  { echo "# make bench-scale, $(date -u +%Y-%m-%dT%H:%MZ), DO, medians of $ROUNDS runs of ${SECONDS_PER_RUN}s, the server on core 0"
    echo -e "devices\twhoami hot\tdeviceid hot\tdeviceid fastpath hot\twhoami wide\tdeviceid wide\tdeviceid fastpath wide\twhoami nonexistent\tdeviceid nonexistent\tdeviceid fastpath nonexistent"; } > $out/throughput.tsv
  { echo "# make bench-scale, $(date -u +%Y-%m-%dT%H:%MZ): VmRSS of bin/coredns, MiB (drawn as bytes a device)"
    echo -e "devices\tat ready\tafter the first signing pass\tafter 30 s of wide DO queries"; } > $out/memory.tsv
fi

first=1
for n in $SIZES; do
  echo "== $n SPKI-only devices"
  data=$out/d$n
  quota=0; [ "$n" -gt 2000000 ] && quota=$((8 << 30))
  start_data $data -n "$n" -spki-only -zone-file=false -quota $quota -etcd http://127.0.0.1:23795 -etcd-peer http://127.0.0.1:23805
  corefile() { # corefile FAST: the Corefile of this size, FAST 1 with the fast path's block
    cat <<CF
.:5310 {
    bind 127.0.0.1
    whoami
}
.:5319 {
    bind 127.0.0.1
    prometheus 127.0.0.1:19153
    whoami
}
iot.example:5313 {
    bind 127.0.0.1
    ready 127.0.0.1:18190
    deviceid {
        endpoint http://127.0.0.1:23795
        key file $key
    }
}
CF
    [ "$1" = 1 ] && fastblock 5314 http://127.0.0.1:23795 1
    true
  }
  corefile 0 > $out/scale.Corefile
  # The queries with the server on core 0 alone. The Go runtime follows the new CPU
  # affinity (GOMAXPROCS drops to 1 within a second or so); wait until it has.
  core0() {
    taskset -a -p -c 0 $cdns >/dev/null
    for _ in $(seq 300); do curl -fs http://127.0.0.1:19153/metrics | grep -q '^go_sched_gomaxprocs_threads 1$' && break; sleep 0.2; done
  }
  # The load and the first signing pass on both cores (etcd serves the reads meanwhile).
  start=$(date +%s.%N)
  bin/coredns -conf $out/scale.Corefile > $out/coredns-$n.log 2>&1 &
  cdns=$!; pids+=($cdns)
  wait_ready http://127.0.0.1:18190/ready
  ready=$(date +%s.%N)
  rss_ready=$(rss $cdns)
  signed $out/coredns-$n.log 1
  signed=$(date +%s.%N)
  rss_signed=$(rss $cdns)
  core0
  answer=$(dig +dnssec +short @127.0.0.1 -p 5313 TLSA dev$(printf %07d $((n - 1)))._device.iot.example | head -2 | tr '\n' ' ')
  taskset -c 1 dnsperf -s 127.0.0.1 -p 5313 -d $data/wide.txt -l 30 -c 4 -q 200 -D > /dev/null 2>&1
  rss_wide=$(rss $cdns)
  servers=(whoami:5310 deviceid:5313)
  if [ "$FASTPATH" != 0 ]; then
    # whoami, deviceid and the fast path side by side: a second process with the fast
    # path's block too (two indexes; the first process's start and memory are deviceid's
    # alone). Loaded and signed on both cores, then moved to core 0 as the first.
    kill $cdns; wait $cdns 2>/dev/null || true
    corefile 1 > $out/scale.Corefile
    bin/coredns -conf $out/scale.Corefile > $out/coredns-$n-fastpath.log 2>&1 &
    cdns=$!; pids+=($cdns)
    wait_ready http://127.0.0.1:18190/ready
    signed $out/coredns-$n-fastpath.log 2
    core0
    servers+=(fastpath:5314)
  fi

  declare -A runs=() core=()
  rm -f $data/nonexistent-r*.txt
  for round in $(seq "$ROUNDS"); do
    for mix in hot wide nonexistent; do
      file=$data/$mix.txt
      [ $mix = nonexistent ] && file=$(fresh $data/nonexistent.txt $round)
      for server in "${servers[@]}"; do
        read -r q b <<<"$(qps_busy ${server#*:} $file -D)"
        runs[${server%:*}.$mix]+="$q "; core[${server%:*}.$mix]+="$((${q:-0} * 100 / (${b:-0} > 0 ? b : 1))) "
        echo "round $round $mix ${server%:*}: $q q/s, core 0 busy $b %"
      done
    done
  done
  lat="" series=()
  for mix in hot wide nonexistent; do
    file=$data/$mix.txt
    [ $mix = nonexistent ] && file=$(fresh $data/nonexistent.txt 99)
    lat+="| $mix |"
    for server in "${servers[@]}"; do
      name=${server%:*}
      read -ra lat_${name}_$mix <<<"$(latency ${server#*:} $file 2000 -D)"
      declare -n l=lat_${name}_$mix
      lat+=" ${l[2]} ms |"
      unset -n l
      label=$name; [ $name = fastpath ] && label="deviceid fastpath"
      declare label_${name}_$mix="$label $mix"
      series+=(${name}_$mix)
    done
    lat+=$'\n'
  done
  [ $first = 1 ] && { echo "# make bench-scale, $(date -u +%Y-%m-%dT%H:%MZ), $n devices: DO answers at 2,000 q/s"; latency_tsv "${series[@]}"; } > $out/latency.tsv
  fresh_out=""
  if [ $first = 1 ]; then
    half=$(( $(median <<<"${runs[deviceid.wide]}") / 2 ))
    taskset -c 1 dnsperf -s 127.0.0.1 -p 5313 -d $data/wide.txt -l 25 -c 4 -Q $half -D > $out/fresh-load.txt 2>&1 &
    load=$!
    sleep 2
    fresh_out=$(taskset -c 1 bin/freshness -etcd http://127.0.0.1:23795 -dns 127.0.0.1:5313 -metrics http://127.0.0.1:19153/metrics -n 1000 -rate 100 2>&1) || true
    wait $load || true
    fresh_out+=$'\n'"(wide DO queries offered at $half q/s meanwhile: $(awk '/Queries per second/ {print int($4)}' $out/fresh-load.txt) q/s answered)"
  fi
  kill $cdns; wait $cdns 2>/dev/null || true
  cleanup; pids=()
  {
    echo
    echo "## $n SPKI-only devices"
    echo
    echo "start to /ready (both cores): $(awk "BEGIN {printf \"%.1f\", $ready-$start}") s; first signing pass done $(awk "BEGIN {printf \"%.1f\", $signed-$ready}") s after ready."
    echo "Resident memory: $rss_ready MiB at ready, $rss_signed MiB after the first pass, $rss_wide MiB after 30 s of wide DO queries (on core 0)."
    echo "Last device, signed: $answer"
    echo
    echo "| mix (DO) | whoami q/s | deviceid q/s | / whoami | fastpath q/s | / whoami |"
    echo "|---|---|---|---|---|---|"
    for mix in hot wide nonexistent; do
      w=$(median <<<"${runs[whoami.$mix]}"); d=$(median <<<"${runs[deviceid.$mix]}"); p=$(median <<<"${runs[fastpath.$mix]:-}")
      echo "| $mix | $w | $d | **$(ratio "$d" "$w")** | $p | **$([ -n "$p" ] && ratio "$p" "$w")** |"
    done
    echo
    echo -n "Per second of core 0 (q/s over its busy share; dnsperf on core 1 caps the fast path's throughput):"
    for mix in hot wide nonexistent; do
      w=$(median <<<"${core[whoami.$mix]}"); p=$(median <<<"${core[fastpath.$mix]:-}"); d=$(median <<<"${core[deviceid.$mix]}")
      echo -n " $mix whoami $w, deviceid $d ($(ratio "$d" "$w")×)"; [ -n "$p" ] && echo -n ", fastpath $p (**$(ratio "$p" "$w")×**)"; echo -n ";"
    done
    echo
    echo
    echo "p99 latency at 2,000 q/s:"
    echo
    echo "| mix (DO) | whoami | deviceid | fastpath |"
    echo "|---|---|---|---|"
    echo -n "$lat"
    [ -n "$fresh_out" ] && { echo; echo "Freshness, 1,000 enrollments and revocations at 100 a second:"; echo; echo '```'; echo "$fresh_out"; echo '```'; }
  } >> $results
  row=$n
  for mix in hot wide nonexistent; do
    for name in whoami deviceid fastpath; do row+=$'\t'$(median <<<"${runs[$name.$mix]:-}"); done
  done
  echo "$row" >> $out/throughput.tsv
  echo -e "$n\t$rss_ready\t$rss_signed\t$rss_wide" >> $out/memory.tsv
  first=0
  tail -25 $results
done

CORES_N=${CORES_N:-100000}
if [ "$CORES_N" != 0 ]; then
  echo "== $CORES_N devices: one core, and two cores with and without multisocket, with and without the fast path"
  data=$out/cores
  start_data $data -n "$CORES_N" -spki-only -zone-file=false -etcd http://127.0.0.1:23797 -etcd-peer http://127.0.0.1:23807
  declare -A cores=()
  for mode in one two multisocket; do
    ms="" fp=2; [ $mode = multisocket ] && ms="multisocket 2"; [ $mode = one ] && fp=1
    { cat <<CF
.:5330 {
    bind 127.0.0.1
    $ms
    whoami
}
iot.example:5331 {
    bind 127.0.0.1
    $ms
    ready 127.0.0.1:18193
    deviceid {
        endpoint http://127.0.0.1:23797
        key file $key
    }
}
CF
      fastblock 5332 http://127.0.0.1:23797 $fp "$ms"; } > $out/cores.Corefile
    pin="taskset -c 0"; [ $mode != one ] && pin=""
    $pin bin/coredns -conf $out/cores.Corefile > $out/coredns-cores-$mode.log 2>&1 &
    cdns=$!
    wait_ready http://127.0.0.1:18193/ready
    servers=(whoami:5330 deviceid:5331); [ "$FASTPATH" != 0 ] && servers+=(fastpath:5332)
    signed $out/coredns-cores-$mode.log $((${#servers[@]} - 1))
    for round in $(seq "$ROUNDS"); do
      for mix in hot wide; do
        for server in "${servers[@]}"; do
          if [ $mode = one ]; then
            q=$(qps ${server#*:} $data/$mix.txt -D)
          else # the server and dnsperf share both cores
            q=$(dnsperf -s 127.0.0.1 -p ${server#*:} -d $data/$mix.txt -l "$SECONDS_PER_RUN" -c 4 -q 200 -D 2>&1 | awk '/Queries per second/ {print int($4)}')
          fi
          cores[$mode.${server%:*}.$mix]+="$q "
          echo "round $round $mode $mix ${server%:*}: $q q/s"
        done
      done
    done
    kill $cdns; wait $cdns 2>/dev/null || true
  done
  cleanup; pids=()
  {
    echo
    echo "## $CORES_N devices: cores (DO)"
    echo
    echo "| server | mix | whoami q/s | deviceid q/s | / whoami | fastpath q/s (fastpath 1 on one core, 2 on two) | / whoami |"
    echo "|---|---|---|---|---|---|---|"
    for mode in one two multisocket; do
      for mix in hot wide; do
        w=$(median <<<"${cores[$mode.whoami.$mix]}"); d=$(median <<<"${cores[$mode.deviceid.$mix]}"); p=$(median <<<"${cores[$mode.fastpath.$mix]:-}")
        echo "| $mode | $mix | $w | $d | $(ratio "$d" "$w") | $p | **$([ -n "$p" ] && ratio "$p" "$w")** |"
      done
    done
  } >> $results
  tail -10 $results
fi

[ -n "$SIZES" ] && plot $out
[ "$FLOOD_N" = 0 ] && exit 0 # FLOOD_N=0: the sizes only
echo "== $FLOOD_N devices: nonexistent names and a flood of them, beside file + dnssec"
data=$out/flood
start_data $data -n "$FLOOD_N" -spki-only -etcd http://127.0.0.1:23796 -etcd-peer http://127.0.0.1:23806
cat > $out/flood.Corefile <<CF
.:5320 {
    bind 127.0.0.1
    whoami
}
iot.example:5321 {
    bind 127.0.0.1
    ready 127.0.0.1:18191
    deviceid {
        endpoint http://127.0.0.1:23796
        key file $key
    }
}
CF
fastblock 5323 http://127.0.0.1:23796 1 >> $out/flood.Corefile
cat > $out/flood-file.Corefile <<CF
iot.example:5322 {
    bind 127.0.0.1
    ready 127.0.0.1:18192
    file $data/zone.db
    dnssec {
        key file $key
    }
}
CF
taskset -c 0 bin/coredns -conf $out/flood.Corefile > $out/coredns-flood.log 2>&1 &
pids+=($!)
taskset -c 0 bin/coredns -conf $out/flood-file.Corefile > $out/coredns-flood-file.log 2>&1 &
pids+=($!)
wait_ready http://127.0.0.1:18191/ready
wait_ready http://127.0.0.1:18192/ready
flooded=(deviceid:5321); [ "$FASTPATH" != 0 ] && flooded+=(fastpath:5323)
signed $out/coredns-flood.log ${#flooded[@]}
sleep 3
taskset -c 1 dnsperf -s 127.0.0.1 -p 5322 -d $data/wide.txt -n 1 -c 4 -q 200 -D >/dev/null 2>&1 # file + dnssec signs on first use
declare -A runs=()
rm -f $data/nonexistent-r*.txt
for round in $(seq "$ROUNDS"); do
  # Each mix across the servers: a server's nonexistent names right after its own wide
  # queries would meet the denial budget still engaged (names that exist asked for in
  # the last second or two) and be answered TC for a while, fast.
  for mix in wide nonexistent; do
    for server in whoami:5320 "${flooded[@]}" file:5322; do
      file=$data/$mix.txt
      [ $mix = nonexistent ] && file=$(fresh $data/nonexistent.txt $round-${server%:*})
      q=$(qps ${server#*:} $file -D)
      runs[${server%:*}.$mix]+="$q "
      echo "round $round $mix ${server%:*}: $q q/s"
    done
  done
done
# offered PORT FILE RATE: q/s answered of RATE offered (open loop), with DO
offered() { taskset -c 1 dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$SECONDS_PER_RUN" -c 4 -Q "$3" -D 2>&1 | awk '/Queries per second/ {print int($4)}'; }
declare -A flood=()
for round in $(seq "$ROUNDS"); do
  for server in "${flooded[@]}" file:5322; do
    name=${server%:*} port=${server#*:}
    # The fast path gets deviceid's rates: half the framework's capacity, and a flood
    # beyond it.
    rates=$name; [ $name = fastpath ] && rates=deviceid
    half=$(( $(median <<<"${runs[$rates.wide]}") / 2 ))
    rate=$(( 3 * $(median <<<"${runs[$rates.nonexistent]}") ))
    alone=$(offered $port $data/wide.txt $half)
    taskset -c 1 dnsperf -s 127.0.0.1 -p $port -d $(fresh $data/nonexistent.txt f$round-$name) -l $((SECONDS_PER_RUN + 2)) -c 4 -q 1000 -Q $rate -D > $out/flood-$name.txt 2>&1 &
    f=$!
    sleep 1
    with=$(offered $port $data/wide.txt $half)
    wait $f || true
    flood[$name.alone]+="$alone "; flood[$name.with]+="$with "
    flood[$name.flood]+="$(awk '/Queries per second/ {print int($4)}' $out/flood-$name.txt) "
    flood[$name.sent]+="$(awk '/Queries sent/ {print int($3 / ('"$SECONDS_PER_RUN"' + 2))}' $out/flood-$name.txt) "
    flood[$name.half]=$half flood[$name.rate]=$rate
    echo "round $round flood $name: wide offered $half q/s, answered $alone alone, $with under a flood offered at $rate q/s"
  done
done
{
  echo
  echo "## $FLOOD_N devices: nonexistent names and floods, beside file + dnssec"
  echo
  echo "| DO | whoami q/s | deviceid q/s | / whoami | file + dnssec q/s | / whoami |"
  echo "|---|---|---|---|---|---|"
  for mix in wide nonexistent; do
    w=$(median <<<"${runs[whoami.$mix]}"); d=$(median <<<"${runs[deviceid.$mix]}"); f=$(median <<<"${runs[file.$mix]}")
    echo "| $mix | $w | $d | **$(ratio "$d" "$w")** | $f | $(ratio "$f" "$w") |"
  done
  if [ "$FASTPATH" != 0 ]; then
    echo
    echo "| DO | whoami q/s | deviceid fastpath q/s | / whoami | / deviceid |"
    echo "|---|---|---|---|---|"
    for mix in wide nonexistent; do
      w=$(median <<<"${runs[whoami.$mix]}"); d=$(median <<<"${runs[deviceid.$mix]}"); p=$(median <<<"${runs[fastpath.$mix]}")
      echo "| $mix | $w | $p | **$(ratio "$p" "$w")** | $(ratio "$p" "$d") |"
    done
  fi
  echo
  echo "Wide DO queries offered at half their saturating rate (the fast path: at deviceid's), alone and under a flood of fresh random names offered at three times the nonexistent saturating rate (the fast path: deviceid's):"
  echo
  echo "| server | wide offered | answered alone | under the flood | ratio | flood offered | flood sent | flood answered |"
  echo "|---|---|---|---|---|---|---|---|"
  for server in "${flooded[@]}" file:5322; do
    name=${server%:*}
    a=$(median <<<"${flood[$name.alone]}"); w=$(median <<<"${flood[$name.with]}")
    echo "| $name | ${flood[$name.half]} | $a | $w | **$(ratio "$w" "$a")** | ${flood[$name.rate]} | $(median <<<"${flood[$name.sent]}") | $(median <<<"${flood[$name.flood]}") |"
  done
  echo
  grep -h 'over the signing budget\|nonexistence signed within' $out/coredns-flood.log | head -3 | sed 's/^/    /'
} >> $results
cat $results
