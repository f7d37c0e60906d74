/**
 * `npm run load` (= `tsx bench/load.ts`): the proxy under sustained load, memory on, loopback only.
 *
 *   npm run load                         phase 1: 200 concurrent streams for 60 s; phase 2: soak for 600 s
 *   npm run load -- --quick              smoke run: 10 s / 30 s, shorter drain waits
 *   npm run load -- --soak-seconds=N     soak length (default 600)
 *   npm run load -- --soak-rps=R         soak rate (default: measured after phase 1, see main)
 *   npm run load -- --phase1-memory=read phase 1 with X-Mem0-Memory: read (recall only, no saves: the
 *                                        search path alone under the same load)
 *   npm run load -- --soak-memory=read   soak with X-Mem0-Memory: read (no new memories: a constant
 *                                        data set, so RSS growth would be a leak, not the index growing)
 *   npm run load -- --proxy-runtime=tsx  run src/index.ts through tsx instead of building dist/
 *
 * Processes: the fake upstream (test/fakes/openai-upstream.ts) in its own child with realistic
 * pacing (first token after 200 ms, one event every 20 ms), our proxy in its own child (memory on,
 * embedded backend, the fake serving chats, mem0's extraction and embeddings), and this process as
 * the load generator (node:http keep-alive agents).
 *
 * Phase 1: 200 closed-loop workers send streaming chats with memory on through the proxy while 20
 * more workers send the same requests directly to the fake, so "added latency" compares samples
 * taken at the same time against the same loaded upstream. Every chat queues a save (one mem0
 * extraction + embeddings); the queue depth is read from /health. Then the queue is given a
 * bounded time to drain (5 min; 60 s with --quick), which measures the save throughput.
 *
 * Phase 2 (soak): a fresh proxy, the same users, an open-loop steady rate chosen from the measured
 * CPU cost of a chat plus a save and the measured save throughput (or --soak-rps), plus a direct sample at a quarter of the rate. RSS is sampled every
 * second; growth after the warm-up (first 20 %) beyond noise is flagged. At the end the queue depth
 * is printed, then the queue is given a bounded time to drain.
 *
 * Users: 50 ids, each pre-seeded with 3 memories (POST /remember, infer: false) that share words
 * with the questions asked, so searches find and inject something.
 *
 * Exit code 1 when any request failed (status, network error, or a stream without [DONE]).
 */
import * as http from 'node:http';
import * as os from 'node:os';
import {
  BENCH_TOKEN,
  HOST,
  fmt,
  keepAliveAgent,
  prepareOurProxy,
  printTable,
  procCpuMs,
  procRssMiB,
  removeTempDirLater,
  sleep,
  startFakeUpstreamChild,
  startOurProxyChild,
  stopAllChildren,
  stopChild,
  summarize,
  type ProxyChild,
  type ProxyRuntime,
  type Summary,
} from './lib';

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

interface LoadArgs {
  quick: boolean;
  phase1Seconds: number;
  soakSeconds: number;
  soakRps: number | undefined;
  concurrency: number;
  directConcurrency: number;
  drainWaitSeconds: number;
  runtime: ProxyRuntime | 'auto';
  /** `X-Mem0-Memory` for the soak: `on` (default) or `read`, which keeps the data set constant so RSS shows leaks, not growth. */
  soakMemory: 'on' | 'read';
  /** `X-Mem0-Memory` for phase 1: `on` (default) or `read` (recall without saves). */
  phase1Memory: 'on' | 'read';
}

function parseArgs(argv: readonly string[]): LoadArgs {
  const get = (name: string): string | undefined => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const num = (name: string, fallback: number): number => {
    const raw = get(name);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number (got ${raw})`);
    return n;
  };
  const quick = argv.includes('--quick');
  const runtime = get('proxy-runtime') ?? 'auto';
  if (runtime !== 'dist' && runtime !== 'tsx' && runtime !== 'auto')
    throw new Error(`--proxy-runtime must be dist, tsx or auto (got ${runtime})`);
  const soakRpsRaw = get('soak-rps');
  const memoryMode = (name: string): 'on' | 'read' => {
    const mode = get(name) ?? 'on';
    if (mode !== 'on' && mode !== 'read') throw new Error(`--${name} must be on or read (got ${mode})`);
    return mode;
  };
  return {
    soakMemory: memoryMode('soak-memory'),
    phase1Memory: memoryMode('phase1-memory'),
    quick,
    phase1Seconds: num('phase1-seconds', quick ? 10 : 60),
    soakSeconds: num('soak-seconds', quick ? 30 : 600),
    soakRps: soakRpsRaw === undefined ? undefined : num('soak-rps', 1),
    concurrency: num('concurrency', 200),
    directConcurrency: num('direct-concurrency', 20),
    drainWaitSeconds: num('drain-wait-seconds', quick ? 60 : 300),
    runtime,
  };
}

const USERS = 50;
const SEED_MEMORIES = ['I like green tea in the morning', 'My favourite tea is oolong', 'I drink tea while hiking in the mountains'];
const FIRST_TOKEN_MS = 200;
const CHUNK_INTERVAL_MS = 20;
/** Hard caps, whatever the durations: the run is bounded in count as well as in time. */
const MAX_PHASE1_REQUESTS = 500_000;
const MAX_SOAK_RPS = 500;
const MAX_IN_FLIGHT = 2000;
const REQUEST_TIMEOUT_MS = 60_000;

// ---------------------------------------------------------------------------------------------
// One streamed chat, timed
// ---------------------------------------------------------------------------------------------

interface ChatResult {
  ok: boolean;
  status: number;
  /** ms to the first body byte (the first SSE event). */
  ttfbMs: number;
  /** ms to the end of the stream. */
  totalMs: number;
  /** X-Mem0-Overhead-Ms (NaN when absent, e.g. direct). */
  overheadMs: number;
  /** X-Mem0-Memories (NaN when absent). */
  memories: number;
  error: string | undefined;
}

interface Endpoint {
  origin: string;
  headers: Record<string, string>;
  agent: http.Agent;
}

let questionSeq = 0;
function chatBody(): { body: Buffer; user: string } {
  const n = questionSeq++;
  const user = `load-user-${n % USERS}`;
  const content = `Which tea do I like best for hiking, question ${n}?`;
  return { body: Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content }], user })), user };
}

function streamChat(ep: Endpoint, body: Buffer): Promise<ChatResult> {
  return new Promise((resolve) => {
    const url = new URL(ep.origin);
    const t0 = process.hrtime.bigint();
    const ms = (): number => Number(process.hrtime.bigint() - t0) / 1e6;
    let settled = false;
    const finish = (r: ChatResult): void => {
      if (!settled) {
        settled = true;
        resolve(r);
      }
    };
    const req = http.request(
      {
        host: url.hostname,
        port: url.port,
        method: 'POST',
        path: '/v1/chat/completions',
        agent: ep.agent,
        headers: { ...ep.headers, 'content-type': 'application/json', 'content-length': body.length },
      },
      (res) => {
        const status = res.statusCode ?? 0;
        const overheadMs = Number(res.headers['x-mem0-overhead-ms'] ?? NaN);
        const memories = Number(res.headers['x-mem0-memories'] ?? NaN);
        let ttfbMs = NaN;
        let tail = '';
        res.on('data', (c: Buffer) => {
          if (Number.isNaN(ttfbMs)) ttfbMs = ms();
          tail = (tail + c.toString('utf8')).slice(-64);
        });
        res.on('end', () => {
          const done = tail.includes('data: [DONE]');
          const ok = status === 200 && done;
          finish({
            ok,
            status,
            ttfbMs,
            totalMs: ms(),
            overheadMs,
            memories,
            error: ok ? undefined : status !== 200 ? `status ${status}` : 'stream ended without [DONE]',
          });
        });
        res.on('error', (err) => finish({ ok: false, status, ttfbMs, totalMs: ms(), overheadMs, memories, error: err.message }));
      },
    );
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error('timeout')));
    req.on('error', (err) =>
      finish({ ok: false, status: 0, ttfbMs: NaN, totalMs: ms(), overheadMs: NaN, memories: NaN, error: err.message }),
    );
    req.end(body);
  });
}

// ---------------------------------------------------------------------------------------------
// Proxy helpers
// ---------------------------------------------------------------------------------------------

const authHeader = { authorization: `Bearer ${BENCH_TOKEN}` };

function jsonRequest(origin: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const url = new URL(origin);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = { ...authHeader };
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = payload.length;
    }
    const req = http.request({ host: url.hostname, port: url.port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = text;
        }
        resolve({ status: res.statusCode ?? 0, json });
      });
      res.on('error', reject);
    });
    req.setTimeout(30_000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(payload);
  });
}

async function queueDepth(proxy: ProxyChild): Promise<number> {
  const res = await jsonRequest(proxy.origin, 'GET', '/health');
  const q = (res.json as { save_queue?: { depth?: unknown } }).save_queue;
  if (res.status !== 200 || typeof q?.depth !== 'number') throw new Error(`/health: ${res.status} ${JSON.stringify(res.json)}`);
  return q.depth;
}

async function seedUsers(proxy: ProxyChild): Promise<void> {
  const jobs: Array<{ user: string; content: string }> = [];
  for (let u = 0; u < USERS; u++) for (const content of SEED_MEMORIES) jobs.push({ user: `load-user-${u}`, content });
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let job = jobs[next++]; job !== undefined; job = jobs[next++]) {
      const res = await jsonRequest(proxy.origin, 'POST', '/remember', { user_id: job.user, content: job.content, infer: false });
      if (res.status !== 200) throw new Error(`/remember ${res.status}: ${JSON.stringify(res.json)}`);
    }
  };
  await Promise.all(Array.from({ length: 8 }, () => worker()));
}

async function startProxy(upstreamUrl: string, runtime: ProxyRuntime): Promise<ProxyChild & { dataDir: string }> {
  const proxy = await startOurProxyChild(upstreamUrl, runtime, {
    RATE_LIMIT_SEARCH: '100000000',
    RATE_LIMIT_LIST: '100000000',
    RATE_LIMIT_REMEMBER: '100000000',
    RATE_LIMIT_FORGET: '100000000',
  });
  removeTempDirLater(proxy.dataDir);
  return proxy;
}

/** Waits (bounded) for the save queue to reach 0; returns the time taken and the depth curve's ends. */
async function waitForDrain(
  proxy: ProxyChild,
  boundSeconds: number,
): Promise<{ startDepth: number; endDepth: number; seconds: number; drained: boolean; cpuMs: number }> {
  const t0 = Date.now();
  const cpu0 = procCpuMs(proxy.child.pid);
  const startDepth = await queueDepth(proxy);
  let depth = startDepth;
  let lastPrint = Date.now();
  while (depth > 0 && Date.now() - t0 < boundSeconds * 1000) {
    await sleep(500);
    depth = await queueDepth(proxy);
    if (Date.now() - lastPrint >= 15_000) {
      lastPrint = Date.now();
      console.log(`  ... draining: depth ${depth} after ${fmt((Date.now() - t0) / 1000, 0)} s`);
    }
  }
  return { startDepth, endDepth: depth, seconds: (Date.now() - t0) / 1000, drained: depth === 0, cpuMs: procCpuMs(proxy.child.pid) - cpu0 };
}

// ---------------------------------------------------------------------------------------------
// Collecting results
// ---------------------------------------------------------------------------------------------

class Samples {
  readonly results: ChatResult[] = [];
  readonly errors = new Map<string, number>();
  add(r: ChatResult): void {
    this.results.push(r);
    if (!r.ok) this.errors.set(r.error ?? 'unknown', (this.errors.get(r.error ?? 'unknown') ?? 0) + 1);
  }
  get errorCount(): number {
    return this.results.filter((r) => !r.ok).length;
  }
  private ok(): ChatResult[] {
    return this.results.filter((r) => r.ok);
  }
  ttfb(): Summary {
    return summarize(this.ok().map((r) => r.ttfbMs));
  }
  total(): Summary {
    return summarize(this.ok().map((r) => r.totalMs));
  }
  overhead(): Summary {
    return summarize(
      this.ok()
        .map((r) => r.overheadMs)
        .filter((x) => Number.isFinite(x)),
    );
  }
  memoriesMean(): number {
    const m = this.ok()
      .map((r) => r.memories)
      .filter((x) => Number.isFinite(x));
    return m.reduce((a, b) => a + b, 0) / (m.length || 1);
  }
}

interface PhaseReport {
  name: string;
  seconds: number;
  /** CPU used during the phase, % of one core: proxy, fake upstream, this load generator. */
  cpuPct: { proxy: number; fake: number; generator: number };
  proxy: Samples;
  direct: Samples;
  proxyCpuMs: number;
  queueDepthEnd: number;
  queueDepthMax: number;
}

function phaseRows(r: PhaseReport): string[][] {
  const rows: string[][] = [];
  const pt = r.proxy.ttfb();
  const pf = r.proxy.total();
  const dt = r.direct.ttfb();
  const df = r.direct.total();
  const ov = r.proxy.overhead();
  rows.push([
    `${r.name}: proxy`,
    String(r.proxy.results.length),
    String(r.proxy.errorCount),
    fmt(r.proxy.results.length / r.seconds, 1),
    fmt(pt.p50, 1),
    fmt(pt.p99, 1),
    fmt(pf.p50, 1),
    fmt(pf.p99, 1),
    fmt(pt.p50 - dt.p50, 1),
    fmt(pt.p99 - dt.p99, 1),
    fmt(pf.p50 - df.p50, 1),
    fmt(pf.p99 - df.p99, 1),
    fmt(ov.p50, 1),
    fmt(ov.p99, 1),
    fmt(r.proxyCpuMs / (r.proxy.results.length || 1), 2),
    fmt(r.proxy.memoriesMean(), 2),
  ]);
  rows.push([
    `${r.name}: direct`,
    String(r.direct.results.length),
    String(r.direct.errorCount),
    fmt(r.direct.results.length / r.seconds, 1),
    fmt(dt.p50, 1),
    fmt(dt.p99, 1),
    fmt(df.p50, 1),
    fmt(df.p99, 1),
    '-',
    '-',
    '-',
    '-',
    '-',
    '-',
    '-',
    '-',
  ]);
  return rows;
}

const PHASE_HEADER = [
  'phase / target',
  'requests',
  'errors',
  'req/s',
  'TTFB p50',
  'TTFB p99',
  'full p50',
  'full p99',
  '+TTFB p50',
  '+TTFB p99',
  '+full p50',
  '+full p99',
  'overhead p50',
  'overhead p99',
  'CPU ms/req',
  'memories/req',
];

// ---------------------------------------------------------------------------------------------
// Phase 1: closed loop, 200 concurrent streams (+ a direct sample alongside)
// ---------------------------------------------------------------------------------------------

function cpuMeter(proxyPid: number, fakePid: number): () => { proxyMs: number; pct: { proxy: number; fake: number; generator: number } } {
  const t0 = Date.now();
  const p0 = procCpuMs(proxyPid);
  const f0 = procCpuMs(fakePid);
  const g0 = process.cpuUsage();
  return () => {
    const wall = Date.now() - t0 || 1;
    const proxyMs = procCpuMs(proxyPid) - p0;
    const g = process.cpuUsage(g0);
    return {
      proxyMs,
      pct: {
        proxy: (proxyMs * 100) / wall,
        fake: ((procCpuMs(fakePid) - f0) * 100) / wall,
        generator: ((g.user + g.system) / 1000 / wall) * 100,
      },
    };
  };
}

async function closedLoop(proxyEp: Endpoint, directEp: Endpoint, args: LoadArgs, proxy: ProxyChild, fakePid: number): Promise<PhaseReport> {
  const proxySamples = new Samples();
  const directSamples = new Samples();
  let sent = 0;
  let maxDepth = 0;
  const t0 = Date.now();
  const deadline = t0 + args.phase1Seconds * 1000;
  const cpu = cpuMeter(proxy.child.pid, fakePid);
  const worker = async (ep: Endpoint, into: Samples): Promise<void> => {
    while (Date.now() < deadline && sent < MAX_PHASE1_REQUESTS) {
      sent++;
      into.add(await streamChat(ep, chatBody().body));
    }
  };
  let sampling = true;
  const sampler = (async (): Promise<void> => {
    while (sampling) {
      maxDepth = Math.max(maxDepth, await queueDepth(proxy).catch(() => 0));
      await sleep(1000);
    }
  })();
  await Promise.all([
    ...Array.from({ length: args.concurrency }, () => worker(proxyEp, proxySamples)),
    ...Array.from({ length: args.directConcurrency }, () => worker(directEp, directSamples)),
  ]);
  const seconds = (Date.now() - t0) / 1000;
  const used = cpu();
  sampling = false;
  await sampler;
  const queueDepthEnd = await queueDepth(proxy);
  return {
    name: 'phase 1',
    seconds,
    cpuPct: used.pct,
    proxy: proxySamples,
    direct: directSamples,
    proxyCpuMs: used.proxyMs,
    queueDepthEnd,
    queueDepthMax: Math.max(maxDepth, queueDepthEnd),
  };
}

// ---------------------------------------------------------------------------------------------
// Phase 2: open loop at a steady rate (+ a direct sample at a quarter of it)
// ---------------------------------------------------------------------------------------------

interface RssSample {
  atS: number;
  rss: number;
}

async function soak(
  proxyEp: Endpoint,
  directEp: Endpoint,
  rps: number,
  seconds: number,
  proxy: ProxyChild,
  fakePid: number,
): Promise<{ report: PhaseReport; rss: RssSample[]; shed: number; depthStart: number; depthCurve: Array<{ atS: number; depth: number }> }> {
  const proxySamples = new Samples();
  const directSamples = new Samples();
  const rss: RssSample[] = [];
  const depthCurve: Array<{ atS: number; depth: number }> = [];
  const inFlight = new Set<Promise<void>>();
  let shed = 0;
  const directRps = Math.max(1, rps / 4);
  const depthStart = await queueDepth(proxy);
  const t0 = Date.now();
  const end = t0 + seconds * 1000;
  const cpu = cpuMeter(proxy.child.pid, fakePid);

  let sampling = true;
  const sampler = (async (): Promise<void> => {
    while (sampling) {
      const atS = (Date.now() - t0) / 1000;
      rss.push({ atS, rss: procRssMiB(proxy.child.pid).rss });
      depthCurve.push({ atS, depth: await queueDepth(proxy).catch(() => NaN) });
      await sleep(1000);
    }
  })();

  const launch = (ep: Endpoint, into: Samples): void => {
    if (inFlight.size >= MAX_IN_FLIGHT) {
      shed++;
      return;
    }
    const p = streamChat(ep, chatBody().body).then((r) => into.add(r));
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
  };

  // Two schedules on one clock: request i of a target is due at t0 + i / rate.
  let nextProxy = 0;
  let nextDirect = 0;
  for (;;) {
    const now = Date.now();
    if (now >= end) break;
    const proxyDue = t0 + (nextProxy * 1000) / rps;
    const directDue = t0 + (nextDirect * 1000) / directRps;
    if (proxyDue <= now) {
      launch(proxyEp, proxySamples);
      nextProxy++;
      continue;
    }
    if (directDue <= now) {
      launch(directEp, directSamples);
      nextDirect++;
      continue;
    }
    await sleep(Math.max(1, Math.min(proxyDue, directDue, end) - now));
  }
  const sendSeconds = (Date.now() - t0) / 1000;
  await Promise.all([...inFlight]);
  const used = cpu();
  sampling = false;
  await sampler;
  rss.push({ atS: (Date.now() - t0) / 1000, rss: procRssMiB(proxy.child.pid).rss });
  const queueDepthEnd = await queueDepth(proxy);
  const queueDepthMax = Math.max(queueDepthEnd, ...depthCurve.map((d) => d.depth).filter((d) => Number.isFinite(d)));
  return {
    report: {
      name: 'soak',
      seconds: sendSeconds,
      cpuPct: used.pct,
      proxy: proxySamples,
      direct: directSamples,
      proxyCpuMs: used.proxyMs,
      queueDepthEnd,
      queueDepthMax,
    },
    rss,
    shed,
    depthStart,
    depthCurve,
  };
}

/** Least-squares slope of y over x. */
function slope(points: ReadonlyArray<{ x: number; y: number }>): number {
  const n = points.length;
  if (n < 2) return NaN;
  const mx = points.reduce((a, p) => a + p.x, 0) / n;
  const my = points.reduce((a, p) => a + p.y, 0) / n;
  const num = points.reduce((a, p) => a + (p.x - mx) * (p.y - my), 0);
  const den = points.reduce((a, p) => a + (p.x - mx) ** 2, 0);
  return den === 0 ? NaN : num / den;
}

function rssAt(samples: readonly RssSample[], atS: number): number {
  let best = samples[0];
  for (const s of samples) if (best === undefined || Math.abs(s.atS - atS) < Math.abs(best.atS - atS)) best = s;
  return best?.rss ?? NaN;
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const prepared = prepareOurProxy(args.runtime);
  if (!prepared) throw new Error('src/index.ts not found');
  console.log(
    `load: proxy from ${prepared.note}; fake upstream pacing: first token ${FIRST_TOKEN_MS} ms, a chunk every ${CHUNK_INTERVAL_MS} ms`,
  );
  console.log(
    `load: phase 1 ${args.concurrency} concurrent (+${args.directConcurrency} direct) for ${args.phase1Seconds} s, memory ${args.phase1Memory}; soak ${args.soakSeconds} s; drain waits bounded at ${args.drainWaitSeconds} s`,
  );

  const fake = await startFakeUpstreamChild({ firstTokenDelayMs: FIRST_TOKEN_MS, chunkIntervalMs: CHUNK_INTERVAL_MS });
  const directEp: Endpoint = { origin: `http://${HOST}:${fake.port}`, headers: {}, agent: keepAliveAgent(args.directConcurrency + 8) };
  const notes: string[] = [];
  let failed = false;

  // ---- phase 1 ----
  const p1 = await startProxy(fake.url, prepared.runtime);
  await seedUsers(p1);
  const p1Ep: Endpoint = {
    origin: p1.origin,
    headers: { ...authHeader, 'x-mem0-memory': args.phase1Memory },
    agent: keepAliveAgent(args.concurrency + 8),
  };
  // Short warm-up so the first searches (loading each user's partition) are not in the numbers.
  for (let i = 0; i < USERS; i++) await streamChat(p1Ep, chatBody().body);
  await waitForDrain(p1, 30);
  console.log('load: phase 1 running ...');
  const phase1 = await closedLoop(p1Ep, directEp, args, p1, fake.child.pid);
  console.log(
    `load: phase 1 done (${phase1.proxy.results.length} proxied chats); waiting for the save queue (depth ${phase1.queueDepthEnd}) ...`,
  );
  const drain1 = await waitForDrain(p1, args.drainWaitSeconds);
  const saved1 = drain1.startDepth - drain1.endDepth;
  const saveRate = drain1.seconds > 0 && saved1 > 0 ? saved1 / drain1.seconds : NaN;
  const cpuPerSave = saved1 > 0 ? drain1.cpuMs / saved1 : NaN;
  // When the queue was (nearly) empty after phase 1, the saves kept up with the phase-1 rate.
  const keptUp = phase1.queueDepthEnd < 50;
  const capacity = keptUp ? phase1.proxy.results.length / phase1.seconds : saveRate;
  const p1Rss = procRssMiB(p1.child.pid);
  await stopChild(p1.child);
  p1Ep.agent.destroy();

  // ---- phase 2 ----
  // The proxy is one event loop: a chat and its save share one core. Budget half of it for the soak,
  // from the measured CPU cost of a chat (phase 1) plus that of a save (drain), and never above 60 %
  // of the save throughput measured on the idle proxy.
  const cpuPerChat = phase1.proxyCpuMs / (phase1.proxy.results.length || 1);
  const cpuRate = Number.isFinite(cpuPerSave) ? (0.5 * 1000) / (cpuPerChat + cpuPerSave) : NaN;
  const autoRate = Math.min(Number.isFinite(cpuRate) ? cpuRate : 10, Number.isFinite(capacity) ? capacity * 0.6 : 10);
  const soakRps = Math.min(MAX_SOAK_RPS, args.soakRps ?? Math.max(1, Math.floor(autoRate)));
  const p2 = await startProxy(fake.url, prepared.runtime);
  await seedUsers(p2);
  const p2Ep: Endpoint = {
    origin: p2.origin,
    headers: { ...authHeader, 'x-mem0-memory': args.soakMemory },
    agent: keepAliveAgent(Math.min(MAX_IN_FLIGHT, Math.ceil(soakRps * 2) + 16)),
  };
  for (let i = 0; i < USERS; i++) await streamChat(p2Ep, chatBody().body);
  await waitForDrain(p2, 30);
  const rssBefore = procRssMiB(p2.child.pid).rss;
  console.log(`load: soak at ${soakRps} req/s for ${args.soakSeconds} s ...`);
  const soaked = await soak(p2Ep, directEp, soakRps, args.soakSeconds, p2, fake.child.pid);
  console.log(`load: soak done; waiting for the save queue (depth ${soaked.report.queueDepthEnd}) ...`);
  const drain2 = await waitForDrain(p2, args.drainWaitSeconds);
  await stopChild(p2.child);
  await stopAllChildren();
  p2Ep.agent.destroy();
  directEp.agent.destroy();

  // ---- tables ----
  printTable(
    'Streaming chats with memory on, through the proxy vs direct to the fake (ms; + = added by the proxy; overhead = X-Mem0-Overhead-Ms)',
    PHASE_HEADER,
    [...phaseRows(phase1), ...phaseRows(soaked.report)],
  );

  printTable(
    `CPU during each phase (% of one core; this machine has ${os.cpus().length} cores)`,
    ['phase', 'proxy', 'fake upstream', 'load generator'],
    [...[phase1, soaked.report].map((r) => [r.name, fmt(r.cpuPct.proxy, 0), fmt(r.cpuPct.fake, 0), fmt(r.cpuPct.generator, 0)])],
  );

  const warmS = Math.max(5, args.soakSeconds * 0.2);
  const post = soaked.rss.filter((s) => s.atS >= warmS);
  const rssStart = rssAt(soaked.rss, warmS);
  const rssMid = rssAt(soaked.rss, (warmS + args.soakSeconds) / 2);
  const rssEnd = soaked.rss[soaked.rss.length - 1]?.rss ?? NaN;
  const rssSlope = slope(post.map((s) => ({ x: s.atS / 60, y: s.rss })));
  // Noise: the spread of the first fifth of the post-warm-up samples.
  const early = post.slice(0, Math.max(2, Math.floor(post.length / 5))).map((s) => s.rss);
  const noise = Math.max(5, Math.max(...early) - Math.min(...early));
  const growth = rssEnd - rssStart;
  const rssFlag = growth > noise * 2 && growth > rssStart * 0.1 ? 'GROWTH beyond noise' : 'flat (within noise)';

  printTable(
    'Soak: proxy RSS (MiB)',
    ['point', 'RSS MiB'],
    [
      ['before soak (after seeding + warm-up chats)', fmt(rssBefore, 1)],
      [`start (after ${fmt(warmS, 0)} s warm-up)`, fmt(rssStart, 1)],
      ['middle', fmt(rssMid, 1)],
      ['end', fmt(rssEnd, 1)],
      ['growth start → end', fmt(growth, 1)],
      ['trend after warm-up (MiB/min)', fmt(rssSlope, 2)],
      ['noise (early spread, floor 5)', fmt(noise, 1)],
      ['verdict', rssFlag],
      ['phase-1 proxy RSS at its end / peak', `${fmt(p1Rss.rss, 1)} / ${fmt(p1Rss.peak, 1)}`],
    ],
  );

  const drainCell = (d: { drained: boolean; seconds: number; endDepth: number }): string =>
    d.drained ? `${fmt(d.seconds, 1)} s` : `NOT drained in ${fmt(d.seconds, 0)} s (depth ${d.endDepth} left)`;
  printTable(
    'Save queue (from /health save_queue.depth)',
    ['measure', 'value'],
    [
      ['phase 1: depth at end / max seen', `${phase1.queueDepthEnd} / ${phase1.queueDepthMax}`],
      ['phase 1: chats per second vs saves per second', `${fmt(phase1.proxy.results.length / phase1.seconds, 1)} vs ${fmt(saveRate, 1)}`],
      ['phase 1: drain time', drainCell(drain1)],
      ['saves per second while draining (idle proxy)', fmt(saveRate, 1)],
      ['proxy CPU ms per save while draining', fmt(cpuPerSave, 2)],
      [
        'soak rate (req/s)',
        `${soakRps}${args.soakRps === undefined ? ` (min of 50 % core / (${fmt(cpuPerChat, 1)} ms chat + ${fmt(cpuPerSave, 1)} ms save) and 60 % of ${fmt(capacity, 1)} saves/s)` : ' (--soak-rps)'}`,
      ],
      ['soak: depth at start / max / end', `${soaked.depthStart} / ${soaked.report.queueDepthMax} / ${soaked.report.queueDepthEnd}`],
      ['soak: drain time after the end', drainCell(drain2)],
      ['soak: requests shed (in-flight cap)', String(soaked.shed)],
    ],
  );

  const totalErrors =
    phase1.proxy.errorCount + phase1.direct.errorCount + soaked.report.proxy.errorCount + soaked.report.direct.errorCount + soaked.shed;
  for (const [name, s] of [
    ['phase 1 proxy', phase1.proxy],
    ['phase 1 direct', phase1.direct],
    ['soak proxy', soaked.report.proxy],
    ['soak direct', soaked.report.direct],
  ] as const) {
    for (const [err, n] of s.errors) notes.push(`${name}: ${n} × ${err}`);
  }
  if (totalErrors > 0) {
    failed = true;
    notes.push(`FAIL: ${totalErrors} failed request(s) (must be 0)`);
  } else notes.push('errors: 0');
  if (!keptUp)
    notes.push(
      `finding: at ${args.concurrency} concurrent streams the saves do not keep up (${fmt(phase1.proxy.results.length / phase1.seconds, 1)} chats/s vs ${fmt(saveRate, 1)} saves/s); the backlog ${drain1.drained ? 'drained' : 'did NOT drain'} in ${fmt(drain1.seconds, 1)} s`,
    );
  if (soaked.report.queueDepthEnd > Math.max(10, soaked.depthStart + soakRps * 2))
    notes.push(
      `finding: during the soak at ${soakRps} req/s the queue grew to ${soaked.report.queueDepthEnd}: the saves did not keep up at this rate`,
    );
  else notes.push(`soak at ${soakRps} req/s: saves kept up (depth ${soaked.depthStart} → ${soaked.report.queueDepthEnd})`);
  if (rssFlag !== 'flat (within noise)')
    notes.push(`finding: proxy RSS grew ${fmt(growth, 1)} MiB after warm-up (${fmt(rssSlope, 2)} MiB/min)`);
  if (args.quick) notes.push('quick run: durations are too short for firm RSS or throughput conclusions');
  console.log('');
  for (const n of notes) console.log(`- ${n}`);
  if (failed) process.exitCode = 1;
}

main().then(
  () => stopAllChildren(),
  async (err: unknown) => {
    console.error(`load failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    await stopAllChildren();
    process.exit(1);
  },
);
