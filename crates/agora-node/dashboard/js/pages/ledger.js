// Ledger: balances in every currency, a pay form with a confirmation step, history, recent
// blocks with their finality time, committee and epoch. Live through `ledger.*` events.
import {
  html, useState, useEffect, useRef, useApi, useEvents, Section, ErrorNote, Id, CopyButton, post, act,
  q, useSubmit, fmtNum, fmtTime, Empty, Loading,
} from '../lib.js';

export const LEDGER_EVENTS = ['ledger.*'];
const RECENT_BLOCKS = 12;

/** Whether a block event may have changed balances (true when the event does not say). */
export function blockHasTxs(d) {
  if (!d || typeof d !== 'object') return true;
  if (Array.isArray(d.txs)) return d.txs.length > 0;
  if (typeof d.txs === 'number') return d.txs > 0;
  if (typeof d.tx_count === 'number') return d.tx_count > 0;
  if (typeof d.transactions === 'number') return d.transactions > 0;
  return true;
}

function txCount(b) {
  if (Array.isArray(b.txs)) return b.txs.length;
  return b.txs ?? b.tx_count ?? b.transactions ?? 0;
}

/** AGR base units: an integer; anything else (`12.5/USD/ag…`) is passed on as text. */
export function amountValue(text) {
  const t = text.trim().replace(/[_,\s]/g, '');
  if (/^\d+$/.test(t)) return Number(t) <= Number.MAX_SAFE_INTEGER ? Number(t) : t;
  return text.trim();
}

export function useLedgerEvents(fn) {
  useEvents(LEDGER_EVENTS, fn);
}

function Balances({ bal }) {
  const b = bal.data;
  return html`<${Section} title="Balances" testid="ledger-balances">
    <${ErrorNote} error=${bal.error} />
    ${!b ? (bal.error ? null : html`<${Loading} />`) : html`
    <div class="table-wrap"><table>
      <thead><tr><th>Currency</th><th>Issuer</th><th class="num">Balance</th><th class="num hide-narrow">Limit</th></tr></thead>
      <tbody>
        <tr data-testid="balance-row" data-currency="AGR"><td><strong>AGR</strong></td><td class="muted">native</td>
          <td class="num" data-testid="balance-agr" data-value=${b.balance}>${fmtNum(b.balance)}</td><td class="num hide-narrow">–</td></tr>
        ${b.issued.map((l) => html`<tr key=${`${l.currency}/${l.issuer}`} data-testid="balance-row" data-currency=${`${l.currency}/${l.issuer}`}>
          <td><strong>${l.currency}</strong>${l.obligation ? html` <span class="badge warn" title="what this account owes as the issuer">owed</span>` : null}</td>
          <td><${Id} value=${l.issuer} /></td><td class="num" data-testid="balance-issued">${l.balance}</td>
          <td class="num hide-narrow">${l.limit ?? '–'}${l.authorized === false ? html` <span class="badge bad">unauthorised</span>` : null}</td></tr>`)}
      </tbody>
    </table></div>
    <p class="hint">Reserve held back by lines and offers: <span data-testid="balance-reserve">${fmtNum(b.reserve)}</span> · next sequence ${fmtNum(b.seq)} · at height ${fmtNum(b.height)}</p>`}
  </${Section}>`;
}

function PayForm({ status, onPaid }) {
  const [to, setTo] = useState('');
  const [amount, setAmount] = useState('');
  const [memo, setMemo] = useState('');
  const [fee, setFee] = useState('');
  const [review, setReview] = useState(null);
  const [result, setResult] = useState(null);
  const confirmRef = useRef(null);
  const minFee = status && status.min_fee;
  const onReview = (e) => {
    e.preventDefault();
    setResult(null);
    setReview({ to: to.trim(), amount: amountValue(amount), memo: memo.trim() || undefined, fee: fee.trim() ? Number(fee) : undefined });
  };
  useEffect(() => {
    if (review && confirmRef.current) confirmRef.current.focus();
  }, [review]);
  const [busy, onConfirm] = useSubmit(async () => {
    const body = { to: review.to, amount: review.amount };
    if (review.memo) body.memo = review.memo;
    if (review.fee !== undefined) body.fee = review.fee;
    const r = await act(() => post('/v1/ledger/pay', body), (o) => `Paid: final at height ${o.height} in ${o.finality_ms} ms`);
    setReview(null);
    if (r) {
      setResult(r);
      setAmount('');
      setMemo('');
      onPaid();
    }
  });
  const native = review && typeof review.amount === 'number';
  return html`<${Section} title="Pay" testid="ledger-pay">
    <form class="stacked" onSubmit=${onReview} data-testid="pay-form">
      <label class="field"><span class="label">To (account)</span><input data-testid="pay-to" value=${to} onInput=${(e) => setTo(e.target.value)}
        placeholder="ag…" spellcheck="false" autocomplete="off" required disabled=${!!review} /></label>
      <div class="row">
        <label class="field grow"><span class="label">Amount: AGR base units, or AMOUNT/CUR/ISSUER</span><input data-testid="pay-amount" value=${amount}
          onInput=${(e) => setAmount(e.target.value)} inputmode="decimal" required disabled=${!!review} /></label>
        <label class="field"><span class="label">Fee (optional)</span><input data-testid="pay-fee" value=${fee} onInput=${(e) => setFee(e.target.value)}
          inputmode="numeric" pattern="[0-9]*" placeholder=${minFee ? `${minFee}` : ''} disabled=${!!review} size="8" /></label>
      </div>
      <label class="field"><span class="label">Memo (AGR transfers only)</span><input data-testid="pay-memo" value=${memo} onInput=${(e) => setMemo(e.target.value)} disabled=${!!review} /></label>
      ${!review ? html`<div><button type="submit" data-testid="pay-review" disabled=${!to.trim() || !amount.trim()}>Review payment</button></div>` : null}
    </form>
    ${review ? html`<div class="confirm" role="group" aria-labelledby="confirm-title" data-testid="pay-confirmation">
      <p id="confirm-title"><strong>Confirm this payment</strong> — once final it cannot be reverted.</p>
      <p class="amount" data-testid="pay-confirm-amount">${native ? `${fmtNum(review.amount)} AGR base units` : review.amount}</p>
      <p>to <code class="id" data-testid="pay-confirm-to">${review.to}</code></p>
      ${review.memo ? html`<p>memo “${review.memo}”</p>` : null}
      <p class="hint">fee ${review.fee ?? (minFee ? `${minFee} (the minimum)` : 'the minimum')}, burned</p>
      <div class="row">
        <button type="button" ref=${confirmRef} data-testid="pay-confirm" disabled=${busy} onClick=${onConfirm}>${busy ? 'Waiting for finality…' : 'Confirm and pay'}</button>
        <button type="button" class="ghost" data-testid="pay-cancel" disabled=${busy} onClick=${() => setReview(null)}>Cancel</button>
      </div>
    </div>` : null}
    ${result ? html`<div class="note ok" role="status" data-testid="pay-result">
      Final at height <strong>${fmtNum(result.height)}</strong> in <strong data-testid="pay-finality">${result.finality_ms} ms</strong>;
      transaction <${Id} value=${result.hash} testid="pay-hash" /></div>` : null}
  </${Section}>`;
}

function History({ hist, me }) {
  const list = hist.data || [];
  const sign = (t) => (t.to === me && t.from !== me ? 'plus' : t.from === me && t.to !== me ? 'minus' : '');
  return html`<${Section} title="History" testid="ledger-history">
    <${ErrorNote} error=${hist.error} />
    ${hist.data === undefined ? (hist.error ? null : html`<${Loading} />`) : list.length === 0 ? html`<${Empty} testid="history-empty">No transactions yet.</${Empty}>` : html`
    <div class="table-wrap"><table>
      <thead><tr><th class="num">Height</th><th>Time</th><th>Kind</th><th>From → to</th><th class="num">Amount</th><th class="num hide-narrow">Fee</th><th class="hide-narrow">Tx</th></tr></thead>
      <tbody>${list.map((t) => html`<tr key=${t.hash} data-testid="history-row" data-hash=${t.hash}>
        <td class="num">${fmtNum(t.height)}</td><td>${fmtTime(t.block_time_ms)}</td>
        <td>${t.kind}${t.outcome && t.outcome.result === 'failed' ? html` <span class="badge bad" title=${t.outcome.error}>failed</span>` : null}${t.memo ? html`<div class="hint">“${t.memo}”</div>` : null}</td>
        <td>${t.from ? html`<${Id} value=${t.from} head=${6} tail=${4} />` : '–'}${t.to ? html` → <${Id} value=${t.to} head=${6} tail=${4} />` : null}${t.change ? html`<div class="hint">${t.change}</div>` : null}</td>
        <td class=${`num ${sign(t)}`} data-testid="history-amount">${t.amount !== undefined ? `${sign(t) === 'plus' ? '+' : sign(t) === 'minus' ? '−' : ''}${fmtNum(t.amount)}` : t.outcome && t.outcome.delivered ? t.outcome.delivered : '–'}</td>
        <td class="num hide-narrow">${fmtNum(t.fee)}</td><td class="hide-narrow"><${Id} value=${t.hash} head=${6} tail=${4} /></td>
      </tr>`)}</tbody>
    </table></div>`}
  </${Section}>`;
}

function Blocks() {
  // The node remembers recent blocks with the finality time it saw; new ones arrive as events.
  const recent = useApi(`/v1/ledger/blocks${q({ limit: RECENT_BLOCKS })}`);
  const [fresh, setFresh] = useState([]);
  useLedgerEvents((d, name) => {
    if (name !== 'ledger.block' || !d || d.height === undefined) return;
    setFresh((list) => [d, ...list.filter((b) => b.height !== d.height)].slice(0, RECENT_BLOCKS));
  });
  const byHeight = new Map();
  for (const b of [...(recent.data || []), ...fresh]) byHeight.set(b.height, b);
  const blocks = [...byHeight.values()].sort((x, y) => y.height - x.height).slice(0, RECENT_BLOCKS);
  return html`<${Section} title="Recent blocks" testid="ledger-blocks">
    <${ErrorNote} error=${recent.error} />
    ${blocks.length === 0 ? html`<${Empty} testid="blocks-empty">Waiting for blocks…</${Empty}>` : html`
    <div class="table-wrap"><table>
      <thead><tr><th class="num">Height</th><th>Time</th><th class="num">Txs</th><th class="num">Finality</th><th class="hide-narrow">Digest</th></tr></thead>
      <tbody>${blocks.map((b) => html`<tr key=${b.height} data-testid="block-row" data-height=${b.height} data-txs=${txCount(b)}>
          <td class="num">${fmtNum(b.height)}</td><td>${fmtTime(b.timestamp_ms)}</td><td class="num">${txCount(b)}</td>
          <td class="num" data-testid="block-finality" title="from the block's timestamp until this node applied it">${b.finality_ms === null || b.finality_ms === undefined ? '–' : `${fmtNum(b.finality_ms)} ms`}</td>
          <td class="hide-narrow"><${Id} value=${b.digest} head=${8} tail=${4} /></td></tr>`)}</tbody>
    </table></div>`}
  </${Section}>`;
}

function Committee({ status }) {
  const s = status.data;
  return html`<${Section} title="Chain" testid="ledger-status">
    <${ErrorNote} error=${status.error} />
    ${!s ? (status.error ? null : html`<${Loading} />`) : html`<dl class="kv">
      <dt>Chain</dt><dd>${s.chain}</dd>
      <dt>Height</dt><dd data-testid="ledger-height">${fmtNum(s.height)}</dd>
      <dt>Epoch</dt><dd data-testid="ledger-epoch">${fmtNum(s.epoch)} <span class="hint">(${fmtNum(s.epoch_length)} blocks each)</span></dd>
      <dt>This node</dt><dd>${s.validator ? 'validator' : s.runs_consensus ? 'validator (waiting to be added)' : 'follower'}</dd>
      <dt>Rate</dt><dd>${s.tx_per_sec.toFixed(2)} tx/s · ${s.blocks_per_sec.toFixed(2)} blocks/s</dd>
      <dt>Supply</dt><dd>${fmtNum(s.supply)} <span class="hint">burned ${fmtNum(s.burned)}</span></dd>
      <dt>Min fee</dt><dd>${fmtNum(s.min_fee)}</dd>
    </dl>
    <h3>Committee (${s.committee.length})</h3>
    <ul class="list">${s.committee.map((a) => html`<li key=${a} data-testid="committee-member"><div class="item"><code class="id">${a}</code></div></li>`)}</ul>
    ${s.next_committee && s.next_committee.join() !== s.committee.join() ? html`<h3>Next epoch's committee</h3>
      <ul class="list">${s.next_committee.map((a) => html`<li key=${a} data-testid="next-committee-member"><div class="item"><code class="id">${a}</code></div></li>`)}</ul>` : null}`}
  </${Section}>`;
}

export function Ledger() {
  const account = useApi('/v1/ledger/account');
  const status = useApi('/v1/ledger/status', { events: LEDGER_EVENTS, throttle: 1000 });
  const opts = { events: LEDGER_EVENTS, throttle: 300, when: blockHasTxs };
  const bal = useApi('/v1/ledger/balance', opts);
  const hist = useApi(`/v1/ledger/history${q({ limit: 50 })}`, opts);
  const refresh = () => {
    bal.reload();
    hist.reload();
  };
  const acc = account.data && account.data.account;
  return html`<div class="stack">
    <h1 tabindex="-1">Ledger</h1>
    ${account.error ? html`<${ErrorNote} error=${account.error} testid="ledger-unavailable" />` : null}
    ${acc ? html`<p class="row">Account <code class="id" data-testid="ledger-account">${acc}</code> <${CopyButton} text=${acc} what="Account" testid="copy-account" /></p>` : null}
    <div class="cards two">
      <${Balances} bal=${bal} />
      <${PayForm} status=${status.data} onPaid=${refresh} />
    </div>
    <${History} hist=${hist} me=${acc} />
    <div class="cards two">
      <${Blocks} />
      <${Committee} status=${status} />
    </div>
  </div>`;
}

