// The Presence console: an ES module with no dependencies and no build step.
//
// Everything it shows comes from the documented HTTP API (daemon/openapi.json), called with
// the token the user typed, which lives in the `session` variable below and nowhere else: no
// cookie, no storage, no URL. A reload signs out. Text reaches the page through
// `textContent` only, never as markup, and the CSP allows no inline code.

const POLL_MS = 2000;
const NOTIFY_POLL_MS = 1000;
/** Samples kept for the charts: two minutes at one poll each 2 s. */
const HISTORY = 60;
const STATES = ['online', 'away', 'unavailable', 'offline', 'silent'];
const SVG = 'http://www.w3.org/2000/svg';

/** The signed-in session: `{ token, role: 'operator' | 'owner' }`, or null. */
let session = null;
/** Bumped at each sign-in and sign-out, so a poll answered after either is dropped. */
let generation = 0;
let pollTimer = null;
/** The operator view's state between polls. */
const operator = { previous: null, history: [], armedRemove: null, showing: null, apps: [], outboxes: new Map() };

const $ = (id) => document.getElementById(id);

/** An API error answer: `{ error: { code, message } }` and its HTTP status. */
class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Calls the API with the session's token; resolves to the JSON answer (null for 204). */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}` };
  const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) {
    return null;
  }
  let json = null;
  try {
    json = await response.json();
  } catch {
    json = null;
  }
  if (!response.ok) {
    const code = json?.error?.code ?? `http_${response.status}`;
    const message = json?.error?.message ?? response.statusText;
    throw new ApiError(response.status, code, message, response.headers.get('Retry-After'));
  }
  return json;
}

/** An element with text and classes; `children` are appended. */
function el(tag, { text, cls, attrs } = {}, ...children) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  for (const [name, value] of Object.entries(attrs ?? {})) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : '—';
}

function age(ms) {
  if (!ms) return '—';
  const secs = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (secs < 120) return `${secs} s`;
  if (secs < 7200) return `${Math.round(secs / 60)} min`;
  return `${Math.round(secs / 3600)} h`;
}

/** A message for people about an API error; the code is shown too, for searching. */
function explain(error) {
  if (!(error instanceof ApiError)) {
    return `The daemon could not be reached (${error.message}).`;
  }
  if (error.code === 'rate_limited') {
    return `Too many requests: wait ${error.retryAfter ?? 'a few'} s and try again (rate_limited).`;
  }
  if (error.code === 'auth_rate_limited') {
    return `Too many refused tokens from this address: wait ${error.retryAfter ?? 'a few'} s and try again `
      + '(auth_rate_limited).';
  }
  return `${error.message} (${error.code}).`;
}

/** Why a sign-in failed, and nothing more: no view, no figure, no hint of what exists. */
function signInRefusal(error, asApp) {
  if (error instanceof ApiError) {
    switch (error.code) {
      case 'invalid_api_key':
        return 'That API key was refused: no app has it. Use the key shown when the app was registered.';
      case 'unauthenticated':
        return asApp
          ? 'That API key was refused.'
          : 'That admin token was refused. It is the file admin-token in the daemon\'s data directory.';
      case 'admin_forbidden':
        return 'The admin API answers clients on the daemon\'s own host only (see admin_remote): open the console there.';
      case 'admin_disabled':
        return 'This daemon has no admin token configured, so there is no operator view.';
      case 'auth_rate_limited':
        return `Too many refused sign-ins from this address: wait ${error.retryAfter ?? 'a few'} s before `
          + 'trying again. Until then every token is refused, the right one too (auth_rate_limited).';
      default:
        return `Sign-in failed: ${explain(error)}`;
    }
  }
  return `Sign-in failed: ${explain(error)}`;
}

// ---- signing in and out ----

async function signIn(event) {
  event.preventDefault();
  const input = $('token');
  const token = input.value.trim();
  input.value = '';
  const asApp = token.startsWith('pk_');
  const refused = $('sign-in-error');
  refused.hidden = true;
  session = { token, role: asApp ? 'owner' : 'operator' };
  const mine = ++generation;
  try {
    // The first call proves the token; its answer fills the first view.
    const first = asApp ? await api('GET', '/v1/deliveries') : await api('GET', '/v1/admin/apps');
    if (mine !== generation) return;
    show(asApp ? 'owner' : 'operator');
    if (asApp) {
      renderOwner(first);
    } else {
      renderApps(first.apps);
    }
    schedule(mine);
  } catch (error) {
    if (mine !== generation) return;
    session = null;
    refused.textContent = signInRefusal(error, asApp);
    refused.hidden = false;
  }
}

function signOut(reason) {
  session = null;
  generation += 1;
  clearTimeout(pollTimer);
  Object.assign(operator, { previous: null, history: [], armedRemove: null, showing: null, apps: [], outboxes: new Map() });
  for (const id of ['figures', 'secret-list', 'owner-summary', 'notify-result']) $(id).replaceChildren();
  for (const table of document.querySelectorAll('tbody')) table.replaceChildren();
  for (const id of ['ping-result', 'lookup-result', 'operator-message']) $(id).textContent = '';
  $('secret-box').hidden = true;
  $('admin-deliveries').hidden = true;
  show(null);
  if (reason) {
    $('sign-in-error').textContent = reason;
    $('sign-in-error').hidden = false;
  }
}

function show(role) {
  $('sign-in-view').hidden = role !== null;
  $('operator-view').hidden = role !== 'operator';
  $('owner-view').hidden = role !== 'owner';
  $('sign-out').hidden = role === null;
  $('who').textContent = role === 'operator' ? 'Operator' : role === 'owner' ? 'App owner' : '';
  if (role === null) $('token').focus();
}

// ---- polling ----

function schedule(mine) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(() => poll(mine), session?.role === 'operator' ? 0 : POLL_MS);
}

async function poll(mine) {
  if (mine !== generation || !session) return;
  try {
    if (session.role === 'operator') {
      await pollOperator(mine);
    } else {
      const deliveries = await api('GET', '/v1/deliveries');
      if (mine === generation) renderOwner(deliveries);
    }
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof ApiError && error.status === 401) {
      signOut('Signed out: the token is no longer accepted (the app was removed, or the token changed).');
      return;
    }
    const target = session.role === 'operator' ? $('operator-message') : $('ping-result');
    target.textContent = explain(error);
  }
  if (mine === generation) pollTimer = setTimeout(() => poll(mine), POLL_MS);
}

async function pollOperator(mine) {
  const [stats, list] = await Promise.all([api('GET', '/v1/admin/stats'), api('GET', '/v1/admin/apps')]);
  const log = operator.showing
    ? await api('GET', `/v1/admin/apps/${encodeURIComponent(operator.showing)}/deliveries`).catch(() => null)
    : null;
  if (mine !== generation) return;
  renderStats(stats);
  renderApps(list.apps);
  if (log) renderDeliveries($('admin-deliveries-table'), log.deliveries);
}

// ---- the operator view ----

/** Rates between the previous reading of the counters and this one. */
function sample(stats) {
  const previous = operator.previous;
  operator.previous = stats;
  const sessions = STATES.reduce((sum, state) => sum + (stats.sessions[state] ?? 0), 0);
  const users = stats.users;
  const waiting = stats.outboxes.reduce((sum, o) => sum + o.depth, 0);
  if (!previous) {
    return { at: stats.at, sessions, users, waiting, handshakes: null, deliveries: null, events: null, latency: null };
  }
  const secs = Math.max(0.001, (stats.at - previous.at) / 1000);
  const delta = (f) => Math.max(0, f(stats) - f(previous));
  const count = delta((s) => s.webhook_delivery_seconds.count);
  const sum = delta((s) => s.webhook_delivery_seconds.sum);
  return {
    at: stats.at,
    sessions,
    users,
    waiting,
    handshakes: delta((s) => s.handshakes) / secs,
    deliveries: delta((s) => s.webhook_batches.delivered) / secs,
    events: delta((s) => s.webhook_events) / secs,
    latency: count > 0 ? (sum / count) * 1000 : null,
  };
}

/**
 * A line chart of `values` (nulls are gaps), scaled to its own maximum, the readings so far
 * spread over the whole width (at most HISTORY of them), so a trend shows from the second
 * reading on instead of in a sliver at the right edge.
 */
function sparkline(values) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${HISTORY - 1} 30`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  const axis = document.createElementNS(SVG, 'line');
  axis.setAttribute('class', 'axis');
  for (const [name, value] of [['x1', 0], ['x2', HISTORY - 1], ['y1', 29.5], ['y2', 29.5]]) {
    axis.setAttribute(name, value);
  }
  svg.append(axis);
  const max = Math.max(1e-9, ...values.filter((v) => v !== null));
  const step = values.length > 1 ? (HISTORY - 1) / (values.length - 1) : 0;
  let points = [];
  const flush = () => {
    if (points.length > 0) {
      const line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('points', points.join(' '));
      svg.append(line);
    }
    points = [];
  };
  values.forEach((value, i) => {
    if (value === null) {
      flush();
    } else {
      points.push(`${(i * step).toFixed(2)},${(29 - (value / max) * 27).toFixed(2)}`);
    }
  });
  flush();
  return svg;
}

/** Bars for the sessions by state. */
function bars(counts) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${STATES.length * 10} 30`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  const max = Math.max(1, ...STATES.map((s) => counts[s] ?? 0));
  STATES.forEach((state, i) => {
    const height = ((counts[state] ?? 0) / max) * 28;
    const bar = document.createElementNS(SVG, 'rect');
    for (const [name, value] of [['x', i * 10 + 1], ['y', 30 - height], ['width', 8], ['height', height]]) {
      bar.setAttribute(name, value);
    }
    const title = document.createElementNS(SVG, 'title');
    title.textContent = `${state}: ${counts[state] ?? 0}`;
    bar.append(title);
    svg.append(bar);
  });
  return svg;
}

function card(id, label, value, detail, chart) {
  const node = el('div', { cls: 'card', attrs: { id } }, el('div', { cls: 'label', text: label }));
  node.append(el('div', { cls: 'value', text: value }));
  if (detail) node.append(el('div', { cls: 'detail', text: detail }));
  if (chart) node.append(chart);
  return node;
}

const fixed = (value, digits) => (value === null || value === undefined ? '—' : value.toFixed(digits));

function renderStats(stats) {
  const now = sample(stats);
  operator.history.push(now);
  if (operator.history.length > HISTORY) operator.history.shift();
  const series = (key) => operator.history.map((s) => s[key]);
  const byState = STATES.map((state) => `${state} ${stats.sessions[state] ?? 0}`).join(' · ');
  const batches = stats.webhook_batches;
  const oldest = Math.min(...stats.outboxes.map((o) => o.oldest_waiting_at ?? Infinity));
  $('figures').replaceChildren(
    card('figure-sessions', 'Sessions', now.sessions, byState, bars(stats.sessions)),
    card('figure-users', 'Users connected', now.users, null, sparkline(series('users'))),
    card('figure-handshakes', 'Handshakes per second', fixed(now.handshakes, 1), `${stats.handshakes} in all`,
      sparkline(series('handshakes'))),
    card('figure-deliveries', 'Webhook deliveries per second', fixed(now.deliveries, 2),
      `${fixed(now.events, 1)} events/s · ${batches.delivered} delivered · ${batches.failed} failed · `
        + `${batches.throttled} throttled · ${batches.gone} gone`,
      sparkline(series('deliveries'))),
    card('figure-latency', 'Delivery latency (ms, mean)', fixed(now.latency, 0),
      `from the event to the receiver's 2xx; ${stats.webhook_retries} retries in all`, sparkline(series('latency'))),
    card('figure-outbox', 'Outbox (events waiting)', now.waiting,
      `${stats.outbox_writable ? 'writable' : 'NOT WRITABLE (disk?)'}`
      + ` · oldest waiting ${Number.isFinite(oldest) ? age(oldest) : '—'}`, sparkline(series('waiting'))),
  );
  const span = Math.round((now.at - operator.history[0].at) / 1000);
  $('figures-updated').textContent = `updated ${time(stats.at)} · charts: the last ${span} s`;
  operator.outboxes = new Map(stats.outboxes.map((o) => [o.app_id, o]));
}

function renderApps(apps) {
  operator.apps = apps;
  const rows = apps.map((app) => {
    const outbox = operator.outboxes.get(app.app_id);
    const remove = el('button', {
      cls: `remove danger${operator.armedRemove === app.app_id ? ' armed' : ''}`,
      text: operator.armedRemove === app.app_id ? 'Confirm removal' : 'Remove',
      attrs: { type: 'button', 'data-action': 'remove' },
    });
    const actions = el('td', { cls: 'actions' },
      el('button', { cls: 'show-deliveries', text: 'Deliveries', attrs: { type: 'button', 'data-action': 'deliveries' } }),
      ' ',
      el('button', { cls: 'rotate', text: 'Rotate secret', attrs: { type: 'button', 'data-action': 'rotate' } }),
      ' ',
      el('button', { cls: 'rotate-key', text: 'Rotate key', attrs: { type: 'button', 'data-action': 'rotate-key' } }),
      ' ',
      el('button', {
        cls: 'toggle',
        text: app.disabled ? 'Enable' : 'Disable',
        attrs: { type: 'button', 'data-action': app.disabled ? 'enable' : 'disable' },
      }),
      ' ',
      remove);
    const state = app.disabled ? 'disabled' : 'enabled';
    const rotation = app.previous_secret_expires_at_ms
      ? ` · previous secret until ${time(app.previous_secret_expires_at_ms)}` : '';
    return el('tr', { attrs: { 'data-app': app.app_id } },
      el('td', {}, el('code', { text: app.app_id })),
      el('td', { text: app.name }),
      el('td', { cls: 'url', text: app.webhook_url }),
      el('td', { cls: `state-${state}`, text: state + rotation }),
      el('td', { cls: 'num outbox-depth', text: app.outbox_depth }),
      el('td', { text: age(outbox?.oldest_waiting_at) }),
      actions);
  });
  $('apps').tBodies[0].replaceChildren(...rows);
  $('apps-empty').hidden = apps.length > 0;
}

function showSecrets(title, entries) {
  $('secret-title').textContent = title;
  $('secret-list').replaceChildren(...entries.flatMap(([label, id, value]) => [
    el('dt', { text: label }),
    el('dd', { text: value, attrs: { id } }),
  ]));
  $('secret-box').hidden = false;
}

function hideSecrets() {
  $('secret-list').replaceChildren();
  $('secret-title').textContent = '';
  $('secret-box').hidden = true;
}

async function register(event) {
  event.preventDefault();
  const message = $('operator-message');
  const body = { name: $('register-name').value.trim(), webhook_url: $('register-url').value.trim() };
  try {
    const created = await api('POST', '/v1/admin/apps', body);
    $('register').reset();
    showSecrets(`Registered ${created.name}`, [
      ['App id', 'secret-app-id', created.app_id],
      ['API key', 'secret-api-key', created.api_key],
      ['Webhook secret', 'secret-webhook-secret', created.webhook_secret],
    ]);
    message.textContent = `Registered ${created.app_id}.`;
    await refreshApps();
  } catch (error) {
    message.textContent = `Not registered: ${explain(error)}`;
  }
}

async function refreshApps() {
  const list = await api('GET', '/v1/admin/apps');
  renderApps(list.apps);
}

async function appAction(event) {
  const button = event.target.closest('button[data-action]');
  const row = event.target.closest('tr[data-app]');
  if (!button || !row) return;
  const id = row.dataset.app;
  const path = `/v1/admin/apps/${encodeURIComponent(id)}`;
  const message = $('operator-message');
  const action = button.dataset.action;
  try {
    if (action === 'remove') {
      if (operator.armedRemove !== id) {
        operator.armedRemove = id;
        message.textContent = `Click "Confirm removal" to remove ${id} and its undelivered events.`;
        renderApps(operator.apps);
        return;
      }
      operator.armedRemove = null;
      await api('DELETE', path);
      if (operator.showing === id) closeDeliveries();
      message.textContent = `Removed ${id}.`;
    } else if (action === 'rotate') {
      const overlap = $('overlap').value;
      const rotated = await api('POST', `${path}/rotate-secret?overlap_secs=${encodeURIComponent(overlap)}`);
      const until = rotated.previous_secret_expires_at_ms
        ? `; the previous one signs beside it until ${new Date(rotated.previous_secret_expires_at_ms).toLocaleString()}`
        : '; the previous one no longer signs';
      showSecrets(`New webhook secret for ${id}`, [['Webhook secret', 'secret-webhook-secret', rotated.webhook_secret]]);
      message.textContent = `Rotated the secret of ${id}${until}.`;
    } else if (action === 'rotate-key') {
      const rotated = await api('POST', `${path}/rotate-key`);
      showSecrets(`New API key for ${id}`, [['API key', 'secret-api-key', rotated.api_key]]);
      message.textContent = `Rotated the API key of ${id}; the previous one is refused from now on.`;
    } else if (action === 'enable' || action === 'disable') {
      await api('POST', `${path}/${action}`);
      message.textContent = `${action === 'enable' ? 'Enabled' : 'Disabled'} deliveries of ${id}.`;
    } else if (action === 'deliveries') {
      operator.showing = id;
      $('admin-deliveries-app').textContent = id;
      $('admin-deliveries').hidden = false;
      const log = await api('GET', `${path}/deliveries`);
      renderDeliveries($('admin-deliveries-table'), log.deliveries);
      return;
    }
    await refreshApps();
  } catch (error) {
    message.textContent = explain(error);
  }
}

function closeDeliveries() {
  operator.showing = null;
  $('admin-deliveries').hidden = true;
  $('admin-deliveries-table').tBodies[0].replaceChildren();
}

// ---- the app-owner view ----

function renderDeliveries(table, deliveries) {
  const rows = deliveries.map((d) => el('tr', { cls: `delivery result-row-${d.result}` },
    el('td', { text: time(d.at) }),
    el('td', {}, el('code', { text: d.webhook_id })),
    el('td', { cls: 'num', text: d.events }),
    el('td', { cls: `result result-${d.result}`, text: d.result }),
    el('td', { cls: 'status', text: d.status ?? d.error ?? '—' }),
    el('td', { cls: 'num', text: `${d.latency_ms} ms` }),
    el('td', { cls: 'num', text: d.attempt }),
    el('td', { text: d.next_retry_at ? time(d.next_retry_at) : '—' })));
  table.tBodies[0].replaceChildren(...rows);
  return rows.length;
}

function renderOwner(log) {
  $('owner-summary').replaceChildren(
    el('dt', { text: 'App' }), el('dd', {}, el('code', { text: log.app_id })),
    el('dt', { text: 'Deliveries' }),
    el('dd', {
      cls: log.disabled ? 'state-disabled' : '',
      text: log.disabled ? 'disabled (the endpoint answered 410 Gone): ask the operator to enable them' : 'enabled',
    }),
    el('dt', { text: 'Outbox' }), el('dd', { attrs: { id: 'owner-outbox' }, text: `${log.outbox_depth} waiting` }),
    el('dt', { text: 'Oldest waiting' }), el('dd', { text: age(log.oldest_waiting_at) }),
  );
  $('deliveries-empty').hidden = renderDeliveries($('deliveries'), log.deliveries) > 0;
}

async function ping() {
  const result = $('ping-result');
  try {
    const queued = await api('POST', '/v1/webhooks/ping');
    result.textContent = `Test event queued at ${time(queued.at)}: its delivery appears below.`;
  } catch (error) {
    result.textContent = `Not sent: ${explain(error)}`;
  }
}

async function lookup(event) {
  event.preventDefault();
  const result = $('lookup-result');
  const puid = $('lookup-puid').value.trim();
  try {
    const p = await api('GET', `/v1/presence/${encodeURIComponent(puid)}`);
    const message = p.message ? ` “${p.message}”` : '';
    const since = p.since ? ` since ${time(p.since)}` : '';
    result.textContent = `${p.puid} is ${p.status}${message}${since}.`;
  } catch (error) {
    result.textContent = explain(error);
  }
}

function renderNotification(n) {
  const lines = n.recipients.map((r) => el('li', { cls: `outcome outcome-${r.outcome}` },
    el('code', { text: r.puid }), `: ${r.outcome}`, r.decided_at ? ` at ${time(r.decided_at)}` : ''));
  $('notify-result').replaceChildren(
    el('p', { text: `Notification ${n.id}, until ${time(n.expires_at)}:` }),
    el('ul', {}, ...lines));
}

async function notify(event) {
  event.preventDefault();
  const mine = generation;
  const body = { to: [$('notify-puid').value.trim()], title: $('notify-title').value, ttl_ms: 30000 };
  try {
    let n = await api('POST', '/v1/notifications', body);
    renderNotification(n);
    // Poll its outcome until every recipient's is decided, or a little after its expiry.
    while (mine === generation && n.recipients.some((r) => r.outcome === 'pending')
      && Date.now() < n.expires_at + 5000) {
      await new Promise((resolve) => setTimeout(resolve, NOTIFY_POLL_MS));
      if (mine !== generation) return;
      n = await api('GET', `/v1/notifications/${encodeURIComponent(n.id)}`);
      renderNotification(n);
    }
  } catch (error) {
    if (mine === generation) {
      $('notify-result').replaceChildren(el('p', { cls: 'failed', text: `Not sent: ${explain(error)}` }));
    }
  }
}

// ---- wiring ----

// Both delivery tables (the owner's and the operator's view of one app) share one header.
for (const table of document.querySelectorAll('table.deliveries')) {
  const names = ['Time', 'webhook-id', 'Events', 'Result', 'Status', 'Latency', 'Attempt', 'Next retry'];
  table.tHead.replaceChildren(el('tr', {}, ...names.map((name) => el('th', { text: name }))));
}

$('sign-in').addEventListener('submit', signIn);
$('sign-out').addEventListener('click', () => signOut(null));
$('register').addEventListener('submit', register);
$('apps').addEventListener('click', appAction);
$('secret-done').addEventListener('click', hideSecrets);
$('admin-deliveries-close').addEventListener('click', closeDeliveries);
$('ping').addEventListener('click', ping);
$('lookup').addEventListener('submit', lookup);
$('notify').addEventListener('submit', notify);
show(null);
