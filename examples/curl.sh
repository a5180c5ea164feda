#!/bin/sh
# Get a client assertion from jwksd and exchange it for an access token.
set -eu
SOCKET="${JWKSD_SOCKET:-/run/jwksd/jwksd.sock}"
: "${CLIENT_ID:?set CLIENT_ID}" "${TOKEN_URL:?set TOKEN_URL}"
SCOPE="${SCOPE:-system/*.rs}"

answer=$(curl -sS --fail-with-body --unix-socket "$SOCKET" http://jwksd/v1/assertions \
  -H 'content-type: application/json' \
  -d "{\"client_id\": \"$CLIENT_ID\", \"audience\": \"$TOKEN_URL\"}")
assertion=$(printf '%s' "$answer" | jq -r .assertion)

curl -sS --fail-with-body "$TOKEN_URL" \
  --data-urlencode grant_type=client_credentials \
  --data-urlencode client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
  --data-urlencode "client_assertion=$assertion" \
  --data-urlencode "scope=$SCOPE"
