/**
 * `npm run bench` (= `tsx bench/run.ts`): the benchmark tables, one function per table.
 *
 *   npm run bench                          every table
 *   npm run bench -- --only=proxy          one table (names: see TABLES below)
 *   npm run bench -- --proxy-runtime=tsx   run our proxy from src/ through tsx instead of building dist/
 *   npm run bench -- --quick               shorter phases (smoke run)
 *   npm run bench -- --strict              exit 1 when a bar fails
 *   npm run bench -- --ours=bare           a second bare proxy stands in for ours (checks the bench)
 *   npm run bench -- --proxy-root=<dir>    benchmark the proxy of another checkout (with node_modules)
 *   npm run bench -- --sizes=1000,10000    chat-memory: memories of the user per size (default
 *                                          1000,10000,100000; with --quick 1000,10000; "10k" works too)
 *
 * Table "proxy": direct to the fake upstream vs a bare node:http pass-through proxy vs our proxy
 * (auth + rate limits on). The fake upstream, the bare proxy and our proxy each run in their own
 * child process; the load generator is this process (node:http, keep-alive Agent). Loopback only.
 *
 * Adding a table: write `bench/<name>.ts` exporting an async function, and add an entry to
 * TABLES (`optionalModule` entries are skipped when their file does not exist yet).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  BENCH_TOKEN,
  fmt,
  keepAliveAgent,
  prepareOurProxy,
  printTable,
  removeTempDirLater,
  procCpuMs,
  procRssMiB,
  runConcurrent,
  runSequential,
  startBareProxyChild,
  startFakeUpstreamChild,
  startOurProxyChild,
  stopAllChildren,
  summarize,
  timedRequest,
  type LoadResult,
  type ProxyRuntime,
  type RequestResult,
  type Target,
} from './lib';

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

export interface BenchArgs {
  only: string | undefined;
  proxyRuntime: ProxyRuntime | 'auto';
  quick: boolean;
  strict: boolean;
  /** `--ours=bare`: a second bare proxy stands in for our proxy (to check the bench itself). */
  oursStandIn: boolean;
  /** `--proxy-root=<dir>`: benchmark the proxy of another checkout (default: this one). */
  proxyRoot: string | undefined;
  /** `--sizes=1000,10000,100000`: the chat-memory table's user sizes (undefined: the table's default). */
  sizes: number[] | undefined;
}

/** "1000,10k,100000" -> [1000, 10000, 100000] (sorted, distinct, positive integers). */
function parseSizes(raw: string | undefined): number[] | undefined {
  if (raw === undefined) return undefined;
  const sizes = raw.split(',').map((part) => {
    const m = /^\s*(\d+)\s*(k?)\s*$/i.exec(part);
    const n = m ? Number(m[1]) * (m[2] ? 1000 : 1) : NaN;
    if (!Number.isInteger(n) || n < 1) throw new Error(`--sizes: "${part}" is not a positive integer (e.g. --sizes=1000,10000,100000)`);
    return n;
  });
  return [...new Set(sizes)].sort((a, b) => a - b);
}

function parseArgs(argv: readonly string[]): BenchArgs {
  const get = (name: string): string | undefined => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const runtime = get('proxy-runtime');
  if (runtime !== undefined && runtime !== 'dist' && runtime !== 'tsx' && runtime !== 'auto') {
    throw new Error(`--proxy-runtime must be dist, tsx or auto (got ${runtime})`);
  }
  const ours = get('ours');
  if (ours !== undefined && ours !== 'bare') throw new Error(`--ours accepts only "bare" (got ${ours})`);
  return {
    only: get('only'),
    proxyRuntime: runtime ?? 'auto',
    quick: argv.includes('--quick'),
    strict: argv.includes('--strict'),
    oursStandIn: ours === 'bare',
    proxyRoot: get('proxy-root'),
    sizes: parseSizes(get('sizes')),
  };
}

/** What a table reports back: bars it checked (name -> passed). */
export interface TableOutcome {
  bars: Array<{ name: string; pass: boolean }>;
}

interface TableEntry {
  name: string;
  description: string;
  run?: (args: BenchArgs) => Promise<TableOutcome | undefined>;
  /** bench/<file> exporting `exportName`; skipped when the file does not exist. */
  optionalModule?: { file: string; exportName: string };
}

// ---------------------------------------------------------------------------------------------
// Table: proxy overhead
// ---------------------------------------------------------------------------------------------

const CHAT_BODY = Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello in five words.' }] }));
const STREAM_BODY = Buffer.from(
  JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'Say hello in five words.' }] }),
);
const chatRequest = (): { method: string; path: string; body: Buffer } => ({ method: 'POST', path: '/chat/completions', body: CHAT_BODY });
const streamRequest = (): { method: string; path: string; body: Buffer } => ({
  method: 'POST',
  path: '/chat/completions',
  body: STREAM_BODY,
});

/** Bars from the brief: ours vs bare. */
const MAX_ADDED_P50_RATIO = 2;
const MAX_CPU_PER_REQUEST_RATIO = 2.5;
const CONCURRENCY = 32;
/** Fake stream pacing for the SSE phase: a proxy that buffers shows TTFB close to the total. */
const SSE_CHUNK_INTERVAL_MS = 5;

interface TargetResult {
  target: Target;
  latency: RequestResult[];
  load: LoadResult | undefined;
  cpuMsPerRequest: number;
  upstreamCpuMsPerRequest: number;
  sse: RequestResult[];
  rss: { rss: number; peak: number } | undefined;
  error: string | undefined;
}

/** `count` rounds; each round sends one request to every target in turn, order rotated per round. */
async function runInterleaved(
  results: TargetResult[],
  count: number,
  make: () => { method: string; path: string; body: Buffer },
  collect: (r: TargetResult, res: RequestResult) => void,
): Promise<void> {
  const agents = results.map(() => keepAliveAgent(1));
  try {
    for (let i = 0; i < count; i++) {
      for (let k = 0; k < results.length; k++) {
        const idx = (i + k) % results.length;
        const r = results[idx];
        const agent = agents[idx];
        if (!r || !agent) continue;
        const q = make();
        collect(r, await timedRequest(agent, r.target, q.method, q.path, q.body));
      }
    }
  } finally {
    for (const a of agents) a.destroy();
  }
}

async function sanityCheck(target: Target): Promise<string | undefined> {
  const agent = keepAliveAgent(1);
  try {
    const r = await timedRequest(agent, target, 'POST', '/chat/completions', CHAT_BODY, 10_000);
    if (r.status !== 200) return `sanity request got HTTP ${r.status}`;
    const s = await timedRequest(agent, target, 'POST', '/chat/completions', STREAM_BODY, 10_000);
    if (s.status !== 200) return `sanity stream got HTTP ${s.status}`;
    return undefined;
  } finally {
    agent.destroy();
  }
}

export async function runProxyTable(args: BenchArgs): Promise<TableOutcome> {
  const scale = args.quick ? 0.25 : 1;
  const seqTotal = Math.round(2000 * scale);
  const loadMs = Math.round(5000 * scale);
  const warmMs = Math.round(1500 * scale);
  const sseTotal = Math.round(60 * scale);

  console.log(`\n[proxy] host: ${os.cpus().length} CPU(s) (${os.cpus()[0]?.model ?? '?'}), node ${process.version}`);
  const fake = await startFakeUpstreamChild({ chunkIntervalMs: SSE_CHUNK_INTERVAL_MS });
  const fakeOrigin = fake.url.replace(/\/v1$/, '');
  const bare = await startBareProxyChild(fake.url);

  const targets: Target[] = [
    {
      name: 'direct (fake upstream)',
      origin: fakeOrigin,
      pathPrefix: '/v1',
      headers: { authorization: 'Bearer sk-bench-upstream' },
      pid: undefined,
    },
    {
      name: 'bare node:http proxy',
      origin: bare.origin,
      pathPrefix: '/v1',
      headers: { authorization: `Bearer ${BENCH_TOKEN}` },
      pid: bare.child.pid,
    },
  ];
  let oursNote: string;
  let oursTarget: Target | undefined;
  let oursChild: Awaited<ReturnType<typeof startOurProxyChild>> | undefined;
  const prepared = args.oursStandIn ? undefined : prepareOurProxy(args.proxyRuntime, args.proxyRoot);
  if (args.oursStandIn) {
    const standIn = await startBareProxyChild(fake.url);
    oursTarget = {
      name: 'our proxy [stand-in: bare]',
      origin: standIn.origin,
      pathPrefix: '/v1',
      headers: { authorization: `Bearer ${BENCH_TOKEN}` },
      pid: standIn.child.pid,
    };
    targets.push(oursTarget);
    oursNote = `our proxy: a second bare proxy stands in (--ours=bare), pid ${standIn.child.pid}`;
  } else if (!prepared) {
    oursNote = 'our proxy: src/index.ts or src/app.ts does not exist yet - skipped';
  } else {
    try {
      const ours = await startOurProxyChild(fake.url, prepared.runtime, {}, args.proxyRoot);
      oursChild = ours;
      oursTarget = {
        name: 'our proxy (auth+rate limit+log)',
        origin: ours.origin,
        pathPrefix: '/v1',
        headers: { authorization: `Bearer ${BENCH_TOKEN}`, 'x-mem0-memory': 'off' },
        pid: ours.child.pid,
      };
      targets.push(oursTarget);
      oursNote = `our proxy: ${prepared.note}, pid ${ours.child.pid}`;
    } catch (err) {
      oursNote = `our proxy failed to start (${prepared.note}): ${err instanceof Error ? err.message : String(err)}`;
    }
  }
  console.log(`[proxy] fake upstream ${fake.url} (pid ${fake.child.pid}), bare proxy ${bare.origin} (pid ${bare.child.pid})`);
  console.log(`[proxy] ${oursNote}`);

  const results: TargetResult[] = [];
  for (const target of targets) {
    const error = await sanityCheck(target);
    if (error) {
      console.log(`[proxy] ${target.name}: ${error} - excluded from the table`);
      if (target === oursTarget && oursChild) {
        console.log(`[proxy] our proxy log tail (${oursChild.dataDir}/proxy.log, kept):`);
        for (const l of oursChild.child.tail().split('\n').slice(-6)) console.log(`    ${l.slice(0, 400)}`);
      }
    } else if (target === oursTarget && oursChild) {
      removeTempDirLater(oursChild.dataDir);
    }
    results.push({
      target,
      latency: [],
      load: undefined,
      cpuMsPerRequest: NaN,
      upstreamCpuMsPerRequest: NaN,
      sse: [],
      rss: undefined,
      error,
    });
  }
  const live = results.filter((r) => r.error === undefined);

  // Warm-up: JIT, keep-alive pools, rate-limit maps.
  for (const r of live) {
    const seq = keepAliveAgent(1);
    const load = keepAliveAgent(CONCURRENCY);
    await runSequential(seq, r.target, Math.round(300 * scale), chatRequest);
    await runConcurrent(load, r.target, CONCURRENCY, warmMs, 20_000, chatRequest);
    seq.destroy();
    load.destroy();
  }

  // Unloaded latency: one request at a time, each target on its own keep-alive connection,
  // interleaved request by request (rotating the order) so drift and scheduler noise hit all
  // targets alike.
  console.log(`[proxy] latency: ${seqTotal} sequential requests per target, interleaved`);
  await runInterleaved(live, seqTotal, chatRequest, (r, res) => r.latency.push(res));

  // Throughput at 32 concurrent connections; CPU of the measured process around the phase.
  console.log(`[proxy] throughput: ${CONCURRENCY} connections x ${loadMs} ms per target`);
  for (const r of live) {
    const agent = keepAliveAgent(CONCURRENCY);
    const cpu0 = r.target.pid === undefined ? 0 : procCpuMs(r.target.pid);
    const up0 = procCpuMs(fake.child.pid);
    r.load = await runConcurrent(agent, r.target, CONCURRENCY, loadMs, 200_000, chatRequest);
    const up1 = procCpuMs(fake.child.pid);
    if (r.target.pid !== undefined) {
      r.cpuMsPerRequest = (procCpuMs(r.target.pid) - cpu0) / Math.max(1, r.load.requests);
      r.rss = procRssMiB(r.target.pid);
    }
    r.upstreamCpuMsPerRequest = (up1 - up0) / Math.max(1, r.load.requests);
    agent.destroy();
  }

  // SSE: time to the first body byte of a streamed chat, and to the end of the stream.
  console.log(`[proxy] SSE: ${sseTotal} streamed chats per target, interleaved (fake chunk interval ${SSE_CHUNK_INTERVAL_MS} ms)`);
  await runInterleaved(live, sseTotal, streamRequest, (r, res) => r.sse.push(res));

  // Table.
  const ok = (xs: RequestResult[]): number[] => xs.filter((x) => x.status === 200).map((x) => x.totalMs);
  const direct = live.find((r) => r.target.pid === undefined);
  const directLat = summarize(direct ? ok(direct.latency) : []);
  const rows: string[][] = [];
  const added = new Map<TargetResult, { p50: number; p99: number }>();
  for (const r of results) {
    if (r.error !== undefined) {
      rows.push([r.target.name, 'excluded', '', '', '', '', '', '', '', '', '']);
      continue;
    }
    const lat = summarize(ok(r.latency));
    const isDirect = r === direct;
    const a = { p50: lat.p50 - directLat.p50, p99: lat.p99 - directLat.p99 };
    added.set(r, a);
    const sseFirst = summarize(r.sse.filter((x) => x.status === 200).map((x) => x.firstByteMs));
    const sseTotal = summarize(ok(r.sse));
    const errors = (r.load?.errors ?? 0) + r.latency.filter((x) => x.status !== 200).length + r.sse.filter((x) => x.status !== 200).length;
    rows.push([
      r.target.name,
      fmt(lat.p50, 3),
      fmt(lat.p99, 3),
      isDirect ? '-' : fmt(a.p50, 3),
      isDirect ? '-' : fmt(a.p99, 3),
      fmt(r.load?.rps ?? NaN, 0),
      String(errors),
      isDirect ? '-' : fmt(r.cpuMsPerRequest, 3),
      fmt(sseFirst.p50, 2),
      fmt(sseTotal.p50, 2),
      r.rss ? `${fmt(r.rss.rss, 0)} (${fmt(r.rss.peak, 0)})` : '-',
    ]);
  }
  printTable(
    'Proxy overhead: POST /v1/chat/completions (small JSON, non-streamed unless noted; our proxy with X-Mem0-Memory: off)',
    [
      'target',
      'p50 ms',
      'p99 ms',
      '+p50 ms',
      '+p99 ms',
      `req/s @${CONCURRENCY}`,
      'errors',
      'CPU ms/req',
      'SSE TTFB p50',
      'SSE end p50',
      'RSS MiB (peak)',
    ],
    rows,
  );
  const upstreamCpu = live.map((r) => `${r.target.name.split(' ')[0] ?? r.target.name}=${fmt(r.upstreamCpuMsPerRequest, 3)}`).join(', ');
  console.log(`(latency: ${seqTotal} sequential requests per target, interleaved, one keep-alive connection each; "+" = minus direct;`);
  console.log(` CPU = utime+stime of the proxy process during the throughput phase / requests; fake upstream CPU ms/req: ${upstreamCpu};`);
  console.log(` SSE TTFB = first body byte of a streamed chat; the fake sends ~11 events ${SSE_CHUNK_INTERVAL_MS} ms apart)`);

  // Bars.
  const bars: TableOutcome['bars'] = [];
  const bareRes = live.find((r) => r.target.name.startsWith('bare'));
  const oursRes = live.find((r) => r.target.name.startsWith('our'));
  if (bareRes && oursRes) {
    const bareAdded = added.get(bareRes)?.p50 ?? NaN;
    const oursAdded = added.get(oursRes)?.p50 ?? NaN;
    // Floor the denominator at 10 us: below that the bare proxy's overhead is timer noise.
    const latRatio = oursAdded / Math.max(bareAdded, 0.01);
    const cpuRatio = oursRes.cpuMsPerRequest / bareRes.cpuMsPerRequest;
    const latPass = latRatio <= MAX_ADDED_P50_RATIO;
    const cpuPass = cpuRatio <= MAX_CPU_PER_REQUEST_RATIO;
    bars.push({ name: 'added p50 ratio', pass: latPass }, { name: 'CPU/request ratio', pass: cpuPass });
    console.log('');
    console.log(
      `bar: our added p50 ${fmt(oursAdded, 3)} ms / bare ${fmt(bareAdded, 3)} ms = ${fmt(latRatio, 2)}x (<= ${MAX_ADDED_P50_RATIO}x)  ${latPass ? 'PASS' : 'FAIL'}`,
    );
    console.log(
      `bar: our CPU/request ${fmt(oursRes.cpuMsPerRequest, 3)} ms / bare ${fmt(bareRes.cpuMsPerRequest, 3)} ms = ${fmt(cpuRatio, 2)}x (<= ${MAX_CPU_PER_REQUEST_RATIO}x)  ${cpuPass ? 'PASS' : 'FAIL'}`,
    );
  } else {
    console.log('\nbars: not evaluated (our proxy is not in the table)');
  }
  await stopAllChildren();
  return { bars };
}

// ---------------------------------------------------------------------------------------------
// Registry and main
// ---------------------------------------------------------------------------------------------

const TABLES: TableEntry[] = [
  { name: 'proxy', description: 'proxy overhead: direct vs bare node:http proxy vs our proxy', run: runProxyTable },
  {
    name: 'memory-store',
    description: 'memory store operations',
    optionalModule: { file: 'memory-store.ts', exportName: 'runMemoryStoreBench' },
  },
  {
    name: 'chat-memory',
    description: 'chat with memory injection',
    optionalModule: { file: 'chat-memory.ts', exportName: 'runChatMemoryBench' },
  },
  {
    name: 'embedder',
    description: "the engine's embedding client against mem0's, per request",
    optionalModule: { file: 'embedder.ts', exportName: 'runEmbedderBench' },
  },
  {
    name: 'abuse',
    description: '/health latency and RSS under slow-body, deep-nested and MCP-batch attacks',
    optionalModule: { file: 'abuse.ts', exportName: 'runAbuseBench' },
  },
];

function isOutcome(v: unknown): v is TableOutcome {
  return typeof v === 'object' && v !== null && Array.isArray((v as { bars?: unknown }).bars);
}

async function runEntry(entry: TableEntry, args: BenchArgs): Promise<TableOutcome | undefined> {
  if (entry.run) {
    const out = await entry.run(args);
    return out ?? undefined;
  }
  const mod = entry.optionalModule;
  if (!mod) return undefined;
  const file = path.join(__dirname, mod.file);
  if (!fs.existsSync(file)) {
    console.log(`\n[${entry.name}] bench/${mod.file} does not exist yet - skipped`);
    return undefined;
  }
  const loaded = (await import(file)) as unknown as Record<string, unknown>;
  const fn = loaded[mod.exportName];
  if (typeof fn !== 'function') throw new Error(`bench/${mod.file} does not export ${mod.exportName}()`);
  const out: unknown = await (fn as (a: BenchArgs) => Promise<unknown>)(args);
  return isOutcome(out) ? out : undefined;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const selected = args.only === undefined ? TABLES : TABLES.filter((t) => t.name === args.only);
  if (selected.length === 0) {
    throw new Error(`--only=${String(args.only)}: no such table (have: ${TABLES.map((t) => t.name).join(', ')})`);
  }
  const started = Date.now();
  const failed: string[] = [];
  for (const entry of selected) {
    try {
      const out = await runEntry(entry, args);
      for (const bar of out?.bars ?? []) if (!bar.pass) failed.push(`${entry.name}: ${bar.name}`);
    } finally {
      await stopAllChildren();
    }
  }
  console.log(
    `\nbench finished in ${fmt((Date.now() - started) / 1000, 1)} s${failed.length ? `; failed bars: ${failed.join('; ')}` : ''}`,
  );
  if (failed.length > 0 && args.strict) process.exitCode = 1;
}

// Only when run as the entry point, so other bench files can import runProxyTable.
if (require.main === module) {
  main().catch(async (err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
    await stopAllChildren();
    process.exit(1);
  });
}
