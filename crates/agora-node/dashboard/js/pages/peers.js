// Peers: connected peers with address, direction, latency, agent, protocols; connect and
// disconnect.
import {
  html, useState, useApi, Section, ErrorNote, Id, post, act, useSubmit, fmtDuration, Empty, Loading,
} from '../lib.js';

const PEER_EVENTS = ['peer_connected', 'peer_disconnected', 'peer_identified'];

function Protocols({ list, id }) {
  if (!list || !list.length) return html`<span class="muted">–</span>`;
  return html`<details data-testid="peer-protocols">
    <summary data-testid=${`peer-protocols-toggle-${id}`}>${list.length} protocols</summary>
    <ul class="list">${list.map((p) => html`<li key=${p}><code>${p}</code></li>`)}</ul>
  </details>`;
}

export function Peers() {
  // Latency changes without an event: refresh every 10 s while the page is open.
  const peers = useApi('/v1/peers', { events: PEER_EVENTS, every: 10000 });
  const [target, setTarget] = useState('');
  const [busy, onConnect] = useSubmit(async () => {
    const t = target.trim();
    if (!t) return;
    const r = await act(() => post('/v1/connect', { target: t }), (o) => `Connected to ${o.peer_id.slice(0, 16)}… (${o.via})`);
    if (r) {
      setTarget('');
      peers.reload();
    }
  });
  const disconnect = async (peer) => {
    const r = await act(() => post('/v1/disconnect', { peer }), 'Disconnected');
    if (r) peers.reload();
  };
  const list = peers.data || [];
  return html`<div class="stack">
    <h1 tabindex="-1">Peers</h1>
    <${Section} title="Connect" testid="peers-connect">
      <form class="inline" onSubmit=${onConnect} data-testid="connect-form">
        <label class="field grow"><span class="label">Multiaddr or peer id</span>
          <input data-testid="connect-target" value=${target} onInput=${(e) => setTarget(e.target.value)}
            placeholder="/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW… or 12D3KooW…" autocomplete="off" spellcheck="false" required />
        </label>
        <button type="submit" data-testid="connect-button" disabled=${busy}>${busy ? 'Connecting…' : 'Connect'}</button>
      </form>
      <p class="hint">A bare peer id is looked up in the DHT (up to 45 s).</p>
    </${Section}>
    <${Section} title=${`Connected peers (${list.length})`} testid="peers-list">
      <${ErrorNote} error=${peers.error} />
      ${peers.data === undefined ? html`<${Loading} />` : list.length === 0 ? html`<${Empty} testid="peers-empty">No peers connected.</${Empty}>` : html`
      <div class="table-wrap"><table>
        <thead><tr><th>Peer</th><th>Address</th><th>Security</th><th>Direction</th><th class="num">Latency</th><th class="hide-narrow">Agent</th><th class="hide-narrow">Protocols</th><th class="num hide-narrow">Connected</th><th></th></tr></thead>
        <tbody>
          ${list.map((p) => html`<tr key=${p.peer_id} data-testid="peer-row" data-peer=${p.peer_id}>
            <td><${Id} value=${p.peer_id} testid="peer-id" /></td>
            <td class="wrap">${p.addrs.map((a) => html`<div key=${a}><code class="id" data-testid="peer-addr">${a}</code></div>`)}</td>
            <td data-testid="peer-security">${(p.security || []).map((s, i) => html`<div key=${i}>${s}</div>`)}</td>
            <td data-testid="peer-direction">${p.direction}</td>
            <td class="num" data-testid="peer-latency">${p.latency_ms == null ? '–' : `${p.latency_ms.toFixed(1)} ms`}</td>
            <td class="wrap hide-narrow" data-testid="peer-agent">${p.agent_version || html`<span class="muted">–</span>`}</td>
            <td class="hide-narrow"><${Protocols} list=${p.protocols} id=${p.peer_id} /></td>
            <td class="num hide-narrow">${fmtDuration(p.connected_secs)}</td>
            <td><button type="button" class="small danger" data-testid="peer-disconnect" data-peer=${p.peer_id}
              aria-label=${`Disconnect ${p.peer_id}`} onClick=${() => disconnect(p.peer_id)}>Disconnect</button></td>
          </tr>`)}
        </tbody>
      </table></div>`}
    </${Section}>
  </div>`;
}
