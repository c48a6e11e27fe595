#!/usr/bin/env bash
# Makes the TLS test files: a CA and two server certificates it signed (for
# localhost and 127.0.0.1), so that a test can rotate the gateway's certificate from
# `a` to `b` while clients keep trusting the same CA. Valid for 100 years; the CA's
# key is not kept. Run from this directory: bash make.sh
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
  -subj "/CN=Fanout gateway test CA" -keyout "$work/ca.key" -out ca.pem 2>/dev/null
for name in a b; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=gateway-$name" -keyout "server-$name.key" -out "$work/$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/ext"
  openssl x509 -req -in "$work/$name.csr" -CA ca.pem -CAkey "$work/ca.key" -CAcreateserial -CAserial "$work/ca.srl" \
    -days 36500 -extfile "$work/ext" -out "server-$name.pem" 2>/dev/null
done
