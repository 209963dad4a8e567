// Files: own shares (paged on the node, 100 a page), share by upload or by a path on the node,
// search the network, downloads with live progress, pins, quota.
import {
  html, useState, useEffect, useRef, useApi, useStore, useEvents, createStore, Section, ErrorNote, Id,
  CopyButton, get, post, act, q, toast, toastError, useSubmit, fmtBytes, fmtNum, Empty, Loading, csrfToken,
  session, ApiError,
} from '../lib.js';
import { stats } from '../node.js';

export const PAGE_SIZE = 100;
const LIST_EVENTS = ['files.changed', 'files.job_finished'];
const JOB_EVENTS = ['files.job_progress', 'files.job_finished'];

// ---------------------------------------------------------------------------------------------
// Jobs (shares, uploads, downloads): the node lists the ones started through its API
// (`GET /v1/jobs`) and reports their progress as `files.job_progress` / `files.job_finished`
// events. This page adds what only it knows: the names and destinations of the jobs it started.

function stored(key, fallback) {
  try {
    return JSON.parse(sessionStorage.getItem(key) || 'null') ?? fallback;
  } catch {
    return fallback;
  }
}
function keep(store, key) {
  store.subscribe((v) => {
    try {
      sessionStorage.setItem(key, JSON.stringify(v));
    } catch {
      /* private mode */
    }
  });
  return store;
}
export const jobMeta = keep(createStore(stored('agora.jobmeta', {})), 'agora.jobmeta');
const hiddenJobs = keep(createStore(stored('agora.jobhidden', [])), 'agora.jobhidden');

export function trackJob(id, meta) {
  jobMeta.set((m) => ({ ...m, [id]: { ...meta, started: Date.now() } }));
}

// ---------------------------------------------------------------------------------------------

function normFiles(d, offset, filter) {
  if (Array.isArray(d)) {
    // A node without paging: page here.
    const f = filter ? filter.toLowerCase() : '';
    const all = f ? d.filter((x) => x.name.toLowerCase().includes(f) || x.hash.startsWith(f)) : d;
    return { items: all.slice(offset, offset + PAGE_SIZE), total: all.length, paged: false };
  }
  const items = d.files || d.items || d.entries || [];
  return {
    items,
    total: d.total ?? d.count ?? items.length,
    paged: true,
    quota: d.quota ?? d.storage_quota ?? d.quota_bytes,
    used: d.used ?? d.storage_used ?? d.used_bytes,
    pins: d.pins ?? d.pinned,
  };
}

function KindBadge({ f }) {
  const cls = f.kind === 'own' ? 'accent' : f.kind === 'pinned' ? 'ok' : '';
  return html`<span class=${`badge ${cls}`} data-testid="file-kind">${f.kind}</span>${f.collection ? html` <span class="badge">dir</span>` : null}${f.stale ? html` <span class="badge bad" title="changed on disk since it was shared: no longer served">changed on disk</span>` : null}`;
}

function FileRow({ f, onChanged }) {
  const unshare = async () => {
    if (await act(() => post('/v1/files/unshare', { hash: f.hash }), `Unshared ${f.name}`)) onChanged();
  };
  const pin = async () => {
    if (await act(() => post('/v1/files/pin', { hash: f.hash }), `Pinned ${f.name}`)) onChanged();
  };
  return html`<tr data-testid="file-row" data-hash=${f.hash} data-name=${f.name}>
    <td class="wrap"><span data-testid="file-name">${f.name}</span>${f.path ? html`<div class="hint"><code>${f.path}</code></div>` : null}</td>
    <td class="num">${fmtBytes(f.size)}</td>
    <td><${KindBadge} f=${f} /></td>
    <td class="hide-narrow"><${Id} value=${f.hash} testid="file-hash" /></td>
    <td><div class="actions">
      <${CopyButton} text=${f.hash} label="Hash" what="Hash" testid="copy-hash" />
      ${f.ticket ? html`<${CopyButton} text=${f.ticket} label="Ticket" what="Ticket" testid="copy-ticket" />` : null}
      ${f.kind === 'cached' ? html`<button type="button" class="small" data-testid="file-pin" onClick=${pin}>Pin</button>` : null}
      ${f.kind !== 'cached' ? html`<button type="button" class="small danger" data-testid="file-unshare" onClick=${unshare}>Unshare</button>` : null}
    </div></td>
  </tr>`;
}

function FilesTable() {
  const [offset, setOffset] = useState(0);
  const [filter, setFilter] = useState('');
  const [applied, setApplied] = useState('');
  const [kind, setKind] = useState('all');
  useEffect(() => {
    // Typing settles for 250 ms before the node is asked; the page goes back to the first.
    if (filter.trim() === applied) return undefined;
    const t = setTimeout(() => {
      setApplied(filter.trim());
      setOffset(0);
    }, 250);
    return () => clearTimeout(t);
  }, [filter]);
  const files = useApi(`/v1/files${q({ offset, limit: PAGE_SIZE, q: applied, kind: kind === 'all' ? undefined : kind })}`, { events: LIST_EVENTS, throttle: 300 });
  const page = files.data ? normFiles(files.data, offset, applied) : null;
  const total = page ? page.total : 0;
  const from = total ? offset + 1 : 0;
  const to = page ? offset + page.items.length : 0;
  useEffect(() => {
    if (page && offset > 0 && offset >= total) setOffset(Math.max(0, Math.floor((total - 1) / PAGE_SIZE) * PAGE_SIZE));
  }, [total]);
  return html`<${Section} title="Held files" testid="files-held"
    actions=${html`<label class="field"><span class="label">Show</span><select data-testid="files-kind" value=${kind}
        onChange=${(e) => { setKind(e.target.value); setOffset(0); }}>
        <option value="all">all</option><option value="own">own shares</option><option value="pinned">pins</option><option value="cached">cached for others</option></select></label>
      <label class="field"><span class="label">Filter</span><input type="search" data-testid="files-filter" value=${filter}
      onInput=${(e) => setFilter(e.target.value)} placeholder="name or hash" /></label>`}>
    <${ErrorNote} error=${files.error} />
    ${page && (page.quota || page.used !== undefined) ? html`<p data-testid="files-quota">Storage for others: ${fmtBytes(page.used)}${page.quota ? ` of ${fmtBytes(page.quota)} quota` : ''}</p>` : null}
    ${!page ? html`<${Loading} />` : page.items.length === 0 ? html`<${Empty} testid="files-empty">${applied ? 'Nothing matches.' : 'Nothing shared or held yet.'}</${Empty}>` : html`
    <div class="table-wrap"><table data-testid="files-table">
      <thead><tr><th>Name</th><th class="num">Size</th><th>Kind</th><th class="hide-narrow">Hash</th><th></th></tr></thead>
      <tbody>${page.items.map((f) => html`<${FileRow} key=${f.hash} f=${f} onChanged=${files.reload} />`)}</tbody>
    </table></div>`}
    <div class="pager">
      <button type="button" class="small" data-testid="files-prev" disabled=${offset === 0} onClick=${() => setOffset(Math.max(0, offset - PAGE_SIZE))}>← Previous</button>
      <span data-testid="files-range" data-total=${total}>${from}–${to} of ${fmtNum(total)}</span>
      <button type="button" class="small" data-testid="files-next" disabled=${to >= total} onClick=${() => setOffset(offset + PAGE_SIZE)}>Next →</button>
    </div>
  </${Section}>`;
}

// Upload with progress (XMLHttpRequest reports upload progress; fetch does not).
function upload(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/v1/files/upload${q({ name: file.name })}`);
    xhr.setRequestHeader('X-Agora-CSRF', csrfToken);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () => reject(new ApiError(0, 'unreachable', 'the upload failed: the node does not answer'));
    xhr.onload = () => {
      let data = null;
      try {
        data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else {
        if (xhr.status === 401) session.set({ lost: true });
        const e = (data && data.error) || {};
        reject(new ApiError(xhr.status, e.code || `http_${xhr.status}`, e.message || `upload: HTTP ${xhr.status}`, e.hint));
      }
    };
    xhr.send(file);
  });
}

function shareResult(r, name) {
  if (r && r.job !== undefined) trackJob(r.job, { kind: 'share', name });
}

function ShareForms() {
  const [file, setFile] = useState(null);
  const [up, setUp] = useState(null);
  const [path, setPath] = useState('');
  const [pin, setPin] = useState(false);
  const [busyUp, onUpload] = useSubmit(async () => {
    if (!file) return;
    setUp({ loaded: 0, total: file.size });
    try {
      const r = await upload(file, (loaded, total) => setUp({ loaded, total }));
      shareResult(r, file.name);
      toast(`Uploaded ${file.name}; sharing it`, { kind: 'ok' });
    } catch (e) {
      toastError(e);
    } finally {
      setUp(null);
    }
  });
  const [busyPath, onPath] = useSubmit(async () => {
    const p = path.trim();
    if (!p) return;
    const r = await act(() => post('/v1/files/share', { path: p, pin }));
    if (r) {
      shareResult(r, p.split('/').filter(Boolean).pop() || p);
      setPath('');
    }
  });
  return html`<${Section} title="Share" testid="files-share">
    <form class="inline" onSubmit=${onUpload} data-testid="upload-form">
      <label class="field grow"><span class="label">Upload a file to the node and share it</span>
        <input type="file" data-testid="upload-input" onChange=${(e) => setFile(e.target.files[0] || null)} /></label>
      <button type="submit" data-testid="upload-button" disabled=${!file || busyUp}>${busyUp ? 'Uploading…' : 'Upload & share'}</button>
    </form>
    ${up ? html`<progress data-testid="upload-progress" max=${up.total || 1} value=${up.loaded}></progress>` : null}
    <form class="inline" onSubmit=${onPath} data-testid="share-path-form">
      <label class="field grow"><span class="label">Or share a path on the node (file or directory, absolute)</span>
        <input data-testid="share-path" value=${path} onInput=${(e) => setPath(e.target.value)} placeholder="/home/me/report.pdf" spellcheck="false" /></label>
      <label class="check"><input type="checkbox" data-testid="share-pin" checked=${pin} onChange=${(e) => setPin(e.target.checked)} /> pin</label>
      <button type="submit" data-testid="share-path-button" disabled=${busyPath || !path.trim()}>Share</button>
    </form>
  </${Section}>`;
}

function Search({ saveDir }) {
  const [text, setText] = useState('');
  const [hits, setHits] = useState(null);
  const [err, setErr] = useState(null);
  const [busy, onSearch] = useSubmit(async () => {
    const words = text.trim();
    if (!words) return;
    setErr(null);
    try {
      setHits(await get(`/v1/search${q({ q: words })}`));
    } catch (e) {
      setErr(e);
      setHits(null);
    }
  });
  const download = async (h) => {
    const dir = saveDir.current.replace(/\/+$/, '');
    const out = `${dir}/${h.name.replace(/\//g, '_')}`;
    const r = await act(() => post('/v1/files/get', { target: h.hash, out }));
    if (r && r.job !== undefined) {
      trackJob(r.job, { kind: 'get', name: h.name, hash: h.hash, out, size: h.size, providers: h.providers });
      toast(`Downloading ${h.name}`, { kind: 'ok', ttl: 2500 });
    }
  };
  return html`<${Section} title="Search the network" testid="files-search">
    <form class="inline" onSubmit=${onSearch} role="search" data-testid="search-form">
      <label class="field grow"><span class="label">Words (every word must match)</span>
        <input type="search" data-testid="search-input" value=${text} onInput=${(e) => setText(e.target.value)} placeholder="holiday photos" /></label>
      <button type="submit" data-testid="search-button" disabled=${busy}>${busy ? 'Searching…' : 'Search'}</button>
    </form>
    <${ErrorNote} error=${err} testid="search-error" />
    ${hits === null ? null : hits.length === 0 ? html`<${Empty} testid="search-empty">No results.</${Empty}>` : html`
    <div class="table-wrap"><table data-testid="search-results">
      <thead><tr><th>Name</th><th class="num">Size</th><th>Hash</th><th class="num">Providers</th><th></th></tr></thead>
      <tbody>${hits.map((h) => html`<tr key=${h.hash} data-testid="search-result" data-hash=${h.hash} data-name=${h.name}>
        <td class="wrap">${h.name}</td><td class="num">${fmtBytes(h.size)}</td><td><${Id} value=${h.hash} /></td>
        <td class="num" data-testid="search-providers">${h.providers}</td>
        <td><button type="button" class="small" data-testid="download-button" data-hash=${h.hash} onClick=${() => download(h)}>Download</button></td>
      </tr>`)}</tbody>
    </table></div>`}
  </${Section}>`;
}

function Jobs() {
  const list = useApi('/v1/jobs', { events: ['files.job_finished'], throttle: 200 });
  const meta = useStore(jobMeta);
  const hidden = useStore(hiddenJobs);
  const [live, setLive] = useState({});
  useEvents(JOB_EVENTS, (d) => {
    if (d && d.id !== undefined) setLive((l) => ({ ...l, [d.id]: d }));
  });
  const ids = Object.keys(meta).length;
  useEffect(() => {
    if (ids) list.reload();
  }, [ids]);
  const views = (list.data || []).map((v) => {
    const l = live[v.id];
    // A finished state is final; otherwise the newest progress event wins.
    return v.state !== 'running' || !l ? v : l;
  }).filter((v) => !hidden.includes(v.id));
  if (!views.length) return null;
  const clear = () => hiddenJobs.set((h) => [...h, ...views.filter((v) => v.state !== 'running').map((v) => v.id)].slice(-200));
  return html`<${Section} title="Downloads and shares" testid="files-jobs"
    actions=${html`<button type="button" class="small ghost" data-testid="jobs-clear" onClick=${clear}>Clear finished</button>`}>
    <div class="table-wrap"><table>
      <thead><tr><th>Name</th><th class="hide-narrow">Kind</th><th class="progress-cell">Progress</th><th class="num">Providers</th><th>State</th></tr></thead>
      <tbody>${views.map((v) => {
        const m = meta[v.id] || {};
        const result = v.result || {};
        const total = v.total_bytes || result.size || m.size || 0;
        const done = v.state === 'done' ? total : v.done_bytes || 0;
        const pct = total ? Math.floor((100 * done) / total) : v.state === 'done' ? 100 : 0;
        const name = result.name || m.name || `job ${v.id}`;
        const download = v.kind === 'get';
        return html`<tr key=${v.id} data-testid=${download ? 'download-row' : 'share-row'} data-job=${v.id}
            data-hash=${result.hash || m.hash} data-state=${v.state} data-name=${name}>
          <td class="wrap">${name}${m.out || result.out ? html`<div class="hint">→ <code>${m.out || result.out}</code></div>` : null}
            ${result.hash ? html`<div class="actions"><${Id} value=${result.hash} testid="job-hash" />
              ${result.ticket ? html`<${CopyButton} text=${result.ticket} label="Ticket" what="Ticket" testid="job-copy-ticket" />` : null}</div>` : null}</td>
          <td class="hide-narrow">${download ? 'download' : 'share'}</td>
          <td class="progress-cell"><progress data-testid=${download ? 'download-progress' : 'share-progress'} max=${total || 1}
            value=${total ? done : v.state === 'done' ? 1 : 0} aria-label=${`${name}: ${pct}%`}></progress>
            <span class="hint" data-testid="job-percent">${pct}%</span>
            <div class="hint">${fmtBytes(done)}${total ? ` of ${fmtBytes(total)}` : ''}</div></td>
          <td class="num" data-testid="download-providers">${download ? v.peers ?? m.providers ?? '–' : '–'}</td>
          <td>${v.state === 'failed' ? html`<span class="badge bad" title=${v.error}>failed</span><div class="hint">${v.error}</div>`
            : v.state === 'done' ? html`<span class="badge ok">done</span>` : html`<span class="badge accent">running</span>`}</td>
        </tr>`;
      })}</tbody>
    </table></div>
  </${Section}>`;
}

export function Files() {
  const status = useApi('/v1/status');
  const st = useStore(stats);
  const [dir, setDir] = useState('');
  const saveDir = useRef('');
  const dataDir = status.data && status.data.data_dir;
  useEffect(() => {
    if (dataDir && !dir) setDir(`${dataDir}/downloads`);
  }, [dataDir]);
  saveDir.current = dir || (dataDir ? `${dataDir}/downloads` : '/tmp');
  const l = st.latest || {};
  return html`<div class="stack">
    <h1 tabindex="-1">Files</h1>
    <div class="cards two">
      <${ShareForms} />
      <${Section} title="Storage" testid="files-storage">
        <dl class="kv">
          <dt>Used on disk</dt><dd data-testid="storage-used">${fmtBytes(l.storage ?? status.data?.storage_bytes)}</dd>
          ${l.quota || status.data?.storage_quota ? html`<dt>Quota for others</dt><dd data-testid="storage-quota">${fmtBytes(l.quota ?? status.data?.storage_quota)}</dd>` : null}
        </dl>
        <label class="field"><span class="label">Downloads go to (a directory on the node)</span>
          <input data-testid="download-dir" value=${dir} onInput=${(e) => setDir(e.target.value)} spellcheck="false" /></label>
      </${Section}>
    </div>
    <${Search} saveDir=${saveDir} />
    <${Jobs} />
    <${FilesTable} />
  </div>`;
}
