// Market: trust lines, own offers (create and cancel), an order book, issuer settings.
import {
  html, useState, useApi, Section, ErrorNote, Id, api, post, act, q, useSubmit, fmtNum, Empty, Loading,
} from '../lib.js';
import { LEDGER_EVENTS, blockHasTxs } from './ledger.js';

const opts = { events: LEDGER_EVENTS, throttle: 400, when: blockHasTxs };

function outcomeText(o) {
  const x = o && o.outcome;
  if (!x) return 'Done';
  switch (x.result) {
    case 'trust_set': return x.removed ? `Trust line ${x.currency} removed` : `Trust line ${x.currency} set to ${x.limit}`;
    case 'offer_placed': return `Offer ${x.seq} placed: paid ${x.paid}, got ${x.got}${x.resting ? `, ${x.resting} resting` : ''}`;
    case 'offer_cancelled': return `Offer ${x.seq} cancelled`;
    case 'issuer_set': return 'Issuer settings saved';
    case 'authorized': return `Authorised ${x.holder.slice(0, 10)}… for ${x.currency}`;
    case 'paid': return `Paid: delivered ${x.delivered}, spent ${x.spent}`;
    default: return x.result;
  }
}

function Lines({ lines }) {
  const [issuer, setIssuer] = useState('');
  const [currency, setCurrency] = useState('');
  const [limit, setLimit] = useState('');
  const [busy, onSubmit] = useSubmit(async () => {
    const r = await act(() => post('/v1/ledger/trust', { issuer: issuer.trim(), currency: currency.trim(), limit: limit.trim() }), outcomeText);
    if (r) lines.reload();
  });
  const list = lines.data || [];
  return html`<${Section} title="Trust lines" testid="market-lines">
    <${ErrorNote} error=${lines.error} />
    ${lines.data === undefined ? (lines.error ? null : html`<${Loading} />`) : list.length === 0 ? html`<${Empty} testid="lines-empty">No trust lines.</${Empty}>` : html`
    <div class="table-wrap"><table>
      <thead><tr><th>Currency</th><th>Issuer / holder</th><th class="num">Balance</th><th class="num">Limit</th><th></th></tr></thead>
      <tbody>${list.map((l) => html`<tr key=${`${l.currency}/${l.issuer}/${l.holder || ''}`} data-testid="line-row" data-currency=${l.currency}>
        <td><strong>${l.currency}</strong></td>
        <td>${l.holder ? html`holder <${Id} value=${l.holder} />` : html`<${Id} value=${l.issuer} />`}</td>
        <td class="num">${l.balance}</td><td class="num">${l.limit}</td>
        <td>${l.authorized ? null : html`<span class="badge bad">unauthorised</span>`}</td></tr>`)}</tbody>
    </table></div>`}
    <h3>Trust an issuer</h3>
    <form class="inline" onSubmit=${onSubmit} data-testid="trust-form">
      <label class="field grow"><span class="label">Issuer account</span><input data-testid="trust-issuer" value=${issuer} onInput=${(e) => setIssuer(e.target.value)} required spellcheck="false" placeholder="ag…" /></label>
      <label class="field"><span class="label">Currency</span><input data-testid="trust-currency" value=${currency} onInput=${(e) => setCurrency(e.target.value.toUpperCase())} required pattern="[A-Z0-9]{3,12}" size="8" /></label>
      <label class="field"><span class="label">Limit (0 removes)</span><input data-testid="trust-limit" value=${limit} onInput=${(e) => setLimit(e.target.value)} required inputmode="decimal" size="10" /></label>
      <button type="submit" data-testid="trust-submit" disabled=${busy}>${busy ? 'Waiting…' : 'Set line'}</button>
    </form>
  </${Section}>`;
}

function Offers({ offers, onChange }) {
  const [sell, setSell] = useState('');
  const [buy, setBuy] = useState('');
  const [flag, setFlag] = useState('');
  const [busy, onSubmit] = useSubmit(async () => {
    const body = { sell: sell.trim(), buy: buy.trim() };
    if (flag) body[flag] = true;
    const r = await act(() => post('/v1/ledger/offers', body), outcomeText);
    if (r) {
      setSell('');
      setBuy('');
      onChange();
    }
  });
  const cancel = async (seq) => {
    if (await act(() => api('DELETE', `/v1/ledger/offers/${seq}`), outcomeText)) onChange();
  };
  const list = (offers.data && offers.data.offers) || [];
  return html`<${Section} title="My offers" testid="market-offers">
    <${ErrorNote} error=${offers.error} />
    ${offers.data === undefined ? (offers.error ? null : html`<${Loading} />`) : list.length === 0 ? html`<${Empty} testid="offers-empty">No resting offers.</${Empty}>` : html`
    <div class="table-wrap"><table>
      <thead><tr><th class="num">Id</th><th>Sells</th><th>For</th><th class="num">Left</th><th class="num">Rate</th><th></th></tr></thead>
      <tbody>${list.map((o) => html`<tr key=${o.seq} data-testid="offer-row" data-seq=${o.seq}>
        <td class="num">${o.seq}</td><td class="wrap">${o.sell}</td><td class="wrap">${o.buy}</td><td class="num">${o.remaining}</td><td class="num">${o.rate}</td>
        <td><button type="button" class="small danger" data-testid="offer-cancel" data-seq=${o.seq} onClick=${() => cancel(o.seq)}>Cancel</button></td></tr>`)}</tbody>
    </table></div>`}
    <h3>Place an offer</h3>
    <form class="stacked" onSubmit=${onSubmit} data-testid="offer-form">
      <div class="row">
        <label class="field grow"><span class="label">Sell (AMOUNT or AMOUNT/CUR/ISSUER)</span><input data-testid="offer-sell" value=${sell} onInput=${(e) => setSell(e.target.value)} required spellcheck="false" /></label>
        <label class="field grow"><span class="label">Buy</span><input data-testid="offer-buy" value=${buy} onInput=${(e) => setBuy(e.target.value)} required spellcheck="false" /></label>
      </div>
      <div class="row">
        <label class="field"><span class="label">Kind</span><select data-testid="offer-flag" value=${flag} onChange=${(e) => setFlag(e.target.value)}>
          <option value="">rest the remainder</option><option value="ioc">immediate or cancel</option><option value="fok">fill or kill</option>
          <option value="passive">passive</option><option value="sell_all">sell all</option></select></label>
        <button type="submit" data-testid="offer-submit" disabled=${busy}>${busy ? 'Waiting for finality…' : 'Place offer'}</button>
      </div>
    </form>
  </${Section}>`;
}

function Book() {
  const [base, setBase] = useState('');
  const [quote, setQuote] = useState('AGR');
  const [shown, setShown] = useState(null);
  const path = shown ? `/v1/ledger/book${q({ base: shown.base, quote: shown.quote, limit: 20 })}` : null;
  const book = useApi(path, opts);
  const onShow = (e) => {
    e.preventDefault();
    setShown({ base: base.trim(), quote: quote.trim() });
  };
  const b = book.data;
  const side = (rows, cls, testid) => html`<div><h3>${cls === 'ask' ? 'Asks (selling base)' : 'Bids (buying base)'}</h3>
    ${rows.length === 0 ? html`<${Empty}>None.</${Empty}>` : html`<div class="table-wrap"><table data-testid=${testid}>
      <thead><tr><th class="num">Rate</th><th class="num">Size</th><th>Owner</th></tr></thead>
      <tbody>${rows.map((o) => html`<tr key=${`${o.owner}-${o.seq}`} class=${cls} data-testid=${`${testid}-row`}><td class="num rate">${o.rate}</td><td class="num">${o.size}</td><td><${Id} value=${o.owner} head=${6} tail=${4} /></td></tr>`)}</tbody>
    </table></div>`}</div>`;
  return html`<${Section} title="Order book" testid="market-book">
    <form class="inline" onSubmit=${onShow} data-testid="book-form">
      <label class="field grow"><span class="label">Base (AGR or CUR/ISSUER)</span><input data-testid="book-base" value=${base} onInput=${(e) => setBase(e.target.value)} required spellcheck="false" /></label>
      <label class="field grow"><span class="label">Quote</span><input data-testid="book-quote" value=${quote} onInput=${(e) => setQuote(e.target.value)} required spellcheck="false" /></label>
      <button type="submit" data-testid="book-show">Show</button>
    </form>
    <${ErrorNote} error=${book.error} />
    ${b ? html`<p class="hint">${b.base} / ${b.quote}, rates in ${b.quote} per ${b.base}, at height ${fmtNum(b.height)}</p>
      <div class="book">${side(b.asks, 'ask', 'book-asks')}${side(b.bids, 'bid', 'book-bids')}</div>` : null}
  </${Section}>`;
}

function Issuer() {
  const [auth, setAuth] = useState('');
  const [feePct, setFeePct] = useState('');
  const [holder, setHolder] = useState('');
  const [cur, setCur] = useState('');
  const [busy, onSubmit] = useSubmit(async () => {
    const body = {};
    if (auth) body.require_auth = auth === 'true';
    if (feePct.trim()) body.transfer_fee_ppm = Math.round(Number(feePct) * 10000);
    await act(() => post('/v1/ledger/issuer', body), outcomeText);
  });
  const [busyA, onAuthorize] = useSubmit(async () => {
    await act(() => post('/v1/ledger/authorize', { holder: holder.trim(), currency: cur.trim() }), outcomeText);
  });
  return html`<${Section} title="As an issuer" testid="market-issuer">
    <form class="inline" onSubmit=${onSubmit} data-testid="issuer-form">
      <label class="field"><span class="label">Require authorisation</span><select data-testid="issuer-auth" value=${auth} onChange=${(e) => setAuth(e.target.value)}>
        <option value="">unchanged</option><option value="true">yes</option><option value="false">no</option></select></label>
      <label class="field"><span class="label">Transfer fee %</span><input data-testid="issuer-fee" value=${feePct} onInput=${(e) => setFeePct(e.target.value)} inputmode="decimal" size="6" /></label>
      <button type="submit" data-testid="issuer-submit" disabled=${busy || (!auth && !feePct.trim())}>Save</button>
    </form>
    <form class="inline" onSubmit=${onAuthorize} data-testid="authorize-form">
      <label class="field grow"><span class="label">Authorise holder</span><input data-testid="authorize-holder" value=${holder} onInput=${(e) => setHolder(e.target.value)} required spellcheck="false" /></label>
      <label class="field"><span class="label">Currency</span><input data-testid="authorize-currency" value=${cur} onInput=${(e) => setCur(e.target.value.toUpperCase())} required size="8" /></label>
      <button type="submit" data-testid="authorize-submit" disabled=${busyA}>Authorise</button>
    </form>
  </${Section}>`;
}

export function Market() {
  const lines = useApi('/v1/ledger/lines', opts);
  const offers = useApi('/v1/ledger/offers', opts);
  const changed = () => {
    lines.reload();
    offers.reload();
  };
  return html`<div class="stack">
    <h1 tabindex="-1">Market</h1>
    <div class="cards two">
      <${Lines} lines=${lines} />
      <${Offers} offers=${offers} onChange=${changed} />
    </div>
    <${Book} />
    <${Issuer} />
  </div>`;
}
