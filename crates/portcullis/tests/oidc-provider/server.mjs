// A real OpenID provider for Portcullis's end-to-end tests: `oidc-provider` (an
// OpenID Certified implementation) on loopback, with one RS256 client and one ES256
// client for the gateway, back-channel logout enabled, and the development login
// and consent forms (any login name, any password). A login name with `+` suffixes
// names the methods used (`ada+mfa` signs in as `ada` with amr ["pwd", "mfa"] and
// acr "urn:portcullis:test:mfa"), so tests can prove step-up.
//
// Environment:
//   REDIRECT_URI   the gateway's callback, e.g. http://127.0.0.1:4180/.auth/oidc/callback
//   BCL_URI        the gateway's back-channel logout endpoint
//   KEYS_OUT       where to write the signing keys as PEM (the tests forge tokens
//                  with them to prove each refusal is about the claim under test)
// Prints `listening <port>` on stdout once it accepts connections.

import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const { REDIRECT_URI, BCL_URI, KEYS_OUT } = process.env;
if (!REDIRECT_URI || !BCL_URI) {
  console.error('REDIRECT_URI and BCL_URI are required');
  process.exit(2);
}

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = (pair, kid, alg) => ({ ...pair.privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' });
if (KEYS_OUT) {
  writeFileSync(KEYS_OUT, JSON.stringify({
    rsa: { kid: 'rsa-1', pem: rsa.privateKey.export({ format: 'pem', type: 'pkcs8' }) },
    ec: { kid: 'ec-1', pem: ec.privateKey.export({ format: 'pem', type: 'pkcs8' }) },
  }));
}

// Accounts: any login name signs in; `ada` is in the `eng` group; names starting
// with `unverified` have an e-mail address the provider has not verified.
const groups = { ada: ['eng', 'staff'], bob: ['staff'] };
const findAccount = (ctx, id) => ({
  accountId: id,
  async claims() {
    return {
      sub: id,
      email: `${id}@example.test`,
      email_verified: !id.startsWith('unverified'),
      name: id.charAt(0).toUpperCase() + id.slice(1),
      preferred_username: `${id}.login`,
      groups: groups[id] ?? [],
    };
  },
});

const client = (clientId, alg) => ({
  client_id: clientId,
  client_secret: `${clientId}-secret`,
  redirect_uris: [REDIRECT_URI],
  post_logout_redirect_uris: [REDIRECT_URI.replace(/\/oidc\/callback$/, '/login')],
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: clientId.endsWith('-post') ? 'client_secret_post' : 'client_secret_basic',
  id_token_signed_response_alg: alg,
  backchannel_logout_uri: BCL_URI,
  backchannel_logout_session_required: true,
});

const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [
      client('portcullis-rs', 'RS256'),
      client('portcullis-es-post', 'ES256'),
      client('portcullis-strict', 'RS256'),
      client('portcullis-mail', 'RS256'),
    ],
    jwks: { keys: [jwk(rsa, 'rsa-1', 'RS256'), jwk(ec, 'ec-1', 'ES256')] },
    findAccount,
    // `acr` and `amr` in every ID token, as most providers send them.
    claims: { openid: ['sub', 'acr', 'amr'], email: ['email', 'email_verified'], profile: ['name', 'preferred_username', 'groups'] },
    acrValues: ['urn:portcullis:test:pwd', 'urn:portcullis:test:mfa'],
    features: {
      devInteractions: { enabled: true },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    pkce: { required: () => true },
    // The default fetch refuses loopback addresses (an SSRF guard); the gateway
    // under test listens on loopback.
    fetch: (url, options) => {
      const { dispatcher, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
    cookies: { keys: ['portcullis-test-cookie-key'] },
  });
  // The development login form sets only the account; methods come from the name.
  const finish = provider.interactionFinished.bind(provider);
  provider.interactionFinished = (req, res, result, options) => {
    const login = result && result.login;
    if (login && typeof login.accountId === 'string') {
      const [accountId, ...methods] = login.accountId.split('+');
      const amr = ['pwd', ...methods];
      const acr = methods.includes('mfa') ? 'urn:portcullis:test:mfa' : 'urn:portcullis:test:pwd';
      result = { ...result, login: { ...login, accountId, amr, acr } };
    }
    return finish(req, res, result, options);
  };
  provider.on('backchannel.error', (ctx, err) => console.error('backchannel.error', err.message));
  // Counts key-set fetches, so tests can prove the gateway's refetch rate limit.
  let jwksFetches = 0;
  const handle = provider.callback();
  server.on('request', (req, res) => {
    if (req.url === '/test/jwks-fetches') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ count: jwksFetches }));
      return;
    }
    if (req.url.startsWith('/jwks')) jwksFetches += 1;
    handle(req, res);
  });
  console.log(`listening ${port}`);
});
