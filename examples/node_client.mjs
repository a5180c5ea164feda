#!/usr/bin/env node
// Get an access token from jwksd over its Unix socket and call a FHIR
// endpoint with it; on a 401, drop the token and retry once. jwksd signs
// the assertion, calls the token endpoint and caches the token. Standard
// library only (Node.js 18+).
//
// FLOW=assertion shows the older path instead: get a client assertion from
// the socket and post it to the token endpoint yourself.
import http from "node:http";

const SOCKET = process.env.JWKSD_SOCKET ?? "/run/jwksd/jwksd.sock";
const CLIENT_ID = process.env.CLIENT_ID;
const TOKEN_URL = process.env.TOKEN_URL;
const SCOPE = process.env.SCOPE ?? "system/*.rs";
const FHIR_URL = process.env.FHIR_URL;
if (!CLIENT_ID || !TOKEN_URL) throw new Error("set CLIENT_ID and TOKEN_URL");

function jwksd(method, path, body) {
  const text = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { socketPath: SOCKET, path, method,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(text) } },
      (res) => {
        let data = "";
        res.on("data", (c) => (data += c));
        res.on("end", () => {
          const answer = data ? JSON.parse(data) : null;
          if (res.statusCode >= 300) reject(new Error(`jwksd refused (${res.statusCode}): ${answer.error}: ${answer.message}`));
          else resolve(answer);
        });
      });
    req.on("error", reject);
    req.end(text);
  });
}

// --- the token path: one request to the socket ---------------------------

const KEY = { client_id: CLIENT_ID, token_url: TOKEN_URL, scope: SCOPE };
const accessToken = async () => (await jwksd("POST", "/v1/tokens", KEY)).access_token;
const fhirGet = (token) => fetch(FHIR_URL, { headers: { authorization: `Bearer ${token}` } });

async function tokenFlow() {
  const token = await accessToken();
  if (!FHIR_URL) return { token_type: "Bearer", access_token: token };
  let res = await fhirGet(token);
  if (res.status === 401) {
    // The resource server refused the token: drop it from jwksd's cache and
    // try once more.
    await jwksd("DELETE", "/v1/tokens", KEY);
    res = await fhirGet(await accessToken());
  }
  if (!res.ok) throw new Error(`FHIR server answered ${res.status}`);
  return res.json();
}

// --- the assertion path: post the assertion yourself ---------------------

async function assertionFlow() {
  const { assertion } = await jwksd("POST", "/v1/assertions", { client_id: CLIENT_ID, audience: TOKEN_URL });
  const res = await fetch(TOKEN_URL, {
    method: "POST",
    body: new URLSearchParams({
      grant_type: "client_credentials",
      client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
      client_assertion: assertion,
      scope: SCOPE,
    }),
  });
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}: ${await res.text()}`);
  return res.json();
}

const flow = process.env.FLOW === "assertion" ? assertionFlow : tokenFlow;
console.log(JSON.stringify(await flow()));
