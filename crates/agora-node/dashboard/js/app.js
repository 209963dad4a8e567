// The dashboard: layout, navigation and the client-side routes.
import {
  html, render, useEffect, useStore, route, toasts, dismiss, session, sse, startEvents,
  csrfToken, api, toastError, short, pageStarted, useState, ErrorNote,
} from './lib.js';
import { info, startNode } from './node.js';

// Each page is its own module, fetched when first shown (the first page load fetches five
// modules, not fourteen); the others are fetched once the browser is idle.
const PAGES = [
  { path: '/', id: 'overview', title: 'Overview', load: () => import('./pages/overview.js'), name: 'Overview' },
  { path: '/peers', id: 'peers', title: 'Peers', load: () => import('./pages/peers.js'), name: 'Peers' },
  { path: '/files', id: 'files', title: 'Files', load: () => import('./pages/files.js'), name: 'Files' },
  { path: '/chat', id: 'chat', title: 'Chat', load: () => import('./pages/chat.js'), name: 'Chat' },
  { path: '/ledger', id: 'ledger', title: 'Ledger', load: () => import('./pages/ledger.js'), name: 'Ledger' },
  { path: '/market', id: 'market', title: 'Market', load: () => import('./pages/market.js'), name: 'Market' },
  { path: '/contracts', id: 'contracts', title: 'Contracts', load: () => import('./pages/contracts.js'), name: 'Contracts' },
  { path: '/grid', id: 'grid', title: 'Grid', load: () => import('./pages/grid.js'), name: 'Grid' },
  { path: '/docs', id: 'docs', title: 'Docs', load: () => import('./pages/docs.js'), name: 'Docs' },
];
const loaded = {};

function loadPage(p) {
  if (loaded[p.id]) return Promise.resolve(loaded[p.id]);
  return p.load().then((m) => {
    loaded[p.id] = m[p.name];
    return loaded[p.id];
  });
}

function pageFor(pathname) {
  if (pathname === '/' || pathname === '') return PAGES[0];
  return PAGES.find((p) => p.path !== '/' && (pathname === p.path || pathname.startsWith(`${p.path}/`)));
}

function Nav({ current }) {
  return html`<nav class="nav" aria-label="Pages">
    <ul>
      ${PAGES.map((p) => html`<li key=${p.id}>
        <a href=${p.path} data-testid=${`nav-${p.id}`} aria-current=${current === p ? 'page' : undefined}>${p.title}</a>
      </li>`)}
    </ul>
  </nav>`;
}

function Toasts() {
  const list = useStore(toasts);
  return html`<div class="toasts" aria-live="assertive" data-testid="toasts">
    ${list.map((t) => html`<div key=${t.id} class=${`toast ${t.kind}`} role=${t.kind === 'error' ? 'alert' : 'status'}
        data-testid=${t.kind === 'error' ? 'toast-error' : 'toast'} data-code=${t.code}>
      <div class="toast-body">
        <div>${t.code ? html`<strong>${t.code}</strong>: ` : null}${t.message}</div>
        ${t.hint ? html`<div class="hint">${t.hint}</div>` : null}
      </div>
      <button type="button" class="icon" aria-label="Dismiss" data-testid="toast-dismiss" onClick=${() => dismiss(t.id)}>×</button>
    </div>`)}
  </div>`;
}

function SessionBanner() {
  const s = useStore(session);
  if (!s.lost) return null;
  return html`<div class="banner error" role="alert" data-testid="session-lost">
    The dashboard session has ended. Run <code>agora dashboard</code> on the machine running the node
    and open the URL it prints.
    <button type="button" data-testid="session-reload" onClick=${() => location.reload()}>Reload</button>
  </div>`;
}

function LiveBadge() {
  const s = useStore(sse);
  const label = s.state === 'live' ? 'live' : s.state === 'connecting' ? 'connecting' : 'reconnecting';
  return html`<span class=${`live sse-${s.state}`} data-testid="sse-status" data-state=${s.state} title="Server-sent events">
    <span class="dot" aria-hidden="true"></span>${label}</span>`;
}

async function logout() {
  try {
    await api('POST', '/logout', undefined);
  } catch (e) {
    if (e.status && e.status !== 401 && e.status < 300) toastError(e);
  }
  location.assign('/');
}

/** Rendered after the page: its effects run once the page's own have started its requests. */
function Started({ path, focus }) {
  useEffect(() => {
    pageStarted();
  }, [path]);
  useEffect(() => {
    // A new page takes the focus to its heading, as a full page load would (not the first
    // page, and not a move within a page, such as opening a conversation).
    if (!focus) return;
    const h = document.querySelector('main h1');
    if (h) h.focus({ preventScroll: false });
  }, []);
  return null;
}

let firstPage = true;

function PageHost({ page, path, search }) {
  const [, force] = useState(0);
  const [error, setError] = useState(null);
  const Comp = loaded[page.id];
  useEffect(() => {
    if (loaded[page.id]) return undefined;
    let live = true;
    loadPage(page).then(() => live && force((n) => n + 1), (e) => live && setError(e));
    return () => {
      live = false;
    };
  }, [page]);
  if (error) return html`<h1 tabindex="-1">${page.title}</h1><${ErrorNote} error=${{ code: 'load_failed', message: `this page could not be loaded: ${error.message}`, hint: 'reload the page' }} />`;
  if (!Comp) return html`<p class="muted" aria-live="polite">Loading…</p>`;
  const focus = !firstPage;
  firstPage = false;
  return html`<${Comp} path=${path} search=${search} /><${Started} path=${path} focus=${focus} />`;
}

function App() {
  const path = useStore(route);
  const me = useStore(info);
  const pathname = path.split('?')[0];
  const page = pageFor(pathname);

  useEffect(() => {
    document.title = `${page ? page.title : 'Not found'} · Agora`;
  }, [page]);

  return html`<div class="shell">
    <a class="skip" href="#main" data-testid="skip-link">Skip to content</a>
    <header class="top">
      <div class="brand">
        <span class="logo" aria-hidden="true">◆</span>
        <span>Agora</span>
        ${me ? html`<code class="muted node-id" title=${me.peer_id} data-testid="header-peer-id">${short(me.peer_id, 6, 4)}</code>` : null}
      </div>
      <div class="top-right">
        <${LiveBadge} />
        <button type="button" class="small ghost" data-testid="logout" onClick=${logout}>Log out</button>
      </div>
      <${Nav} current=${page} />
    </header>
    <${SessionBanner} />
    <main id="main" data-testid=${`page-${page ? page.id : 'not-found'}`}>
      ${page ? html`<${PageHost} key=${page.id} page=${page} path=${pathname} search=${path.includes('?') ? path.slice(path.indexOf('?')) : ''} />`
        : html`<h1 tabindex="-1">Not found</h1><p>No page at <code>${pathname}</code>. <a href="/" data-testid="not-found-home">Overview</a></p>`}
    </main>
    <${Toasts} />
  </div>`;
}

if (!csrfToken || csrfToken === '{{CSRF}}') {
  // Opened as a file or served without a session: nothing to show.
  console.warn('agora dashboard: no CSRF token in the page');
}
startEvents();
startNode();
render(html`<${App} />`, document.getElementById('app'));

// Fetch the other pages once the browser has nothing else to do, so moving on is instant.
const idle = window.requestIdleCallback || ((fn) => setTimeout(fn, 1500));
setTimeout(() => idle(() => PAGES.forEach((p) => loadPage(p).catch(() => {}))), 1000);
