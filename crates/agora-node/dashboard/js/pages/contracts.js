// Contracts: show a contract, call or query it, its events; deploy a module.
import {
  html, useState, useApi, Section, ErrorNote, Id, post, act, toastError, q, navigate, useSubmit, fmtNum, fmtBytes, Empty, Loading,
} from '../lib.js';
import { LEDGER_EVENTS, blockHasTxs } from './ledger.js';

function hex(buf) {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function Outcome({ r }) {
  if (!r) return null;
  return html`<div class=${`note ${r.status === 'ok' ? 'ok' : 'error'}`} data-testid="contract-outcome" data-status=${r.status}>
    <dl class="kv">
      <dt>Status</dt><dd data-testid="contract-outcome-status">${r.status}</dd>
      <dt>Output</dt><dd><code data-testid="contract-output">${r.output ?? `hex ${r.output_hex || ''}`}</code></dd>
      <dt>Gas used</dt><dd>${fmtNum(r.gas_used)}</dd>
      ${r.fee !== undefined ? html`<dt>Fee</dt><dd>${fmtNum(r.fee)}</dd>` : null}
      ${r.height !== undefined ? html`<dt>Height</dt><dd>${fmtNum(r.height)}</dd>` : null}
      ${r.hash ? html`<dt>Transaction</dt><dd><${Id} value=${r.hash} /></dd>` : null}
      ${r.events && r.events.length ? html`<dt>Events</dt><dd>${r.events.map((e, i) => html`<div key=${i}><code>${e.topic ?? e.topic_hex}</code>: <code>${e.data ?? e.data_hex}</code></div>`)}</dd>` : null}
    </dl>
  </div>`;
}

function CallForm({ account }) {
  const [method, setMethod] = useState('');
  const [args, setArgs] = useState('');
  const [asHex, setAsHex] = useState(false);
  const [value, setValue] = useState('');
  const [gas, setGas] = useState('');
  const [result, setResult] = useState(null);
  const body = () => {
    const b = { method: method.trim() };
    if (args) b[asHex ? 'args_hex' : 'args'] = args;
    if (gas.trim()) b.gas = Number(gas);
    return b;
  };
  const run = async (kind) => {
    const b = body();
    if (kind === 'call' && value.trim()) b.value = Number(value);
    setResult(null);
    try {
      setResult(await post(`/v1/ledger/contracts/${account}/${kind}`, b));
    } catch (e) {
      // A failed call or query is final (or harmless) and carries its outcome in the error.
      const detail = e.body && e.body.error;
      if (detail && detail.status) setResult({ ...detail, status: detail.status });
      toastError(e);
    }
  };
  const [busy, onSubmit] = useSubmit(async (e) => run(e.submitter && e.submitter.value === 'query' ? 'query' : 'call'));
  return html`<${Section} title="Call or query" testid="contract-call">
    <form class="stacked" onSubmit=${onSubmit} data-testid="contract-call-form">
      <div class="row">
        <label class="field grow"><span class="label">Method</span><input data-testid="contract-method" value=${method} onInput=${(e) => setMethod(e.target.value)} required maxlength="64" /></label>
        <label class="field"><span class="label">Value (AGR, call only)</span><input data-testid="contract-value" value=${value} onInput=${(e) => setValue(e.target.value)} inputmode="numeric" size="8" /></label>
        <label class="field"><span class="label">Gas limit</span><input data-testid="contract-gas" value=${gas} onInput=${(e) => setGas(e.target.value)} inputmode="numeric" size="10" placeholder="10000000" /></label>
      </div>
      <label class="field"><span class="label">Input ${asHex ? '(hex)' : '(text)'}</span><input data-testid="contract-args" value=${args} onInput=${(e) => setArgs(e.target.value)} spellcheck="false" /></label>
      <label class="check"><input type="checkbox" data-testid="contract-args-hex" checked=${asHex} onChange=${(e) => setAsHex(e.target.checked)} /> input is hex</label>
      <div class="row">
        <button type="submit" value="query" data-testid="contract-query-button" disabled=${busy || !method.trim()}>Query (read-only)</button>
        <button type="submit" value="call" class="ghost" data-testid="contract-call-button" disabled=${busy || !method.trim()}>${busy ? 'Working…' : 'Call (signed, costs gas)'}</button>
      </div>
    </form>
    <${Outcome} r=${result} />
  </${Section}>`;
}

function Events({ account }) {
  const ev = useApi(`/v1/ledger/contracts/${account}/events${q({ limit: 50 })}`, { events: LEDGER_EVENTS, throttle: 500, when: blockHasTxs });
  const list = (ev.data && ev.data.events) || [];
  return html`<${Section} title="Events" testid="contract-events">
    <${ErrorNote} error=${ev.error} />
    ${ev.data === undefined ? (ev.error ? null : html`<${Loading} />`) : list.length === 0 ? html`<${Empty} testid="contract-events-empty">No events yet.</${Empty}>` : html`
    <div class="table-wrap"><table>
      <thead><tr><th class="num">Height</th><th>Method</th><th>Topic</th><th>Data</th><th class="hide-narrow">From</th></tr></thead>
      <tbody>${list.map((e) => html`<tr key=${`${e.hash}-${e.n ?? e.index}`} data-testid="contract-event">
        <td class="num">${fmtNum(e.height)}</td><td>${e.method || '–'}</td><td><code>${e.topic ?? e.topic_hex}</code></td>
        <td class="wrap"><code>${e.data ?? e.data_hex}</code></td><td class="hide-narrow"><${Id} value=${e.from} head=${6} tail=${4} /></td></tr>`)}</tbody>
    </table></div>`}
  </${Section}>`;
}

function Show({ account }) {
  const c = useApi(`/v1/ledger/contracts/${account}`, { events: LEDGER_EVENTS, throttle: 500, when: blockHasTxs });
  const d = c.data;
  return html`<${Section} title="Contract" testid="contract-show">
    <${ErrorNote} error=${c.error} />
    ${!d ? (c.error ? null : html`<${Loading} />`) : html`<dl class="kv">
      <dt>Account</dt><dd><code data-testid="contract-account">${d.contract}</code></dd>
      <dt>Code</dt><dd><${Id} value=${d.code_hash} /> · ${fmtBytes(d.code_size)}</dd>
      <dt>Creator</dt><dd><${Id} value=${d.creator} /></dd>
      <dt>Balance</dt><dd data-testid="contract-balance">${fmtNum(d.balance)}</dd>
      <dt>Storage</dt><dd>${fmtNum(d.storage_entries)} entries, ${fmtBytes(d.storage_bytes)}</dd>
      <dt>At height</dt><dd>${fmtNum(d.height)}</dd>
    </dl>`}
  </${Section}>`;
}

function Deploy() {
  const [file, setFile] = useState(null);
  const [init, setInit] = useState('');
  const [busy, onSubmit] = useSubmit(async () => {
    if (!file) return;
    const buf = await file.arrayBuffer();
    const bytes = new Uint8Array(buf);
    const isWasm = bytes.length >= 4 && bytes[0] === 0 && bytes[1] === 0x61 && bytes[2] === 0x73 && bytes[3] === 0x6d;
    const body = isWasm ? { code_hex: hex(buf) } : { wat: new TextDecoder().decode(buf) };
    if (init) body.init = init;
    const r = await act(() => post('/v1/ledger/contracts', body), (o) => `Deployed ${o.contract} at height ${o.height}`);
    if (r && r.contract) navigate(`/contracts/${r.contract}`);
  });
  return html`<${Section} title="Deploy a contract" testid="contract-deploy">
    <form class="stacked" onSubmit=${onSubmit} data-testid="contract-deploy-form">
      <label class="field"><span class="label">Module (.wasm or .wat, at most 16 KiB)</span>
        <input type="file" accept=".wasm,.wat" data-testid="contract-deploy-file" onChange=${(e) => setFile(e.target.files[0] || null)} /></label>
      <label class="field"><span class="label">Init input (text, optional)</span><input data-testid="contract-deploy-init" value=${init} onInput=${(e) => setInit(e.target.value)} /></label>
      <div><button type="submit" data-testid="contract-deploy-button" disabled=${busy || !file}>${busy ? 'Waiting for finality…' : 'Deploy'}</button></div>
    </form>
  </${Section}>`;
}

export function Contracts({ path }) {
  const parts = path.split('/').filter(Boolean);
  const account = parts[1] ? decodeURIComponent(parts[1]) : '';
  const [text, setText] = useState(account);
  const open = (e) => {
    e.preventDefault();
    if (text.trim()) navigate(`/contracts/${encodeURIComponent(text.trim())}`);
  };
  return html`<div class="stack">
    <h1 tabindex="-1">Contracts</h1>
    <${Section} title="Open a contract" testid="contract-open">
      <form class="inline" onSubmit=${open} data-testid="contract-open-form">
        <label class="field grow"><span class="label">Contract account</span><input data-testid="contract-open-account" value=${text}
          onInput=${(e) => setText(e.target.value)} placeholder="ag…" spellcheck="false" autocomplete="off" /></label>
        <button type="submit" data-testid="contract-open-button" disabled=${!text.trim()}>Show</button>
      </form>
    </${Section}>
    ${account ? html`<div class="cards two" key=${account}>
      <${Show} account=${account} />
      <${CallForm} account=${account} />
      <div class="span2"><${Events} account=${account} /></div>
    </div>` : html`<${Empty} testid="contract-none">Give a contract's account to see it, call it and follow its events.</${Empty}>`}
    <${Deploy} />
  </div>`;
}
