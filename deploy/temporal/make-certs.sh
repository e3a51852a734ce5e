#!/bin/sh
# Makes the certificates of the Temporal connection (issue #14 item 4): a private CA, a server
# certificate for the Temporal frontend, and client certificates for the gateway's processes,
# the Temporal UI and an administrator (the `temporal` CLI, the container's health check).
#
#   deploy/temporal/make-certs.sh            # into deploy/temporal/certs/ (gitignored)
#   deploy/temporal/make-certs.sh --renew    # new leaf certificates from the existing CA
#
# TEMPORAL_CERT_HOSTS adds names to the server certificate (comma-separated DNS names or IP
# addresses, e.g. temporal.example.internal,10.0.0.5) for clients that dial Temporal by another
# name than the Compose service `temporal`; CERT_DAYS sets the leaves' lifetime (397 days).
# CERTS_DIR overrides the output folder.
#
# The CA's key never leaves this folder (nothing mounts it). The leaf keys are readable by any
# user (0644) inside a 0700 folder: the folder keeps them from other users of this host, and the
# containers, which run as their own users, read them through their mounts. See
# docs/security.md for what each certificate protects and how to rotate them.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${CERTS_DIR:-$here/certs}
days=${CERT_DAYS:-397}
renew=false
case "${1:-}" in
    --renew) renew=true ;;
    "") ;;
    *) echo "usage: $0 [--renew]" >&2; exit 2 ;;
esac

command -v openssl >/dev/null || { echo "make-certs.sh needs openssl" >&2; exit 1; }
umask 077
mkdir -p "$out"
chmod 0700 "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# EC P-256 keys in PKCS#8: accepted by the Temporal server and UI (Go), the Python SDK (Rust)
# and the `temporal` CLI alike.
new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

if [ ! -f "$out/ca.pem" ] || [ ! -f "$out/ca-key.pem" ]; then
    new_key "$out/ca-key.pem"
    openssl req -new -x509 -sha256 -days 3650 -key "$out/ca-key.pem" -out "$out/ca.pem" \
        -subj "/O=HITL Approval Gateway/CN=HITL Temporal CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    chmod 0600 "$out/ca-key.pem"
    chmod 0644 "$out/ca.pem"
    echo "made the CA:            $out/ca.pem"
fi

# leaf NAME EXTENDED_KEY_USAGE SUBJECT_ALT_NAMES
leaf() {
    if [ -f "$out/$1.pem" ] && [ -f "$out/$1-key.pem" ] && [ "$renew" = false ]; then
        return
    fi
    new_key "$work/$1-key.pem"
    openssl req -new -sha256 -key "$work/$1-key.pem" -out "$work/$1.csr" \
        -subj "/O=HITL Approval Gateway/CN=$1"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$2"
        echo "subjectAltName=$3"
    } > "$work/$1.ext"
    openssl x509 -req -sha256 -days "$days" -in "$work/$1.csr" -CA "$out/ca.pem" \
        -CAkey "$out/ca-key.pem" -CAcreateserial -CAserial "$work/ca.srl" \
        -extfile "$work/$1.ext" -out "$work/$1.pem" 2>/dev/null
    chmod 0644 "$work/$1.pem" "$work/$1-key.pem"
    mv "$work/$1-key.pem" "$out/$1-key.pem"
    mv "$work/$1.pem" "$out/$1.pem"
    echo "made a certificate:     $out/$1.pem ($2)"
}

san="DNS:temporal,DNS:localhost,IP:127.0.0.1"
for host in $(echo "${TEMPORAL_CERT_HOSTS:-}" | tr ',' ' '); do
    case "$host" in
        *[!0-9.]*) case "$host" in *:*) san="$san,IP:$host" ;; *) san="$san,DNS:$host" ;; esac ;;
        *) san="$san,IP:$host" ;;
    esac
done

# The server presents `temporal` to clients and to itself (internode, where it is the client
# too), so it carries both usages.
leaf temporal "serverAuth,clientAuth" "$san"
leaf hitl "clientAuth" "DNS:hitl"
leaf temporal-ui "clientAuth" "DNS:temporal-ui"
leaf admin "clientAuth" "DNS:admin"
