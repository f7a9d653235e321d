// handoff console: plain JavaScript, no build step, no dependencies. It reads the admin API of
// the server that served it, follows GET /v1/events (over fetch, so the token can go in the
// Authorization header; EventSource cannot send one) and redraws what changed. Actions call
// the same admin API after a confirmation and show its error text.
'use strict';

// Errors the page hits are collected here too (the browser test fails on any).
window.__consoleErrors = [];
window.addEventListener('error', (e) => window.__consoleErrors.push(String(e.message || e)));
document.addEventListener('securitypolicyviolation', (e) =>
  window.__consoleErrors.push('blocked by the content security policy: ' + e.violatedDirective + ' ' + e.blockedURI));
window.addEventListener('unhandledrejection', (e) =>
  window.__consoleErrors.push('unhandled rejection: ' + String(e.reason && e.reason.message || e.reason)));
(() => {
  const original = console.error.bind(console);
  console.error = (...args) => { window.__consoleErrors.push(args.map(String).join(' ')); original(...args); };
})();

const TOKEN_KEY = 'handoff.token';
const POINTS = 60; // chart points kept per version (one a second)
const POLL_MS = 1000;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  scope: null,
  routes: [],
  history: new Map(), // route -> history document
  series: new Map(), // route|digest -> {last, points}
  lastEventId: null,
  events: [],
  started: false,
  modules: [], // stored modules, for starting a rollout
  finished: new Map(), // route -> {key, until}: a rollout seen ending on this page, shown a while
  tail: null, // {route, controller}: the route whose guest log lines are followed
};

// How long a rollout that ended while the page watched stays in its panel; one that had ended
// before the page loaded is in the history instead.
const FINISHED_MS = 10000;
// Examples shown per kind of shadow mismatch, and guest log lines kept in the tail.
const EXAMPLES = 2;
const TAIL_LINES = 200;

const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) =>
  ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const short = (v) => String(v || '').replace(/^sha256:/, '').slice(0, 12);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fmt = (n, digits = 1) => (n == null || !isFinite(n) ? '–' : Number(n).toFixed(digits));
const ms = (n) => (n == null ? '–' : fmt(n) + ' ms');
const ago = (msAgo) => {
  const s = Math.max(0, Math.round(msAgo / 1000));
  return s < 120 ? s + ' s' : s < 7200 ? Math.round(s / 60) + ' min' : Math.round(s / 3600) + ' h';
};
const when = (at) => new Date(at).toLocaleString();

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h.Authorization = 'Bearer ' + state.token;
  return h;
}

async function problem(res) {
  try {
    const body = await res.json();
    return body.detail || body.title || res.statusText;
  } catch (_) {
    return res.status + ' ' + res.statusText;
  }
}

async function api(method, path, body) {
  const init = { method, headers: headers(), cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) needToken();
  if (!res.ok) throw new ApiError(res.status, await problem(res));
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

function show(id, text) {
  const el = $(id);
  el.textContent = text || '';
  el.hidden = !text;
}

function needToken() {
  $('token-form').hidden = false;
  $('forget').hidden = !state.token;
}

// ---- figures: rates and percentiles from two readings of a version's counters ----

function percentile(counts, bounds, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = Math.max(1, q * total);
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    if (!counts[i]) continue;
    if (seen + counts[i] >= rank) {
      const low = i === 0 ? 0 : bounds[i - 1];
      const high = bounds[Math.min(i, bounds.length - 1)];
      return low + (high - low) * ((rank - seen) / counts[i]);
    }
    seen += counts[i];
  }
  return bounds[bounds.length - 1];
}

function record(route, version, now) {
  const f = version.figures;
  if (!f) return;
  const key = route + '|' + version.version;
  let s = state.series.get(key);
  if (!s) state.series.set(key, (s = { last: null, points: [] }));
  if (s.last && now > s.last.at) {
    const dt = (now - s.last.at) / 1000;
    const done = f.completed - s.last.completed;
    const latency = f.latency.map((c, i) => c - (s.last.latency[i] || 0));
    s.points.push({
      rps: done / dt,
      err: done > 0 ? (f.errors - s.last.errors) / done : 0,
      p99: percentile(latency, f.latency_bounds_ms, 0.99),
    });
    if (s.points.length > POINTS) s.points.shift();
  }
  s.last = { at: now, completed: f.completed, errors: f.errors, latency: f.latency.slice() };
}

function spark(route, digest, field, cls, label) {
  const s = state.series.get(route + '|' + digest);
  const values = s ? s.points.map((p) => p[field]) : [];
  const latest = values.length ? values[values.length - 1] : null;
  const max = Math.max(1e-9, ...values.filter((v) => v != null));
  const pts = values
    .map((v, i) => `${(i * 100) / Math.max(1, POINTS - 1)},${24 - ((v || 0) / max) * 22}`)
    .join(' ');
  return `<span class="spark ${cls}" title="${esc(label)}"><svg viewBox="0 0 100 24" preserveAspectRatio="none" role="img" aria-label="${esc(label)}"><polyline points="${pts}"/></svg><span>${
    field === 'rps' ? fmt(latest) + '/s' : field === 'err' ? fmt(latest == null ? null : latest * 100, 2) + ' %' : ms(latest)
  }</span></span>`;
}

// ---- rendering: one section per route, each panel replaced only when its HTML changed ----

function panel(section, name, html) {
  let el = section.querySelector(`[data-panel="${name}"]`);
  if (!el) {
    el = document.createElement('div');
    el.className = 'panel panel-' + name;
    el.dataset.panel = name;
    section.appendChild(el);
  }
  if (el.__html !== html) {
    el.innerHTML = html;
    el.__html = html;
  }
  return el;
}

function splitBar(route) {
  const candidate = route.versions.find((v) => v.role === 'candidate');
  const w = candidate ? candidate.weight : 0;
  return `<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-label="split"><rect class="stable" x="0" y="0" height="10" width="${100 - w}"/><rect class="candidate" x="${100 - w}" y="0" height="10" width="${w}"/></svg>`;
}

function versionsPanel(route) {
  const rows = route.versions.map((v) => `<tr class="version" data-version="${esc(v.version)}" data-role="${esc(v.role)}">
      <td class="role role-${esc(v.role)}">${esc(v.role)}</td>
      <td class="mono" title="${esc(v.version)}">${esc(short(v.version))}</td>
      <td>${fmt(v.weight, v.weight % 1 ? 2 : 0)} %</td>
      <td>${v.in_flight}</td>
      <td>${v.requests}</td>
      <td class="failed">${failed(v)}</td>
      <td>${spark(route.route, v.version, 'rps', 'rps', 'requests per second')}</td>
      <td>${spark(route.route, v.version, 'err', 'err', 'error rate over the last second')}</td>
      <td>${spark(route.route, v.version, 'p99', 'p99', 'p99 latency')}</td>
    </tr>`);
  return `${splitBar(route)}<div class="table"><table><thead><tr><th>role</th><th>version</th><th>weight</th><th>in flight</th><th>requests</th><th title="requests that failed since the version started: 5xx answers, traps, timeouts, bodies that ended in an error (what the rollout gates count)">failed</th><th>req/s</th><th>error rate</th><th>p99</th></tr></thead><tbody>${rows.join('')}</tbody></table></div>`;
}

// A version's failed requests since it started, and their share of its completed ones.
function failed(v) {
  const done = v.figures ? v.figures.completed : v.requests;
  const share = done > 0 ? ` <span class="muted">(${fmt((v.failures / done) * 100, 2)} %)</span>` : '';
  return `<b class="${v.failures ? 'reason' : ''}">${v.failures}</b>${share}`;
}

const LIVE = (r) => r && (r.state === 'running' || r.state === 'paused');

// The rollout the page shows for `route`: a live one, or one the page saw end in the last
// FINISHED_MS (its outcome stays in the history and the events).
function shownRollout(route) {
  const r = route.rollout;
  const key = r ? r.candidate + '|' + r.state : '';
  if (LIVE(r)) {
    state.finished.set(route.route, { key: null, until: 0, live: true });
    return r;
  }
  const seen = state.finished.get(route.route);
  if (!r || !seen) return null;
  if (seen.live) {
    state.finished.set(route.route, { key, until: Date.now() + FINISHED_MS, live: false });
    setTimeout(render, FINISHED_MS + 50);
    return r;
  }
  return seen.key === key && Date.now() < seen.until ? r : null;
}

function rolloutPanel(route) {
  const r = shownRollout(route);
  if (!r) return '';
  const figures = r.versions.map((v) => `<tr><td class="role role-${esc(v.role)}">${esc(v.role)}</td><td class="mono">${esc(short(v.version))}</td><td>${v.requests}</td><td>${fmt(v.error_rate * 100, 2)} %</td><td>${ms(v.p50_ms)}</td><td>${ms(v.p99_ms)}</td></tr>`);
  const steps = r.steps.map((s, i) => (i === r.step ? `<b>${s}%</b>` : `${s}%`)).join(' → ');
  return `<h3>Rollout</h3>
    <p><span class="state state-${esc(r.state)}" data-rollout-state="${esc(r.state)}">${esc(r.state.replace('_', ' '))}</span>
      · <span class="rollout-step">step ${r.step + 1} of ${r.steps.length}</span> (${steps}) · weight <b class="rollout-weight">${fmt(r.weight, r.weight % 1 ? 2 : 0)} %</b>
      · candidate <span class="mono">${esc(short(r.candidate))}</span> · started by ${esc(r.by)}${r.sticky ? ' · sticky ' + esc(r.sticky) : ''}</p>
    <p class="muted">advances ${r.manual ? 'by hand only' : `after ${ago(r.step_time_ms)} and ${r.step_requests} candidate requests per step`};
      gates: error rate ≤ ${r.max_error_rate}, p99 ≤ ${r.max_p99_ratio}× stable, once the candidate has ${r.min_requests} requests in the step</p>
    ${r.reason ? `<p class="reason">${esc(r.reason)}</p>` : ''}
    ${figures.length ? `<div class="table"><table><thead><tr><th>role</th><th>version</th><th>requests in step</th><th>error rate</th><th>p50</th><th>p99</th></tr></thead><tbody>${figures.join('')}</tbody></table></div>` : ''}`;
}

function actionsPanel(route) {
  const r = route.rollout;
  const name = esc(route.route);
  const tailing = state.tail && state.tail.route === route.route;
  const always = `<button type="button" data-action="tail" data-route="${name}">${tailing ? 'stop following logs' : 'follow guest logs'}</button>
    <button type="button" class="danger" data-action="delete" data-route="${name}">delete route</button>`;
  if (!LIVE(r)) {
    const candidates = state.modules.filter((m) => m.version !== route.active.version);
    const start = candidates.length
      ? `<label>roll out <select data-candidate-for="${name}">${candidates.map((m) =>
          `<option value="${esc(m.version)}">${esc(short(m.version))}${m.used_by.length ? ' (' + esc(m.used_by.join(', ')) + ')' : ''}</option>`).join('')}</select></label>
        <label>steps <input type="text" size="10" data-steps-for="${name}" value="10,50,100"></label>
        <button type="button" class="primary" data-action="rollout" data-route="${name}">start rollout</button>`
      : '<span class="muted">no other stored version to roll out (upload one with <code>handoff upload</code>)</span>';
    return `<div class="row action">${start}${always}</div>`;
  }
  return `<div class="row action">
    <button type="button" class="primary" data-action="promote" data-route="${name}">promote</button>
    ${r.state === 'running'
      ? `<button type="button" data-action="pause" data-route="${name}">pause</button>`
      : `<button type="button" data-action="resume" data-route="${name}">resume</button>`}
    <button type="button" class="danger" data-action="abort" data-route="${name}">abort</button>
    <label>weight <input type="number" min="0" max="100" step="any" data-weight-for="${name}" value="${r.weight}"></label>
    <button type="button" data-action="weight" data-route="${name}">set weight</button>
    ${always}
  </div>`;
}

function tailPanel(route) {
  if (!state.tail || state.tail.route !== route.route) return '';
  return `<h3>Guest log <small class="muted">(live)</small></h3><ol class="tail" data-tail-for="${esc(route.route)}"></ol>`;
}

function drainingPanel(route) {
  if (!route.draining.length) return '';
  const rows = route.draining.map((d) => `<tr class="draining" data-version="${esc(d.version)}"><td class="mono">${esc(short(d.version))}</td><td>${d.in_flight}</td><td>${ago(d.retired_ms_ago)} ago</td><td>${ago(d.time_left_ms)}</td></tr>`);
  return `<h3>Draining</h3><div class="table"><table><thead><tr><th>version</th><th>in flight</th><th>retired</th><th>time left</th></tr></thead><tbody>${rows.join('')}</tbody></table></div>`;
}

// A sample's kind (as a server that names none would have named it).
function sampleKind(m) {
  if (m.kind) return m.kind;
  const parts = [];
  if (m.stable_status !== m.shadow_status) parts.push(`status ${m.stable_status} → ${m.shadow_status}`);
  if (m.stable_digest !== m.shadow_digest) parts.push('body');
  for (const h of m.headers) parts.push('header ' + h);
  return parts.join(', ');
}

function shadowPanel(route) {
  const s = route.shadow;
  if (!s) return '';
  let kinds = (s.kinds || []).map((k) => [k.kind, k.count]);
  if (!kinds.length) {
    const counted = new Map();
    for (const m of s.samples) counted.set(sampleKind(m), (counted.get(sampleKind(m)) || 0) + 1);
    kinds = [...counted].sort((a, b) => b[1] - a[1]);
  }
  const groups = kinds.map(([kind, count]) => {
    const examples = s.samples.filter((m) => sampleKind(m) === kind).slice(-EXAMPLES).reverse().map((m) => `<div class="sample">
      <div class="head"><b>${esc(m.method)} ${esc(m.path)}</b> <span class="muted">${when(m.at_ms)}</span></div>
      <div><div class="muted">stable: ${m.stable_status}, ${m.stable_size} bytes, ${esc(short(m.stable_digest))}</div><pre>${esc(m.stable_start)}</pre></div>
      <div><div class="muted">shadow: ${m.shadow_status}, ${m.shadow_size} bytes, ${esc(short(m.shadow_digest))}</div><pre>${esc(m.shadow_start)}</pre></div>
    </div>`);
    return `<div class="kind-group" data-kind="${esc(kind)}"><div><b class="count">${count}</b> × <span class="kind">${esc(kind)}</span></div>${examples.join('')}</div>`;
  });
  return `<h3>Shadow</h3>
    <p><span class="mono">${esc(short(s.version))}</span> sees ${s.percent}% · ${s.requests} requests: <b>${s.matches}</b> matches, <b class="reason">${s.mismatches}</b> mismatches, ${s.noise} noise, ${s.errors} errors, ${s.skipped} skipped · compares ${esc(s.compare_headers.join(', ') || 'status and body')}
      <button type="button" class="danger action" data-action="shadow-off" data-route="${esc(route.route)}">stop shadow</button></p>
    ${groups.length ? `<p class="muted">mismatches by kind, with the latest ${EXAMPLES} examples each</p>` : ''}
    <div class="samples">${groups.join('')}</div>`;
}

// Rollouts of `route` that ended without their candidate becoming stable (it is in no
// activation): from the events the page holds, and the route's last rollout.
function endedRollouts(route) {
  const rows = new Map();
  for (const e of state.events) {
    if (e.route === route.route && (e.kind === 'rollout_rolled_back' || e.kind === 'rollout_aborted') && e.version) {
      const key = e.version + '|' + e.kind;
      if (!rows.has(key)) rows.set(key, { at: e.at_ms, by: e.by || '', action: e.kind.replace('rollout_', 'rollout ').replace('_', ' '), version: e.version, reason: e.reason || '' });
    }
  }
  const r = route.rollout;
  if (r && (r.state === 'rolled_back' || r.state === 'aborted')) {
    const kind = 'rollout_' + r.state;
    const key = r.candidate + '|' + kind;
    if (!rows.has(key)) rows.set(key, { at: r.step_started_ms, by: r.by, action: 'rollout ' + r.state.replace('_', ' '), version: r.candidate, reason: r.reason || '' });
  }
  return [...rows.values()];
}

function historyPanel(route) {
  const h = state.history.get(route.route);
  if (!h) return '';
  const name = esc(route.route);
  // Only the latest activation of the active version is what serves.
  let serving = -1;
  h.versions.forEach((e, i) => { if (e.version === h.active) serving = i; });
  const entries = h.versions.map((e, i) => ({ at: e.activated_at_ms, by: e.by, action: e.action, version: e.version, label: e.label || '', text: e.message || '', serving: i === serving, activation: true }));
  for (const e of endedRollouts(route)) entries.push({ at: e.at, by: e.by, action: e.action, version: e.version, label: '', text: e.reason, serving: false, activation: false });
  entries.sort((a, b) => b.at - a.at);
  const rows = entries.map((e) => {
    let cell = '';
    if (e.serving) cell = '<span class="muted serving">serving</span>';
    else if (!e.activation) cell = `<button type="button" class="action" data-action="rollout-again" data-route="${name}" data-version="${esc(e.version)}">roll out again</button>`;
    else if (e.version !== route.active.version) cell = `<button type="button" class="action" data-action="rollback" data-route="${name}" data-version="${esc(e.version)}">roll back to this</button>`;
    return `<tr class="${e.activation ? 'activation' : 'ended-rollout'}" data-version="${esc(e.version)}"><td>${when(e.at)}</td><td>${esc(e.by)}</td><td>${esc(e.action)}</td><td class="mono" title="${esc(e.version)}">${esc(short(e.version))}</td><td>${esc(e.label)}</td><td class="wrap">${esc(e.text)}</td>
      <td>${cell}</td></tr>`;
  });
  return `<h3>History</h3><div class="table"><table><thead><tr><th>when</th><th>who</th><th>action</th><th>version</th><th>label</th><th>message / reason</th><th></th></tr></thead><tbody>${rows.join('')}</tbody></table></div>`;
}

function render() {
  const container = $('routes');
  $('no-routes').hidden = state.routes.length > 0;
  $('no-routes').textContent = 'no routes yet; deploy one with `handoff deploy ROUTE FILE.wasm`';
  const names = new Set(state.routes.map((r) => r.route));
  for (const section of container.querySelectorAll('section.route')) {
    if (!names.has(section.dataset.route)) section.remove();
  }
  for (const route of state.routes) {
    let section = document.getElementById('route-' + route.route);
    if (!section) {
      section = document.createElement('section');
      section.className = 'route';
      section.id = 'route-' + route.route;
      section.dataset.route = route.route;
      container.appendChild(section);
      loadHistory(route.route);
    }
    panel(section, 'title', `<h2>${esc(route.route)} <small>${esc(route.prefix)} · ${route.requests} requests · ${route.in_flight} in flight</small></h2>`);
    panel(section, 'versions', versionsPanel(route));
    panel(section, 'rollout', rolloutPanel(route));
    panel(section, 'actions', actionsPanel(route));
    panel(section, 'draining', drainingPanel(route));
    panel(section, 'shadow', shadowPanel(route));
    panel(section, 'tail', tailPanel(route));
    panel(section, 'history', historyPanel(route));
  }
  if (state.tail && !names.has(state.tail.route)) stopTail();
}

// ---- data ----

let refreshing = false;
let again = false;

async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    const list = await api('GET', '/v1/routes');
    const now = Date.now();
    state.routes = list.routes;
    for (const route of list.routes) {
      for (const v of route.versions) record(route.route, v, now);
    }
    render();
    kvUpdate();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) show('error', 'reading the routes failed: ' + e.message);
  } finally {
    refreshing = false;
    if (again) { again = false; setTimeout(refresh, 0); }
  }
}

async function loadHistory(route) {
  try {
    state.history.set(route, await api('GET', `/v1/routes/${encodeURIComponent(route)}/versions`));
    render();
  } catch (_) { /* the route may be gone; the next refresh says so */ }
}

function eventLine(e) {
  const parts = [e.route, e.version && short(e.version), e.action, e.step != null && 'step ' + (e.step + 1),
    e.weight != null && e.weight + '%', e.in_flight != null && e.in_flight + ' in flight', e.by && 'by ' + e.by]
    .filter(Boolean).map(esc).join(' · ');
  return `<li data-kind="${esc(e.kind)}"><span class="muted">${new Date(e.at_ms).toLocaleTimeString()}</span> <span class="kind">${esc(e.kind)}</span> ${parts}${e.reason ? ': <span class="reason">' + esc(e.reason) + '</span>' : ''}</li>`;
}

const EVENTS_SHOWN = 100;
const EVENTS_KEPT = 1024;
let eventsDue = false;
const historyDue = new Set();

// Events arrive one by one, a whole buffer of them at once when the page opens: the list, the
// histories and the routes are redrawn once for each batch.
function onEvent(e) {
  if (e.kind === 'missed') {
    state.history.clear();
    // On the first connection it only says the buffer had already moved on.
    if (!state.resumed) return;
  }
  state.events.unshift(e);
  if (state.events.length > EVENTS_KEPT) state.events.length = EVENTS_KEPT;
  if (e.route && ['activated', 'rollout_started', 'rollout_promoted', 'rollout_rolled_back', 'rollout_aborted'].includes(e.kind)) {
    historyDue.add(e.route);
  }
  if (eventsDue) return;
  eventsDue = true;
  setTimeout(() => {
    eventsDue = false;
    $('events').innerHTML = state.events.slice(0, EVENTS_SHOWN).map(eventLine).join('');
    for (const route of historyDue) loadHistory(route);
    historyDue.clear();
    loadModules();
    refresh();
  }, 0);
}

// Reads an SSE response, handing each message (`id`, `event`, `data`) to `onMessage`.
async function readSse(res, onMessage) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r/g, '');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null, event = null, data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('id:')) id = line.slice(3).trim();
        else if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data += line.slice(5).trim();
      }
      onMessage({ id, event, data });
    }
  }
}

async function follow() {
  for (;;) {
    try {
      const h = headers({ Accept: 'text/event-stream' });
      // The first time, from the start of the server's buffer: the recent events show at once.
      h['Last-Event-ID'] = state.lastEventId || '0';
      const res = await fetch('/v1/events', { headers: h, cache: 'no-store' });
      if (res.status === 401) { needToken(); return; }
      if (!res.ok) throw new Error(await problem(res));
      $('live').className = 'badge on';
      $('live').textContent = 'live';
      await readSse(res, (m) => {
        if (m.id) state.lastEventId = m.id;
        if (m.data) onEvent(JSON.parse(m.data));
      });
    } catch (_) { /* the server went away or restarts: try again */ }
    state.resumed = true;
    $('live').className = 'badge off';
    $('live').textContent = 'reconnecting';
    await sleep(1000);
  }
}

async function loadModules() {
  if (state.scope !== 'deploy') return;
  try {
    const list = await api('GET', '/v1/modules');
    state.modules = list.modules;
    render();
  } catch (_) { /* shown again on the next event */ }
}

// ---- following a route's guest log lines ----

function stopTail() {
  if (!state.tail) return;
  state.tail.controller.abort();
  state.tail = null;
}

async function startTail(route) {
  stopTail();
  const controller = new AbortController();
  state.tail = { route, controller };
  render();
  try {
    const res = await fetch(`/v1/routes/${encodeURIComponent(route)}/logs`,
      { headers: headers({ Accept: 'text/event-stream' }), cache: 'no-store', signal: controller.signal });
    if (!res.ok) throw new ApiError(res.status, await problem(res));
    await readSse(res, (m) => {
      if (m.event === 'missed') tailLine(route, { level: 'warn', message: `(${JSON.parse(m.data).missed} lines missed: the page fell behind)` });
      else if (m.data) tailLine(route, JSON.parse(m.data));
    });
  } catch (e) {
    if (e.name !== 'AbortError') show('error', 'following the guest log failed: ' + e.message);
  }
  if (state.tail && state.tail.controller === controller) {
    state.tail = null;
    render();
  }
}

function tailLine(route, line) {
  const list = document.querySelector(`[data-tail-for="${CSS.escape(route)}"]`);
  if (!list) return;
  const li = document.createElement('li');
  li.className = 'level-' + line.level;
  const at = line.at_ms ? new Date(line.at_ms).toLocaleTimeString() + ' ' : '';
  const about = [line.version, line.stream, line.request_id].filter(Boolean).join(' ');
  li.textContent = `${at}${String(line.level || '').toUpperCase()} ${about ? '[' + about + '] ' : ''}${line.message}`;
  list.appendChild(li);
  while (list.children.length > TAIL_LINES) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

// ---- actions ----

const ACTIONS = {
  promote: (route) => [`Promote the candidate of ${route} to stable now?`, 'POST', `/v1/routes/${route}/rollout/promote`],
  pause: (route) => [`Pause the rollout of ${route}?`, 'POST', `/v1/routes/${route}/rollout/pause`],
  resume: (route) => [`Resume the rollout of ${route}?`, 'POST', `/v1/routes/${route}/rollout/resume`],
  abort: (route) => [`Abort the rollout of ${route}? The candidate leaves the split and drains.`, 'POST', `/v1/routes/${route}/rollout/abort`],
  weight: (route) => {
    const input = document.querySelector(`[data-weight-for="${CSS.escape(route)}"]`);
    const weight = Number(input && input.value);
    return [`Set the candidate of ${route} to ${weight} % (this pauses the rollout)?`, 'PATCH', `/v1/routes/${route}/rollout`, { weight }];
  },
  rollback: (route, el) => [`Roll ${route} back to ${short(el.dataset.version)}?`, 'POST', `/v1/routes/${route}/rollback`, { version: el.dataset.version }],
  'shadow-off': (route) => [`Stop the shadow of ${route}? Its figures go with it.`, 'DELETE', `/v1/routes/${route}/shadow`],
  delete: (route) => [`Delete route ${route}? It stops serving at once (requests in flight finish) and its history is forgotten. This cannot be undone.`, 'DELETE', `/v1/routes/${route}`],
  rollout: (route) => {
    const select = document.querySelector(`[data-candidate-for="${CSS.escape(decodeURIComponent(route))}"]`);
    const input = document.querySelector(`[data-steps-for="${CSS.escape(decodeURIComponent(route))}"]`);
    const version = select && select.value;
    const steps = String(input && input.value || '').split(',').map((s) => s.trim()).filter(Boolean).map(Number);
    return [`Start a rollout of ${short(version)} on ${route}, in steps of ${steps.join(' → ')} %?`, 'POST', `/v1/routes/${route}/rollout`,
      steps.length ? { version, steps } : { version }];
  },
  'rollout-again': (route, el) => [`Start a rollout of ${short(el.dataset.version)} on ${route} again (default steps)?`, 'POST', `/v1/routes/${route}/rollout`, { version: el.dataset.version }],
};

async function act(el) {
  const route = el.dataset.route;
  const [question, method, path, body] = ACTIONS[el.dataset.action](encodeURIComponent(route), el);
  if (!window.confirm(question)) return;
  show('error', '');
  show('notice', '');
  try {
    await api(method, path, body);
    show('notice', `${el.dataset.action}: done`);
  } catch (e) {
    show('error', `${el.dataset.action} failed: ${e.message}`);
  }
  refresh();
  loadHistory(route);
  loadModules();
}

document.addEventListener('click', (event) => {
  const el = event.target.closest('button[data-action]');
  if (!el) return;
  if (el.dataset.action === 'tail') {
    if (state.tail && state.tail.route === el.dataset.route) {
      stopTail();
      render();
    } else {
      startTail(el.dataset.route);
    }
    return;
  }
  act(el);
});

// ---- the key-value browser (read only; hidden when the server has no key-value API) ----
// A route's own bucket is /v1/routes/{name}/kv, a shared one /v1/kv/{bucket} (the route
// status lists the shared buckets a route may open as `kv`).

// `listing`: the listing under way (a newer one makes an older one's answer moot).
const kv = { probed: false, available: false, buckets: '', cursor: null, listing: 0 };

function kvBase(choice) {
  const [scope, name] = choice.split(':');
  return scope === 'route' ? `/v1/routes/${encodeURIComponent(name)}/kv` : `/v1/kv/${encodeURIComponent(name)}`;
}

async function kvUpdate() {
  if (!state.routes.length) return;
  if (!kv.probed) {
    kv.probed = true;
    try {
      await api('GET', kvBase('route:' + state.routes[0].route) + '/keys?limit=1');
      kv.available = true;
    } catch (e) {
      kv.available = !(e instanceof ApiError && e.status === 404);
    }
  }
  if (!kv.available) return;
  const choices = state.routes.map((r) => ['route:' + r.route, r.route + ' (route)']);
  const shared = new Set(state.routes.flatMap((r) => r.kv || []));
  for (const name of shared) choices.push(['shared:' + name, name + ' (shared)']);
  const key = JSON.stringify(choices);
  if (key === kv.buckets) return;
  kv.buckets = key;
  const select = $('kv-bucket');
  const current = select.value;
  select.innerHTML = choices.map(([value, label]) => `<option value="${esc(value)}">${esc(label)}</option>`).join('');
  if (choices.some(([value]) => value === current)) select.value = current;
  $('kv').hidden = false;
}

async function kvKeys(more) {
  const base = kvBase($('kv-bucket').value);
  // One listing at a time: a new one (another click, another bucket) replaces one under way,
  // and "more" waits for the page before it.
  if (more && kv.busy) return;
  const listing = ++kv.listing;
  if (!more) {
    kv.cursor = null;
    $('kv-keys').innerHTML = '';
    $('kv-value').textContent = '';
  }
  kv.busy = true;
  try {
    const page = await api('GET', base + '/keys' + (kv.cursor ? '?cursor=' + encodeURIComponent(kv.cursor) : ''));
    if (listing !== kv.listing) return;
    const more = $('kv-more');
    if (more) more.remove();
    $('kv-keys').insertAdjacentHTML('beforeend', page.keys.map((k) =>
      `<li><button type="button" class="mono" data-key="${esc(k)}">${esc(k)}</button></li>`).join('')
      || (more ? '' : '<li class="empty">no keys</li>'));
    kv.cursor = page.cursor;
    if (page.cursor) $('kv-keys').insertAdjacentHTML('beforeend', '<li id="kv-more"><button type="button" data-more="1">more…</button></li>');
  } catch (e) {
    if (listing === kv.listing) show('error', 'listing keys failed: ' + e.message);
  } finally {
    if (listing === kv.listing) kv.busy = false;
  }
}

async function kvValue(key) {
  const base = kvBase($('kv-bucket').value);
  try {
    const entry = await api('GET', `${base}/keys/${encodeURIComponent(key)}`);
    const text = entry.value != null ? entry.value : '(binary, base64) ' + entry.base64;
    const about = [`revision ${entry.revision ?? '–'}`, entry.expires_at_ms ? 'expires ' + when(entry.expires_at_ms) : null].filter(Boolean).join(' · ');
    $('kv-value').textContent = `${key}\n${about}\n\n${text}`;
  } catch (e) {
    $('kv-value').textContent = 'reading it failed: ' + e.message;
  }
}

$('kv-refresh').addEventListener('click', () => kvKeys(false));
$('kv-bucket').addEventListener('change', () => kvKeys(false));
$('kv-keys').addEventListener('click', (event) => {
  const el = event.target.closest('button');
  if (!el) return;
  if (el.dataset.more) kvKeys(true);
  else if (el.dataset.key != null) kvValue(el.dataset.key);
});

// ---- start ----

async function start() {
  let me;
  try {
    me = await api('GET', '/v1/whoami');
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) show('error', 'the admin API does not answer: ' + e.message);
    return;
  }
  $('token-form').hidden = true;
  show('error', '');
  state.scope = me.scope;
  document.body.classList.toggle('read-only', me.scope !== 'deploy');
  $('who').textContent = `${me.name} (${me.scope})`;
  $('forget').hidden = !state.token;
  if (state.started) return;
  state.started = true;
  follow();
  refresh();
  loadModules();
  setInterval(refresh, POLL_MS);
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  state.token = $('token').value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $('token').value = '';
  start();
});

$('forget').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

start();
