// Grid: jobs and their progress, one job's units, this node as a worker, the workers it used,
// submitting a job (program and inputs are files on the node, or uploaded first).
import {
  html, useState, useApi, Section, ErrorNote, Id, api, get, post, act, navigate, useSubmit, fmtNum, fmtTime, Empty, Loading,
  q, toastError,
} from '../lib.js';

const GRID_EVENTS = ['grid.*'];

function StatusBadge({ s }) {
  const cls = s === 'done' ? 'ok' : s === 'cancelled' ? 'bad' : 'accent';
  return html`<span class=${`badge ${cls}`} data-testid="grid-job-status">${s}</span>`;
}

function JobProgress({ j }) {
  const decided = j.validated + j.failed;
  return html`<progress data-testid="grid-job-progress" max=${j.units || 1} value=${decided}
    aria-label=${`${decided} of ${j.units} units decided`}></progress>
    <div class="hint">${j.validated} valid · ${j.failed} failed · ${j.open} open</div>`;
}

function Jobs({ jobs, current }) {
  const list = jobs.data || [];
  return html`<${Section} title="Jobs" testid="grid-jobs">
    <${ErrorNote} error=${jobs.error} />
    ${jobs.data === undefined ? (jobs.error ? null : html`<${Loading} />`) : list.length === 0 ? html`<${Empty} testid="grid-jobs-empty">No jobs submitted from this node.</${Empty}>` : html`
    <div class="table-wrap"><table>
      <thead><tr><th>Job</th><th>Program</th><th>Status</th><th class="progress-cell">Units</th><th class="num hide-narrow">Paid</th><th class="hide-narrow">Created</th></tr></thead>
      <tbody>${[...list].sort((a, b) => b.created_ms - a.created_ms).map((j) => html`<tr key=${j.job} data-testid="grid-job-row" data-job=${j.job} class=${current === j.job ? 'selected' : ''}>
        <td><a href=${`/grid/${j.job}`} data-testid="grid-job-link"><code>${j.job.slice(0, 12)}</code></a></td>
        <td><${Id} value=${j.program} head=${8} tail=${4} /></td><td><${StatusBadge} s=${j.status} /></td>
        <td class="progress-cell"><${JobProgress} j=${j} /></td>
        <td class="num hide-narrow">${fmtNum(j.paid)}${j.owed ? html`<div class="hint">owed ${fmtNum(j.owed)}</div>` : null}</td>
        <td class="hide-narrow">${fmtTime(j.created_ms)}</td></tr>`)}</tbody>
    </table></div>`}
  </${Section}>`;
}

function JobDetail({ id, onChange }) {
  const job = useApi(`/v1/grid/jobs/${id}`, { events: GRID_EVENTS, throttle: 300, when: (d) => !d || !d.job || d.job === id });
  const [out, setOut] = useState('');
  const j = job.data;
  const cancel = async () => {
    if (await act(() => post(`/v1/grid/jobs/${id}/cancel`), 'Job cancelled')) {
      job.reload();
      onChange();
    }
  };
  const [busy, onResults] = useSubmit(async () => {
    await act(() => post(`/v1/grid/jobs/${id}/results`, { out: out.trim() }), (r) => `Wrote ${r.written ? r.written.length : 0} result files`);
  });
  return html`<${Section} title=${`Job ${id.slice(0, 12)}`} testid="grid-job"
    actions=${html`${j && j.status === 'running' ? html`<button type="button" class="small danger" data-testid="grid-job-cancel" onClick=${cancel}>Cancel</button>` : null}
      <a href="/grid" data-testid="grid-job-close">Close</a>`}>
    <${ErrorNote} error=${job.error} />
    ${!j ? (job.error ? null : html`<${Loading} />`) : html`
      <dl class="kv">
        <dt>Status</dt><dd><${StatusBadge} s=${j.status} /></dd>
        <dt>Program</dt><dd><${Id} value=${j.program} /> <span class="hint">(BLAKE3 of the module)</span></dd>
        <dt>Progress</dt><dd><${JobProgress} j=${j} /></dd>
        <dt>Replicas / quorum</dt><dd>${j.replicas} / ${j.quorum}</dd>
        <dt>Fuel / memory</dt><dd>${fmtNum(j.fuel)} / ${fmtNum(j.memory)} B</dd>
        <dt>Pay per unit</dt><dd>${fmtNum(j.pay)} (paid ${fmtNum(j.paid)})</dd>
      </dl>
      <div class="table-wrap"><table>
        <thead><tr><th class="num">#</th><th>Input</th><th>State</th><th>Result</th><th class="num">Fuel</th><th class="hide-narrow">Peers</th></tr></thead>
        <tbody>${j.results.map((u) => html`<tr key=${u.index} data-testid="grid-unit-row" data-state=${u.state}>
          <td class="num">${u.index}</td><td class="wrap">${u.input}</td>
          <td>${u.state}${u.error ? html`<div class="hint">${u.error}</div>` : null}</td>
          <td>${u.result_hash ? html`<${Id} value=${u.result_hash} />` : '–'}</td><td class="num">${fmtNum(u.fuel)}</td>
          <td class="hide-narrow">${u.peers.map((p) => html`<div key=${p}><${Id} value=${p} head=${6} tail=${4} /></div>`)}</td></tr>`)}</tbody>
      </table></div>
      <form class="inline" onSubmit=${onResults} data-testid="grid-results-form">
        <label class="field grow"><span class="label">Write accepted results to a directory on the node</span>
          <input data-testid="grid-results-out" value=${out} onInput=${(e) => setOut(e.target.value)} required placeholder="/tmp/results" spellcheck="false" /></label>
        <button type="submit" data-testid="grid-results-button" disabled=${busy}>Write results</button>
      </form>`}
  </${Section}>`;
}

/** Uploads a file to the node (which shares it) and answers where the node keeps it. */
async function uploadForPath(file) {
  const r = await api('POST', `/v1/files/upload${q({ name: file.name })}`, file, {
    raw: true,
    headers: { 'Content-Type': 'application/octet-stream' },
  });
  const deadline = Date.now() + 120000;
  let job = null;
  while (Date.now() < deadline) {
    job = await get(`/v1/jobs/${r.job}`);
    if (job.state !== 'running') break;
    await new Promise((res) => setTimeout(res, 300));
  }
  if (!job || job.state !== 'done') throw new Error(job && job.error ? job.error : 'the upload did not finish');
  const page = await get(`/v1/files${q({ q: job.result.hash, limit: 1 })}`);
  const item = page.items && page.items[0];
  return item && item.path;
}

function Submit({ onSubmitted }) {
  const [program, setProgram] = useState('');
  const [inputs, setInputs] = useState('');
  const [replicas, setReplicas] = useState('2');
  const [quorum, setQuorum] = useState('2');
  const [pay, setPay] = useState('');
  const [uploading, setUploading] = useState(false);
  const onFile = async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    setUploading(true);
    try {
      const p = await uploadForPath(f);
      if (p) setProgram(p);
      else toastError({ message: 'The node kept the upload but did not say where: give the program\u2019s path on the node instead' });
    } catch (err) {
      toastError(err);
    } finally {
      setUploading(false);
    }
  };
  const [busy, onSubmit] = useSubmit(async () => {
    const body = {
      program: program.trim(),
      inputs: inputs.split('\n').map((s) => s.trim()).filter(Boolean),
      replicas: Number(replicas),
      quorum: Number(quorum),
    };
    if (pay.trim()) body.pay = Number(pay);
    const r = await act(() => post('/v1/grid/run', body), (j) => `Job ${j.job.slice(0, 12)} submitted: ${j.units} units`);
    if (r) {
      onSubmitted();
      navigate(`/grid/${r.job}`);
    }
  });
  return html`<${Section} title="Submit a job" testid="grid-submit">
    <form class="stacked" onSubmit=${onSubmit} data-testid="grid-submit-form">
      <div class="row">
        <label class="field grow"><span class="label">Program (.wasm or .wat): absolute path on the node</span>
          <input data-testid="grid-program" value=${program} onInput=${(e) => setProgram(e.target.value)} required spellcheck="false" placeholder="/tmp/genome/align.wasm" /></label>
        <label class="field"><span class="label">…or upload it</span><input type="file" accept=".wasm,.wat" data-testid="grid-program-upload" onChange=${onFile} disabled=${uploading} /></label>
      </div>
      <label class="field"><span class="label">Inputs: absolute paths on the node, one per line (one unit each)</span>
        <textarea rows="3" data-testid="grid-inputs" value=${inputs} onInput=${(e) => setInputs(e.target.value)} required spellcheck="false"></textarea></label>
      <div class="row">
        <label class="field"><span class="label">Replicas</span><input type="number" min="1" max="16" data-testid="grid-replicas" value=${replicas} onInput=${(e) => setReplicas(e.target.value)} /></label>
        <label class="field"><span class="label">Quorum</span><input type="number" min="1" max="16" data-testid="grid-quorum" value=${quorum} onInput=${(e) => setQuorum(e.target.value)} /></label>
        <label class="field"><span class="label">Pay per unit (AGR)</span><input inputmode="numeric" data-testid="grid-pay" value=${pay} onInput=${(e) => setPay(e.target.value)} size="8" /></label>
        <button type="submit" data-testid="grid-submit-button" disabled=${busy || uploading}>Submit</button>
      </div>
    </form>
  </${Section}>`;
}

function Worker() {
  const w = useApi('/v1/grid/worker', { events: ['grid.unit_run'], throttle: 1000 });
  const workers = useApi('/v1/grid/workers', { events: GRID_EVENTS, throttle: 1000 });
  const d = w.data;
  const list = workers.data || [];
  return html`<${Section} title="Workers" testid="grid-worker">
    <${ErrorNote} error=${w.error} />
    ${d ? html`<h3>This node as a worker</h3><dl class="kv">
      <dt>Enabled</dt><dd data-testid="grid-worker-enabled">${d.enabled ? 'yes' : 'no (--no-grid)'}</dd>
      <dt>Threads</dt><dd>${d.cpus} · ${d.running} slots taken, ${d.executing} running</dd>
      <dt>Speed</dt><dd>${fmtNum(d.fuel_per_sec)} fuel/s</dd>
      <dt>Units run</dt><dd>${fmtNum(d.units_run)} (${fmtNum(d.fuel_run)} fuel), ${d.held} outcomes held</dd>
      ${d.earned !== null && d.earned !== undefined ? html`<dt>Earned</dt><dd>${fmtNum(d.earned)} AGR</dd>` : null}
    </dl>` : null}
    <h3>Workers this node used</h3>
    ${list.length === 0 ? html`<${Empty} testid="grid-workers-empty">None yet.</${Empty}>` : html`<div class="table-wrap"><table>
      <thead><tr><th>Peer</th><th class="num">Valid</th><th class="num">Faults</th><th class="num">Missed</th><th class="num">Paid</th><th></th></tr></thead>
      <tbody>${list.map((x) => html`<tr key=${x.peer} data-testid="grid-worker-row"><td><${Id} value=${x.peer} /></td><td class="num">${x.valid}</td>
        <td class="num">${x.faults}</td><td class="num">${x.missed}</td><td class="num">${fmtNum(x.paid)}</td>
        <td>${x.excluded ? html`<span class="badge bad">excluded</span>` : null}</td></tr>`)}</tbody>
    </table></div>`}
  </${Section}>`;
}

export function Grid({ path }) {
  const parts = path.split('/').filter(Boolean);
  const id = parts[1] ? decodeURIComponent(parts[1]) : null;
  const jobs = useApi('/v1/grid/jobs', { events: GRID_EVENTS, throttle: 300 });
  return html`<div class="stack">
    <h1 tabindex="-1">Grid</h1>
    ${id ? html`<${JobDetail} key=${id} id=${id} onChange=${jobs.reload} />` : null}
    <${Jobs} jobs=${jobs} current=${id} />
    <div class="cards two">
      <${Submit} onSubmitted=${jobs.reload} />
      <${Worker} />
    </div>
  </div>`;
}
