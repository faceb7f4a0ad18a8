// An OpenID Connect provider on 127.0.0.1 for the console's tests (oidc-provider, certified OpenID).
//
// Configured from the environment by tests/support/oidc_provider.py:
//   OIDC_PORT           port on 127.0.0.1 (the issuer is http://127.0.0.1:<port>)
//   OIDC_CLIENT_ID      the console's client (public: authorization code + PKCE S256, refresh tokens)
//   OIDC_CLI_CLIENT_ID  the command line's client (public: device authorization grant, refresh tokens;
//                       default pj-cli)
//   OIDC_REDIRECT_URIS  space-separated redirect URIs of that client (also its post-logout URIs)
//   OIDC_AUDIENCE       the API's audience: access tokens are RS256 JWTs for it
//   OIDC_ACCESS_TTL_S   access token lifetime (default 300)
//   OIDC_USERS          path of a JSON file {login: {password, role, tenant, name}}
//   OIDC_ROLE_CLAIM, OIDC_TENANT_CLAIM  claim names for role and tenant (default role, tenant)
//   OIDC_TENANT_PREFIX  put before every user's tenant (a test run's own tenants in a shared database)
// It prints "listening <issuer>" once it accepts connections.
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const env = (name, fallback) => process.env[name] ?? fallback;
const port = Number(env('OIDC_PORT', '0'));
const issuer = `http://127.0.0.1:${port}`;
const clientId = env('OIDC_CLIENT_ID', 'pj-console');
const cliClientId = env('OIDC_CLI_CLIENT_ID', 'pj-cli');
const redirectUris = env('OIDC_REDIRECT_URIS', '').split(' ').filter(Boolean);
const audience = env('OIDC_AUDIENCE', 'urn:pj-approval-gate');
const accessTtl = Number(env('OIDC_ACCESS_TTL_S', '300'));
const roleClaim = env('OIDC_ROLE_CLAIM', 'role');
const tenantClaim = env('OIDC_TENANT_CLAIM', 'tenant');
const tenantPrefix = env('OIDC_TENANT_PREFIX', '');
const users = JSON.parse(readFileSync(env('OIDC_USERS', new URL('users.json', import.meta.url)), 'utf8'));
const SCOPES = 'openid profile offline_access pj';

// A fresh RSA key per run: tokens of an earlier run must not verify.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `pj-test-${Date.now()}`, use: 'sig', alg: 'RS256' };

function personClaims(login) {
  const user = users[login];
  return { [roleClaim]: user.role, [tenantClaim]: `${tenantPrefix}${user.tenant}` };
}

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: redirectUris,
    post_logout_redirect_uris: redirectUris,
  }, {
    // `pj login`: a public client on a terminal, signed in with the device authorization grant (RFC 8628).
    client_id: cliClientId,
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
  }],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'profile', 'offline_access', 'pj'],
  claims: { openid: ['sub'], profile: ['name'], pj: [roleClaim, tenantClaim] },
  async findAccount(_ctx, id) {
    if (!users[id]) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, name: users[id].name, ...personClaims(id) }) };
  },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true },
    // The verification page at /device: the user code, then the login page below, then a confirmation.
    deviceFlow: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'pj', audience, accessTokenTTL: accessTtl, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  // The API reads role and tenant from the access token itself.
  async extraTokenClaims(_ctx, token) {
    return token.accountId && users[token.accountId] ? personClaims(token.accountId) : undefined;
  },
  // Refresh tokens for the console at every sign-in (offline_access would need a consent prompt each
  // time); rotated on each use.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  ttl: { AccessToken: accessTtl, IdToken: accessTtl, RefreshToken: 3600, Session: 3600, Grant: 3600, Interaction: 600, AuthorizationCode: 60 },
  // The console is first-party: its grant is given at sign-in, with no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(SCOPES);
    grant.addOIDCClaims([roleClaim, tenantClaim, 'name']);
    grant.addResourceScope(audience, 'pj');
    await grant.save();
    return grant;
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => true },
  cookies: { keys: [jwk.kid] },
  renderError(ctx, out) {
    ctx.type = 'text/plain';
    ctx.body = `${out.error}: ${out.error_description ?? ''}`;
  },
});

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, message) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in - test identity provider</title></head>
<body><main><h1>Test identity provider</h1>${message ? `<p role="alert">${escape(message)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label for="login">Login</label> <input id="login" name="login" autocomplete="username" required autofocus>
<label for="password">Password</label> <input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form></main></body></html>`;
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The login step of the interaction: the provider hands the browser here when it needs a login.
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([\w-]+)(\/login)?$/);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (ctx.method === 'GET') {
    if (details.prompt.name !== 'login') {  // consent was given with the grant above
      ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, { consent: {} }, { mergeWithLastSubmission: true }));
      return undefined;
    }
    ctx.type = 'html';
    ctx.body = loginPage(details.uid);
    return undefined;
  }
  const form = await readForm(ctx.req);
  const login = form.get('login') ?? '';
  const user = users[login];
  if (!user || user.password !== form.get('password')) {
    ctx.status = 401;
    ctx.type = 'html';
    ctx.body = loginPage(details.uid, 'Unknown login or wrong password.');
    return undefined;
  }
  ctx.status = 303;
  ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: login } }, { mergeWithLastSubmission: false }));
  return undefined;
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
