// oidc-provider (the npm package, version pinned in package.json) as a real
// authorization server for tests/oidc_provider.rs: client_credentials with
// private_key_jwt client authentication against the jwksd JWKS at $JWKS_URI.
//
// Prints `port=N` on stdout once it listens on 127.0.0.1 (ephemeral port),
// then one line `jwks_fetch <url>` each time it fetches a client's JWKS, so
// the test can tell a cached JWKS from a refetched one.
import http from 'node:http';
import Provider from 'oidc-provider';

const jwksUri = process.env.JWKS_URI;
if (!jwksUri) {
  console.error('JWKS_URI is required');
  process.exit(2);
}
const scopes = ['system/Patient.rs', 'system/Observation.rs'];

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

// One client per algorithm, each pinned to it; both read jwksd's JWKS.
const client = (id, alg) => ({
  client_id: id,
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: alg,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  jwks_uri: jwksUri,
  scope: scopes.join(' '),
});

const provider = new Provider(issuer, {
  clients: [
    client('app-rs', 'RS384'),
    client('app-es', 'ES384'),
    // The resource server: introspects the tokens the apps got.
    {
      client_id: 'fhir',
      client_secret: 'fhir-introspection-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  scopes,
  clientAuthMethods: ['private_key_jwt', 'client_secret_basic'],
  enabledJWA: {
    // RS384 and ES384 are off by default.
    clientAuthSigningAlgValues: ['RS256', 'RS384', 'PS256', 'ES256', 'ES384', 'EdDSA'],
  },
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
  },
  // Since 9.7 every outgoing request goes through a dispatcher that drops
  // connections to special-use addresses (127.0.0.0/8 included); the fetch
  // hook receives it in `options.dispatcher`. jwksd listens on loopback
  // here, so this hook drops that dispatcher (a test-only relaxation) and
  // reports the fetch.
  fetch: (url, options) => {
    delete options.dispatcher;
    console.log(`jwks_fetch ${url}`);
    return globalThis.fetch(url, options);
  },
});

provider.on('server_error', (_ctx, err) => console.error('server_error', err));
// One line per refused token request: `grant.error <error> <why>`.
provider.on('grant.error', (_ctx, err) => {
  console.error('grant.error', err.message, err.error_detail ?? '');
});

server.on('request', provider.callback());
console.log(`port=${port}`);
