// The console: sign-in, the queue (#/) and an approval's page (#/approvals/<id>).
// Every value from the API goes into the page as text (textContent), never as markup.
import { api, ApiError } from './api.js';
import * as auth from './auth.js';
import { connectLive } from './live.js';

const PAGE_SIZE = 25;
const STATUSES = ['pending', 'approved', 'rejected', 'expired', 'dispatching', 'dispatched', 'dispatch_failed'];
const main = document.getElementById('main');
const notice = document.getElementById('notice');
const badge = document.getElementById('badge');
const liveStatus = document.getElementById('live-status');
const who = document.getElementById('who');
const signOutButton = document.getElementById('sign-out');

let config = null;
let me = null;
let stopLive = null;
const queue = { status: 'pending', action: '', requester: '', offset: 0 };
let reloadTimer = null;
let shownStamp = null;

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(value) {
  return value ? new Date(value).toLocaleString() : '—';
}

function statusTag(status) {
  return h('span', { class: `status status-${status}` }, status.replace('_', ' '));
}

function showNotice(message, kind = 'error') {
  notice.className = kind === 'error' ? 'notice' : 'notice info';
  notice.textContent = message;
  notice.hidden = !message;
}

function render(...children) {
  main.replaceChildren(...children);
}

function describeError(error) {
  return error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`;
}

// ---------------------------------------------------------------- sign-in

function signInView() {
  const parts = [h('h1', {}, 'Sign in')];
  if (config.signIn) {
    const host = new URL(config.signIn.issuer).host;
    parts.push(h('p', {}, 'Approvers and operators sign in with the organisation\'s identity provider.'),
      h('button', { type: 'button', id: 'sign-in', onclick: () => auth.startSignIn(config.signIn) }, `Sign in with ${host}`));
  }
  if (config.devTokens) {
    const role = h('select', { id: 'dev-role', name: 'role' }, config.roles.map((r) => h('option', { value: r }, r)));
    const sub = h('input', { id: 'dev-sub', name: 'sub', value: 'dev-admin', autocomplete: 'off', required: true });
    const tenant = h('input', { id: 'dev-tenant', name: 'tenant', value: 'default', autocomplete: 'off', required: true });
    const form = h('form', {
      'aria-labelledby': 'dev-heading',
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          await auth.devSignIn(role.value, sub.value.trim(), tenant.value.trim());
          start();
        } catch (error) {
          showNotice(`Development sign-in failed: ${error.message}`);
        }
      },
    },
    h('div', {}, h('label', { for: 'dev-role' }, 'Role'), role),
    h('div', {}, h('label', { for: 'dev-sub' }, 'User (subject)'), sub),
    h('div', {}, h('label', { for: 'dev-tenant' }, 'Tenant'), tenant),
    h('button', { type: 'submit' }, 'Use a development token'));
    parts.push(h('h2', { id: 'dev-heading' }, 'Development role picker'),
      h('p', { class: 'hint' }, 'Only offered when the gateway runs with PJ_ENV=dev.'), form);
  }
  if (!config.signIn && !config.devTokens) {
    parts.push(h('p', {}, 'Sign-in is not configured: the gateway needs PJ_OIDC_ISSUER.'));
  }
  render(h('section', { class: 'signin' }, parts));
}

// ---------------------------------------------------------------- the queue

async function refreshBadge() {
  try {
    const { data } = await api.pendingCount();
    badge.textContent = String(data.pendingCount);
    badge.setAttribute('aria-label', `${data.pendingCount} pending`);
    badge.hidden = false;
    document.title = data.pendingCount ? `(${data.pendingCount}) PuddleJumper approvals` : 'PuddleJumper approvals';
  } catch {
    badge.hidden = true;
  }
}

function filtersForm() {
  const status = h('select', { id: 'f-status', name: 'status' },
    h('option', { value: '' }, 'any status'), STATUSES.map((s) => h('option', { value: s, selected: s === queue.status }, s.replace('_', ' '))));
  const action = h('input', { id: 'f-action', name: 'action', value: queue.action, placeholder: 'e.g. notify.webhook', autocomplete: 'off' });
  const requester = h('input', { id: 'f-requester', name: 'requester', value: queue.requester, autocomplete: 'off' });
  return h('form', {
    class: 'filters', role: 'search', 'aria-label': 'Filter approvals',
    onsubmit: (e) => {
      e.preventDefault();
      Object.assign(queue, { status: status.value, action: action.value.trim(), requester: requester.value.trim(), offset: 0 });
      queueView();
    },
  },
  h('div', {}, h('label', { for: 'f-status' }, 'Status'), status),
  h('div', {}, h('label', { for: 'f-action' }, 'Action'), action),
  h('div', {}, h('label', { for: 'f-requester' }, 'Requester'), requester),
  h('div', {}, h('button', { type: 'submit' }, 'Apply filters')));
}

function approvalRow(a) {
  return h('tr', { 'data-approval-id': a.id },
    h('td', {}, h('a', { href: `#/approvals/${a.id}` }, a.action_id)),
    h('td', {}, a.operator_id),
    h('td', {}, statusTag(a.approval_status)),
    h('td', { class: 'optional' }, when(a.created_at)),
    h('td', { class: 'optional' }, when(a.expires_at)));
}

const SCAN_PAGE = 200;
const SCAN_MAX = 1000;

function matchesFilters(a) {
  return (!queue.action || a.action_id.includes(queue.action))
    && (!queue.requester || a.operator_id.includes(queue.requester));
}

// One page of the queue as {approvals, total, offset, note}. The API filters by status and pages; for
// action and requester the console reads the newest SCAN_MAX (status-filtered) and pages the matches.
async function queuePage() {
  const status = queue.status ? { status: queue.status } : {};
  if (!queue.action && !queue.requester) {
    const { data } = await api.list({ limit: PAGE_SIZE, offset: queue.offset, ...status });
    return { approvals: data.approvals, total: data.total, offset: data.offset, note: '' };
  }
  const matches = [];
  let read = 0;
  let total = 0;
  do {
    const { data } = await api.list({ limit: SCAN_PAGE, offset: read, ...status });
    matches.push(...data.approvals.filter(matchesFilters));
    read += data.approvals.length;
    total = data.total;
    if (!data.approvals.length) break;
  } while (read < total && read < SCAN_MAX);
  const note = read < total ? ` among the newest ${read}` : '';
  return { approvals: matches.slice(queue.offset, queue.offset + PAGE_SIZE), total: matches.length, offset: queue.offset, note };
}

async function queueView() {
  let page;
  try {
    page = await queuePage();
  } catch (error) {
    render(h('h1', {}, 'Approvals'), filtersForm(), h('p', { class: 'error-text' }, describeError(error)));
    return;
  }
  const table = page.approvals.length
    ? h('div', { class: 'table-wrap' }, h('table', { id: 'queue' },
      h('caption', { class: 'hint' }, `${page.total} matching${page.note}, newest first`),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Action'), h('th', { scope: 'col' }, 'Requester'),
        h('th', { scope: 'col' }, 'Status'), h('th', { scope: 'col', class: 'optional' }, 'Requested'),
        h('th', { scope: 'col', class: 'optional' }, 'Expires'))),
      h('tbody', {}, page.approvals.map(approvalRow))))
    : h('p', { id: 'queue-empty' }, 'No approvals match.');
  const last = Math.min(page.offset + PAGE_SIZE, page.total);
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' },
    h('button', { type: 'button', class: 'secondary', disabled: page.offset === 0,
      onclick: () => { queue.offset = Math.max(queue.offset - PAGE_SIZE, 0); queueView(); } }, 'Previous page'),
    h('span', {}, page.total ? `${page.offset + 1}–${last} of ${page.total}` : ''),
    h('button', { type: 'button', class: 'secondary', disabled: last >= page.total,
      onclick: () => { queue.offset += PAGE_SIZE; queueView(); } }, 'Next page'));
  if (currentRoute().name === 'queue') render(h('h1', {}, 'Approvals'), filtersForm(), table, pager);
}

// ---------------------------------------------------------------- an approval's page

function stepLinks(result) {
  const links = [];
  for (const [key, value] of Object.entries(result || {})) {
    if (typeof value === 'string' && /^https?:\/\//.test(value)) {
      links.push(h('a', { href: value, rel: 'noopener noreferrer', target: '_blank' }, `${key} (opens a new tab)`));
    }
  }
  return links.length ? h('span', {}, links.flatMap((l, i) => (i ? [', ', l] : [l]))) : '—';
}

function resultTable(steps, caption) {
  return h('div', { class: 'table-wrap' }, h('table', { class: 'results' },
    h('caption', { class: 'hint' }, caption),
    h('thead', {}, h('tr', {}, ['Step', 'Status', 'Attempts', 'HTTP', 'Links', 'Error'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, steps.map((s) => h('tr', {},
      h('td', {}, `${s.stepId} (${s.connector}.${s.operation})`),
      h('td', {}, statusTag(s.status)),
      h('td', {}, String(s.attempts ?? 0)),
      h('td', {}, s.httpStatus ? String(s.httpStatus) : '—'),
      h('td', {}, stepLinks(s.result)),
      h('td', { class: s.error ? 'error-text' : '' }, s.error ? `${s.error.code}: ${s.error.message}` : '—'))))));
}

function chainSection(chain) {
  if (!chain) return h('p', { class: 'hint' }, 'The chain could not be read.');
  return h('ol', { id: 'chain' }, chain.stages.map((stage) => h('li', {},
    h('strong', {}, stage.name), ` — ${stage.state.replace('_', ' ')}; ${stage.approvals} of ${stage.approvalsRequired} `,
    `approval(s) from ${stage.roles.join(' or ')}`,
    stage.decisions.length ? h('ul', {}, stage.decisions.map((d) => h('li', {},
      `${d.decision} by ${d.approverId} (${d.role}) at ${when(d.decidedAt)}`, d.note ? ` — “${d.note}”` : ''))) : null)));
}

function auditSection(audit) {
  return h('ol', { class: 'timeline', id: 'audit' }, (audit || []).map((e) => h('li', {},
    h('time', { datetime: e.at }, when(e.at)), ` ${e.event}: `, e.from ? `${e.from} → ${e.to}` : e.to,
    e.actor ? ` by ${e.actor}${e.role ? ` (${e.role})` : ''}` : '', e.note ? ` — “${e.note}”` : '')));
}

function permissions(approval, chain) {
  // decide/dispatch: why the caller may not (null: may); *Open: whether the state lets anyone do it now.
  const status = approval.approval_status;
  const label = status.replace('_', ' ');
  const stage = chain?.stages.find((s) => s.state === 'current');
  const decideOpen = status === 'pending';
  let decide = decideOpen ? null : `It is ${label}: there is nothing to decide.`;
  if (!decide && approval.operator_id === me.sub) decide = 'You requested it: someone else decides (separation of duties).';
  else if (!decide && stage && !stage.roles.includes(me.role)) decide = `The ${stage.name} stage is decided by ${stage.roles.join(' or ')}.`;
  else if (!decide && chain?.stages.some((st) => st.decisions.some((d) => d.approverId === me.sub))) {
    decide = 'You have already decided this approval: nobody counts twice.';
  }
  const dispatchOpen = ['approved', 'dispatch_failed'].includes(status);
  let dispatch = null;
  if (!dispatchOpen) dispatch = status === 'pending' ? 'It can be dispatched once approved.' : `It is ${label}: there is nothing to dispatch.`;
  else if (me.role !== 'admin') dispatch = 'Only an admin may dispatch.';
  return { decide, dispatch, decideOpen, dispatchOpen };
}

function actionsSection(approval, chain) {
  const rules = permissions(approval, chain);
  const output = h('div', { id: 'action-output', 'aria-live': 'polite' });
  const note = h('textarea', { id: 'note', name: 'note', maxlength: '4000', 'aria-describedby': 'note-hint' });
  const busy = (flag) => { for (const b of section.querySelectorAll('button[data-enabled]')) b.disabled = flag; };
  const act = async (work) => {
    busy(true);
    showNotice('');
    try {
      await work();
    } catch (error) {
      showNotice(describeError(error));
      if (error instanceof ApiError && error.status === 409) await detailView(approval.id);
    } finally {
      busy(false);
      refreshBadge();
    }
  };
  const decide = (status) => act(async () => {
    if (status === 'rejected' && !note.value.trim()) {
      showNotice('A note is required to reject: say why.');
      note.focus();
      return;
    }
    await api.decide(approval.id, status, note.value.trim());
    showNotice(`Recorded: ${status}.`, 'info');
    await detailView(approval.id);
  });
  const dispatch = (dryRun) => act(async () => {
    const { status, data } = await api.dispatch(approval.id, dryRun);
    if (dryRun) {
      output.replaceChildren(h('h3', {}, 'Dry run: what a dispatch would do (nothing was changed)'),
        resultTable(data.dispatchResult || [], 'Preview of each step'));
      return;
    }
    const outcome = { dispatched: 'Dispatched: every step ran.', dispatch_failed: 'Dispatch failed: see each step below.' };
    showNotice(status === 202 ? 'Dispatch started; the result appears here when it is done.'
      : outcome[data.approvalStatus] || `Dispatch: ${data.approvalStatus.replace('_', ' ')}.`, 'info');
    await detailView(approval.id);
  });
  const button = (label, reason, onclick, cls) => h('button', {
    type: 'button', class: cls, disabled: Boolean(reason), 'data-enabled': reason ? null : true, onclick,
    title: reason || null,
  }, label);
  const decideReason = h('p', { class: 'hint', id: 'decide-reason' }, rules.decide || '');
  const dispatchReason = h('p', { class: 'hint', id: 'dispatch-reason' }, rules.dispatch || '');
  const section = h('section', { 'aria-labelledby': 'actions-heading', class: 'panel' },
    h('h2', { id: 'actions-heading' }, 'Actions'),
    // Hidden where the state forbids everyone; disabled, with the reason, where only this caller may not.
    rules.decideOpen ? h('div', {}, h('label', { for: 'note' }, 'Note'), note,
      h('p', { class: 'hint', id: 'note-hint' }, 'Optional when approving, required when rejecting.')) : null,
    rules.decideOpen ? h('div', { class: 'actions' },
      button('Approve', rules.decide, () => decide('approved')),
      button('Reject', rules.decide, () => decide('rejected'), 'danger')) : null,
    decideReason,
    rules.dispatchOpen ? h('div', { class: 'actions' },
      button('Dispatch', rules.dispatch, () => dispatch(false)),
      button('Preview dispatch (dry run)', rules.dispatch, () => dispatch(true), 'secondary')) : null,
    dispatchReason, output);
  for (const b of section.querySelectorAll('button')) {
    if (b.disabled) b.setAttribute('aria-describedby', b.textContent.startsWith('Approve') || b.textContent.startsWith('Reject') ? 'decide-reason' : 'dispatch-reason');
  }
  return section;
}

async function detailView(id) {
  let approval;
  let chain = null;
  try {
    const [one, stages] = await Promise.allSettled([api.get(id), api.chain(id)]);
    if (one.status === 'rejected') throw one.reason;
    approval = one.value.data;
    chain = stages.status === 'fulfilled' ? stages.value.data : null;
  } catch (error) {
    render(h('p', {}, h('a', { href: '#/' }, '← Back to the queue')), h('p', { class: 'error-text' }, describeError(error)));
    return;
  }
  const route = currentRoute();
  if (route.name !== 'approval' || route.id !== id) return;
  // A live event about a change already shown (our own decision, say) must not wipe a preview or a note.
  const stamp = JSON.stringify([id, approval.approval_status, approval.updated_at, (approval.audit || []).length,
    (approval.dispatch_result || []).length, chain?.stages.map((st) => st.decisions.length)]);
  if (stamp === shownStamp && main.querySelector('#plan-hash')) return;
  shownStamp = stamp;
  render(
    h('p', {}, h('a', { href: '#/' }, '← Back to the queue')),
    h('h1', {}, `${approval.action_id} `, statusTag(approval.approval_status)),
    h('div', { class: 'grid' },
      h('section', { 'aria-labelledby': 'facts-heading' }, h('h2', { id: 'facts-heading' }, 'Request'),
        h('dl', { class: 'facts' },
          h('dt', {}, 'Requester'), h('dd', { id: 'requester' }, approval.operator_id),
          h('dt', {}, 'Tenant'), h('dd', {}, approval.tenant_id),
          h('dt', {}, 'Request id'), h('dd', {}, approval.request_id),
          h('dt', {}, 'Requested'), h('dd', {}, when(approval.created_at)),
          h('dt', {}, 'Expires'), h('dd', {}, when(approval.expires_at)),
          h('dt', {}, 'Decided'), h('dd', {}, approval.decided_at ? `${when(approval.decided_at)} by ${approval.approver_id}` : '—'),
          h('dt', {}, 'Dispatched'), h('dd', {}, when(approval.dispatched_at)),
          h('dt', {}, 'Plan hash'), h('dd', {}, h('code', { id: 'plan-hash' }, approval.plan_hash)))),
      actionsSection(approval, chain)),
    h('h2', {}, 'Payload'), h('pre', { tabindex: '0', 'aria-label': 'Payload' }, JSON.stringify(approval.payload, null, 2)),
    h('h2', {}, 'Plan'),
    h('ol', { id: 'plan' }, approval.plan.map((s) => h('li', {}, h('strong', {}, s.stepId), `: ${s.connector}.${s.operation}`,
      Object.keys(s.params || {}).length ? h('pre', { tabindex: '0', 'aria-label': `Parameters of ${s.stepId}` }, JSON.stringify(s.params, null, 2)) : null))),
    h('h2', {}, 'Approval chain'), chainSection(chain),
    h('h2', {}, 'Dispatch result'),
    approval.dispatch_result ? h('div', { id: 'dispatch-result' }, resultTable(approval.dispatch_result, 'Each step of the dispatch'))
      : h('p', { class: 'hint', id: 'dispatch-result' }, 'Not dispatched yet.'),
    h('h2', {}, 'Audit timeline'), auditSection(approval.audit));
}

// ---------------------------------------------------------------- routing, live updates, start

function currentRoute() {
  const match = window.location.hash.match(/^#\/approvals\/([\w-]+)$/);
  return match ? { name: 'approval', id: match[1] } : { name: 'queue' };
}

function route() {
  if (!auth.session() || !me) return;
  const target = currentRoute();
  if (target.name === 'approval') detailView(target.id);
  else queueView();
}

function onLiveEvent(event) {
  clearTimeout(reloadTimer);
  // Several events of one transition arrive together: reload once.
  reloadTimer = setTimeout(() => {
    refreshBadge();
    const target = currentRoute();
    if (target.name === 'queue') queueView();
    else if (target.id === event.approvalId) detailView(target.id);
  }, 150);
}

async function start() {
  const current = auth.session();
  if (!current) {
    stopLive?.();
    stopLive = null;
    me = null;
    who.textContent = '';
    signOutButton.hidden = true;
    badge.hidden = true;
    liveStatus.textContent = '';
    signInView();
    return;
  }
  try {
    ({ data: me } = await api.me());
  } catch (error) {
    showNotice(describeError(error));
    auth.signOut(null);
    return;
  }
  who.textContent = `${me.sub} · ${me.role} · ${me.tenant}`;
  signOutButton.hidden = false;
  refreshBadge();
  stopLive?.();
  stopLive = connectLive({
    onEvent: onLiveEvent,
    onResync: () => onLiveEvent({}),
    onStatus: (s) => { liveStatus.textContent = s === 'live' ? 'Live updates on' : 'Reconnecting…'; },
  });
  route();
}

async function boot() {
  try {
    const response = await fetch('/console/config.json', { cache: 'no-store' });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error?.message || `HTTP ${response.status}`);
    config = body;
  } catch (error) {
    render(h('h1', {}, 'The console is unavailable'), h('p', {}, `Its configuration could not be read (${error.message}).`));
    return;
  }
  let signingOut = false;
  signOutButton.addEventListener('click', () => {
    signingOut = true;
    auth.signOut(config.signIn);
    signingOut = false;
    showNotice('You are signed out.', 'info');
    start();
  });
  window.addEventListener('hashchange', () => { if (window.location.hash.startsWith('#/') || !window.location.hash) route(); });
  auth.onChange((next) => {
    if (!next && !signingOut) {
      showNotice('Your session ended. Sign in again.', 'info');
      start();
    }
  });
  try {
    await auth.completeSignIn();
  } catch (error) {
    showNotice(error.message);
  }
  auth.resume();
  await start();
}

boot();
