/**
 * Table "chat-memory" (`npm run bench -- --only=chat-memory`): what memory costs on
 * `POST /v1/chat/completions`, non-streamed and streamed, for one user who has 10,000 memories in
 * the embedded store, in one run:
 *
 *   direct to the fake upstream
 *   our proxy, X-Mem0-Memory: off     (plain pass-through)
 *   our proxy, X-Mem0-Memory: write   (no search; the exchange is queued for saving)
 *   our proxy, X-Mem0-Memory: read    (search + injection; nothing saved)
 *   our proxy, X-Mem0-Memory: on      (search + injection + save)
 *
 * All proxy rows hit one proxy process. Every round sends the same request to each target, in an
 * order shuffled per round, each target on its own keep-alive connection, so drift and scheduler
 * noise hit all rows alike. Phases: non-streamed and streamed "quiet" (after each request that
 * queued a save, wait until /health shows the save queue empty, so each request meets an idle
 * proxy and shows its own cost only), then non-streamed "back-to-back" (no waiting: saves run in
 * the background while the next requests are served).
 *
 * Seeding: a child process (this file with `--seed`, overlapping the proxy's tsc build) writes the
 * 10,000 memories straight into `<DATA_DIR>/vectors.db` with EmbeddedVectorStore (collection
 * "memories", and the user's entity rows in "memories_entities"), with the payload mem0ai's
 * `addToVectorStore` writes ({...metadata, data, textLemmatized, hash = md5(data), createdAt,
 * updatedAt, user_id}) and the vectors the fake upstream's embedder gives the same texts
 * (`fakeEmbedding`), so the proxy's searches score them as they would score memories mem0 had
 * added. `textLemmatized` and the entities come from mem0ai's own (unexported) `lemmatizeForBm25`
 * / `extractEntitiesBatch`, reached by loading a private copy of mem0ai's bundle with one extra
 * export line. Then the proxy starts on that DATA_DIR and its admin API (`/list`, `/search`)
 * checks that mem0 sees exactly the seeded memories.
 *
 * Search time comes from the proxy's own `/metrics` histogram
 * `proxy_memory_search_duration_seconds` (diffed around each phase): the mean from _sum/_count and
 * the p50 interpolated within the buckets (as Prometheus' histogram_quantile does).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import Module from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { fakeEmbedding } from '../test/fakes/openai-upstream';
import { seededRandom } from '../test/helpers/random';
import { EmbeddedVectorStore, closeAllEmbeddedVectorStores } from '../src/memory/vector-store/embedded-store';
import {
  BENCH_TOKEN,
  READY_PREFIX,
  ROOT,
  TSX_IMPORT,
  baseEnv,
  fmt,
  keepAliveAgent,
  makeTempDir,
  prepareOurProxy,
  printTable,
  removeTempDirLater,
  sleep,
  spawnNode,
  startFakeUpstreamChild,
  startOurProxyChild,
  stopAllChildren,
  summarize,
  waitForReadyLine,
  type Target,
} from './lib';
import type { BenchArgs, TableOutcome } from './run';

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

const USER_ID = 'bench-user-10k';
const SEED_COUNT = 10_000;
const DIMS = 1536;
const COLLECTION = 'memories';
const MEMORY_ID_SEED = 4242;
/** Fake upstream stream pacing: first SSE event after the headers, then one event per interval. */
const FIRST_TOKEN_MS = 50;
const CHUNK_INTERVAL_MS = 10;
/** How long to wait at the end for the save queue to drain. */
const DRAIN_TIMEOUT_MS = 60_000;
/** Bars. */
const WRITE_VS_OFF_MAX_MS = 1;
const SEARCH_MATCH_TOLERANCE_MS = 1;
const SEARCH_MATCH_TOLERANCE_RATIO = 0.25;

// ---------------------------------------------------------------------------------------------
// Deterministic text: memories and chat queries over one vocabulary
// ---------------------------------------------------------------------------------------------

const NAMES = ['Anna', 'Ben', 'Carla', 'David', 'Elena', 'Farid', 'Grace', 'Hiro', 'Ines', 'Jonas', 'Kira', 'Liam', 'Maya', 'Noah', 'Olga', 'Pedro', 'Quinn', 'Rosa', 'Sam', 'Tara'];
const RELATIONS = ['sister', 'brother', 'mother', 'father', 'cousin', 'friend', 'colleague', 'neighbor', 'partner', 'daughter', 'son', 'uncle', 'aunt'];
const PLACES = ['Lisbon', 'Berlin', 'Kyoto', 'Denver', 'Oslo', 'Naples', 'Austin', 'Seoul', 'Dublin', 'Porto', 'Quebec', 'Lima', 'Zurich', 'Hanoi', 'Vienna', 'Madrid', 'Boston', 'Prague', 'Cairo', 'Sydney'];
const ACTIVITIES = ['hiking', 'cycling', 'swimming', 'painting', 'baking', 'climbing', 'running', 'sailing', 'reading', 'gardening', 'knitting', 'skiing', 'surfing', 'fishing', 'dancing', 'chess'];
const FOODS = ['Thai curry', 'ramen', 'tacos', 'sushi', 'lasagna', 'falafel', 'pho', 'paella', 'dumplings', 'risotto', 'pancakes', 'burritos', 'hummus', 'kimchi stew', 'pierogi'];
const DAYS = ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'];
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const THINGS = ['bike', 'guitar', 'camera', 'laptop', 'kayak', 'piano', 'telescope', 'car', 'tent', 'drone', 'scooter'];
const COLORS = ['red', 'blue', 'green', 'black', 'white', 'yellow', 'silver', 'orange'];
const JOBS = ['nurse', 'teacher', 'engineer', 'chef', 'lawyer', 'pilot', 'architect', 'designer', 'dentist', 'librarian', 'plumber', 'journalist'];

type Pick = <T>(xs: readonly T[]) => T;
const picker = (next: () => number): Pick => (xs) => xs[Math.floor(next() * xs.length)] as (typeof xs)[number];

/** Facts in the form mem0's extractor writes them ("User ..."). */
const FACT_TEMPLATES: Array<(p: Pick) => string> = [
  (p) => `User's ${p(RELATIONS)} ${p(NAMES)} lives in ${p(PLACES)}`,
  (p) => `User enjoys ${p(ACTIVITIES)} in ${p(PLACES)} on ${p(DAYS)}s`,
  (p) => `User likes ${p(FOODS)} for dinner on ${p(DAYS)}s`,
  (p) => `User is planning a trip to ${p(PLACES)} in ${p(MONTHS)} with ${p(NAMES)}`,
  (p) => `User owns a ${p(COLORS)} ${p(THINGS)} bought in ${p(PLACES)}`,
  (p) => `User's ${p(RELATIONS)} ${p(NAMES)} works as a ${p(JOBS)} in ${p(PLACES)}`,
  (p) => `User goes ${p(ACTIVITIES)} with ${p(NAMES)} every ${p(DAYS)}`,
  (p) => `User cooked ${p(FOODS)} for ${p(NAMES)}'s birthday in ${p(MONTHS)}`,
  (p) => `User wants to learn ${p(ACTIVITIES)} before ${p(MONTHS)}`,
  (p) => `User lent a ${p(THINGS)} to ${p(RELATIONS)} ${p(NAMES)} in ${p(MONTHS)}`,
];

/** `count` distinct facts, deterministic. */
function generateFacts(count: number): string[] {
  const p = picker(seededRandom(20240601));
  const seen = new Set<string>();
  const out: string[] = [];
  for (let i = 0; out.length < count; i++) {
    if (i > count * 50) throw new Error('generateFacts: vocabulary too small');
    const template = FACT_TEMPLATES[i % FACT_TEMPLATES.length];
    if (!template) continue;
    const text = template(p);
    if (seen.has(text)) continue;
    seen.add(text);
    out.push(text);
  }
  return out;
}

/** Chat questions in the user's voice ("I"/"my": the fake's extractor turns them into facts). */
const QUERY_TEMPLATES: Array<(p: Pick) => string> = [
  (p) => `What should I cook for my ${p(RELATIONS)} ${p(NAMES)} on ${p(DAYS)}?`,
  (p) => `Suggest ${p(ACTIVITIES)} spots in ${p(PLACES)} for my ${p(RELATIONS)}.`,
  (p) => `I want a trip to ${p(PLACES)} in ${p(MONTHS)}, any tips?`,
  (p) => `Remind me where my ${p(RELATIONS)} ${p(NAMES)} works.`,
  (p) => `Should I take my ${p(THINGS)} ${p(ACTIVITIES)} with ${p(NAMES)}?`,
];

function makeQueries(count: number): string[] {
  const p = picker(seededRandom(777));
  return Array.from({ length: count }, (_, i) => (QUERY_TEMPLATES[i % QUERY_TEMPLATES.length] ?? QUERY_TEMPLATES[0]!)(p));
}

function chatBody(query: string, stream: boolean): Buffer {
  return Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', ...(stream ? { stream: true } : {}), messages: [{ role: 'user', content: query }] }));
}

// ---------------------------------------------------------------------------------------------
// mem0ai's own text helpers (not exported by the package)
// ---------------------------------------------------------------------------------------------

interface Mem0Internals {
  lemmatizeForBm25(text: string): string;
  extractEntitiesBatch(texts: string[]): Array<Array<{ type: string; text: string }>>;
}

/**
 * Loads a private copy of mem0ai's CommonJS bundle with one line appended that exports the two
 * helpers `addToVectorStore` uses, so seeded payloads and entities are exactly what mem0 writes.
 * Returns a reason string when that is not possible (another bundle layout).
 */
function loadMem0Internals(root: string): Mem0Internals | string {
  try {
    process.env.MEM0_TELEMETRY = 'false'; // read once when the bundle loads
    const file = require.resolve('mem0ai/oss', { paths: [root] });
    const src = fs.readFileSync(file, 'utf8');
    if (!/\bfunction lemmatizeForBm25\(/.test(src) || !/\bfunction extractEntitiesBatch\(/.test(src)) {
      return 'mem0ai bundle has no lemmatizeForBm25/extractEntitiesBatch';
    }
    type CompilableModule = { filename: string; paths: string[]; exports: Record<string, unknown>; _compile(code: string, filename: string): void };
    const ModuleCtor = Module as unknown as { new (id: string, parent?: unknown): CompilableModule; _nodeModulePaths(dir: string): string[] };
    const m = new ModuleCtor(file, module);
    m.filename = file;
    m.paths = ModuleCtor._nodeModulePaths(path.dirname(file));
    m._compile(`${src}\n;module.exports.__benchInternals = { lemmatizeForBm25, extractEntitiesBatch };\n`, file);
    const internals = m.exports['__benchInternals'] as Mem0Internals | undefined;
    if (!internals || typeof internals.lemmatizeForBm25 !== 'function') return 'export shim failed';
    return internals;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/** Fallback when mem0's helpers cannot be reached: lower-cased words, no entities. */
const FALLBACK_INTERNALS: Mem0Internals = {
  lemmatizeForBm25: (text) => (text.toLowerCase().match(/[a-z0-9]+/g) ?? []).join(' '),
  extractEntitiesBatch: (texts) => texts.map(() => []),
};

// ---------------------------------------------------------------------------------------------
// Seeding (in a child process, so it overlaps the proxy's tsc build)
// ---------------------------------------------------------------------------------------------

/** Deterministic v4-shaped UUIDs (mem0 ids are v4 UUIDs), so parent and seeding child agree. */
function seededIds(count: number, seed: number): string[] {
  const next = seededRandom(seed);
  return Array.from({ length: count }, () => {
    const b = Array.from({ length: 16 }, () => Math.floor(next() * 256));
    b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
    b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
    const h = b.map((x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  });
}

interface SeedReport {
  entities: number;
  ms: number;
  note: string;
}

/** Writes the user's memories (and entity rows) into `<dataDir>/vectors.db`. */
async function seedStore(dataDir: string, root: string): Promise<SeedReport> {
  const t0 = Date.now();
  const loaded = loadMem0Internals(root);
  const internals = typeof loaded === 'string' ? FALLBACK_INTERNALS : loaded;
  const note =
    typeof loaded === 'string'
      ? `mem0ai helpers not reachable (${loaded}): textLemmatized approximated, no entity rows`
      : "textLemmatized and entities from mem0ai's own lemmatizeForBm25 / extractEntitiesBatch";
  const texts = generateFacts(SEED_COUNT);
  const ids = seededIds(SEED_COUNT, MEMORY_ID_SEED);
  const dbPath = path.join(dataDir, 'vectors.db');
  const memories = new EmbeddedVectorStore({ dbPath, collectionName: COLLECTION, dimension: DIMS });
  const entityStore = new EmbeddedVectorStore({ dbPath, collectionName: `${COLLECTION}_entities`, dimension: DIMS });
  let entityCount = 0;
  try {
    // Memories accumulated over the last ~week, one a minute, oldest first (listing order).
    const start = Date.now() - SEED_COUNT * 60_000;
    const BATCH = 1000;
    for (let b = 0; b < texts.length; b += BATCH) {
      const slice = texts.slice(b, b + BATCH);
      const payloads = slice.map((text, i) => {
        const at = new Date(start + (b + i) * 60_000).toISOString();
        // Fields and key order as mem0ai 3.x addToVectorStore builds memPayload ({...metadata, ...}).
        return {
          source: 'bench-seed',
          data: text,
          textLemmatized: internals.lemmatizeForBm25(text),
          hash: createHash('md5').update(text).digest('hex'),
          createdAt: at,
          updatedAt: at,
          user_id: USER_ID,
        };
      });
      await memories.insert(slice.map((t) => fakeEmbedding(t, DIMS)), ids.slice(b, b + BATCH), payloads);
    }

    // Entity rows as addToVectorStore links them: one per distinct entity text (case-insensitive)
    // of the user, linked to every memory that mentions it.
    const entities = new Map<string, { type: string; text: string; memoryIds: Set<string> }>();
    internals.extractEntitiesBatch(texts).forEach((list, idx) => {
      const memoryId = ids[idx];
      if (memoryId === undefined) return;
      for (const e of list) {
        const key = e.text.trim().toLowerCase();
        const hit = entities.get(key);
        if (hit) hit.memoryIds.add(memoryId);
        else entities.set(key, { type: e.type, text: e.text, memoryIds: new Set([memoryId]) });
      }
    });
    const all = [...entities.values()];
    const entityIds = seededIds(all.length, 4343);
    for (let b = 0; b < all.length; b += BATCH) {
      const slice = all.slice(b, b + BATCH);
      await entityStore.insert(
        slice.map((e) => fakeEmbedding(e.text, DIMS)),
        entityIds.slice(b, b + slice.length),
        slice.map((e) => ({ data: e.text, entityType: e.type, linkedMemoryIds: [...e.memoryIds].sort(), user_id: USER_ID })),
      );
    }
    entityCount = all.length;
  } finally {
    memories.close();
    entityStore.close();
    closeAllEmbeddedVectorStores();
  }
  return { entities: entityCount, ms: Date.now() - t0, note };
}

/** Starts the seeding child (this file with `--seed`); resolves when it has written and closed the file. */
async function seedInChild(dataDir: string, root: string): Promise<SeedReport> {
  const child = spawnNode('chat-memory-seed', ['--import', TSX_IMPORT, __filename, '--seed', dataDir, root], {
    env: baseEnv({ MEM0_TELEMETRY: 'false', MEM0_DIR: path.join(dataDir, 'mem0'), NODE_ENV: 'production' }),
  });
  const exited = new Promise<number | null>((resolve) => {
    if (child.proc.exitCode !== null) resolve(child.proc.exitCode);
    else child.proc.once('exit', (code) => resolve(code));
  });
  const info = await waitForReadyLine(child, 180_000);
  const code = await exited;
  if (code !== 0) throw new Error(`seeding child exited with ${String(code)}:\n${child.tail()}`);
  return { entities: Number(info['entities']), ms: Number(info['ms']), note: String(info['note']) };
}

if (require.main === module && process.argv[2] === '--seed') {
  const [dir, root] = process.argv.slice(3);
  seedStore(dir ?? '', root ?? ROOT).then(
    (report) => process.stdout.write(`${READY_PREFIX}${JSON.stringify(report)}\n`),
    (err: unknown) => {
      process.stderr.write(`seeding failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}

/** Rows of the user in the memories collection, read straight from the file (read-only). */
function countUserRows(dataDir: string): number {
  const db = new Database(path.join(dataDir, 'vectors.db'), { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT COUNT(*) AS n FROM evs_vectors WHERE collection = ? AND user_id = ?').get(COLLECTION, USER_ID) as { n: number };
    return row.n;
  } finally {
    db.close();
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

interface ChatResult {
  status: number;
  firstByteMs: number;
  totalMs: number;
  /** X-Mem0-Memories, when the response carried it. */
  memories: number | undefined;
}

/** One chat request on `agent`; never rejects (network errors give status 0). */
function sendChat(agent: http.Agent, target: Target, body: Buffer, timeoutMs = 30_000): Promise<ChatResult> {
  return new Promise((resolve) => {
    const url = new URL(target.origin);
    const t0 = process.hrtime.bigint();
    const ms = (): number => Number(process.hrtime.bigint() - t0) / 1e6;
    let done = false;
    const finish = (r: ChatResult): void => {
      if (!done) {
        done = true;
        resolve(r);
      }
    };
    const req = http.request(
      {
        host: url.hostname,
        port: url.port,
        method: 'POST',
        path: `${target.pathPrefix}/chat/completions`,
        headers: { ...target.headers, 'content-type': 'application/json', 'content-length': body.length },
        agent,
      },
      (res) => {
        const raw = res.headers['x-mem0-memories'];
        const memories = typeof raw === 'string' && raw !== '' ? Number(raw) : undefined;
        let firstByteMs = NaN;
        let got = false;
        res.on('data', () => {
          if (!got) {
            got = true;
            firstByteMs = ms();
          }
        });
        res.on('end', () => finish({ status: res.statusCode ?? 0, firstByteMs, totalMs: ms(), memories }));
        res.on('error', () => finish({ status: 0, firstByteMs, totalMs: ms(), memories }));
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', () => finish({ status: 0, firstByteMs: NaN, totalMs: ms(), memories: undefined }));
    req.end(body);
  });
}

/** A request to the proxy's own API (admin, /health, /metrics), fresh connection. */
function proxyCall(
  origin: string,
  method: 'GET' | 'POST',
  pathName: string,
  json?: unknown,
  timeoutMs = 30_000,
  agent: http.Agent | false = false,
): Promise<{ status: number; text: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const body = json === undefined ? undefined : Buffer.from(JSON.stringify(json));
    const t0 = Date.now();
    const req = http.request(
      `${origin}${pathName}`,
      {
        method,
        agent,
        headers: { authorization: `Bearer ${BENCH_TOKEN}`, ...(body ? { 'content-type': 'application/json', 'content-length': body.length } : {}) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), ms: Date.now() - t0 }));
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${pathName}: timeout`)));
    req.on('error', reject);
    req.end(body);
  });
}

interface ListedMemory {
  id: string;
  memory: string;
  score?: number;
}

async function adminMemories(origin: string, pathName: '/list' | '/search', json: unknown): Promise<{ memories: ListedMemory[]; ms: number }> {
  const r = await proxyCall(origin, 'POST', pathName, json);
  if (r.status !== 200) throw new Error(`${pathName} answered ${r.status}: ${r.text.slice(0, 200)}`);
  const parsed = JSON.parse(r.text) as { memories?: ListedMemory[] };
  return { memories: parsed.memories ?? [], ms: r.ms };
}

async function queueDepth(origin: string): Promise<{ depth: number; failures: number }> {
  const r = await proxyCall(origin, 'GET', '/health');
  const parsed = JSON.parse(r.text) as { save_queue?: { depth?: number; failures?: number } };
  return { depth: parsed.save_queue?.depth ?? NaN, failures: parsed.save_queue?.failures ?? NaN };
}

// ---------------------------------------------------------------------------------------------
// /metrics: proxy_memory_search_duration_seconds
// ---------------------------------------------------------------------------------------------

interface Histogram {
  /** Cumulative counts by upper bound (Infinity for +Inf), per outcome. */
  buckets: Map<string, Map<number, number>>;
  sum: Map<string, number>;
  count: Map<string, number>;
}

const SEARCH_METRIC = 'proxy_memory_search_duration_seconds';

function parseHistogram(text: string, name: string): Histogram {
  const h: Histogram = { buckets: new Map(), sum: new Map(), count: new Map() };
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^(\w+)\{([^}]*)\}\s+(\S+)/.exec(line);
    if (!m) continue;
    const [, metric, labelText, valueText] = m;
    const labels = new Map<string, string>();
    for (const l of (labelText ?? '').matchAll(/(\w+)="([^"]*)"/g)) labels.set(l[1] ?? '', l[2] ?? '');
    const outcome = labels.get('outcome') ?? '';
    const value = Number(valueText);
    if (metric === `${name}_bucket`) {
      const le = labels.get('le') === '+Inf' ? Infinity : Number(labels.get('le'));
      const perOutcome = h.buckets.get(outcome) ?? new Map<number, number>();
      perOutcome.set(le, value);
      h.buckets.set(outcome, perOutcome);
    } else if (metric === `${name}_sum`) h.sum.set(outcome, value);
    else if (metric === `${name}_count`) h.count.set(outcome, value);
  }
  return h;
}

async function searchHistogram(origin: string): Promise<Histogram> {
  const r = await proxyCall(origin, 'GET', '/metrics');
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  return parseHistogram(r.text, SEARCH_METRIC);
}

interface SearchStats {
  ok: number;
  notOk: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
}

/** Quantile from cumulative buckets, linear within the bucket (histogram_quantile). */
function bucketQuantile(buckets: Array<[number, number]>, q: number): number {
  const total = buckets[buckets.length - 1]?.[1] ?? 0;
  if (total <= 0) return NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (!Number.isFinite(le)) return prevLe; // in +Inf: the highest finite bound
      const inBucket = count - prevCount;
      return inBucket <= 0 ? le : prevLe + ((le - prevLe) * (rank - prevCount)) / inBucket;
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

function searchDelta(before: Histogram, after: Histogram): SearchStats {
  const okBefore = before.buckets.get('ok') ?? new Map<number, number>();
  const okAfter = after.buckets.get('ok') ?? new Map<number, number>();
  const buckets = [...okAfter.entries()].map(([le, c]): [number, number] => [le, c - (okBefore.get(le) ?? 0)]).sort((a, b) => a[0] - b[0]);
  const count = (after.count.get('ok') ?? 0) - (before.count.get('ok') ?? 0);
  const sum = (after.sum.get('ok') ?? 0) - (before.sum.get('ok') ?? 0);
  let notOk = 0;
  for (const [outcome, c] of after.count) if (outcome !== 'ok') notOk += c - (before.count.get(outcome) ?? 0);
  return {
    ok: count,
    notOk,
    meanMs: count > 0 ? (sum / count) * 1000 : NaN,
    p50Ms: bucketQuantile(buckets, 0.5) * 1000,
    p99Ms: bucketQuantile(buckets, 0.99) * 1000,
  };
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

type Mode = 'direct' | 'off' | 'write' | 'read' | 'on';
/** Modes whose request queues a save. */
const SAVING: ReadonlySet<Mode> = new Set<Mode>(['write', 'on']);

interface Row {
  mode: Mode;
  target: Target;
  /** Results by phase name. */
  results: Map<string, ChatResult[]>;
}

interface Phase {
  name: string;
  label: string;
  stream: boolean;
  /** Wait for the save queue to drain after every request that queued a save. */
  quiet: boolean;
  rounds: number;
  /** Index of the first query. */
  offset: number;
  search?: SearchStats;
  /** Waits for the queue after saving requests (quiet phases). */
  waits: number[];
  waitTimeouts: number;
}

/** Polls /health until save_queue.depth is 0 (bounded); returns the ms waited. */
async function waitDrained(origin: string, agent: http.Agent, timeoutMs: number): Promise<{ ms: number; drained: boolean }> {
  const t0 = process.hrtime.bigint();
  const ms = (): number => Number(process.hrtime.bigint() - t0) / 1e6;
  for (;;) {
    const r = await proxyCall(origin, 'GET', '/health', undefined, 10_000, agent);
    const depth = (JSON.parse(r.text) as { save_queue?: { depth?: number } }).save_queue?.depth;
    if (depth === 0) return { ms: ms(), drained: true };
    if (ms() > timeoutMs) return { ms: ms(), drained: false };
    await sleep(5);
  }
}

/**
 * `phase.rounds` rounds; each sends the same body to every target, in an order shuffled per round
 * (so no target always follows the one whose save runs in the background).
 */
async function runPhase(rows: Row[], phase: Phase, queries: string[], origin: string, collect: boolean): Promise<void> {
  const agents = rows.map(() => keepAliveAgent(1));
  const healthAgent = keepAliveAgent(1);
  const shuffle = seededRandom(phase.offset + 17);
  try {
    for (let i = 0; i < phase.rounds; i++) {
      const body = chatBody(queries[(phase.offset + i) % queries.length] ?? 'Hello', phase.stream);
      const order = rows.map((_, k) => k);
      for (let k = order.length - 1; k > 0; k--) {
        const j = Math.floor(shuffle() * (k + 1));
        [order[k], order[j]] = [order[j] ?? 0, order[k] ?? 0];
      }
      for (const idx of order) {
        const row = rows[idx];
        const agent = agents[idx];
        if (!row || !agent) continue;
        const r = await sendChat(agent, row.target, body);
        if (collect) {
          const list = row.results.get(phase.name) ?? [];
          list.push(r);
          row.results.set(phase.name, list);
        }
        if (phase.quiet && SAVING.has(row.mode)) {
          const w = await waitDrained(origin, healthAgent, 15_000);
          if (collect) phase.waits.push(w.ms);
          if (!w.drained) phase.waitTimeouts++;
        }
      }
    }
  } finally {
    for (const a of agents) a.destroy();
    healthAgent.destroy();
  }
}

export async function runChatMemoryBench(args: BenchArgs): Promise<TableOutcome> {
  const bars: TableOutcome['bars'] = [];
  const scale = args.quick ? 0.25 : 1;
  const root = args.proxyRoot ?? ROOT;
  const started = Date.now();
  console.log(`\n[chat-memory] host: ${os.cpus().length} CPU(s) (${os.cpus()[0]?.model ?? '?'}), node ${process.version}, load avg ${os.loadavg().map((l) => fmt(l, 2)).join(' ')}`);
  if (args.oursStandIn) console.log('[chat-memory] --ours=bare does not apply here (the bare proxy has no memory): our proxy is used');

  // 1. Seed <DATA_DIR>/vectors.db in a child while the proxy builds; the proxy opens it afterwards.
  const dataDir = makeTempDir('bench-chat-memory-');
  removeTempDirLater(dataDir);
  console.log(`[chat-memory] seeding ${SEED_COUNT} memories x ${DIMS} dims for user "${USER_ID}" into ${dataDir}/vectors.db (child process), building the proxy meanwhile ...`);
  const seeding = seedInChild(dataDir, root);
  seeding.catch(() => undefined); // awaited below; avoids an unhandled rejection while the build runs
  const prepared = prepareOurProxy(args.proxyRuntime, args.proxyRoot);
  let seed: SeedReport;
  try {
    seed = await seeding;
  } catch (err) {
    console.log(`[chat-memory] seeding failed: ${err instanceof Error ? err.message : String(err)}`);
    bars.push({ name: 'seeded', pass: false });
    await stopAllChildren();
    return { bars };
  }
  console.log(
    `[chat-memory] seeded ${SEED_COUNT} memories + ${seed.entities} entity rows in ${fmt(seed.ms / 1000, 1)} s ` +
      `(collections "${COLLECTION}" / "${COLLECTION}_entities"; payload {source, data, textLemmatized, hash, createdAt, updatedAt, user_id}; ` +
      `vectors = fakeEmbedding(text, ${DIMS}); ${seed.note})`,
  );
  if (!prepared) {
    console.log('[chat-memory] our proxy: src/index.ts or src/app.ts does not exist - table skipped');
    return { bars };
  }
  const texts = generateFacts(SEED_COUNT);
  const ids = seededIds(SEED_COUNT, MEMORY_ID_SEED);

  // 2. Fake upstream (stream pacing) and our proxy on the seeded DATA_DIR.
  const fake = await startFakeUpstreamChild({ firstTokenDelayMs: FIRST_TOKEN_MS, chunkIntervalMs: CHUNK_INTERVAL_MS });
  const fakeOrigin = fake.url.replace(/\/v1$/, '');
  const many = '100000000';
  let ours: Awaited<ReturnType<typeof startOurProxyChild>>;
  try {
    ours = await startOurProxyChild(
      fake.url,
      prepared.runtime,
      {
        DATA_DIR: dataDir,
        MEM0_DIR: path.join(dataDir, 'mem0'),
        EMBEDDING_DIMS: String(DIMS),
        RATE_LIMIT_SEARCH: many,
        RATE_LIMIT_LIST: many,
        RATE_LIMIT_REMEMBER: many,
        RATE_LIMIT_FORGET: many,
      },
      args.proxyRoot,
    );
  } catch (err) {
    console.log(`[chat-memory] our proxy failed to start (${prepared.note}): ${err instanceof Error ? err.message : String(err)}`);
    bars.push({ name: 'proxy started', pass: false });
    await stopAllChildren();
    return { bars };
  }
  const origin = ours.origin;
  console.log(`[chat-memory] fake upstream ${fake.url} (pid ${fake.child.pid}); our proxy ${origin} (${prepared.note}, pid ${ours.child.pid}, log ${ours.dataDir}/proxy.log)`);
  const dumpLog = (): void => {
    console.log(`[chat-memory] our proxy log tail (${ours.dataDir}/proxy.log, kept):`);
    for (const l of ours.child.tail().split('\n').slice(-8)) console.log(`    ${l.slice(0, 400)}`);
  };

  // 3. Proof that mem0 sees the seeded memories: exactly 10,000 listed, and a search finds one by
  //    its text. The first search also loads the user's partitions, before anything is timed.
  let seedVisible = false;
  try {
    const lastId = ids[SEED_COUNT - 1];
    const probeIdx = 1234;
    const probeText = texts[probeIdx] ?? '';
    const last = await adminMemories(origin, '/list', { user_id: USER_ID, offset: SEED_COUNT - 1, limit: 5 });
    const past = await adminMemories(origin, '/list', { user_id: USER_ID, offset: SEED_COUNT, limit: 5 });
    const found = await adminMemories(origin, '/search', { user_id: USER_ID, query: probeText, limit: 3 });
    const again = await adminMemories(origin, '/search', { user_id: USER_ID, query: probeText, limit: 3 });
    const top = found.memories[0];
    const lastOk = last.memories.length === 1 && last.memories[0]?.id === lastId && last.memories[0]?.memory === texts[SEED_COUNT - 1];
    seedVisible = lastOk && past.memories.length === 0 && top?.id === ids[probeIdx];
    console.log(
      `[chat-memory] mem0 sees the seed: POST /list offset ${SEED_COUNT - 1} -> ${last.memories.length} memory ` +
        `(${lastOk ? 'the last seeded id and text' : `unexpected: ${last.memories[0]?.id ?? '-'}`}), offset ${SEED_COUNT} -> ${past.memories.length} ` +
        `=> ${seedVisible ? 'exactly' : 'NOT exactly'} ${SEED_COUNT}; POST /search "${probeText}" -> top hit ${top?.id ?? '-'} ` +
        `(${top?.id === ids[probeIdx] ? `= seeded #${probeIdx}` : 'not the seeded one'}, score ${fmt(top?.score ?? NaN, 3)}; ` +
        `first search ${found.ms} ms incl. loading the partition, second ${again.ms} ms)`,
    );
  } catch (err) {
    console.log(`[chat-memory] seed check failed: ${err instanceof Error ? err.message : String(err)}`);
    dumpLog();
  }
  bars.push({ name: 'seeded memories visible to mem0', pass: seedVisible });

  // 4. Targets: one proxy in four memory modes, plus direct.
  const proxyTarget = (name: string, mode: string): Target => ({
    name,
    origin,
    pathPrefix: '/v1',
    headers: { authorization: `Bearer ${BENCH_TOKEN}`, 'x-mem0-memory': mode, 'x-mem0-user-id': USER_ID },
    pid: ours.child.pid,
  });
  const rows: Row[] = [
    { mode: 'direct', target: { name: 'direct (fake upstream)', origin: fakeOrigin, pathPrefix: '/v1', headers: { authorization: 'Bearer sk-bench-upstream' }, pid: undefined }, results: new Map() },
    { mode: 'off', target: proxyTarget('proxy, memory off', 'off'), results: new Map() },
    { mode: 'write', target: proxyTarget('proxy, memory write-only', 'write'), results: new Map() },
    { mode: 'read', target: proxyTarget('proxy, memory read-only', 'read'), results: new Map() },
    { mode: 'on', target: proxyTarget('proxy, memory on', 'on'), results: new Map() },
  ];
  const queries = makeQueries(997);

  for (const row of rows) {
    const agent = keepAliveAgent(1);
    const r = await sendChat(agent, row.target, chatBody(queries[0] ?? 'Hello', false), 10_000);
    agent.destroy();
    if (r.status !== 200) {
      console.log(`[chat-memory] ${row.target.name}: sanity request got HTTP ${r.status} - table not measured`);
      dumpLog();
      await stopAllChildren();
      bars.push({ name: 'targets answer', pass: false });
      return { bars };
    }
  }

  // 5. Phases. Quiet: after each request that queued a save, wait until the queue is empty, so
  //    every request meets an idle proxy and shows only its own cost. Back-to-back: no waiting,
  //    saves run in the background while the next requests are served.
  const phase = (name: string, label: string, stream: boolean, quiet: boolean, rounds: number, offset: number): Phase => ({ name, label, stream, quiet, rounds, offset, waits: [], waitTimeouts: 0 });
  const warmJson = phase('warm', '', false, true, Math.round(20 * scale), 500);
  const warmSse = phase('warm-sse', '', true, true, 2, 600);
  const phases: Phase[] = [
    phase('json', 'non-streamed', false, true, Math.round(150 * scale), 0),
    phase('sse', 'streamed', true, true, Math.max(8, Math.round(30 * scale)), 200),
    phase('b2b', 'non-str. back-to-back', false, false, Math.max(10, Math.round(60 * scale)), 300),
  ];
  await runPhase(rows, warmJson, queries, origin, false);
  await runPhase(rows, warmSse, queries, origin, false);
  for (const p of phases) {
    console.log(
      `[chat-memory] ${p.label}: ${p.rounds} rounds x ${rows.length} targets, order shuffled per round` +
        `${p.quiet ? ', waiting for the save queue to drain after each write/on request' : ', no waiting (saves overlap the next requests)'}`,
    );
    const before = await searchHistogram(origin);
    await runPhase(rows, p, queries, origin, true);
    p.search = searchDelta(before, await searchHistogram(origin));
  }

  // 6. Let the save queue drain (bounded).
  const drainStart = Date.now();
  const depthAfterRun = await queueDepth(origin);
  let end = depthAfterRun;
  while (end.depth > 0 && Date.now() - drainStart < DRAIN_TIMEOUT_MS) {
    await sleep(250);
    end = await queueDepth(origin);
  }
  const drainMs = Date.now() - drainStart;
  const userRows = countUserRows(dataDir);

  // 7. Table.
  const ok = (xs: ChatResult[]): ChatResult[] => xs.filter((x) => x.status === 200);
  const memoriesCell = (xs: ChatResult[]): string => {
    const vals = xs.map((x) => x.memories).filter((v): v is number => v !== undefined && Number.isFinite(v));
    if (vals.length === 0) return '-';
    const min = Math.min(...vals);
    const max = Math.max(...vals);
    return min === max ? String(min) : `${fmt(summarize(vals).p50, 0)} (${min}-${max})`;
  };
  interface Stat {
    p50: number;
    mean: number;
    ttfb: number;
  }
  const stats = new Map<string, Stat>(); // `${phase}/${mode}` -> latency stats
  const table: string[][] = [];
  for (const p of phases) {
    const directResults = ok(rows[0]?.results.get(p.name) ?? []);
    const directLat = summarize(directResults.map((x) => x.totalMs));
    const directTtfb = summarize(directResults.map((x) => x.firstByteMs));
    for (const row of rows) {
      const results = row.results.get(p.name) ?? [];
      const good = ok(results);
      const lat = summarize(good.map((x) => x.totalMs));
      const ttfb = summarize(good.map((x) => x.firstByteMs));
      stats.set(`${p.name}/${row.mode}`, { p50: lat.p50, mean: lat.mean, ttfb: ttfb.p50 });
      const isDirect = row.mode === 'direct';
      const s = p.search;
      table.push([
        p.label,
        row.target.name,
        fmt(lat.p50, 2),
        fmt(lat.p99, 2),
        isDirect ? '-' : fmt(lat.p50 - directLat.p50, 2),
        (row.mode === 'read' || row.mode === 'on') && s ? `~${fmt(s.p50Ms, 1)} / ${fmt(s.meanMs, 1)}` : '-',
        memoriesCell(good),
        p.stream ? fmt(ttfb.p50, 2) : '-',
        p.stream && !isDirect ? fmt(ttfb.p50 - directTtfb.p50, 2) : '-',
        String(results.length - good.length),
      ]);
    }
  }
  printTable(
    `Chat with memory: POST /v1/chat/completions for a user with ${SEED_COUNT} memories (embedded store, ${DIMS} dims, fake embedder; MEMORY_TOP_K etc. default)`,
    ['request', 'target', 'p50 ms', 'p99 ms', '+p50 ms', 'search p50~/mean', 'X-Mem0-Memories', 'TTFB p50', '+TTFB p50', 'errors'],
    table,
  );
  const waitsAll = phases.flatMap((p) => p.waits);
  const waitTimeouts = phases.reduce((a, p) => a + p.waitTimeouts, 0);
  console.log('(all proxy rows hit one proxy process; every round sends the same request to each target in an order shuffled per round, one keep-alive connection per target;');
  console.log(' "+" = minus direct in the same phase; X-Mem0-Memories = the response header, p50 (min-max); errors = non-200 answers;');
  console.log(` non-streamed / streamed = quiet phases: after each write-only / on request the bench waits until GET /health shows save_queue.depth 0 (took p50 ${fmt(summarize(waitsAll).p50, 1)} ms, i.e. one save in the background${waitTimeouts ? `; ${waitTimeouts} waits timed out` : ''});`);
  console.log(' back-to-back = no waiting: the saves of write-only / on requests run in the proxy while the next requests are served;');
  console.log(` streamed: the fake upstream sends the headers at once, the first SSE event ${FIRST_TOKEN_MS} ms later, then one event every ${CHUNK_INTERVAL_MS} ms (one word each, ~15 events); TTFB = first body byte;`);
  console.log(` search = ${SEARCH_METRIC}{outcome="ok"} from the proxy's /metrics, diffed around each phase (read-only and on requests together):`);
  for (const p of phases) {
    const s = p.search;
    if (!s) continue;
    console.log(`   ${p.label}: ${s.ok} searches ok${s.notOk ? `, ${s.notOk} timed out/failed` : ''}; p50 ~${fmt(s.p50Ms, 2)} ms (interpolated in the buckets), mean ${fmt(s.meanMs, 2)} ms, p99 ~${fmt(s.p99Ms, 1)} ms`);
  }
  console.log(
    ` save queue depth at the end (GET /health save_queue.depth): ${end.depth} (${depthAfterRun.depth} right after the last request; ` +
      `${end.depth === 0 ? `drained in ${fmt(drainMs / 1000, 1)} s` : `NOT drained after ${fmt(drainMs / 1000, 0)} s`}), save failures ${end.failures};`,
  );
  console.log(` the user's memories in vectors.db after the run: ${userRows} = ${SEED_COUNT} seeded + ${userRows - SEED_COUNT} saved from the exchanges)`);

  // 8. Bars (quiet non-streamed phase), and what the other phases show.
  const st = (p: string, m: Mode): Stat => stats.get(`${p}/${m}`) ?? { p50: NaN, mean: NaN, ttfb: NaN };
  const json = phases[0];
  const sse = phases[1];
  const searchJson = json?.search;
  console.log('');
  if (json && searchJson) {
    const addedOn = st('json', 'on').p50 - st('json', 'direct').p50;
    const addedOff = st('json', 'off').p50 - st('json', 'direct').p50;
    const addedWrite = st('json', 'write').p50 - st('json', 'direct').p50;
    const diff = addedOn - addedOff;
    const tolerance = Math.max(SEARCH_MATCH_TOLERANCE_MS, SEARCH_MATCH_TOLERANCE_RATIO * searchJson.p50Ms);
    const searchPass = Number.isFinite(diff) && Math.abs(diff - searchJson.p50Ms) <= tolerance;
    console.log(
      `bar: memory-on added p50 ${fmt(addedOn, 2)} - memory-off added p50 ${fmt(addedOff, 2)} = ${fmt(diff, 2)} ms ≈ search p50 ~${fmt(searchJson.p50Ms, 2)} ms ` +
        `(difference ${fmt(diff - searchJson.p50Ms, 2)} ms, allowed ±${fmt(tolerance, 2)})  ${searchPass ? 'PASS' : 'FAIL'}`,
    );
    const meanDiff = st('json', 'on').mean - st('json', 'off').mean;
    console.log(
      `     same with means (exact, no bucket estimate): mean on - mean off = ${fmt(meanDiff, 2)} ms vs search mean ${fmt(searchJson.meanMs, 2)} ms ` +
        `-> everything else memory-on adds: ${fmt(meanDiff - searchJson.meanMs, 2)} ms`,
    );
    const writeDiff = addedWrite - addedOff;
    const writePass = Number.isFinite(writeDiff) && writeDiff < WRITE_VS_OFF_MAX_MS;
    console.log(`bar: write-only added p50 ${fmt(addedWrite, 3)} - off added p50 ${fmt(addedOff, 3)} = ${fmt(writeDiff, 3)} ms (< ${WRITE_VS_OFF_MAX_MS} ms)  ${writePass ? 'PASS' : 'FAIL'}`);
    bars.push({ name: 'memory-on minus off ≈ search p50', pass: searchPass }, { name: 'write-only minus off < 1 ms', pass: writePass });
    console.log(`info: on - read-only (the save on top of the search), non-streamed p50: ${fmt(st('json', 'on').p50 - st('json', 'read').p50, 2)} ms`);
  }
  if (sse?.search) {
    console.log(
      `info: streamed: TTFB on - off = ${fmt(st('sse', 'on').ttfb - st('sse', 'off').ttfb, 2)} ms vs search p50 ~${fmt(sse.search.p50Ms, 2)} (mean ${fmt(sse.search.meanMs, 2)}) ms; ` +
        `total p50 write-only - off = ${fmt(st('sse', 'write').p50 - st('sse', 'off').p50, 2)} ms`,
    );
  }
  const b2b = phases[2];
  if (b2b) {
    const added = (m: Mode): string => fmt(st('b2b', m).p50 - st('b2b', 'direct').p50, 2);
    console.log(
      `info: back-to-back (saves running in the background): added p50 off ${added('off')}, write-only ${added('write')}, on ${added('on')} ms ` +
        `vs quiet off ${fmt(st('json', 'off').p50 - st('json', 'direct').p50, 2)} ms: a save does not delay its own response, but its CPU work delays requests served while it runs`,
    );
  }
  const drained = end.depth === 0;
  bars.push({ name: 'save queue drained', pass: drained });
  console.log(`bar: save queue depth at the end ${end.depth} (waited up to ${DRAIN_TIMEOUT_MS / 1000} s)  ${drained ? 'PASS' : 'FAIL'}`);
  console.log(`[chat-memory] table wall time ${fmt((Date.now() - started) / 1000, 1)} s`);
  if (bars.some((b) => !b.pass)) dumpLog();
  else removeTempDirLater(ours.dataDir);
  await stopAllChildren();
  return { bars };
}
