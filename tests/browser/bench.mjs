// The dashboard's benchmark: prints one JSON object.
//
//   cd tests/browser && npm ci && node bench.mjs
//
// - cold load of each page to usable: a fresh browser context (no cache) with a session, from
//   navigation start until the page's first API answers are drawn (ms, median of RUNS);
// - an SSE event to the DOM: B sends A a direct message; when A's page gets the
//   `chat.message_received` event, and when the message is on screen (ms, median);
// - what an idle open dashboard costs the node: CPU of the node's process over IDLE_SECS
//   (from /proc/PID/stat) with no page open, then with the Overview open (its chart is fed by
//   a `stats` event every 2 s), on a node without a ledger; and the same on a ledger node with
//   the Ledger page open (a `ledger.block` event per block, ~2.5 a second);
// - the Files page with 10,000 held files: first page drawn, next page, a filter.
//
// Targets (issue 19): cold load ≤ 300 ms, event to DOM ≤ 500 ms, idle dashboard ≤ 1 % CPU,
// 10,000-entry files table ≤ 200 ms. Uses the debug binary like the tests ($AGORA_BIN for
// another); a release build is faster on the node's side.
import { mkdir, writeFile, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import {
  AGORA, startDevnet, startNode, launchBrowser, loggedIn, apiClient, waitFor, usableAt, sleep, onSignal,
} from './harness.mjs';

const RUNS = Number(process.env.BENCH_RUNS || 5);
const IDLE_SECS = Number(process.env.BENCH_IDLE_SECS || 30);
const FILES = Number(process.env.BENCH_FILES || 10000);
const PAGES = { overview: '/', peers: '/peers', files: '/files', chat: '/chat', ledger: '/ledger', market: '/market', contracts: '/contracts', grid: '/grid', docs: '/docs' };
const CLK_TCK = 100; // Linux USER_HZ

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? Math.round(s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : null;
};

async function cpuTicks(pid) {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime + stime (fields 14 and 15)
}

/** The node's CPU use over `secs` seconds, in percent of one core. */
async function cpuOver(pid, secs) {
  const t0 = await cpuTicks(pid);
  const w0 = Date.now();
  await sleep(secs * 1000);
  const t1 = await cpuTicks(pid);
  return Number(((100 * (t1 - t0)) / CLK_TCK / ((Date.now() - w0) / 1000)).toFixed(2));
}

async function coldLoads(browser, session) {
  const state = await session.context.storageState();
  const out = {};
  for (const [name, path] of Object.entries(PAGES)) {
    // One untimed load first: the node gzips each asset the first time it is asked for.
    const warm = await browser.newContext({ storageState: state });
    const wp = await warm.newPage();
    await wp.goto(session.origin + path, { waitUntil: 'commit' });
    await usableAt(wp);
    await warm.close();
    const runs = [];
    for (let i = 0; i < RUNS; i += 1) {
      const ctx = await browser.newContext({ storageState: state, viewport: { width: 1280, height: 900 } });
      const page = await ctx.newPage();
      await page.goto(session.origin + path, { waitUntil: 'commit' });
      runs.push(await usableAt(page));
      await ctx.close();
    }
    out[name] = { median_ms: median(runs), runs_ms: runs.map(Math.round) };
  }
  return out;
}

async function eventToDom(A, nodeA, nodeB) {
  const apiB = apiClient(nodeB);
  await A.page.goto(`${A.origin}/chat/dm/${nodeB.peer_id}`);
  await A.page.waitForSelector('[data-testid="chat-conversation"] [data-testid="message-input"]');
  // A second stream in the page, only to time the event's arrival.
  await A.page.evaluate(() => {
    window.benchEvents = [];
    const es = new EventSource('/v1/events');
    es.addEventListener('chat.message_received', () => window.benchEvents.push(performance.timeOrigin + performance.now()));
    window.benchEs = es;
    return new Promise((resolve) => { es.onopen = resolve; });
  });
  const endToEnd = [];
  const eventToDomMs = [];
  for (let i = 0; i < RUNS; i += 1) {
    const text = `bench ${i} ${randomBytes(4).toString('hex')}`;
    const seen = A.page.evaluate((t) => new Promise((resolve) => {
      setTimeout(() => resolve(null), 20000);
      const check = () => [...document.querySelectorAll('[data-testid="message"][data-direction="in"]')].some((m) => m.textContent.includes(t));
      const obs = new MutationObserver(() => {
        if (check()) {
          obs.disconnect();
          resolve(performance.timeOrigin + performance.now());
        }
      });
      obs.observe(document.body, { subtree: true, childList: true, characterData: true });
    }), text);
    await sleep(50);
    const before = await A.page.evaluate(() => window.benchEvents.length);
    const t0 = Date.now();
    await apiB.post('/v1/chat/send', { to: nodeA.peer_id, text });
    const shown = await Promise.race([seen, sleep(20000).then(() => null)]);
    if (shown === null) throw new Error('the message never showed');
    const ev = await waitFor('the event timestamp', () => A.page.evaluate((n) => window.benchEvents[n], before), { timeout: 5000 });
    endToEnd.push(shown - t0);
    eventToDomMs.push(shown - ev);
    await sleep(300);
  }
  await A.page.evaluate(() => window.benchEs.close());
  return {
    sse_event_to_dom_ms: median(eventToDomMs),
    dm_sent_to_dom_ms: median(endToEnd),
    runs_event_to_dom_ms: eventToDomMs.map(Math.round),
    runs_sent_to_dom_ms: endToEnd.map(Math.round),
  };
}

async function filesTable(browser, node, dir) {
  const api = apiClient(node);
  const src = join(dir, 'many');
  await mkdir(src, { recursive: true });
  for (let i = 0; i < FILES; i += 1) await writeFile(join(src, `note-${String(i).padStart(5, '0')}.txt`), `note ${i} of ${FILES}\n`);
  if (FILES < 200) throw new Error('BENCH_FILES must be at least 200 (two pages)');
  const t0 = Date.now();
  const { job } = await api.post('/v1/files/share', { path: src });
  await waitFor('the share of the directory', async () => (await api.get(`/v1/jobs/${job}`)).state === 'done', { timeout: 900000, every: 500 });
  const shareMs = Date.now() - t0;
  const a0 = performance.now();
  const page = await api.get('/v1/files?offset=0&limit=100');
  const apiMs = performance.now() - a0;
  const s = await loggedIn(browser, node, { name: 'files' });
  const first = [];
  const table = [];
  const answer = [];
  const render = [];
  for (let i = 0; i < RUNS; i += 1) {
    await s.page.goto(`${s.origin}/files`, { waitUntil: 'commit' });
    await s.page.waitForFunction(() => document.querySelectorAll('[data-testid="file-row"]').length === 100, null, { timeout: 30000, polling: 'raf' });
    const [drawn, asked, answered] = await s.page.evaluate(() => {
      const r = performance.getEntriesByType('resource').find((e) => e.name.includes('/v1/files?'));
      return [performance.now(), r ? r.startTime : null, r ? r.responseEnd : null];
    });
    first.push(drawn);
    if (asked !== null) {
      table.push(drawn - asked);
      answer.push(answered - asked);
      render.push(drawn - answered);
    }
  }
  // Both timed inside the page, from the click (or keystroke) until the new rows are drawn.
  const timeNext = (firstHash) => s.page.evaluate((fh) => new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error(`the next page was not drawn within 20 s: ${document.querySelector('[data-testid="files-range"]').textContent} first ${document.querySelector('[data-testid="file-row"]').dataset.hash} was ${fh} rows ${document.querySelectorAll('[data-testid="file-row"]').length}`)), 20000);
    const ok = () => {
      const r = document.querySelectorAll('[data-testid="file-row"]');
      return r.length === 100 && r[0].dataset.hash !== fh;
    };
    const obs = new MutationObserver(() => {
      if (ok()) {
        obs.disconnect();
        requestAnimationFrame(() => resolve(performance.now() - t0));
      }
    });
    obs.observe(document.body, { subtree: true, childList: true, attributes: true });
    const t0 = performance.now();
    document.querySelector('[data-testid="files-next"]').click();
  }), firstHash);
  const timeFilter = (word) => s.page.evaluate((w) => new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error(`the filter ${w} was not applied within 20 s`)), 20000);
    const ok = () => {
      const r = document.querySelectorAll('[data-testid="file-row"]');
      return r.length === 1 && r[0].dataset.name === `${w}.txt`;
    };
    const obs = new MutationObserver(() => {
      if (ok()) {
        obs.disconnect();
        requestAnimationFrame(() => resolve(performance.now() - t0));
      }
    });
    obs.observe(document.body, { subtree: true, childList: true, attributes: true });
    const input = document.querySelector('[data-testid="files-filter"]');
    const t0 = performance.now();
    input.value = w;
    input.dispatchEvent(new Event('input', { bubbles: true }));
  }), word);
  const next = [];
  const filter = [];
  for (let i = 0; i < RUNS; i += 1) {
    await s.page.goto(`${s.origin}/files`);
    await s.page.waitForFunction(() => document.querySelectorAll('[data-testid="file-row"]').length === 100);
    const firstHash = await s.page.getAttribute('[data-testid="file-row"]', 'data-hash');
    next.push(await timeNext(firstHash));
    filter.push(await timeFilter(`note-${String(Math.floor(FILES * 0.4) + i).padStart(5, '0')}`));
  }
  await s.context.close();
  return {
    entries: page.total,
    share_dir_ms: shareMs,
    api_page_ms: Math.round(apiMs),
    first_page_drawn_ms: median(first),
    table_from_request_to_drawn_ms: median(table),
    of_which_node_answer_ms: median(answer),
    of_which_drawing_ms: median(render),
    next_page_ms: median(next),
    filter_ms_including_250ms_debounce: median(filter),
    runs_first_page_ms: first.map(Math.round),
  };
}

async function main() {
  const result = { agora: AGORA, runs: RUNS, when: new Date().toISOString() };
  const browser = await launchBrowser();
  let net;
  let solo;
  const dir = join(tmpdir(), `agora-bench-${process.pid}`);
  const cleanup = async () => {
    await browser.close().catch(() => {});
    if (solo) await solo.stop();
    if (net) await net.stop();
    await rm(dir, { recursive: true, force: true });
  };
  onSignal(cleanup);
  // BENCH_ONLY=cold,event,idle,files (any of them) runs those parts alone.
  const parts = new Set((process.env.BENCH_ONLY || 'cold,event,idle,files').split(','));
  try {
    if (parts.has('cold') || parts.has('event') || parts.has('idle')) {
      net = await startDevnet(2);
      const [na, nb] = net.nodes;
      const A = await loggedIn(browser, na, { name: 'A' });
      // A profile for each, and each other as contacts: presence and direct messages work.
      for (const [n, nick, other] of [[na, 'alice', nb], [nb, 'bob', na]]) {
        const api = apiClient(n);
        await api.post('/v1/chat/profile', { nick });
        await api.post('/v1/chat/contacts', { peer: other.peer_id });
      }
      if (parts.has('cold')) {
        result.cold_load = await coldLoads(browser, A);
        result.cold_load_max_median_ms = Math.max(...Object.values(result.cold_load).map((x) => x.median_ms));
      }
      if (parts.has('event')) result.event_to_dom = await eventToDom(A, na, nb);
      if (parts.has('idle')) {
        // A ledger node with and without the Ledger page open.
        await A.page.goto(`${A.origin}/ui/icon.svg`); // no page of the app, no event stream
        await sleep(2000);
        const ledgerNone = await cpuOver(na.pid, IDLE_SECS);
        await A.page.goto(`${A.origin}/ledger`);
        await usableAt(A.page);
        const ledgerOpen = await cpuOver(na.pid, IDLE_SECS);
        // A node without a ledger, with and without the Overview open.
        await mkdir(dir, { recursive: true });
        solo = await startNode(join(dir, 'solo'));
        await sleep(3000);
        const soloNone = await cpuOver(solo.pid, IDLE_SECS);
        const S = await loggedIn(browser, solo, { name: 'solo' });
        await usableAt(S.page);
        const soloOpen = await cpuOver(solo.pid, IDLE_SECS);
        await S.context.close();
        result.idle_cpu_percent = {
          seconds: IDLE_SECS,
          plain_node_no_dashboard: soloNone,
          plain_node_overview_open: soloOpen,
          dashboard_cost_plain: Number((soloOpen - soloNone).toFixed(2)),
          ledger_node_no_dashboard: ledgerNone,
          ledger_node_ledger_page_open: ledgerOpen,
          dashboard_cost_ledger: Number((ledgerOpen - ledgerNone).toFixed(2)),
        };
      }
      await A.context.close();
      await net.stop();
      net = null;
    }
    if (parts.has('files')) {
      await mkdir(dir, { recursive: true });
      if (!solo) solo = await startNode(join(dir, 'solo'));
      result.files_table = await filesTable(browser, solo, dir);
    }
  } finally {
    await cleanup();
  }
  console.log(JSON.stringify(result));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
