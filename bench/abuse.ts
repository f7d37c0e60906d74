/**
 * `npm run bench -- --only=abuse`: does an attack on one route slow down or bloat the proxy for
 * everybody else? Our proxy runs in its own process (auth on, memory on with the embedded store
 * in a temp DATA_DIR, the fake OpenAI upstream as chat upstream, LLM and embedder, rate limits
 * far out of the way). Four phases, each `PHASE_MS` long; in every phase this process samples
 * `GET /health` (with the token, one keep-alive connection, one request every `HEALTH_PERIOD_MS`,
 * ~200 per phase) and the proxy's VmRSS (/proc/<pid>/status, every `RSS_PERIOD_MS`):
 *
 *   baseline     nothing else.
 *   slow-body    ~500 sockets POST /v1/chat/completions without a key, `Content-Length: 100000000`,
 *                then one body byte per second. The proxy should answer 401 and close each;
 *                we count how many are still open 5 s after they were all opened.
 *   deep-nested  authenticated POST /v1/chat/completions, back to back, body
 *                `{"model":"m","messages":[...],"x":` + 2,000,000 `[` + 2,000,000 `]` + `}`
 *                (4 MB); the proxy should answer 400.
 *   mcp-batch    authenticated POST /mcp, back to back, a JSON-RPC batch of 100 `tools/call`
 *                `search_memories` (limit 1000); the proxy should answer 400 with -32600.
 *
 * Target: /health p99 <= 50 ms and RSS bounded (peak VmRSS of the phase <= baseline peak +
 * `RSS_BOUND_MIB`) during each attack. Loopback only; node:http / node:net only.
 */
import * as net from 'node:net';
import * as os from 'node:os';
import {
  BENCH_TOKEN,
  fmt,
  keepAliveAgent,
  prepareOurProxy,
  printTable,
  procRssMiB,
  removeTempDirLater,
  sleep,
  startFakeUpstreamChild,
  startOurProxyChild,
  stopAllChildren,
  stopChild,
  spawnNode,
  summarize,
  timedRequest,
  baseEnv,
  waitForReadyLine,
  READY_PREFIX,
  TSX_IMPORT,
  type RequestResult,
  type Target,
} from './lib';
import type { BenchArgs, TableOutcome } from './run';

const MANY = '1000000';
const HEALTH_P99_BAR_MS = 50;
/** "RSS bounded": the phase's peak VmRSS may exceed the baseline's peak by at most this. */
const RSS_BOUND_MIB = 100;
const HEALTH_PERIOD_MS = 50;
const RSS_PERIOD_MS = 100;
const SLOW_SOCKETS = 500;
const SLOW_CHECK_MS = 5000;
const DEEP_DEPTH = 2_000_000;
const MCP_BATCH = 100;

interface PhaseResult {
  name: string;
  health: number[];
  healthErrors: number;
  rssPeak: number;
  attack: string;
  outcome: string;
  outcomeOk: boolean;
  note?: string;
}

// ---------------------------------------------------------------------------------------------
// Samplers
// ---------------------------------------------------------------------------------------------

/** GET /health one at a time, one started every `HEALTH_PERIOD_MS` (or right after a slow one). */
async function sampleHealth(target: Target, durationMs: number): Promise<{ ms: number[]; errors: number }> {
  const agent = keepAliveAgent(1);
  const ms: number[] = [];
  let errors = 0;
  const deadline = Date.now() + durationMs;
  try {
    while (Date.now() < deadline) {
      const t0 = Date.now();
      const r = await timedRequest(agent, target, 'GET', '/health', undefined, 10_000);
      if (r.status === 200) ms.push(r.totalMs);
      else errors++;
      const wait = HEALTH_PERIOD_MS - (Date.now() - t0);
      if (wait > 0) await sleep(wait);
    }
  } finally {
    agent.destroy();
  }
  return { ms, errors };
}

/** Samples VmRSS until stopped; returns the peak seen. */
function sampleRss(pid: number): { stop: () => number } {
  let peak = procRssMiB(pid).rss;
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, procRssMiB(pid).rss);
    } catch {
      // process gone
    }
  }, RSS_PERIOD_MS);
  return {
    stop: () => {
      clearInterval(timer);
      try {
        peak = Math.max(peak, procRssMiB(pid).rss);
      } catch {
        // process gone
      }
      return peak;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------------------------

interface SlowResult {
  opened: number;
  got401: number;
  closed401By5s: number;
  openAt5s: number;
  otherStatus: Map<string, number>;
}

/** `count` keyless slow-body sockets; runs until `durationMs`, then destroys what is left. */
async function slowBodyAttack(port: number, count: number, durationMs: number): Promise<SlowResult> {
  const head =
    `POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\n` +
    `Content-Length: 100000000\r\n\r\n`;
  interface S {
    sock: net.Socket;
    status: string | undefined;
    closedAt: number | undefined;
    buf: string;
  }
  const socks: S[] = [];
  const t0 = Date.now();
  await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<void>((resolve) => {
          const s: S = { sock: net.connect({ host: '127.0.0.1', port }), status: undefined, closedAt: undefined, buf: '' };
          socks.push(s);
          s.sock.setNoDelay(true);
          s.sock.once('connect', () => {
            s.sock.write(head);
            s.sock.write('{');
            resolve();
          });
          s.sock.on('data', (c: Buffer) => {
            if (s.status !== undefined) return;
            s.buf += c.toString('latin1');
            const m = /^HTTP\/1\.[01] (\d{3})/.exec(s.buf);
            if (m) s.status = m[1];
            else if (s.buf.includes('\r\n')) s.status = 'garbled';
          });
          s.sock.on('error', () => undefined);
          s.sock.once('close', () => {
            s.closedAt = Date.now();
            resolve();
          });
        }),
    ),
  );
  const opened = Date.now();
  const ticker = setInterval(() => {
    for (const s of socks) if (s.closedAt === undefined && s.sock.writable) s.sock.write(' ');
  }, 1000);
  await sleep(Math.max(0, Math.min(SLOW_CHECK_MS, durationMs) - (opened - t0)));
  const checkAt = Date.now();
  const openAt5s = socks.filter((s) => s.closedAt === undefined).length;
  const closed401By5s = socks.filter((s) => s.status === '401' && s.closedAt !== undefined && s.closedAt <= checkAt).length;
  await sleep(Math.max(0, durationMs - (Date.now() - t0)));
  clearInterval(ticker);
  for (const s of socks) s.sock.destroy();
  const otherStatus = new Map<string, number>();
  for (const s of socks) {
    if (s.status === '401') continue;
    const k = s.status ?? 'none';
    otherStatus.set(k, (otherStatus.get(k) ?? 0) + 1);
  }
  return { opened: socks.length, got401: socks.filter((s) => s.status === '401').length, closed401By5s, openAt5s, otherStatus };
}

/** Sends `make()` back to back on one connection until `durationMs`; counts replies by `classify`. */
async function backToBack(
  port: number,
  path: string,
  headers: Record<string, string>,
  body: Buffer,
  durationMs: number,
  classify: (r: RequestResult) => string,
): Promise<{ counts: Map<string, number>; ms: number[]; total: number }> {
  const agent = keepAliveAgent(1);
  const target: Target = { name: 'attack', origin: `http://127.0.0.1:${port}`, pathPrefix: '', headers, pid: undefined };
  const counts = new Map<string, number>();
  const ms: number[] = [];
  let total = 0;
  const deadline = Date.now() + durationMs;
  try {
    while (Date.now() < deadline) {
      const r = await timedRequest(agent, target, 'POST', path, body, 30_000, 65_536);
      total++;
      const k = classify(r);
      counts.set(k, (counts.get(k) ?? 0) + 1);
      ms.push(r.totalMs);
    }
  } finally {
    agent.destroy();
  }
  return { counts, ms, total };
}

function others(counts: Map<string, number>, expected: string): string {
  const rest = [...counts].filter(([k]) => k !== expected).map(([k, n]) => `${k}: ${n}`);
  return rest.length ? `, ${rest.join(', ')}` : '';
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

export async function runAbuseBench(args: BenchArgs): Promise<TableOutcome> {
  const bars: TableOutcome['bars'] = [];
  const phaseMs = args.quick ? 6000 : 10_000;
  console.log(`\n[abuse] host: ${os.cpus().length} CPU(s) (${os.cpus()[0]?.model ?? '?'}), node ${process.version}`);
  const prepared = prepareOurProxy(args.proxyRuntime, args.proxyRoot);
  if (!prepared) {
    console.log('[abuse] our proxy: src/index.ts or src/app.ts does not exist - table skipped');
    return { bars };
  }
  const fake = await startFakeUpstreamChild();
  const proxy = await startOurProxyChild(
    fake.url,
    prepared.runtime,
    { RATE_LIMIT_V1: MANY, RATE_LIMIT_MCP: MANY, RATE_LIMIT_HEALTH: MANY, RATE_LIMIT_FAILED_AUTH: MANY },
    args.proxyRoot,
  );
  const pid = proxy.child.pid;
  console.log(
    `[abuse] fake upstream ${fake.url} (pid ${fake.child.pid}); our proxy ${proxy.origin} (${prepared.note}, pid ${pid}, DATA_DIR ${proxy.dataDir})`,
  );
  const target: Target = { name: 'health', origin: proxy.origin, pathPrefix: '', headers: { authorization: `Bearer ${BENCH_TOKEN}` }, pid };

  // Warm-up: JIT for /health and the two refusal paths.
  await sampleHealth(target, 500);
  const results: PhaseResult[] = [];
  let keepLog = false;

  const phase = async (name: string, start: () => Promise<{ done: Promise<AttackOutcome> }>): Promise<void> => {
    console.log(`[abuse] phase ${name}: ${phaseMs} ms`);
    const attack = (await start()).done; // resolves once the attack has begun
    const rss = sampleRss(pid);
    const [health, a] = await Promise.all([sampleHealth(target, phaseMs), attack]);
    const rssPeak = rss.stop();
    results.push({ name, health: health.ms, healthErrors: health.errors, rssPeak, ...a });
    await sleep(1000); // let the proxy settle between phases
  };

  try {
    await phase('baseline (quiet)', async () => ({ done: sleep(phaseMs).then(() => ({ attack: '-', outcome: '-', outcomeOk: true })) }));

    for (const [kind, name] of [
      ['slow', 'slow-body sockets'],
      ['deep', 'deep-nested bodies'],
      ['mcp', 'big MCP batches'],
    ] as const) {
      await phase(name, () => attackInChild(kind, proxy.port, phaseMs));
    }
  } catch (err) {
    keepLog = true;
    throw err;
  } finally {
    if (proxy.child.proc.exitCode !== null || proxy.child.proc.signalCode !== null) keepLog = true;
    await stopChild(proxy.child, 10_000);
    if (keepLog) {
      console.log(`[abuse] our proxy log tail (${proxy.dataDir}/proxy.log, kept):`);
      for (const l of proxy.child.tail().split('\n').slice(-8)) console.log(`    ${l.slice(0, 400)}`);
    } else {
      removeTempDirLater(proxy.dataDir);
    }
  }

  // Table.
  const baseline = results[0];
  const baseRss = baseline?.rssPeak ?? NaN;
  const rows = results.map((r) => {
    const s = summarize(r.health);
    return [
      r.name,
      fmt(s.p50, 2),
      fmt(s.p99, 2),
      fmt(r.rssPeak, 1),
      r.attack,
      `${r.outcome}${r.healthErrors ? ` (/health errors: ${r.healthErrors})` : ''}`,
    ];
  });
  printTable(
    `Abuse: /health latency and proxy RSS while an attack runs (${fmt(phaseMs / 1000, 0)} s per phase)`,
    ['phase', '/health p50 ms', '/health p99 ms', 'RSS MiB', 'attack requests/sockets', 'outcome'],
    rows,
  );
  const n = results.map((r) => r.health.length);
  console.log(
    `(/health: GET with the token, one keep-alive connection, one every ${HEALTH_PERIOD_MS} ms: ${n.join('/')} samples per phase;`,
  );
  console.log(
    ` RSS = peak VmRSS of the proxy process sampled every ${RSS_PERIOD_MS} ms; each attack runs in its own child process, deep-nested and MCP on one connection back to back;`,
  );
  console.log(` "RSS bounded" = peak <= baseline peak (${fmt(baseRss, 1)} MiB) + ${RSS_BOUND_MIB} MiB)`);

  const marks: string[] = [];
  for (const r of results.slice(1)) {
    const s = summarize(r.health);
    const pass = s.p99 <= HEALTH_P99_BAR_MS && r.rssPeak <= baseRss + RSS_BOUND_MIB && r.healthErrors === 0 && r.health.length > 0;
    marks.push(`${r.name} ${pass ? '✓' : '✗'}`);
    bars.push({ name: `${r.name}: /health p99 + RSS`, pass }, { name: `${r.name}: outcome`, pass: r.outcomeOk });
  }
  console.log('');
  console.log(`target: /health p99 ≤ ${HEALTH_P99_BAR_MS} ms and RSS bounded during each attack: ${marks.join(', ')}`);
  await stopAllChildren();
  return { bars };
}

// ---------------------------------------------------------------------------------------------
// The attacker child: each attack runs in its own process, so the load generator's own work
// (500 connects, 4 MB writes) does not delay this process's /health sampling.
// ---------------------------------------------------------------------------------------------

type AttackKind = 'slow' | 'deep' | 'mcp';
interface AttackOutcome {
  attack: string;
  outcome: string;
  outcomeOk: boolean;
}
const RESULT_PREFIX = 'ABUSE_RESULT ';

/** Starts the attacker child; resolves (once it is running) with a promise of its outcome. */
async function attackInChild(kind: AttackKind, port: number, durationMs: number): Promise<{ done: Promise<AttackOutcome> }> {
  const child = spawnNode(
    `abuse-${kind}`,
    ['--import', TSX_IMPORT, __filename, `--attack=${kind}`, `--port=${port}`, `--ms=${durationMs}`],
    { env: baseEnv({ NODE_ENV: 'production' }) },
  );
  let out = '';
  child.proc.stdout?.on('data', (c: Buffer) => {
    out += c.toString('utf8');
  });
  const done = new Promise<AttackOutcome>((resolve, reject) => {
    child.proc.once('exit', (code) => {
      const line = out.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
      if (line) resolve(JSON.parse(line.slice(RESULT_PREFIX.length)) as AttackOutcome);
      else reject(new Error(`attacker ${kind} exited (${String(code)}) without a result:\n${child.tail()}`));
    });
  });
  done.catch(() => undefined);
  await waitForReadyLine(child);
  return { done };
}

async function runAttack(kind: AttackKind, port: number, phaseMs: number): Promise<AttackOutcome> {
  const auth = { authorization: `Bearer ${BENCH_TOKEN}` };
  if (kind === 'slow') {
    const r = await slowBodyAttack(port, SLOW_SOCKETS, phaseMs);
    const other = [...r.otherStatus].map(([k, n]) => `${k === 'none' ? 'no answer' : k}: ${n}`).join(', ');
    return {
      attack: `${r.opened} sockets`,
      outcome: `401+closed: ${r.closed401By5s}/${r.opened}, open@5s: ${r.openAt5s}${other ? `, ${other}` : ''}`,
      outcomeOk: r.closed401By5s === r.opened && r.openAt5s === 0,
    };
  }
  if (kind === 'deep') {
    const deepBody = Buffer.concat([
      Buffer.from('{"model":"m","messages":[{"role":"user","content":"hi"}],"x":'),
      Buffer.alloc(DEEP_DEPTH, '['),
      Buffer.alloc(DEEP_DEPTH, ']'),
      Buffer.from('}'),
    ]);
    const r = await backToBack(port, '/v1/chat/completions', auth, deepBody, phaseMs, (x) => String(x.status));
    const n400 = r.counts.get('400') ?? 0;
    return {
      attack: `${r.total} requests`,
      outcome: `400: ${n400}${others(r.counts, '400')}, mean ${fmt(summarize(r.ms).mean, 1)} ms`,
      outcomeOk: r.total > 0 && n400 === r.total,
    };
  }
  const batch = Buffer.from(
    JSON.stringify(
      Array.from({ length: MCP_BATCH }, (_, i) => ({
        jsonrpc: '2.0',
        id: i + 1,
        method: 'tools/call',
        params: { name: 'search_memories', arguments: { query: 'anything', limit: 1000 } },
      })),
    ),
  );
  const r = await backToBack(port, '/mcp', { ...auth, accept: 'application/json, text/event-stream' }, batch, phaseMs, (x) => {
    if (x.status !== 400) return String(x.status);
    try {
      const code = (JSON.parse(x.text ?? '') as { error?: { code?: unknown } }).error?.code;
      return code === -32600 ? '-32600' : `400/${String(code)}`;
    } catch {
      return '400/non-JSON';
    }
  });
  const n = r.counts.get('-32600') ?? 0;
  return {
    attack: `${r.total} requests`,
    outcome: `-32600: ${n}${others(r.counts, '-32600')}, mean ${fmt(summarize(r.ms).mean, 1)} ms`,
    outcomeOk: r.total > 0 && n === r.total,
  };
}

async function attackerMain(argv: readonly string[]): Promise<void> {
  const get = (name: string): string | undefined => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const kind = get('attack');
  if (kind !== 'slow' && kind !== 'deep' && kind !== 'mcp') throw new Error(`--attack must be slow, deep or mcp (got ${String(kind)})`);
  const port = Number(get('port'));
  const ms = Number(get('ms'));
  const running = runAttack(kind, port, ms);
  process.stdout.write(`${READY_PREFIX}{}\n`);
  const result = await running;
  process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(result)}\n`);
}

if (require.main === module) {
  attackerMain(process.argv.slice(2)).then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
      process.exit(1);
    },
  );
}
