// Sign-in: OpenID Connect authorization code flow with PKCE (S256), or (PJ_ENV=dev) a development token.
//
// The tokens live in sessionStorage (this tab only, gone when it closes), never in a URL. The code
// comes back in the redirect's query and is removed from the address bar at once. The gateway
// exchanges the code and refreshes tokens at the provider's token endpoint (it adds the client
// secret when one is configured). An access token is refreshed a minute before it expires.

const KEY = 'pj.console.session';
const PENDING = 'pj.console.signin';
const CSRF = { 'X-PuddleJumper-Request': 'true' };
const REFRESH_MARGIN_S = 60;

let refreshTimer = null;
const listeners = new Set();

function b64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function randomString(size) {
  return b64url(crypto.getRandomValues(new Uint8Array(size)));
}

async function challengeFor(verifier) {
  return b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
}

function decodeClaims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(decodeURIComponent(escape(atob(part))));
  } catch {
    return {};
  }
}

function redirectUri() {
  return `${window.location.origin}/console/`;
}

export function session() {
  const raw = sessionStorage.getItem(KEY);
  return raw ? JSON.parse(raw) : null;
}

export function onChange(listener) {
  listeners.add(listener);
}

function save(next) {
  if (next) sessionStorage.setItem(KEY, JSON.stringify(next));
  else sessionStorage.removeItem(KEY);
  scheduleRefresh();
  listeners.forEach((listener) => listener(next));
}

function sessionFrom(tokens, kind) {
  const claims = decodeClaims(tokens.access_token);
  const idClaims = tokens.id_token ? decodeClaims(tokens.id_token) : {};
  const expiresAt = claims.exp ? claims.exp * 1000 : Date.now() + (tokens.expires_in || 300) * 1000;
  return {
    kind,
    accessToken: tokens.access_token,
    refreshToken: tokens.refresh_token || null,
    idToken: tokens.id_token || null,
    expiresAt,
    sub: claims.sub,
    name: idClaims.name || claims.name || claims.sub,
  };
}

async function postJson(path, body) {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...CSRF },
    body: JSON.stringify(body),
    cache: 'no-store',
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = data.error_description || data.error?.message || data.error || `HTTP ${response.status}`;
    throw new Error(typeof message === 'string' ? message : `HTTP ${response.status}`);
  }
  return data;
}

export async function startSignIn(config) {
  const verifier = randomString(48);
  const state = randomString(16);
  const nonce = randomString(16);
  sessionStorage.setItem(PENDING, JSON.stringify({ verifier, state, nonce }));
  const params = new URLSearchParams({
    response_type: 'code',
    client_id: config.clientId,
    redirect_uri: redirectUri(),
    scope: config.scopes,
    state,
    nonce,
    code_challenge: await challengeFor(verifier),
    code_challenge_method: 'S256',
    prompt: 'login',
  });
  if (config.resource) params.set('resource', config.resource);
  window.location.assign(`${config.authorizationEndpoint}?${params}`);
}

// Called on load: finishes a sign-in when the provider has just sent the browser back here.
export async function completeSignIn() {
  const query = new URLSearchParams(window.location.search);
  if (!query.has('code') && !query.has('error')) return false;
  // The code must not stay in the address bar, the history or a bookmark.
  window.history.replaceState(null, '', `${window.location.pathname}${window.location.hash}`);
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
  sessionStorage.removeItem(PENDING);
  if (query.has('error')) throw new Error(`Sign-in refused: ${query.get('error_description') || query.get('error')}`);
  if (!pending || pending.state !== query.get('state')) throw new Error('Sign-in failed: the answer does not match this sign-in. Try again.');
  const tokens = await postJson('/console/auth/token', {
    grant_type: 'authorization_code', code: query.get('code'), code_verifier: pending.verifier, redirect_uri: redirectUri(),
  });
  if (tokens.id_token && decodeClaims(tokens.id_token).nonce !== pending.nonce) {
    throw new Error('Sign-in failed: the identity token does not belong to this sign-in.');
  }
  save(sessionFrom(tokens, 'oidc'));
  return true;
}

export async function devSignIn(role, sub, tenant) {
  const tokens = await postJson('/console/dev-token', { role, sub, tenant });
  save(sessionFrom(tokens, 'dev'));
}

export async function refresh() {
  const current = session();
  if (!current || !current.refreshToken) {
    expire();
    return null;
  }
  try {
    const tokens = await postJson('/console/auth/token', { grant_type: 'refresh_token', refresh_token: current.refreshToken });
    const next = sessionFrom({ id_token: current.idToken, ...tokens }, current.kind);
    save(next);
    return next;
  } catch {
    expire();
    return null;
  }
}

function expire() {
  save(null);
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const current = session();
  if (!current) return;
  const wait = Math.max(current.expiresAt - Date.now() - REFRESH_MARGIN_S * 1000, 0);
  refreshTimer = setTimeout(() => {
    if (current.refreshToken) refresh();
    else if (Date.now() >= current.expiresAt) expire();
    else scheduleRefresh();
  }, Math.min(wait, 2 ** 31 - 1));
}

export function resume() {
  const current = session();
  if (current && Date.now() >= current.expiresAt && !current.refreshToken) expire();
  else scheduleRefresh();
}

export function signOut(config) {
  const current = session();
  save(null);
  if (current?.kind === 'oidc' && config?.endSessionEndpoint) {
    // No id_token_hint: a token never goes into a URL. The provider asks the user to confirm instead.
    const params = new URLSearchParams({ client_id: config.clientId, post_logout_redirect_uri: redirectUri() });
    window.location.assign(`${config.endSessionEndpoint}?${params}`);
  }
}

export { CSRF };
