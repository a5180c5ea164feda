#!/usr/bin/env python3
"""Get an access token from jwksd over its Unix socket and call a FHIR
endpoint with it; on a 401, drop the token and retry once. jwksd signs the
assertion, calls the token endpoint and caches the token. Standard library
only.

FLOW=assertion shows the older path instead: get a client assertion from
the socket and post it to the token endpoint yourself."""
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

SOCKET = os.environ.get("JWKSD_SOCKET", "/run/jwksd/jwksd.sock")
CLIENT_ID = os.environ["CLIENT_ID"]
TOKEN_URL = os.environ["TOKEN_URL"]
SCOPE = os.environ.get("SCOPE", "system/*.rs")
FHIR_URL = os.environ.get("FHIR_URL")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def jwksd(method, path, body):
    conn = UnixHTTPConnection(SOCKET)
    conn.request(method, path, json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        answer = json.loads(data)
        sys.exit(f"jwksd refused ({resp.status}): {answer['error']}: {answer['message']}")
    return json.loads(data) if data else None


# --- the token path: one request to the socket ---------------------------

KEY = {"client_id": CLIENT_ID, "token_url": TOKEN_URL, "scope": SCOPE}


def access_token():
    return jwksd("POST", "/v1/tokens", KEY)["access_token"]


def fhir_get(url, token):
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def token_flow():
    token = access_token()
    if not FHIR_URL:
        return {"token_type": "Bearer", "access_token": token}
    status, body = fhir_get(FHIR_URL, token)
    if status == 401:
        # The resource server refused the token (revoked, or issued before a
        # key change): drop it from jwksd's cache and try once more.
        jwksd("DELETE", "/v1/tokens", KEY)
        status, body = fhir_get(FHIR_URL, access_token())
    if status != 200:
        sys.exit(f"FHIR server answered {status}")
    return body


# --- the assertion path: post the assertion yourself ---------------------

def assertion_flow():
    jwt = jwksd("POST", "/v1/assertions", {"client_id": CLIENT_ID, "audience": TOKEN_URL})["assertion"]
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": jwt,
        "scope": SCOPE,
    }).encode()
    with urllib.request.urlopen(urllib.request.Request(TOKEN_URL, data=form)) as resp:
        return json.loads(resp.read())


if __name__ == "__main__":
    flow = assertion_flow if os.environ.get("FLOW") == "assertion" else token_flow
    print(json.dumps(flow()))
