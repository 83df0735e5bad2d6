# Helpers shared by scripts/bench.sh and scripts/bench-scale.sh (sourced, not run).
# Servers run pinned to core 0 and dnsperf to core 1; every figure is compared with
# whoami measured in the same run.

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start_data DIR ARGS...: benchdata with its etcd, waiting for its "ready" line.
start_data() {
  local dir=$1; shift
  go build -o bin/benchdata ./test/benchdata
  mkdir -p "$dir"
  bin/benchdata -dir "$dir" "$@" > "$dir.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 7200); do grep -q '^ready' "$dir.log" 2>/dev/null && return; sleep 1; done
  echo "benchdata did not get ready" >&2; cat "$dir.log" >&2; exit 1
}

wait_ready() { # wait_ready URL: until CoreDNS's ready plugin says so
  for _ in $(seq 12000); do curl -fs "$1" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "CoreDNS not ready" >&2; exit 1
}

qps() { # qps PORT FILE [dnsperf flags]: saturating throughput
  local port=$1 file=$2; shift 2
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$SECONDS_PER_RUN" -c 4 -q 200 "$@" 2>&1 |
    awk '/Queries per second/ {print int($4)}'
}

# Core 0's busy and idle time (/proc/stat, in ticks): user nice system irq softirq, and
# idle iowait. Steal (the hypervisor's) is neither.
cpu0() { awk '$1 == "cpu0" {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat; }

# qps_busy PORT FILE [dnsperf flags]: saturating throughput, and the per cent of core 0
# (the server's) busy meanwhile. When dnsperf on core 1 is the limit the server's core
# has idle time left: the throughput over the busy share is what the server would
# answer with the core to itself (a floor: half-idle batches are smaller).
qps_busy() {
  local a b q
  read -ra a <<<"$(cpu0)"
  q=$(qps "$@")
  read -ra b <<<"$(cpu0)"
  echo "$q $(awk "BEGIN {u = ${b[0]} - ${a[0]}; i = ${b[1]} - ${a[1]}; printf \"%.0f\", (u + i > 0 ? 100 * u / (u + i) : 100)}")"
}

latency() { # latency PORT FILE RATE [dnsperf flags]: p50 p90 p99 p99.9 in ms at RATE q/s
  local port=$1 file=$2 rate=$3; shift 3
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l 5 -c 4 -Q "$rate" -v "$@" 2>/dev/null |
    awk '/^> / {print $NF}' | sort -n |
    awk '{a[NR]=$1} END {printf "%.2f %.2f %.2f %.2f", a[int(NR*0.5)]*1000, a[int(NR*0.9)]*1000, a[int(NR*0.99)]*1000, a[int(NR*0.999)]*1000}'
}
p99() { local l; read -ra l <<<"$(latency "$@")"; echo "${l[2]}"; } # p99 PORT FILE RATE [dnsperf flags], in ms

# latency_tsv NAME... : the latency chart's file (test/benchplot) on standard output, of
# the series NAME with their latencies in the arrays lat_NAME (p50 p90 p99 p99.9); the
# column of each is named by the variable label_NAME.
latency_tsv() {
  local i name header=percentile pct=(p50 p90 p99 p99.9)
  for name in "$@"; do local l=label_$name; header+=$'\t'${!l}; done
  echo "$header"
  for i in 0 1 2 3; do
    local row=${pct[i]}
    for name in "$@"; do local a=lat_$name[$i]; row+=$'\t'${!a}; done
    echo "$row"
  done
}

# plot DIR: the SVG charts of DIR's .tsv files (test/benchplot), beside them.
plot() { go run ./test/benchplot -in "$1"; }

median() { tr ' ' '\n' | { grep . || true; } | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk "BEGIN {printf \"%.2f\", $1/$2}"; }
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$1/status"; } # resident MiB of PID
