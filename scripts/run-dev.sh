#!/usr/bin/env bash
# make run: the dev stack in the foreground. Ctrl-C stops it all, and so does the end
# of any part of it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every port the stack needs, checked before anything starts: a second make run, or
# another service on one of them, must not leave half a stack running.
ports="1053 2379 2380 8080 8181 8443 8444 8883 9153"
taken=""
for p in $ports; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then taken="$taken $p"; fi
done
if [ -n "$taken" ]; then
  echo "make run: port(s)$taken on 127.0.0.1 are in use (another make run?); stop what uses them first." >&2
  exit 1
fi

pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

bin/deviceid-signer dev -data .deviceid-dev &
pids+=($!)

# Wait for the embedded etcd (and its sample devices) before starting CoreDNS.
for _ in $(seq 100); do
  if curl -fsS http://127.0.0.1:2379/health >/dev/null 2>&1; then break; fi
  kill -0 "${pids[0]}" 2>/dev/null || { echo "make run: deviceid-signer dev failed to start" >&2; exit 1; }
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

The MQTT scenario: bin/deviceid-mqtt on 127.0.0.1:8883 and the simulated device thermo-sim
publishing on devices/thermo-sim/telemetry, each end authenticated by DNSSEC (TLSA at
thermo-sim._device.iot.example and _8883._tcp.mqtt.demo.iot.example). Revoke it and the
broker cuts it off within the TTL (60 s):
  curl -sS --cacert .deviceid-dev/ca.pem -H "Authorization: Bearer $(cat .deviceid-dev/demo-token)" \
    -H "Content-Type: application/json" -d '{"reason": "keyCompromise"}' \
    https://127.0.0.1:8443/api/v1/devices/thermo-sim/revoke

The web console: https://127.0.0.1:8443/console/ (the dev CA signed its certificate:
.deviceid-dev/ca.pem), signed in with the demo tenant's token (.deviceid-dev/demo-token)
or the operator's (.deviceid-dev/admin-token).

MSG
bin/coredns -conf corefile/dev.Corefile &
pids+=($!)

for _ in $(seq 100); do # the signer serves EST (the device enrolls at once)
  curl -fsk https://127.0.0.1:8443/healthz >/dev/null 2>&1 && break
  sleep 0.1
done

# The MQTT scenario: the demo tenant's broker (devices authenticated by DANE) and a
# simulated device that enrolls over EST and authenticates the broker by DANE.
bin/deviceid-mqtt -listen 127.0.0.1:8883 -cert .deviceid-dev/broker.pem -key .deviceid-dev/broker-key.pem \
  -ds .deviceid-dev/ds.txt -server 127.0.0.1:1053 &
pids+=($!)
bin/deviceid-device -name thermo-sim -code-file .deviceid-dev/thermo-sim.code -state .deviceid-dev/thermo-sim \
  -broker 127.0.0.1:8883 -broker-name mqtt.demo.iot.example:8883 -signer-ca .deviceid-dev/ca.pem \
  -ds .deviceid-dev/ds.txt -server 127.0.0.1:1053 &
pids+=($!)

# Whichever part ends first ends the stack.
set +e
wait -n "${pids[@]}"
status=$?
echo "make run: a part of the stack stopped (exit $status); stopping the rest." >&2
exit $status
