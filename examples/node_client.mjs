#!/usr/bin/env node
// Get a client assertion from jwksd over its Unix socket and exchange it for
// an access token. Standard library only (Node.js 18+).
import http from "node:http";

const SOCKET = process.env.JWKSD_SOCKET ?? "/run/jwksd/jwksd.sock";
const CLIENT_ID = process.env.CLIENT_ID;
const TOKEN_URL = process.env.TOKEN_URL;
const SCOPE = process.env.SCOPE ?? "system/*.rs";
if (!CLIENT_ID || !TOKEN_URL) throw new Error("set CLIENT_ID and TOKEN_URL");

function assertion() {
  const body = JSON.stringify({ client_id: CLIENT_ID, audience: TOKEN_URL });
  return new Promise((resolve, reject) => {
    const req = http.request(
      { socketPath: SOCKET, path: "/v1/assertions", method: "POST",
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
      (res) => {
        let data = "";
        res.on("data", (c) => (data += c));
        res.on("end", () => {
          const answer = JSON.parse(data);
          if (res.statusCode !== 200) reject(new Error(`jwksd refused (${res.statusCode}): ${answer.error}: ${answer.message}`));
          else resolve(answer.assertion);
        });
      });
    req.on("error", reject);
    req.end(body);
  });
}

const jwt = await assertion();
const res = await fetch(TOKEN_URL, {
  method: "POST",
  body: new URLSearchParams({
    grant_type: "client_credentials",
    client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    client_assertion: jwt,
    scope: SCOPE,
  }),
});
if (!res.ok) throw new Error(`token endpoint answered ${res.status}: ${await res.text()}`);
console.log(JSON.stringify(await res.json()));
