// Node-wide state kept for the whole visit: identity, and the `stats` samples behind the
// bandwidth chart (so moving between pages does not lose the history).
import { createStore, get, subscribe } from './lib.js';

export const info = createStore(null); // GET /v1/id
export const stats = createStore({ samples: [], latest: null, source: 'none' });

const MAX_SAMPLES = 150; // 5 minutes at one sample every 2 s

/** One `stats` event (or a `/v1/status` answer) in the dashboard's terms. */
export function normStats(d) {
  const n = (...vals) => vals.find((v) => typeof v === 'number');
  return {
    t: n(d.at_ms, d.time_ms, d.ts_ms, d.timestamp_ms) ?? Date.now(),
    bytesIn: n(d.bytes_in, d.in_bytes, d.bandwidth?.bytes_in, d.bandwidth?.in) ?? 0,
    bytesOut: n(d.bytes_out, d.out_bytes, d.bandwidth?.bytes_out, d.bandwidth?.out) ?? 0,
    rateIn: n(d.rate_in, d.bytes_in_per_sec, d.in_per_sec),
    rateOut: n(d.rate_out, d.bytes_out_per_sec, d.out_per_sec),
    peers: n(d.connected_peers, d.peers),
    storage: n(d.storage_bytes, d.storage_used, d.storage),
    quota: n(d.storage_quota, d.quota_bytes, d.quota),
    uptime: n(d.uptime_secs, d.uptime),
    raw: d,
  };
}

function push(sample, source) {
  stats.set((s) => {
    const samples = [...s.samples, sample];
    if (samples.length > MAX_SAMPLES) samples.splice(0, samples.length - MAX_SAMPLES);
    return { samples, latest: sample, source };
  });
}

let lastEvent = 0;
let pollTimer = null;

export function startNode() {
  get('/v1/id').then((d) => info.set(d), () => {});
  subscribe(['listening', 'listener_closed', 'nat_status_changed', 'external_addr_confirmed', '*'], () => {
    get('/v1/id').then((d) => info.set(d), () => {});
  });
  subscribe('stats', (d) => {
    if (!d || typeof d !== 'object') return;
    lastEvent = Date.now();
    push(normStats(d), 'events');
  });
  // The node sends a first `stats` event as soon as the stream opens; polling only if it sends
  // none at all (an older node).
  pollTimer = setInterval(() => {
    if (Date.now() - lastEvent < 6000 || document.hidden) return;
    get('/v1/status').then((d) => push({ ...normStats(d), t: Date.now() }, 'status'), () => {});
  }, 2000);
}

export function stopNode() {
  clearInterval(pollTimer);
}

/** Bandwidth rates (bytes/s) between consecutive samples. */
export function rates(samples) {
  const out = [];
  for (let i = 1; i < samples.length; i += 1) {
    const a = samples[i - 1];
    const b = samples[i];
    const dt = (b.t - a.t) / 1000;
    if (dt <= 0) continue;
    out.push({
      t: b.t,
      in: b.rateIn ?? Math.max(0, (b.bytesIn - a.bytesIn) / dt),
      out: b.rateOut ?? Math.max(0, (b.bytesOut - a.bytesOut) / dt),
    });
  }
  return out;
}
