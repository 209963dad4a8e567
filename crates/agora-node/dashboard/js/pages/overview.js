// Overview: identity, addresses, NAT, peers, bandwidth over time, storage, uptime, version.
import {
  html, useStore, useApi, useState, useEffect, useRef, Section, CopyButton, fmtBytes, fmtRate, fmtDuration, fmtNum, ErrorNote,
} from '../lib.js';
import { info, stats, rates } from '../node.js';

const H = 170;
const PAD_L = 62;
const PAD_B = 18;
const PAD_T = 8;

function niceMax(v) {
  if (v <= 0) return 1024;
  const p = 2 ** Math.ceil(Math.log2(v));
  return p;
}

/** The width of an element in CSS pixels, followed as it changes (so the chart's text is never stretched). */
function useWidth(initial) {
  const ref = useRef(null);
  const [w, setW] = useState(initial);
  useEffect(() => {
    const el = ref.current;
    if (!el) return undefined;
    const ro = new ResizeObserver((entries) => {
      const cw = Math.round(entries[0].contentRect.width);
      if (cw > 0) setW(cw);
    });
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  return [ref, w];
}

export function BandwidthChart({ samples }) {
  const [ref, W] = useWidth(600);
  const r = rates(samples);
  const span = 150; // points on the x axis (5 min at 2 s)
  const max = niceMax(Math.max(1, ...r.map((p) => Math.max(p.in, p.out))));
  const x = (i) => PAD_L + ((W - PAD_L - 4) * (span - r.length + i)) / (span - 1);
  const y = (v) => PAD_T + (H - PAD_T - PAD_B) * (1 - v / max);
  const pts = (key) => r.map((p, i) => `${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ');
  const last = r[r.length - 1];
  return html`<figure class="chart-fig" ref=${ref} data-testid="bandwidth-chart" data-points=${r.length}>
    <svg class="chart" viewBox=${`0 0 ${W} ${H}`} width=${W} height=${H} role="img"
      aria-label=${`Bandwidth over the last ${r.length * 2} seconds: in ${last ? fmtRate(last.in) : 'unknown'}, out ${last ? fmtRate(last.out) : 'unknown'}`}>
      <line class="grid" x1=${PAD_L} x2=${W} y1=${y(max / 2)} y2=${y(max / 2)} />
      <line class="axis" x1=${PAD_L} x2=${W} y1=${y(0)} y2=${y(0)} />
      <line class="axis" x1=${PAD_L} x2=${PAD_L} y1=${PAD_T} y2=${y(0)} />
      <text x=${PAD_L - 6} y=${PAD_T + 10} text-anchor="end">${fmtRate(max)}</text>
      <text x=${PAD_L - 6} y=${y(max / 2) + 4} text-anchor="end">${fmtRate(max / 2)}</text>
      <text x=${PAD_L - 6} y=${y(0)} text-anchor="end">0</text>
      <text x=${W - 2} y=${H - 3} text-anchor="end">now</text>
      <text x=${PAD_L + 2} y=${H - 3}>−5 min</text>
      ${r.length > 1 ? html`<polyline class="line-in" points=${pts('in')} data-testid="chart-in" />` : null}
      ${r.length > 1 ? html`<polyline class="line-out" points=${pts('out')} data-testid="chart-out" />` : null}
    </svg>
    <figcaption class="legend">
      <span><span class="swatch in"></span>in ${last ? fmtRate(last.in) : '–'}</span>
      <span><span class="swatch out"></span>out ${last ? fmtRate(last.out) : '–'}</span>
      ${r.length < 2 ? html`<span>collecting samples (every 2 s)…</span>` : null}
    </figcaption>
  </figure>`;
}

export function Overview() {
  const me = useStore(info);
  const st = useStore(stats);
  const status = useApi('/v1/status', { events: ['peer_connected', 'peer_disconnected', 'nat_status_changed'], throttle: 500 });
  const s = status.data || {};
  const l = st.latest || {};
  const peers = l.peers ?? s.connected_peers;
  const storage = l.storage ?? s.storage_bytes;
  const uptime = l.uptime ?? s.uptime_secs;
  const quota = l.quota ?? s.storage_quota;
  return html`<div class="stack">
    <h1 tabindex="-1">Overview</h1>
    <div class="stats" data-testid="overview-stats">
      <div class="stat"><div class="v" data-testid="overview-peers">${fmtNum(peers)}</div><div class="k">peers connected</div></div>
      <div class="stat"><div class="v" data-testid="overview-nat">${me ? me.nat_status : '–'}</div><div class="k">NAT status</div></div>
      <div class="stat"><div class="v" data-testid="overview-in">${fmtBytes(l.bytesIn ?? s.bytes_in)}</div><div class="k">received</div></div>
      <div class="stat"><div class="v" data-testid="overview-out">${fmtBytes(l.bytesOut ?? s.bytes_out)}</div><div class="k">sent</div></div>
      <div class="stat"><div class="v" data-testid="overview-storage">${fmtBytes(storage)}</div><div class="k">storage used${quota ? ` of ${fmtBytes(quota)}` : ''}</div></div>
      <div class="stat"><div class="v" data-testid="overview-uptime">${fmtDuration(uptime)}</div><div class="k">uptime</div></div>
    </div>
    <${Section} title="Bandwidth" testid="overview-bandwidth">
      <${BandwidthChart} samples=${st.samples} />
    </${Section}>
    <div class="cards two">
      <${Section} title="This node" testid="overview-node">
        ${me ? html`<dl class="kv">
          <dt>Peer id</dt><dd><code data-testid="overview-peer-id">${me.peer_id}</code> <${CopyButton} text=${me.peer_id} what="Peer id" testid="copy-peer-id" /></dd>
          <dt>Version</dt><dd data-testid="overview-version">${me.agent_version}</dd>
          <dt>Protocol</dt><dd>${me.protocol_version}</dd>
          <dt>DHT mode</dt><dd>${me.kad_mode}</dd>
          <dt>Routing table</dt><dd>${fmtNum(s.routing_table_size)} peers</dd>
          <dt>Data dir</dt><dd><code>${s.data_dir || '–'}</code></dd>
        </dl>` : html`<p class="muted">Loading…</p>`}
        <${ErrorNote} error=${status.error} />
      </${Section}>
      <${Section} title="Addresses" testid="overview-addresses">
        ${me && me.addrs.length ? html`<ul class="list">
          ${me.addrs.map((a) => html`<li key=${a}><div class="item"><code class="id" data-testid="overview-addr">${a}</code><${CopyButton} text=${a} what="Address" testid="copy-addr" /></div></li>`)}
        </ul>` : html`<p class="muted">Not listening yet.</p>`}
        ${me && me.external_addrs.length ? html`<h3>External</h3><ul class="list">
          ${me.external_addrs.map((a) => html`<li key=${a}><div class="item"><code class="id">${a}</code></div></li>`)}</ul>` : null}
      </${Section}>
    </div>
  </div>`;
}
