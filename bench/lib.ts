/**
 * Shared benchmark plumbing: child processes (fake upstream, bare proxy, our proxy), a node:http
 * keep-alive load generator, /proc readings (CPU time, RSS), percentiles and table printing.
 * Everything stays on 127.0.0.1. Other tables (bench/memory-store.ts, a chat-with-memory table)
 * can reuse these helpers.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import * as ts from 'typescript';

export const ROOT = path.resolve(__dirname, '..');
export const HOST = '127.0.0.1';
/** `--import <tsx loader>` by absolute URL, so children can run .ts from any working directory. */
export const TSX_IMPORT = pathToFileURL(require.resolve('tsx')).href;
export const READY_PREFIX = 'BENCH_READY ';

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

export function percentile(sortedAsc: readonly number[], p: number): number {
  if (sortedAsc.length === 0) return NaN;
  const rank = Math.min(sortedAsc.length - 1, Math.max(0, Math.ceil((p / 100) * sortedAsc.length) - 1));
  return sortedAsc[rank] ?? NaN;
}

export interface Summary {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  mean: number;
}

export function summarize(values: readonly number[]): Summary {
  const s = [...values].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  return { n: s.length, p50: percentile(s, 50), p90: percentile(s, 90), p99: percentile(s, 99), mean };
}

export function fmt(n: number, digits = 2): string {
  if (!Number.isFinite(n)) return 'n/a';
  return n.toFixed(digits);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Prints a plain-text table (first column left-aligned, the rest right-aligned). */
export function printTable(title: string, header: readonly string[], rows: ReadonlyArray<readonly string[]>): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  console.log('');
  console.log(title);
  console.log('='.repeat(Math.max(title.length, line(header).length)));
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) console.log(line(r));
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

let clockTicks: number | undefined;
function clkTck(): number {
  if (clockTicks === undefined) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const n = Number.parseInt(r.stdout ?? '', 10);
    clockTicks = Number.isFinite(n) && n > 0 ? n : 100;
  }
  return clockTicks;
}

/** User + system CPU time of a process (all its threads), in ms, from /proc/PID/stat. */
export function procCpuMs(pid: number): number {
  return statCpuMs(`/proc/${pid}/stat`);
}

/** CPU time of the process's main thread only (the thread that serves HTTP), from /proc/PID/task/PID/stat. */
export function mainThreadCpuMs(pid: number): number {
  return statCpuMs(`/proc/${pid}/task/${pid}/stat`);
}

function statCpuMs(file: string): number {
  const stat = fs.readFileSync(file, 'utf8');
  // The command name (field 2) may contain spaces: split after its closing parenthesis.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime is field 14, stime field 15.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  return ((utime + stime) * 1000) / clkTck();
}

/** Resident set size (VmRSS) and its peak (VmHWM) in MiB, from /proc/PID/status. */
export function procRssMiB(pid: number): { rss: number; peak: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status);
    return m ? Number(m[1]) / 1024 : NaN;
  };
  return { rss: kb('VmRSS'), peak: kb('VmHWM') };
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

export interface Child {
  name: string;
  proc: ChildProcess;
  pid: number;
  /** Last output lines (stdout+stderr), for error messages. */
  tail(): string;
}

const running = new Set<Child>();

function killSync(child: Child): void {
  if (child.proc.exitCode === null && child.proc.signalCode === null) {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

// Last resort: never leave children behind, even on an uncaught error or Ctrl-C.
process.once('exit', () => {
  for (const c of running) killSync(c);
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    for (const c of running) killSync(c);
    process.exit(130);
  });
}

/** Stops one child: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopChild(child: Child, graceMs = 3000): Promise<void> {
  running.delete(child);
  const p = child.proc;
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
  try {
    process.kill(child.pid, 'SIGTERM');
  } catch {
    return;
  }
  const timer = setTimeout(() => killSync(child), graceMs);
  await exited;
  clearTimeout(timer);
}

export async function stopAllChildren(): Promise<void> {
  await Promise.all([...running].map((c) => stopChild(c)));
}

export interface SpawnOptions {
  env: Record<string, string>;
  cwd?: string;
  /** Send stdout/stderr to this file instead of a pipe (nothing for the parent to drain). */
  logFile?: string;
}

/** Spawns `node <args>` directly (no npx/shell wrapper: the PID is the measured process). */
export function spawnNode(name: string, args: readonly string[], opts: SpawnOptions): Child {
  let out: number | 'pipe' = 'pipe';
  if (opts.logFile) out = fs.openSync(opts.logFile, 'a');
  const proc = spawn(process.execPath, [...args], {
    cwd: opts.cwd ?? ROOT,
    env: opts.env,
    stdio: ['ignore', out, out],
  });
  if (typeof out === 'number') fs.closeSync(out);
  if (proc.pid === undefined) throw new Error(`${name}: failed to spawn`);
  const lines: string[] = [];
  const keep = (chunk: Buffer): void => {
    for (const l of chunk.toString('utf8').split('\n')) {
      if (l.trim()) lines.push(l);
    }
    if (lines.length > 40) lines.splice(0, lines.length - 40);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  const child: Child = {
    name,
    proc,
    pid: proc.pid,
    tail: () => {
      if (opts.logFile && fs.existsSync(opts.logFile)) {
        return fs.readFileSync(opts.logFile, 'utf8').split('\n').slice(-40).join('\n');
      }
      return lines.join('\n');
    },
  };
  running.add(child);
  proc.once('exit', () => running.delete(child));
  return child;
}

/** Waits for a `BENCH_READY {json}` line on the child's stdout. */
export function waitForReadyLine(child: Child, timeoutMs = 30_000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => fail(new Error(`${child.name}: not ready after ${timeoutMs} ms\n${child.tail()}`)), timeoutMs);
    const onData = (chunk: Buffer): void => {
      buf += chunk.toString('utf8');
      const idx = buf.indexOf(READY_PREFIX);
      const end = idx >= 0 ? buf.indexOf('\n', idx) : -1;
      if (idx >= 0 && end >= 0) {
        cleanup();
        try {
          resolve(JSON.parse(buf.slice(idx + READY_PREFIX.length, end)) as Record<string, unknown>);
        } catch (err) {
          reject(err instanceof Error ? err : new Error(String(err)));
        }
      }
    };
    const onExit = (code: number | null): void => fail(new Error(`${child.name}: exited (${String(code)}) before ready\n${child.tail()}`));
    const cleanup = (): void => {
      clearTimeout(timer);
      child.proc.stdout?.off('data', onData);
      child.proc.off('exit', onExit);
    };
    const fail = (err: Error): void => {
      cleanup();
      reject(err);
    };
    child.proc.stdout?.on('data', onData);
    child.proc.once('exit', onExit);
  });
}

/** A free TCP port on 127.0.0.1 (tiny race between closing it and the child binding it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** A minimal environment for children: no inherited secrets or upstream settings. */
export function baseEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TZ']) {
    const v = process.env[key];
    if (v !== undefined) env[key] = v;
  }
  return { ...env, ...extra };
}

export function makeTempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Temp dirs to remove when the bench exits. */
const tempDirs = new Set<string>();
process.once('exit', () => {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});

export function removeTempDirLater(dir: string): void {
  tempDirs.add(dir);
}

/**
 * The helper children (fake upstream, bare proxy) run as plain JavaScript, not through the tsx
 * loader, so their RSS and start-up are not inflated by it. Their sources only import node
 * built-ins and each other, so a per-file transpile into a temp tree is enough.
 */
const CHILD_SOURCES = ['bench/bare-proxy.ts', 'bench/fake-upstream-server.ts', 'test/fakes/openai-upstream.ts', 'test/fakes/exchange.ts'];
let transpiledRoot: string | undefined;

export function transpiledChild(relTsFile: string): string {
  if (transpiledRoot === undefined) {
    const root = makeTempDir('bench-children-');
    removeTempDirLater(root);
    for (const rel of CHILD_SOURCES) {
      const src = fs.readFileSync(path.join(ROOT, rel), 'utf8');
      const out = ts.transpileModule(src, {
        fileName: rel,
        compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
      });
      const dest = path.join(root, rel.replace(/\.ts$/, '.js'));
      fs.mkdirSync(path.dirname(dest), { recursive: true });
      fs.writeFileSync(dest, out.outputText);
    }
    transpiledRoot = root;
  }
  return path.join(transpiledRoot, relTsFile.replace(/\.ts$/, '.js'));
}

// ---------------------------------------------------------------------------------------------
// The three targets
// ---------------------------------------------------------------------------------------------

export interface FakeUpstreamChild {
  child: Child;
  /** Base URL ending in /v1. */
  url: string;
  port: number;
}

export interface FakePacing {
  firstTokenDelayMs?: number;
  chunkIntervalMs?: number;
  responseDelayMs?: number;
  /** Extra delay before every /v1/embeddings answer (a real embeddings round trip is ~120 ms). */
  embeddingDelayMs?: number;
}

/** The fake OpenAI upstream (test/fakes/openai-upstream.ts) in its own process. */
export async function startFakeUpstreamChild(pacing: FakePacing = {}): Promise<FakeUpstreamChild> {
  const args = [
    transpiledChild('bench/fake-upstream-server.ts'),
    `--first-token-ms=${pacing.firstTokenDelayMs ?? 0}`,
    `--chunk-interval-ms=${pacing.chunkIntervalMs ?? 0}`,
    `--response-delay-ms=${pacing.responseDelayMs ?? 0}`,
    `--embedding-delay-ms=${pacing.embeddingDelayMs ?? 0}`,
  ];
  const child = spawnNode('fake-upstream', args, { env: baseEnv({ NODE_ENV: 'production' }) });
  const info = await waitForReadyLine(child);
  return { child, url: String(info['url']), port: Number(info['port']) };
}

export interface ProxyChild {
  child: Child;
  /** Origin, e.g. http://127.0.0.1:PORT */
  origin: string;
  port: number;
}

/** The minimal node:http pass-through proxy (bench/bare-proxy.ts) in its own process. */
export async function startBareProxyChild(upstreamV1Url: string): Promise<ProxyChild> {
  const args = [transpiledChild('bench/bare-proxy.ts'), `--upstream=${upstreamV1Url}`];
  const child = spawnNode('bare-proxy', args, { env: baseEnv({ NODE_ENV: 'production' }) });
  const info = await waitForReadyLine(child);
  const port = Number(info['port']);
  return { child, origin: `http://${HOST}:${port}`, port };
}

export type ProxyRuntime = 'dist' | 'tsx';

/**
 * Builds the proxy once (`tsc -p tsconfig.build.json`) and says how to run it: `dist` when the
 * build succeeded and dist/index.js exists, else `tsx` (src/index.ts through the tsx loader).
 */
export function prepareOurProxy(
  prefer: ProxyRuntime | 'auto' = 'auto',
  root: string = ROOT,
): { runtime: ProxyRuntime; note: string } | undefined {
  const srcEntry = path.join(root, 'src', 'index.ts');
  if (!fs.existsSync(srcEntry) || !fs.existsSync(path.join(root, 'src', 'app.ts'))) return undefined;
  if (prefer === 'tsx') return { runtime: 'tsx', note: 'src/index.ts via tsx (--proxy-runtime=tsx)' };
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: root, encoding: 'utf8', timeout: 120_000 });
  const built = r.status === 0 && fs.existsSync(path.join(root, 'dist', 'index.js'));
  if (built) return { runtime: 'dist', note: `dist/index.js (tsc build ${Date.now() - t0} ms)` };
  const why = (r.stdout || r.stderr || r.error?.message || '').split('\n').filter(Boolean).slice(0, 3).join(' | ');
  if (prefer === 'dist') throw new Error(`tsc build failed: ${why}`);
  return { runtime: 'tsx', note: `src/index.ts via tsx (tsc build failed: ${why.slice(0, 160)})` };
}

export const BENCH_TOKEN = 'bench-token';

/** Our proxy (src/index.ts) in its own process, auth and (huge) rate limits on, loopback only. */
export async function startOurProxyChild(
  upstreamV1Url: string,
  runtime: ProxyRuntime,
  extraEnv: Record<string, string> = {},
  root: string = ROOT,
): Promise<ProxyChild & { dataDir: string }> {
  const dataDir = makeTempDir('bench-proxy-');
  const port = await freePort();
  const env = baseEnv({
    SERVER_HOST: HOST,
    SERVER_PORT: String(port),
    UPSTREAM_BASE_URL: upstreamV1Url,
    MEM0_LLM_BASE_URL: upstreamV1Url,
    MEM0_EMBEDDER_BASE_URL: upstreamV1Url,
    AUTH_TOKEN: BENCH_TOKEN,
    OPENAI_API_KEY: 'sk-bench-upstream',
    RATE_LIMIT_V1: '100000000',
    RATE_LIMIT_HEALTH: '100000000',
    DATA_DIR: dataDir,
    MEM0_DIR: path.join(dataDir, 'mem0'),
    MEM0_TELEMETRY: 'false',
    NODE_ENV: 'production',
    MEMORY_BACKEND: 'embedded',
    ...extraEnv,
  });
  // BENCH_PROXY_NODE_ARGS: node flags for the proxy alone, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
  // (a profile per thread, the engine's included; NODE_OPTIONS refuses --cpu-prof).
  const nodeArgs = (process.env.BENCH_PROXY_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const entry = runtime === 'dist' ? [path.join(root, 'dist', 'index.js')] : ['--import', TSX_IMPORT, path.join(root, 'src', 'index.ts')];
  const args = [...nodeArgs, ...entry];
  // cwd = the temp dir, so a developer's .env in the project root is never read.
  const child = spawnNode('our-proxy', args, { env, cwd: dataDir, logFile: path.join(dataDir, 'proxy.log') });
  const origin = `http://${HOST}:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.proc.exitCode !== null) throw new Error(`our proxy exited (${child.proc.exitCode}) before ready:\n${child.tail()}`);
    const status = await new Promise<number>((resolve) => {
      const req = http.get(`${origin}/health`, { headers: { authorization: `Bearer ${BENCH_TOKEN}` }, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', () => resolve(0));
      req.setTimeout(1000, () => req.destroy());
    });
    if (status === 200) break;
    if (Date.now() > deadline) throw new Error(`our proxy: /health not 200 after 30 s (last ${status}):\n${child.tail()}`);
    await sleep(100);
  }
  return { child, origin, port, dataDir };
}

// ---------------------------------------------------------------------------------------------
// Load generation (node:http + keep-alive Agent)
// ---------------------------------------------------------------------------------------------

export interface Target {
  name: string;
  /** Origin, e.g. http://127.0.0.1:PORT */
  origin: string;
  /** Path prefix up to and including /v1 (the fake and both proxies serve /v1/...). */
  pathPrefix: string;
  headers: Record<string, string>;
  /** Process to measure (undefined for "direct"). */
  pid: number | undefined;
}

export interface RequestResult {
  status: number;
  /** ms from request start to the response headers. */
  headersMs: number;
  /** ms from request start to the first body byte (NaN when there is no body). */
  firstByteMs: number;
  /** ms from request start to the end of the body. */
  totalMs: number;
  bytes: number;
  /** The first `keepBodyChars` characters of the body (utf8), when asked for. */
  text?: string;
}

export function keepAliveAgent(maxSockets: number): http.Agent {
  return new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets, keepAliveMsecs: 30_000 });
}

/**
 * One request; resolves with timings (never rejects: network errors give status 0). With
 * `keepBodyChars` the answer's beginning comes back as `text`.
 */
export function timedRequest(
  agent: http.Agent,
  target: Target,
  method: string,
  pathSuffix: string,
  body: Buffer | undefined,
  timeoutMs = 30_000,
  keepBodyChars = 0,
): Promise<RequestResult> {
  return new Promise((resolve) => {
    const url = new URL(target.origin);
    const t0 = process.hrtime.bigint();
    const ms = (): number => Number(process.hrtime.bigint() - t0) / 1e6;
    let done = false;
    const finish = (r: RequestResult): void => {
      if (!done) {
        done = true;
        resolve(r);
      }
    };
    const headers: Record<string, string | number> = { ...target.headers };
    if (body) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = body.length;
    }
    const req = http.request(
      { host: url.hostname, port: url.port, method, path: target.pathPrefix + pathSuffix, headers, agent },
      (res) => {
        const headersMs = ms();
        let firstByteMs = NaN;
        let bytes = 0;
        let text = '';
        res.on('data', (c: Buffer) => {
          if (bytes === 0) firstByteMs = ms();
          bytes += c.length;
          if (text.length < keepBodyChars) text += c.toString('utf8');
        });
        const kept = (): { text?: string } => (keepBodyChars > 0 ? { text: text.slice(0, keepBodyChars) } : {});
        res.on('end', () => finish({ status: res.statusCode ?? 0, headersMs, firstByteMs, totalMs: ms(), bytes, ...kept() }));
        res.on('error', () => finish({ status: 0, headersMs, firstByteMs, totalMs: ms(), bytes, ...kept() }));
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', () => finish({ status: 0, headersMs: NaN, firstByteMs: NaN, totalMs: ms(), bytes: 0 }));
    req.end(body);
  });
}

/** `count` requests one after another on one keep-alive connection. */
export async function runSequential(
  agent: http.Agent,
  target: Target,
  count: number,
  make: () => { method: string; path: string; body: Buffer | undefined },
): Promise<RequestResult[]> {
  const out: RequestResult[] = [];
  for (let i = 0; i < count; i++) {
    const r = make();
    out.push(await timedRequest(agent, target, r.method, r.path, r.body));
  }
  return out;
}

export interface LoadResult {
  requests: number;
  errors: number;
  durationMs: number;
  rps: number;
  latency: Summary;
}

/**
 * Closed-loop load: `concurrency` workers, each with its own request in flight, until
 * `durationMs` elapsed or `maxRequests` were sent.
 */
export async function runConcurrent(
  agent: http.Agent,
  target: Target,
  concurrency: number,
  durationMs: number,
  maxRequests: number,
  make: () => { method: string; path: string; body: Buffer | undefined },
): Promise<LoadResult> {
  const latencies: number[] = [];
  let sent = 0;
  let errors = 0;
  const t0 = Date.now();
  const deadline = t0 + durationMs;
  const worker = async (): Promise<void> => {
    while (Date.now() < deadline && sent < maxRequests) {
      sent++;
      const r = make();
      const res = await timedRequest(agent, target, r.method, r.path, r.body);
      if (res.status !== 200) errors++;
      latencies.push(res.totalMs);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, () => worker()));
  const durationMs2 = Date.now() - t0;
  return {
    requests: latencies.length,
    errors,
    durationMs: durationMs2,
    rps: (latencies.length * 1000) / durationMs2,
    latency: summarize(latencies),
  };
}
