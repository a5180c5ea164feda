#!/usr/bin/env python3
"""The usual alternative to jwksd: the app signs its own client assertions
in-process with PyJWT (OpenSSL underneath, via `cryptography`).

One process per core (the GIL would serialise threads), each with the key
parsed once, signing the same claims jwksd signs (iss, sub, aud, iat, exp, a
128-bit jti; header alg, kid, typ, jku). Prints `rate=<signatures/s>` summed
over the processes.

    python3 bench/pyjwt_bench.py --alg RS384 --procs 2 --secs 5
"""
import argparse
import multiprocessing as mp
import secrets
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUD = "https://ehr.example.com/oauth2/token"


def worker(pem, alg, secs, start_at, out):
    key = serialization.load_pem_private_key(pem, password=None)
    headers = {"kid": "default-rs384-v1-abcdefgh", "typ": "JWT",
               "jku": "http://127.0.0.1:8080/.well-known/jwks.json"}
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + secs
    n = 0
    while True:
        now = int(time.time())
        claims = {"iss": "app", "sub": "app", "aud": AUD, "iat": now,
                  "exp": now + 300, "jti": secrets.token_urlsafe(16)}
        jwt.encode(claims, key, algorithm=alg, headers=headers)
        n += 1
        if time.time() >= end:
            break
    out.put(n)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--alg", default="RS384")
    p.add_argument("--procs", type=int, default=mp.cpu_count())
    p.add_argument("--secs", type=float, default=5.0)
    p.add_argument("--rsa-bits", type=int, default=4096)
    a = p.parse_args()
    if a.alg == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=a.rsa_bits)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    out = mp.Queue()
    start_at = time.time() + 0.5
    procs = [mp.Process(target=worker, args=(pem, a.alg, a.secs, start_at, out))
             for _ in range(a.procs)]
    for pr in procs:
        pr.start()
    total = sum(out.get() for _ in procs)
    for pr in procs:
        pr.join()
    print(f"mode=pyjwt alg={a.alg} procs={a.procs} ops={total} rate={total / a.secs:.1f}")


if __name__ == "__main__":
    main()
