#!/usr/bin/env bash
# make-pki.sh DIR HOST... — the PKI of an etcd cluster with openssl: a CA, a server
# certificate for each member HOST (a name or an IP address, in its SAN; the peer
# certificate is the same), and client certificates for the CoreDNS replicas
# (CN coredns), the signers (CN signer) and the administrator (CN root), the etcd
# users of docs/operations.md.
# Writes DIR/ca.pem, DIR/<host>.pem, DIR/<host>-key.pem, DIR/<client>.pem and
# DIR/<client>-key.pem; refuses to overwrite an existing CA.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DIR HOST..." >&2; exit 2; }
dir=$1; shift
mkdir -p "$dir"; cd "$dir"
[ ! -e ca.pem ] || { echo "$dir/ca.pem exists; refusing to overwrite the CA" >&2; exit 1; }
umask 077
days=825

openssl ecparam -genkey -name prime256v1 -noout -out ca-key.pem
openssl req -x509 -new -key ca-key.pem -sha256 -days 3650 -subj "/CN=deviceid etcd CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

# cert NAME CN SAN EKU: a key and a certificate from the CA.
cert() {
  openssl ecparam -genkey -name prime256v1 -noout -out "$1-key.pem"
  openssl req -new -key "$1-key.pem" -subj "/CN=$2" -out "$1.csr"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s' "$4" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days $days -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm "$1.csr" "$1.ext"
}

for host in "$@"; do
  if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san="IP:$host"; else san="DNS:$host"; fi
  cert "$host" "$host" "subjectAltName=$san,IP:127.0.0.1,DNS:localhost" "serverAuth,clientAuth"
done
for client in coredns signer root; do
  cert "$client" "$client" "" "clientAuth"
done
chmod 644 ca.pem ./*.pem
chmod 600 ./*-key.pem
echo "wrote the etcd PKI to $dir: ca.pem; $*; coredns, signer and root client certificates"
