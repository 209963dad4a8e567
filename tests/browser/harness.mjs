// Shared by the browser tests and the benchmark: real `agora` processes on 127.0.0.1 (started
// by PID, stopped by PID), the dashboard login through `agora dashboard --no-open`, and Debian's
// Chromium driven by playwright-core.
import { spawn, execFile } from 'node:child_process';
import { mkdtemp, mkdir, rm, readFile, open as openFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const OUT = join(HERE, 'out');
export const AGORA = process.env.AGORA_BIN
  || join(process.env.CARGO_TARGET_DIR || '/var/tmp/agora-target', 'debug', 'agora');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Runs `fn` (stopping what was started, by PID) on SIGINT or SIGTERM, then exits. */
export function onSignal(fn) {
  let once = false;
  const handler = async (sig) => {
    if (once) return;
    once = true;
    await Promise.race([fn().catch(() => {}), sleep(45000)]);
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', handler);
  process.once('SIGTERM', handler);
}

/** Polls `fn` until it returns a truthy value; fails after `timeout` ms naming `what`. */
export async function waitFor(what, fn, { timeout = 30000, every = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(every);
  }
}

// Every process started here, by PID: whatever is still running when this process exits (a
// failure, a signal) is killed, so no node outlives the test run.
const started = new Set();
process.on('exit', () => {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Sends `signal` to `pid` and waits (bounded) until it is gone; SIGKILL after `grace` ms. */
export async function stopPid(pid, { signal = 'SIGTERM', grace = 15000 } = {}) {
  if (!pid || !alive(pid)) {
    started.delete(pid);
    return;
  }
  try {
    process.kill(pid, signal);
  } catch {
    return;
  }
  const deadline = Date.now() + grace;
  while (alive(pid) && Date.now() < deadline) await sleep(50);
  if (alive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    const hard = Date.now() + 5000;
    while (alive(pid) && Date.now() < hard) await sleep(50);
  }
  started.delete(pid);
}

/** Runs the CLI once (bounded) and answers its stdout. */
export function cli(args, { timeout = 30000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(AGORA, args, { timeout, env: { ...process.env, RUST_LOG: 'warn' } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`agora ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** The login URL `agora dashboard --no-open` prints for the node in `dataDir`. */
export async function loginUrl(dataDir) {
  const out = await cli(['dashboard', '--no-open', '--data-dir', dataDir]);
  const url = out.trim().split('\n').find((l) => l.startsWith('http://'));
  if (!url || !url.includes('/login?code=')) throw new Error(`agora dashboard printed no login URL: ${out}`);
  return url;
}

/** A node's API, with its bearer token (for setting up and checking, not for the pages). */
export function apiClient(node) {
  const base = `http://${node.api}`;
  const token = readFileSync(join(node.data_dir, 'api.token'), 'utf8').trim();
  const call = async (method, path, body) => {
    const r = await fetch(base + path, {
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(60000),
    });
    const text = await r.text();
    const data = text ? JSON.parse(text) : null;
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return data;
  };
  return { base, get: (p) => call('GET', p), post: (p, b) => call('POST', p, b ?? {}) };
}

/**
 * Starts `agora devnet -n N --dir D --json` (a ledger genesis with every node funded and the
 * first four validating) and waits for its JSON line. `stop()` stops the devnet (SIGINT: it
 * stops its nodes cleanly) and then makes sure every node PID it printed is gone.
 */
export async function startDevnet(n = 2, { timeout = 120000 } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'agora-browser-'));
  const log = await openFile(join(dir, 'devnet.log'), 'a');
  const child = spawn(AGORA, ['devnet', '-n', String(n), '--dir', dir, '--json'], {
    stdio: ['ignore', 'pipe', log.fd],
    env: { ...process.env, RUST_LOG: process.env.AGORA_TEST_LOG || 'info' },
  });
  started.add(child.pid);
  const net = { dir, child, pid: child.pid, nodes: [], log };
  net.stop = async () => {
    await stopPid(child.pid, { signal: 'SIGINT', grace: 30000 });
    for (const node of net.nodes) await stopPid(node.pid, { signal: 'SIGKILL', grace: 1000 });
    await log.close().catch(() => {});
    if (!process.env.AGORA_KEEP) await rm(dir, { recursive: true, force: true });
  };
  let buf = '';
  try {
    const line = await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`devnet not ready within ${timeout} ms`)), timeout);
      child.stdout.on('data', (d) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl >= 0) {
          clearTimeout(t);
          resolve(buf.slice(0, nl));
        }
      });
      child.on('exit', (code) => {
        clearTimeout(t);
        reject(new Error(`devnet exited (${code}) before it was ready`));
      });
    });
    net.nodes = JSON.parse(line).nodes;
    for (const node of net.nodes) started.add(node.pid);
  } catch (e) {
    const text = await readFile(join(dir, 'devnet.log'), 'utf8').catch(() => '');
    await net.stop();
    throw new Error(`${e.message}\n${text.slice(-3000)}`);
  }
  child.stdout.resume();
  return net;
}

/** Starts one `agora up` on loopback (no ledger) and waits for its api.json. */
export async function startNode(dir, extra = [], { timeout = 60000 } = {}) {
  await mkdir(dir, { recursive: true });
  const log = await openFile(join(dir, 'node.log'), 'a');
  const child = spawn(AGORA, ['up', '--data-dir', dir, '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', ...extra], {
    stdio: ['ignore', log.fd, log.fd],
    env: { ...process.env, RUST_LOG: process.env.AGORA_TEST_LOG || 'info' },
  });
  started.add(child.pid);
  const node = { data_dir: dir, pid: child.pid, child };
  node.stop = async () => {
    await stopPid(child.pid, { signal: 'SIGTERM', grace: 20000 });
    await log.close().catch(() => {});
  };
  try {
    const info = await waitFor('api.json', async () => {
      if (child.exitCode !== null) throw new Error(`agora up exited (${child.exitCode})`);
      const f = join(dir, 'api.json');
      if (!existsSync(f)) return null;
      const v = JSON.parse(await readFile(f, 'utf8'));
      return v.pid === child.pid ? v : null;
    }, { timeout });
    Object.assign(node, { api: info.api, peer_id: info.peer_id });
  } catch (e) {
    await node.stop();
    throw e;
  }
  return node;
}

export async function launchBrowser() {
  await mkdir(OUT, { recursive: true });
  return chromium.launch({ executablePath: CHROMIUM, headless: true, timeout: 60000 });
}

/**
 * A browser context logged in to `node`'s dashboard through the URL `agora dashboard` prints,
 * with every console error, page error, failed API answer and request to another origin
 * recorded on `watch`.
 */
export async function loggedIn(browser, node, { viewport = { width: 1280, height: 900 }, colorScheme = 'light', name = 'page' } = {}) {
  const context = await browser.newContext({ viewport, colorScheme });
  context.setDefaultTimeout(15000);
  const page = await context.newPage();
  const watch = observe(page, `http://${node.api}`, name);
  const url = await loginUrl(node.data_dir);
  const resp = await page.goto(url);
  if (!resp || !resp.ok()) throw new Error(`login answered ${resp && resp.status()}`);
  if (new URL(page.url()).pathname !== '/') throw new Error(`login did not lead to /: ${page.url()}`);
  await page.waitForSelector('[data-testid="sse-status"][data-state="live"]');
  return { context, page, watch, origin: `http://${node.api}` };
}

/** Records what a page must not do: console errors, uncaught errors, other origins. */
export function observe(page, origin, name = 'page') {
  const watch = { name, errors: [], foreign: [], requests: 0 };
  page.on('console', (m) => {
    if (m.type() === 'error') watch.errors.push(`${name}: console: ${m.text()} (${m.location().url || ''})`);
  });
  page.on('pageerror', (e) => watch.errors.push(`${name}: uncaught: ${e.message}`));
  page.on('request', (r) => {
    watch.requests += 1;
    const u = r.url();
    if (!u.startsWith(`${origin}/`) && u !== origin) watch.foreign.push(u);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) watch.errors.push(`${name}: HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  return watch;
}

/** Milliseconds from navigation start until the page's first API calls are answered. */
export async function usableAt(page, { timeout = 15000 } = {}) {
  await page.waitForFunction(() => document.documentElement.dataset.loaded === '1'
    && document.querySelector('main h1') && document.documentElement.dataset.pending === '0', null, { timeout, polling: 'raf' });
  return page.evaluate(() => Number(document.documentElement.dataset.usableAt || performance.now()));
}
