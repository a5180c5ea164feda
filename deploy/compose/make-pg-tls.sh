#!/bin/sh
# Demo TLS for the compose database: a CA (pg-ca.crt, its key pg-ca.key)
# and a server certificate for the host name `postgres` (pg-server.crt,
# pg-server.key), valid 1 year. jwksd checks the server against pg-ca.crt
# (sslmode=verify-full in jwksd.toml). Existing files are kept. Keep
# pg-ca.key offline or delete it: whoever holds it can impersonate the
# database. In production use your own CA and the database's real name.
set -eu
cd "$(dirname "$0")"
umask 077
if [ ! -e pg-ca.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=jwksd compose demo database CA" -keyout pg-ca.key -out pg-ca.crt
fi
if [ ! -e pg-server.crt ]; then
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=postgres" -addext "subjectAltName=DNS:postgres" \
    -keyout pg-server.key -out pg-server.csr
  openssl x509 -req -in pg-server.csr -CA pg-ca.crt -CAkey pg-ca.key -CAcreateserial \
    -days 365 -copy_extensions copy -out pg-server.crt
  rm -f pg-server.csr
fi
# The CA certificate is public: the replicas (uid 10001) read it.
chmod 644 pg-ca.crt
echo "pg-ca.crt, pg-server.crt, pg-server.key ready"
