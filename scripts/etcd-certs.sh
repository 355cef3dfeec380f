#!/usr/bin/env bash
# Make a small PKI for etcd with TLS client certificates (control/README.md):
#
#   scripts/etcd-certs.sh DIR SERVER_NAME_OR_IP... -- CLIENT...
#
# writes DIR/ca.pem (+ ca-key.pem), DIR/server.pem + server-key.pem valid for every
# SERVER name or IP, and DIR/<client>.pem + <client>-key.pem per CLIENT, whose common name
# is the etcd user it authenticates as (etcd --client-cert-auth maps CN -> user). Keys are
# mode 0600. Example:
#
#   scripts/etcd-certs.sh /etc/mld/etcd-pki 10.0.0.10 etcd1.example -- root mld-node1
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,12p' "$0"; exit 2; }
dir=$1; shift
servers=(); clients=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do servers+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
clients=("$@")
[ ${#servers[@]} -ge 1 ] && [ ${#clients[@]} -ge 1 ] || { echo "need servers -- clients"; exit 2; }
mkdir -p "$dir"; cd "$dir"; umask 077
days=825

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=mld-etcd-ca" -keyout ca-key.pem -out ca.pem 2>/dev/null

san=""
for s in "${servers[@]}"; do
    if [[ $s =~ ^[0-9.]+$ || $s == *:* ]]; then san+="IP:$s,"; else san+="DNS:$s,"; fi
done
sign() {  # name cn extensions
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days $days -out "$1.pem" -extfile <(printf '%s\n' "$3") 2>/dev/null
    rm -f "$1.csr"
}
sign server "${servers[0]}" "subjectAltName=${san%,}
extendedKeyUsage=serverAuth,clientAuth"
for c in "${clients[@]}"; do
    sign "$c" "$c" "extendedKeyUsage=clientAuth"
done
rm -f ca.srl
chmod 644 ./*.pem; chmod 600 ./*-key.pem
echo "etcd-certs: wrote $dir: ca.pem, server.pem (${servers[*]}), clients: ${clients[*]}"
