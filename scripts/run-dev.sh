#!/usr/bin/env bash
# make run: the dev stack in the foreground. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

bin/deviceid-signer dev -data .deviceid-dev &
signer=$!
trap 'kill $signer 2>/dev/null; wait $signer 2>/dev/null' EXIT

# Wait for the embedded etcd (and its sample devices) before starting CoreDNS.
for _ in $(seq 100); do
  if curl -fsS http://127.0.0.1:2379/health >/dev/null 2>&1; then break; fi
  kill -0 $signer 2>/dev/null || { echo "deviceid-signer dev failed to start" >&2; exit 1; }
  sleep 0.1
done

cat <<'MSG'

CoreDNS is starting on 127.0.0.1:1053. In another terminal try:

  dig @127.0.0.1 -p 1053 TLSA sensor7._device.iot.example          # active: 3 1 1 and 4 0 0
  dig @127.0.0.1 -p 1053 TLSA sensor8._device.iot.example          # revoked: 255 1 1
  dig @127.0.0.1 -p 1053 TLSA c90a.airquality._device.iot.example  # multi-label device
  dig @127.0.0.1 -p 1053 TLSA nosuch._device.iot.example           # NXDOMAIN
  dig @127.0.0.1 -p 1053 +dnssec TLSA sensor7._device.iot.example  # with its RRSIG
  delv @127.0.0.1 -p 1053 -a .deviceid-dev/anchors.conf +root=iot.example TLSA sensor7._device.iot.example

MSG
bin/coredns -conf corefile/dev.Corefile
