// Shared plumbing of the dashboard: the API client (cookie session + CSRF header), the
// server-sent event hub, toasts, small stores and hooks, formatting helpers.
import {
  html,
  render,
  useState,
  useEffect,
  useLayoutEffect,
  useRef,
  useCallback,
  useMemo,
} from '../vendor/preact-htm.module.js';

export { html, render, useState, useEffect, useRef, useCallback, useMemo };

// ---------------------------------------------------------------------------------------------
// A tiny observable store: `get()`, `set(v)`, and `useStore(store)` re-renders on change.

export function createStore(initial) {
  let value = initial;
  const subs = new Set();
  return {
    get: () => value,
    set(next) {
      value = typeof next === 'function' ? next(value) : next;
      for (const fn of subs) fn(value);
    },
    subscribe(fn) {
      subs.add(fn);
      return () => subs.delete(fn);
    },
  };
}

export function useStore(store) {
  const [, force] = useState(0);
  useEffect(() => store.subscribe(() => force((n) => n + 1)), [store]);
  return store.get();
}

// ---------------------------------------------------------------------------------------------
// Toasts: every API error of an action lands here, visible until dismissed (errors) or for a
// few seconds (notes).

export const toasts = createStore([]);
let toastSeq = 0;

export function toast(message, { kind = 'info', hint, code, ttl } = {}) {
  const id = ++toastSeq;
  const life = ttl ?? (kind === 'error' ? 12000 : 4000);
  toasts.set((list) => [...list.filter((t) => t.message !== message).slice(-4), { id, kind, message, hint, code }]);
  if (life > 0) setTimeout(() => dismiss(id), life);
  return id;
}

export function dismiss(id) {
  toasts.set((list) => list.filter((t) => t.id !== id));
}

export function toastError(e) {
  if (e && e.status === 401) return; // the session banner says it
  toast(e?.message || String(e), { kind: 'error', hint: e?.hint, code: e?.code });
}

// ---------------------------------------------------------------------------------------------
// The API: same origin, the session cookie goes along by itself; every request that changes
// something carries the CSRF token the node put into the page.

export const csrfToken = document.querySelector('meta[name="agora-csrf"]')?.content || '';

/** The session is gone (401): the page says so and offers a reload (which shows the login). */
export const session = createStore({ lost: false });

export class ApiError extends Error {
  constructor(status, code, message, hint, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.hint = hint;
    this.body = body;
  }
}

// Requests in flight, on <html data-pending>; `data-usable-at` is when the current page's
// first requests were all answered and drawn (ms since navigation start), `data-loaded` says
// it happened. Tests and the benchmark wait on these; people never see them.
let pending = 0;
let awaitingIdle = false;
const root = document.documentElement;
root.dataset.pending = '0';

function markIdle() {
  requestAnimationFrame(() => {
    if (pending === 0 && awaitingIdle) {
      awaitingIdle = false;
      root.dataset.usableAt = String(Math.round(performance.now()));
      root.dataset.loaded = '1';
    }
  });
}

function inflight(delta) {
  pending += delta;
  root.dataset.pending = String(pending);
  if (pending === 0 && awaitingIdle) markIdle();
}

/** Called once a page has rendered and started its requests. */
export function pageStarted() {
  awaitingIdle = true;
  root.dataset.loaded = '0';
  delete root.dataset.usableAt;
  if (pending === 0) markIdle();
}

export async function api(method, path, body, { raw = false, headers = {}, signal } = {}) {
  inflight(1);
  try {
    return await apiCall(method, path, body, { raw, headers, signal });
  } finally {
    inflight(-1);
  }
}

async function apiCall(method, path, body, { raw, headers, signal }) {
  const h = { Accept: 'application/json', ...headers };
  if (method !== 'GET' && method !== 'HEAD') h['X-Agora-CSRF'] = csrfToken;
  let payload = body;
  if (body !== undefined && !raw) {
    h['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers: h, body: payload, credentials: 'same-origin', signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unreachable', 'the node does not answer', 'is `agora up` still running?');
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!resp.ok) {
    const err = data && data.error ? data.error : {};
    if (resp.status === 401) session.set({ lost: true });
    throw new ApiError(
      resp.status,
      err.code || `http_${resp.status}`,
      err.message || `${method} ${path}: HTTP ${resp.status}`,
      err.hint,
      data,
    );
  }
  return data;
}

export const get = (path, opts) => api('GET', path, undefined, opts);
export const post = (path, body, opts) => api('POST', path, body, opts);

/** Runs an action, toasting its error; returns its result or undefined. */
export async function act(fn, okMessage) {
  try {
    const r = await fn();
    const msg = typeof okMessage === 'function' ? okMessage(r) : okMessage;
    if (msg) toast(msg, { kind: 'ok' });
    return r;
  } catch (e) {
    toastError(e);
    return undefined;
  }
}

export function q(params) {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') s.set(k, String(v));
  }
  const t = s.toString();
  return t ? `?${t}` : '';
}

// ---------------------------------------------------------------------------------------------
// Server-sent events: one EventSource for the whole page. Components subscribe by event name
// (`peer_connected`, `grid.job_finished`, …) or by prefix (`chat.*`). After a reconnect or a
// `lagged` event every subscriber is told to resync (`*`), since events may have been missed.

const handlers = new Map(); // name or prefix.* -> Set(fn)
const registered = new Set();
let source = null;
export const sse = createStore({ state: 'connecting', last: 0 });

// Names the node sends; listened to up front so that prefix subscriptions see them all.
const KNOWN = [
  'listening', 'listener_closed', 'peer_connected', 'peer_disconnected', 'peer_identified',
  'dial_failed', 'nat_status_changed', 'external_addr_confirmed', 'hole_punch', 'lagged', 'stats',
  'grid.unit_decided', 'grid.job_finished', 'grid.worker_fault', 'grid.unit_run',
  'docs.doc_changed', 'docs.invited', 'docs.members_changed', 'docs.task_assigned', 'docs.change_refused',
  'chat.message_received', 'chat.message_sent', 'chat.message_state', 'chat.messages_read',
  'chat.room_post', 'chat.presence', 'chat.profile',
  'files.job_progress', 'files.job_finished', 'files.changed',
  'ledger.block', 'ledger.tx',
];

function deliver(name, data) {
  const s = handlers.get(name);
  if (s) for (const fn of [...s]) fn(data, name);
  const dot = name.indexOf('.');
  if (dot > 0) {
    const p = handlers.get(`${name.slice(0, dot)}.*`);
    if (p) for (const fn of [...p]) fn(data, name);
  }
  const all = handlers.get('**');
  if (all) for (const fn of [...all]) fn(data, name);
}

function listen(name) {
  if (!source || registered.has(name) || name.endsWith('*')) return;
  registered.add(name);
  source.addEventListener(name, (ev) => {
    let data = null;
    try {
      data = ev.data ? JSON.parse(ev.data) : null;
    } catch {
      data = ev.data;
    }
    sse.set((s) => ({ ...s, last: Date.now() }));
    if (name === 'lagged') deliver('*', { reason: 'lagged' });
    deliver(name, data);
  });
}

export function startEvents() {
  if (source) return;
  source = new EventSource('/v1/events');
  let everOpen = false;
  source.onopen = () => {
    sse.set((s) => ({ ...s, state: 'live' }));
    if (everOpen) deliver('*', { reason: 'reconnected' });
    everOpen = true;
  };
  source.onerror = () => {
    sse.set((s) => ({ ...s, state: 'reconnecting' }));
    // A lost session closes the stream for good; find out which it is.
    if (source.readyState === EventSource.CLOSED) {
      get('/v1/id').then(
        () => {
          source = null;
          registered.clear();
          setTimeout(startEvents, 1000);
        },
        () => {},
      );
    }
  };
  for (const n of KNOWN) listen(n);
  for (const n of handlers.keys()) listen(n);
}

export function stopEvents() {
  if (source) source.close();
  source = null;
  registered.clear();
}

export function subscribe(names, fn) {
  const list = Array.isArray(names) ? names : [names];
  for (const n of list) {
    if (!handlers.has(n)) handlers.set(n, new Set());
    handlers.get(n).add(fn);
    listen(n);
  }
  return () => {
    for (const n of list) handlers.get(n)?.delete(fn);
  };
}

/** Calls `fn(data, name)` for each event in `names` while the component is mounted. */
export function useEvents(names, fn) {
  const ref = useRef(fn);
  ref.current = fn;
  const key = (Array.isArray(names) ? names : [names]).join(',');
  useEffect(() => {
    if (!key) return undefined;
    return subscribe(key.split(','), (d, n) => ref.current(d, n));
  }, [key]);
}

// ---------------------------------------------------------------------------------------------
// useApi: GET `path` now, again whenever one of `events` arrives (throttled), after a resync,
// and every `every` ms if asked. The previous data stays on screen while reloading.

export function useApi(path, { events = [], every = 0, throttle = 250, when } = {}) {
  const [state, setState] = useState({ data: undefined, error: null, path: null });
  const pathRef = useRef(path);
  pathRef.current = path;
  const busy = useRef(false);
  const again = useRef(false);
  const timer = useRef(null);
  const alive = useRef(true);

  const load = useCallback(async () => {
    const p = pathRef.current;
    if (!p) return;
    if (busy.current) {
      again.current = true;
      return;
    }
    busy.current = true;
    try {
      const data = await get(p);
      if (alive.current && pathRef.current === p) setState({ data, error: null, path: p });
    } catch (error) {
      if (alive.current && pathRef.current === p) setState((s) => ({ data: s.path === p ? s.data : undefined, error, path: p }));
    } finally {
      busy.current = false;
      if (again.current && alive.current) {
        again.current = false;
        load();
      }
    }
  }, []);

  // Leading edge: the first event after a quiet spell loads at once; a burst then loads at
  // most once per `throttle` ms, the last time after it ends.
  const lastAt = useRef(0);
  const schedule = useCallback(() => {
    if (timer.current) return;
    const wait = lastAt.current + throttle - Date.now();
    if (wait <= 0) {
      lastAt.current = Date.now();
      load();
      return;
    }
    timer.current = setTimeout(() => {
      timer.current = null;
      lastAt.current = Date.now();
      load();
    }, wait);
  }, [load, throttle]);

  useEffect(() => {
    alive.current = true;
    return () => {
      alive.current = false;
      clearTimeout(timer.current);
    };
  }, []);
  // Right after the render, not after the next paint: the request starts a frame earlier.
  useLayoutEffect(() => {
    load();
  }, [path]);
  const names = [...events, '*'];
  useEvents(path ? names : [], (data, name) => {
    if (name === '*' || !when || when(data, name)) schedule();
  });
  useEffect(() => {
    if (!every || !path) return undefined;
    const t = setInterval(() => {
      if (!document.hidden) load();
    }, every);
    return () => clearInterval(t);
  }, [every, path]);

  // While a new path loads, the previous answer stays (a next page replaces the rows at once).
  return { data: state.data, error: state.error, loading: state.path !== path, reload: load, set: (d) => setState({ data: d, error: null, path }) };
}

// ---------------------------------------------------------------------------------------------
// Routing: the History API; the node answers every non-API path with this page.

export const route = createStore(location.pathname + location.search);

export function navigate(to, { replace = false } = {}) {
  if (to === location.pathname + location.search) return;
  if (replace) history.replaceState(null, '', to);
  else history.pushState(null, '', to);
  route.set(location.pathname + location.search);
}

addEventListener('popstate', () => route.set(location.pathname + location.search));

document.addEventListener('click', (ev) => {
  if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const a = ev.target.closest && ev.target.closest('a[href]');
  if (!a || a.target || a.hasAttribute('download')) return;
  const href = a.getAttribute('href');
  if (!href.startsWith('/') || href.startsWith('//') || href.startsWith('/v1/') || href.startsWith('/ui/')) return;
  ev.preventDefault();
  navigate(href);
});

// ---------------------------------------------------------------------------------------------
// Formatting.

export function fmtBytes(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}

export function fmtRate(bps) {
  return `${fmtBytes(bps)}/s`;
}

export function fmtDuration(secs) {
  if (secs === undefined || secs === null) return '–';
  let s = Math.floor(secs);
  const d = Math.floor(s / 86400);
  s %= 86400;
  const h = Math.floor(s / 3600);
  s %= 3600;
  const m = Math.floor(s / 60);
  s %= 60;
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m ${s}s`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

export function fmtTime(ms) {
  if (!ms) return '–';
  const d = new Date(Number(ms));
  const today = new Date();
  const same = d.toDateString() === today.toDateString();
  return same ? d.toLocaleTimeString() : d.toLocaleString();
}

export function ago(ms) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((Date.now() - Number(ms)) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

export function short(id, head = 8, tail = 6) {
  if (!id) return '';
  const s = String(id);
  return s.length <= head + tail + 1 ? s : `${s.slice(0, head)}…${s.slice(-tail)}`;
}

export function fmtNum(n) {
  if (n === undefined || n === null) return '–';
  if (typeof n === 'string') return n;
  return Number(n).toLocaleString('en-US');
}

// ---------------------------------------------------------------------------------------------
// Small components used by every page.

export function ErrorNote({ error, testid = 'error-note' }) {
  if (!error) return null;
  return html`<div class="note error" role="alert" data-testid=${testid}>
    <strong>${error.code ? `${error.code}: ` : ''}</strong>${error.message}
    ${error.hint ? html`<div class="hint">${error.hint}</div>` : null}
  </div>`;
}

export function Loading({ what = 'Loading' }) {
  return html`<p class="muted" aria-live="polite">${what}…</p>`;
}

export function Empty({ children, testid }) {
  return html`<p class="muted empty" data-testid=${testid}>${children}</p>`;
}

export async function copyText(text, what = 'Copied') {
  try {
    await navigator.clipboard.writeText(text);
    toast(`${what} to the clipboard`, { kind: 'ok', ttl: 2500 });
  } catch {
    // No clipboard permission: select it in a prompt-like field instead.
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.className = 'offscreen';
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    ta.remove();
    toast(ok ? `${what} to the clipboard` : 'Copy failed: select the text and copy it by hand', {
      kind: ok ? 'ok' : 'error',
      ttl: 3000,
    });
  }
}

export function CopyButton({ text, label = 'Copy', what, testid }) {
  return html`<button type="button" class="small" data-testid=${testid} data-copy=${text}
    title=${`Copy ${what || ''}`.trim()} onClick=${() => copyText(text, what ? `${what} copied` : 'Copied')}>${label}</button>`;
}

/** A monospace id, shortened, with the full value in the title and selectable. */
export function Id({ value, head, tail, testid }) {
  if (!value) return html`<span class="muted">–</span>`;
  return html`<code class="id" title=${value} data-testid=${testid} data-value=${value}>${short(value, head, tail)}</code>`;
}

export function Section({ title, children, testid, actions }) {
  return html`<section class="card" data-testid=${testid}>
    <div class="card-head"><h2>${title}</h2>${actions ? html`<div class="actions">${actions}</div>` : null}</div>
    ${children}
  </section>`;
}

export function Field({ label, children, hint }) {
  return html`<label class="field"><span class="label">${label}</span>${children}${hint ? html`<span class="hint">${hint}</span>` : null}</label>`;
}

export function Presence({ status, testid = 'presence' }) {
  const s = status || 'offline';
  return html`<span class=${`presence ${s}`} data-testid=${testid} data-status=${s}><span class="dot" aria-hidden="true"></span>${s}</span>`;
}

/** Form submit helper: prevents the default and runs `fn` with a busy flag. */
export function useSubmit(fn) {
  const [busy, setBusy] = useState(false);
  const onSubmit = async (ev) => {
    ev.preventDefault();
    if (busy) return;
    setBusy(true);
    try {
      await fn(ev);
    } finally {
      setBusy(false);
    }
  };
  return [busy, onSubmit];
}

export function useTicker(ms) {
  const [, set] = useState(0);
  useEffect(() => {
    const t = setInterval(() => set((n) => n + 1), ms);
    return () => clearInterval(t);
  }, [ms]);
}
