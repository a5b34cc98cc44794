// The broker's dashboard: polls the management API (RabbitMQ's JSON shapes: /api/overview,
// /api/queues, /api/connections) and renders an overview with two charts, the queues with their
// actions (purge, delete), the connections, and a form that publishes a test message.
//
// Plain JS, no framework and no build step: management/dashboard.rs compiles this file into the
// broker. Broker data is only ever written with textContent or as SVG attributes, never as HTML,
// so a queue named "<img onerror=...>" shows as text (the page's CSP forbids inline scripts too).
//
// Rates: where the API gives RabbitMQ's `message_stats.<counter>_details.rate`, that is shown;
// where it gives only the cumulative counters (`message_stats.publish`, `deliver_get`), the rate
// is their difference between two polls divided by the seconds between them; without either,
// "–". The charts show the polls of the last CHART_WINDOW_MS, kept in this tab only; until the
// page has been open that long they span the time since it opened (at least CHART_MIN_SPAN_MS).
'use strict';

const REFRESH_MS = 5000;
const CHART_WINDOW_MS = 5 * 60 * 1000;
const CHART_MIN_SPAN_MS = 60 * 1000;
const CREDENTIALS_KEY = 'amqp-broker.dashboard.authorization';

const state = {
  // The `Authorization` header value, kept in sessionStorage: gone when the tab closes.
  authorization: sessionStorage.getItem(CREDENTIALS_KEY),
  timer: null,
  // Counts refreshes started: an answer that a later refresh overtook is dropped, not drawn.
  generation: 0,
  // Overview samples for the charts: { at, ready, unacked, publish, deliver } (rates may be null).
  history: [],
  // The previous poll's cumulative counters, for rates computed from deltas:
  // { overview: { at, stats }, queues: { at, stats: Map(queue key -> message_stats) } }.
  previous: {},
  // When every part last answered (shown when a refresh fails).
  lastSuccess: null,
};

const $ = (selector) => document.querySelector(selector);

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// One API call with the stored credentials. `X-Requested-With` asks the broker not to answer a
// 401 with a `WWW-Authenticate` challenge, which would make the browser open its own dialog.
async function api(method, path, body) {
  const headers = { Authorization: state.authorization, 'X-Requested-With': 'XMLHttpRequest' };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(`${method} ${path}: the broker did not answer (${e.message})`, 0);
  }
  if (!response.ok) {
    let reason = response.statusText;
    try {
      const error = await response.json();
      reason = [error.error, error.reason].filter(Boolean).join(': ') || reason;
    } catch {
      // Not JSON: the status text will do.
    }
    throw new ApiError(`${method} ${path}: ${response.status} ${reason}`, response.status);
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// --- login ---------------------------------------------------------------------------------------

// Basic auth of UTF-8 credentials (btoa alone takes Latin-1 only).
function basicAuthorization(username, password) {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

async function logIn(event) {
  event.preventDefault();
  const form = event.target;
  state.authorization = basicAuthorization(form.username.value, form.password.value);
  try {
    const me = await api('GET', '/api/whoami');
    sessionStorage.setItem(CREDENTIALS_KEY, state.authorization);
    form.password.value = '';
    $('#login-error').textContent = '';
    showDashboard(me.name);
  } catch (e) {
    state.authorization = null;
    $('#login-error').textContent = e.status === 401 ? 'Login failed: wrong user or password.' : e.message;
  }
}

function logOut(message = '') {
  clearTimeout(state.timer);
  state.timer = null;
  state.authorization = null;
  state.history = [];
  state.previous = {};
  state.lastSuccess = null;
  sessionStorage.removeItem(CREDENTIALS_KEY);
  $('#dashboard').hidden = true;
  $('#logout').hidden = true;
  $('#user').textContent = '';
  $('#status').textContent = '';
  showError('');
  $('#login-section').hidden = false;
  $('#login-error').textContent = message;
}

function showDashboard(user) {
  $('#login-section').hidden = true;
  $('#dashboard').hidden = false;
  $('#logout').hidden = false;
  $('#user').textContent = user;
  refresh();
}

// --- refresh -------------------------------------------------------------------------------------

// The three parts of the page that each poll fills, with the API path that feeds each.
const PARTS = [
  { path: '/api/overview', section: '#overview', render: renderOverview },
  { path: '/api/queues', section: '#queues-section', render: renderQueues },
  { path: '/api/connections', section: '#connections-section', render: renderConnections },
];

// Fetches every part, renders those that answered (one failing endpoint leaves the others
// fresh; its own section is marked stale and the banner says why), and schedules the next poll
// after this one ends, so slow answers never pile up.
async function refresh() {
  clearTimeout(state.timer);
  const generation = ++state.generation;
  const answers = await Promise.allSettled(PARTS.map((part) => api('GET', part.path)));
  // Logged out, or a newer refresh (after an action) started while these answers were on their way.
  if (state.authorization === null || generation !== state.generation) return;
  if (answers.some((a) => a.status === 'rejected' && a.reason.status === 401)) {
    logOut('The broker no longer accepts these credentials: log in again.');
    return;
  }
  const now = Date.now();
  const failures = [];
  PARTS.forEach((part, i) => {
    let fresh = answers[i].status === 'fulfilled';
    if (fresh) {
      try {
        part.render(answers[i].value, now);
      } catch (e) {
        fresh = false;
        failures.push(`GET ${part.path}: an answer this page cannot show (${e.message})`);
      }
    } else {
      failures.push(answers[i].reason.message);
    }
    $(part.section).classList.toggle('stale', !fresh);
    // The charts show an overview outage as a gap.
    if (!fresh && part.render === renderOverview) {
      remember({ at: now, ready: null, unacked: null, publish: null, deliver: null });
    }
  });
  if (failures.length === 0) {
    state.lastSuccess = new Date(now);
    $('#status').textContent = `Updated ${state.lastSuccess.toLocaleTimeString()}`;
    showError('');
  } else {
    const since = state.lastSuccess ? ` Last complete update ${state.lastSuccess.toLocaleTimeString()}.` : '';
    showError(`Refresh failed: ${failures.join('; ')}.${since} Retrying every ${REFRESH_MS / 1000} s.`);
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

function showError(message) {
  const banner = $('#error');
  banner.textContent = message;
  banner.hidden = message === '';
}

// A rate in messages per second for `counter` (e.g. 'publish'): RabbitMQ's own
// `<counter>_details.rate` when given, else the counter's growth since the previous poll.
function rate(stats, previousStats, counter, seconds) {
  const given = stats?.[`${counter}_details`]?.rate;
  if (typeof given === 'number') return given;
  const count = stats?.[counter];
  const before = previousStats?.[counter];
  if (typeof count !== 'number' || typeof before !== 'number' || !(seconds > 0)) return null;
  return Math.max(0, count - before) / seconds;
}

function secondsSince(previous, now) {
  return previous ? (now - previous.at) / 1000 : 0;
}

const queueKey = (vhost, name) => `${vhost}\u0000${name}`;

function formatCount(n) {
  return typeof n === 'number' ? n.toLocaleString('en-US') : '–';
}

function formatRate(r) {
  if (typeof r !== 'number') return '–';
  return `${r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString('en-US')}/s`;
}

// --- overview ------------------------------------------------------------------------------------

function renderOverview(overview, now) {
  const product = [overview.product_name, overview.product_version].filter(Boolean).join(' ');
  $('#node').textContent = [product, overview.node].filter(Boolean).join(' on ');
  const totals = { ...overview.object_totals, ...overview.queue_totals };
  for (const dd of document.querySelectorAll('#totals dd')) {
    dd.textContent = formatCount(totals[dd.dataset.total]);
  }

  const before = state.previous.overview;
  const seconds = secondsSince(before, now);
  const stats = overview.message_stats;
  const sample = {
    at: now,
    ready: overview.queue_totals?.messages_ready ?? null,
    unacked: overview.queue_totals?.messages_unacknowledged ?? null,
    publish: rate(stats, before?.stats, 'publish', seconds),
    deliver: rate(stats, before?.stats, 'deliver_get', seconds),
  };
  state.previous.overview = { at: now, stats };
  remember(sample);

  $('[data-latest="ready"]').textContent = formatCount(sample.ready);
  $('[data-latest="unacked"]').textContent = formatCount(sample.unacked);
  $('[data-latest="publish"]').textContent = formatRate(sample.publish);
  $('[data-latest="deliver"]').textContent = formatRate(sample.deliver);
  drawChart($('#depth-chart'), ['ready', 'unacked'], formatCount, now);
  drawChart($('#rates-chart'), ['publish', 'deliver'], formatRate, now);
}

// Keeps a sample for the charts, forgetting those older than the window.
function remember(sample) {
  state.history.push(sample);
  while (state.history[0].at < sample.at - CHART_WINDOW_MS) state.history.shift();
}

// "−45 s", "−3 min": how far back the left edge of a chart is.
function formatAge(ms) {
  return ms < 120_000 ? `−${Math.round(ms / 1000)} s` : `−${Math.round(ms / 60_000)} min`;
}

const SVG = 'http://www.w3.org/2000/svg';

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

// A line per series over the kept history: x is the sample's age (now at the right edge, the
// oldest sample, or CHART_MIN_SPAN_MS ago, at the left), y is scaled to the largest value shown,
// labelled on the left.
function drawChart(chart, series, format, now) {
  const [, , width, height] = chart.getAttribute('viewBox').split(' ').map(Number);
  const left = 56;
  const top = 8;
  const bottom = height - 18;
  const right = width - 4;
  const values = state.history.flatMap((s) => series.map((name) => s[name])).filter((v) => typeof v === 'number');
  const max = Math.max(1, ...values);
  const span = Math.max(CHART_MIN_SPAN_MS, now - state.history[0].at);
  const x = (at) => right - ((now - at) / span) * (right - left);
  const y = (v) => bottom - (v / max) * (bottom - top);

  chart.replaceChildren(
    svg('line', { class: 'axis', x1: left, y1: bottom, x2: right, y2: bottom }),
    svg('line', { class: 'grid', x1: left, y1: top, x2: right, y2: top }),
    svg('text', { class: 'label', x: left - 4, y: top + 4, 'text-anchor': 'end' }, format(max)),
    svg('text', { class: 'label', x: left - 4, y: bottom + 4, 'text-anchor': 'end' }, format(0)),
    svg('text', { class: 'label', x: left, y: height - 4 }, formatAge(span)),
    svg('text', { class: 'label', x: right, y: height - 4, 'text-anchor': 'end' }, 'now'),
  );
  for (const name of series) {
    // A gap in the data (a failed refresh, a rate not yet known) breaks the line.
    let points = [];
    const flush = () => {
      if (points.length > 0) chart.append(svg('polyline', { class: `series ${name}`, points: points.join(' ') }));
      points = [];
    };
    for (const sample of state.history) {
      const v = sample[name];
      if (typeof v === 'number') points.push(`${x(sample.at).toFixed(1)},${y(v).toFixed(1)}`);
      else flush();
    }
    flush();
  }
}

// --- queues --------------------------------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function button(label, action, className) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.dataset.action = action;
  if (className) b.className = className;
  return b;
}

function renderQueues(queues, now) {
  const previous = state.previous.queues;
  const seconds = secondsSince(previous, now);
  const rows = queues.map((q) => {
    const before = previous?.stats.get(queueKey(q.vhost, q.name));
    const tr = document.createElement('tr');
    tr.dataset.vhost = q.vhost;
    tr.dataset.queue = q.name;
    const actions = document.createElement('td');
    actions.className = 'actions';
    actions.append(button('Purge', 'purge'), button('Delete', 'delete', 'danger'));
    tr.append(
      cell(q.vhost),
      cell(q.name, 'name'),
      cell(formatCount(q.messages_ready), 'num ready'),
      cell(formatCount(q.messages_unacknowledged), 'num unacked'),
      cell(formatCount(q.messages), 'num total'),
      cell(formatCount(q.consumers), 'num consumers'),
      cell(formatRate(rate(q.message_stats, before, 'publish', seconds)), 'num publish-rate'),
      cell(formatRate(rate(q.message_stats, before, 'deliver_get', seconds)), 'num deliver-rate'),
      actions,
    );
    return tr;
  });
  $('#queues tbody').replaceChildren(...rows);
  $('#queues-section .empty').hidden = rows.length > 0;
  state.previous.queues = { at: now, stats: new Map(queues.map((q) => [queueKey(q.vhost, q.name), q.message_stats])) };
}

const queuePath = (vhost, name) => `/api/queues/${encodeURIComponent(vhost)}/${encodeURIComponent(name)}`;

async function queueAction(event) {
  const target = event.target.closest('button[data-action]');
  if (!target) return;
  const { vhost, queue } = target.closest('tr').dataset;
  const action = target.dataset.action;
  const where = `queue "${queue}" in virtual host "${vhost}"`;
  const question = action === 'purge'
    ? `Purge ${where}? Its ready messages are removed for good.`
    : `Delete ${where}? Its messages are lost and its consumers cancelled.`;
  if (!confirm(question)) return;
  const result = $('#action-result');
  try {
    if (action === 'purge') await api('DELETE', `${queuePath(vhost, queue)}/contents`);
    else await api('DELETE', queuePath(vhost, queue));
    result.className = 'success';
    result.textContent = `${action === 'purge' ? 'Purged' : 'Deleted'} ${where}.`;
  } catch (e) {
    result.className = 'failure';
    result.textContent = `Could not ${action} ${where}: ${e.message}`;
  }
  refresh();
}

// --- connections ---------------------------------------------------------------------------------

function renderConnections(connections) {
  const rows = connections.map((c) => {
    const tr = document.createElement('tr');
    tr.dataset.connection = c.name;
    const client = c.client_properties ?? {};
    const product = [client.product, client.version].filter(Boolean).join(' ');
    tr.append(
      cell(c.name, 'name'),
      cell(c.user ?? ''),
      cell(c.vhost ?? ''),
      cell(product || '–'),
      cell(formatCount(c.channels), 'num'),
      cell(c.state ?? ''),
    );
    return tr;
  });
  $('#connections tbody').replaceChildren(...rows);
  $('#connections-section .empty').hidden = rows.length > 0;
}

// --- publish -------------------------------------------------------------------------------------

async function publish(event) {
  event.preventDefault();
  const form = event.target;
  const vhost = form.vhost.value;
  // RabbitMQ names the default exchange "amq.default" in its API paths.
  const exchange = form.exchange.value || 'amq.default';
  const result = $('#publish-result');
  try {
    const answer = await api('POST', `/api/exchanges/${encodeURIComponent(vhost)}/${encodeURIComponent(exchange)}/publish`, {
      properties: {},
      routing_key: form.routing_key.value,
      payload: form.payload.value,
      payload_encoding: 'string',
    });
    if (answer?.routed) {
      result.className = 'success';
      result.textContent = `Published to exchange "${exchange}" with routing key "${form.routing_key.value}": routed.`;
    } else {
      result.className = 'failure';
      result.textContent = `Published to exchange "${exchange}", but no queue was bound for routing key "${form.routing_key.value}": not routed.`;
    }
  } catch (e) {
    result.className = 'failure';
    result.textContent = `Publish failed: ${e.message}`;
  }
  refresh();
}

// --- start ---------------------------------------------------------------------------------------

$('#login').addEventListener('submit', logIn);
$('#logout').addEventListener('click', () => logOut());
$('#queues tbody').addEventListener('click', queueAction);
$('#publish').addEventListener('submit', publish);

if (state.authorization) {
  api('GET', '/api/whoami').then(
    (me) => showDashboard(me.name),
    (e) => logOut(e.status === 401 ? '' : e.message),
  );
}
