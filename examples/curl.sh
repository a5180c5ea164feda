#!/bin/sh
# Get an access token from jwksd and call a FHIR endpoint with it; on a 401,
# drop the token and retry once. jwksd signs the assertion, calls the token
# endpoint and caches the token.
#
# FLOW=assertion shows the older path instead: get a client assertion from
# the socket and post it to the token endpoint yourself.
set -eu
SOCKET="${JWKSD_SOCKET:-/run/jwksd/jwksd.sock}"
: "${CLIENT_ID:?set CLIENT_ID}" "${TOKEN_URL:?set TOKEN_URL}"
SCOPE="${SCOPE:-system/*.rs}"
KEY=$(jq -cn --arg c "$CLIENT_ID" --arg u "$TOKEN_URL" --arg s "$SCOPE" \
  '{client_id: $c, token_url: $u, scope: $s}')

jwksd() { # METHOD PATH BODY
  curl -sS --fail-with-body --unix-socket "$SOCKET" -X "$1" "http://jwksd$2" \
    -H 'content-type: application/json' -d "$3"
}

if [ "${FLOW:-token}" = assertion ]; then
  assertion=$(jwksd POST /v1/assertions \
    "$(jq -cn --arg c "$CLIENT_ID" --arg u "$TOKEN_URL" '{client_id: $c, audience: $u}')" |
    jq -r .assertion)
  exec curl -sS --fail-with-body "$TOKEN_URL" \
    --data-urlencode grant_type=client_credentials \
    --data-urlencode client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
    --data-urlencode "client_assertion=$assertion" \
    --data-urlencode "scope=$SCOPE"
fi

token=$(jwksd POST /v1/tokens "$KEY" | jq -r .access_token)
if [ -z "${FHIR_URL:-}" ]; then
  jq -cn --arg t "$token" '{token_type: "Bearer", access_token: $t}'
  exit 0
fi
fhir() { # TOKEN -> body in $body_file, prints the status
  curl -sS -o "$body_file" -w '%{http_code}' -H "authorization: Bearer $1" "$FHIR_URL"
}
body_file=$(mktemp)
trap 'rm -f "$body_file"' EXIT
status=$(fhir "$token")
if [ "$status" = 401 ]; then
  # The resource server refused the token: drop it from jwksd's cache and
  # try once more.
  jwksd DELETE /v1/tokens "$KEY" >/dev/null
  status=$(fhir "$(jwksd POST /v1/tokens "$KEY" | jq -r .access_token)")
fi
[ "$status" = 200 ] || { echo "FHIR server answered $status" >&2; exit 1; }
cat "$body_file"
