// The gateway's HTTP API with the signed-in user's token; errors become messages a person can act on.
import { CSRF, refresh, session } from './auth.js';

const MESSAGES = {
  unauthorized: 'Your sign-in has expired or is not accepted. Sign in again.',
  forbidden: 'Your role may not do this.',
  self_approval_forbidden: 'You requested this action, so someone else has to decide it (separation of duties).',
  csrf_required: 'The request was refused as a possible cross-site request.',
  not_found: 'This approval does not exist or is not visible to you.',
  invalid_state: 'Someone else changed this approval meanwhile; it has been reloaded.',
  already_decided: 'You have already decided this approval at this stage.',
  plan_changed: 'The action\'s plan changed since it was approved; it cannot be dispatched as it is.',
  broker_unavailable: 'The service is unavailable right now. Try again shortly.',
  upstream_timeout: 'No answer in time: the outcome is unknown. Reload before trying again.',
};

export class ApiError extends Error {
  constructor(status, code, detail) {
    const known = MESSAGES[code];
    super(known ? `${known}${detail ? ` (${detail})` : ''}` : detail || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function send(method, path, body, retried) {
  const current = session();
  if (!current) throw new ApiError(401, 'unauthorized', '');
  const headers = { Authorization: `Bearer ${current.accessToken}`, Accept: 'application/json' };
  if (method !== 'GET') Object.assign(headers, CSRF, { 'Content-Type': 'application/json' });
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  if (response.status === 401 && !retried && current.refreshToken) {
    if (await refresh()) return send(method, path, body, true);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error?.code || '', data.error?.message || '');
  return { status: response.status, data: data.data ?? data };
}

export const api = {
  me: () => send('GET', '/console/me'),
  list: (params) => send('GET', `/api/approvals?${new URLSearchParams(params)}`),
  pendingCount: () => send('GET', '/api/approvals/count/pending'),
  get: (id) => send('GET', `/api/approvals/${encodeURIComponent(id)}`),
  chain: (id) => send('GET', `/api/approvals/${encodeURIComponent(id)}/chain`),
  decide: (id, status, note) => send('POST', `/api/approvals/${encodeURIComponent(id)}/decide`, { status, note: note || null }),
  dispatch: (id, dryRun) => send('POST', `/api/approvals/${encodeURIComponent(id)}/dispatch`, { dryRun }),
};
