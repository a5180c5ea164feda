#!/usr/bin/env python3
"""Get a client assertion from jwksd over its Unix socket and exchange it
for an access token. Standard library only."""
import http.client
import json
import os
import socket
import sys
import urllib.parse
import urllib.request

SOCKET = os.environ.get("JWKSD_SOCKET", "/run/jwksd/jwksd.sock")
CLIENT_ID = os.environ["CLIENT_ID"]
TOKEN_URL = os.environ["TOKEN_URL"]
SCOPE = os.environ.get("SCOPE", "system/*.rs")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def assertion():
    conn = UnixHTTPConnection(SOCKET)
    body = json.dumps({"client_id": CLIENT_ID, "audience": TOKEN_URL})
    conn.request("POST", "/v1/assertions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    if resp.status != 200:
        sys.exit(f"jwksd refused ({resp.status}): {answer['error']}: {answer['message']}")
    return answer["assertion"]


def token(jwt):
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": jwt,
        "scope": SCOPE,
    }).encode()
    with urllib.request.urlopen(urllib.request.Request(TOKEN_URL, data=form)) as resp:
        return json.loads(resp.read())


if __name__ == "__main__":
    print(json.dumps(token(assertion())))
