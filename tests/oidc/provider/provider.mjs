// A real OpenID provider for the deskbroker tests: node-oidc-provider with a small account
// store, password-checking login and consent pages, PKCE required, and the device flow.
//
// Usage: node provider.mjs CONFIG.json
// CONFIG: {"port": 12345, "clients": [...], "accounts": {"ann": {"password": "...",
//          "claims": {...}}}, "id_token_ttl": {"client-id": seconds}}
// Prints "ready <issuer>" on stdout once it listens on 127.0.0.1.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;
const accounts = config.accounts;
const idTokenTtl = config.id_token_ttl ?? {};

// Fresh signing keys on every start, as a provider rotating keys would have.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(16).toString('hex')] },
  pkce: { methods: ['S256'], required: () => true },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    userinfo: { enabled: true },
  },
  scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  ttl: {
    IdToken: (ctx, token, client) => idTokenTtl[client.clientId] ?? 3600,
    AccessToken: 600,
    AuthorizationCode: 60,
    DeviceCode: 600,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...account.claims }) };
  },
});

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(res, title, body, status = 200) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><html><head><title>${escape(title)}</title></head><body><h1>${escape(title)}</h1>${body}</body></html>`);
}

function loginForm(res, uid, message = '') {
  page(res, 'Sign in', `${message ? `<p class="error">${escape(message)}</p>` : ''}
    <form method="post" action="/interaction/${uid}/login">
      <input name="login" autocomplete="username"><input name="password" type="password">
      <button type="submit">Sign in</button>
    </form>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return page(res, 'Wrong interaction', '', 400);
  const { prompt, params, session } = details;
  if (req.method === 'GET') {
    if (prompt.name === 'login') return loginForm(res, uid);
    return page(res, 'Allow access', `<p>${escape(params.client_id)} asks for ${escape(params.scope)}</p>
      <form method="post" action="/interaction/${uid}/confirm"><button type="submit">Allow</button></form>
      <form method="post" action="/interaction/${uid}/abort"><button type="submit">Deny</button></form>`);
  }
  if (action === 'login') {
    const form = await readForm(req);
    const account = accounts[form.get('login')];
    if (!account || account.password !== form.get('password')) {
      return loginForm(res, uid, 'Wrong username or password.');
    }
    return provider.interactionFinished(req, res, { login: { accountId: form.get('login') } }, { mergeWithLastSubmission: false });
  }
  if (action === 'abort') {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'The user declined the sign-in.' }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  return page(res, 'Unknown action', '', 404);
}

const handler = provider.callback();
const server = createServer(async (req, res) => {
  const match = /^\/interaction\/([^/?]+)(?:\/(login|confirm|abort))?(?:\?.*)?$/.exec(req.url);
  if (!match) return handler(req, res);
  try {
    await interaction(req, res, match[1], match[2]);
  } catch (err) {
    page(res, 'Interaction failed', `<p>${escape(err.message)}</p>`, 400);
  }
});

server.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
