/**
 * Table "chat-memory" (`npm run bench -- --only=chat-memory`): what memory costs on
 * `POST /v1/chat/completions`, for one user with 1,000, 10,000 and 100,000 memories in the
 * embedded store (`--sizes=1000,10000,100000`, the default; `--quick`: 1000,10000), in one run.
 *
 * Per size, the chat table (as before):
 *   direct to the fake upstream
 *   our proxy, X-Mem0-Memory: off     (plain pass-through)
 *   our proxy, X-Mem0-Memory: write   (no search; the exchange is queued for saving)
 *   our proxy, X-Mem0-Memory: read    (search + injection; nothing saved)
 *   our proxy, X-Mem0-Memory: on      (search + injection + save)
 * All proxy rows hit one proxy process. Every round sends the same request to each target, in an
 * order shuffled per round, each target on its own keep-alive connection, so drift and scheduler
 * noise hit all rows alike. Phases: non-streamed and streamed "quiet" (after each request that
 * queued a save, wait until /health shows the save queue empty, so each request meets an idle
 * proxy and shows its own cost only), then non-streamed "back-to-back" (no waiting: saves run in
 * the background while the next requests are served). At 100k the phases are shortened.
 *
 * Also per size: the first memory search after a restart of the proxy on the same DATA_DIR
 * ("cold"), the proxy's RSS once the user's memories are loaded, the proxy's CPU time per
 * memory-on / memory-off chat, and saves/s (a burst of write-only chats, timed until the save
 * queue is empty). At 10k only: a head-of-line table (memory-off chats and GET /health, quiet and
 * while memory-on chats run back to back on other connections) and a "realistic network" pair
 * (memory on vs off with the fake's embeddings delayed 120 ms, as OpenAI's take, by a second fake
 * upstream process and a proxy restarted against it). A summary table across the sizes prints
 * each figure beside the issue's target; the targets are also bars (see `--strict`).
 *
 * Seeding: mem0ai's entity extraction of the texts (~1 ms each) runs once, for the largest size,
 * split over one child process per CPU while the proxy builds (the texts of a smaller size are a
 * prefix of the larger one's). Then, per size, a child process (this file with `--seed`) writes
 * the memories straight into `<DATA_DIR>/vectors.db` with EmbeddedVectorStore (collection
 * "memories", and the user's entity rows in "memories_entities"; batches of 2,000 rows, one
 * transaction each, synchronous=NORMAL), with the payload mem0ai's `addToVectorStore` writes
 * ({...metadata, data, textLemmatized, hash = md5(data), createdAt, updatedAt, user_id}) and the
 * vectors the fake upstream's embedder gives the same texts (`fakeEmbedding`), so the proxy's
 * searches score them as they would score memories mem0 had added. `textLemmatized` and the
 * entities come from mem0ai's own (unexported) `lemmatizeForBm25` / `extractEntitiesBatch`,
 * reached by loading a private copy of mem0ai's bundle with one extra export line. Then the proxy
 * starts on that DATA_DIR and its admin API (`/list`, `/search`) checks that mem0 sees exactly
 * the seeded memories.
 *
 * Search time comes from the proxy's own `/metrics` histogram
 * `proxy_memory_search_duration_seconds` (diffed around each phase): the mean from _sum/_count and
 * the p50 interpolated within the buckets (as Prometheus' histogram_quantile does). Embedding calls
 * are counted by the fake upstream (`GET /__stats`).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import Module from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { fakeEmbedding, type FakeUpstreamStats } from '../test/fakes/openai-upstream';
import { seededRandom } from '../test/helpers/random';
import { EmbeddedStoreFiles, EmbeddedVectorStore } from '../src/memory/vector-store/embedded-store';
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
  procCpuMs,
  mainThreadCpuMs,
  procRssMiB,
  removeTempDirLater,
  sleep,
  spawnNode,
  startFakeUpstreamChild,
  startOurProxyChild,
  stopAllChildren,
  stopChild,
  summarize,
  timedRequest,
  waitForReadyLine,
  type FakeUpstreamChild,
  type ProxyRuntime,
  type Target,
} from './lib';
import type { BenchArgs, TableOutcome } from './run';

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

const DEFAULT_SIZES: readonly number[] = [1_000, 10_000, 100_000];
const QUICK_SIZES: readonly number[] = [1_000, 10_000];
/** Size of the head-of-line and realistic-network tables (else the measured size nearest to it). */
const HEADLINE_SIZE = 10_000;
/** From this size on, the chat table's phases are shortened by LARGE_SCALE (each search costs more). */
const LARGE_SIZE = 100_000;
const LARGE_SCALE = 0.4;
const DIMS = 1536;
const COLLECTION = 'memories';
const MEMORY_ID_SEED = 4242;
/** Rows per EmbeddedVectorStore.insert call (one transaction each) when seeding. */
const SEED_BATCH = 2000;
/** Fake upstream stream pacing: first SSE event after the headers, then one event per interval. */
const FIRST_TOKEN_MS = 50;
const CHUNK_INTERVAL_MS = 10;
/** How long to wait at the end for the save queue to drain. */
const DRAIN_TIMEOUT_MS = 60_000;
/** Realistic network: OpenAI's embeddings answer in about this long. */
const EMBEDDING_DELAY_MS = 120;
/** Head-of-line: connections sending memory-on chats back to back. */
const HOL_LOOPS = 4;
/** Saves/s: concurrent connections sending the burst of write-only chats. */
const SAVES_CONCURRENCY = 8;
const SAVES_TIMEOUT_MS = 120_000;
const MANY = '100000000';
/** Bars. */
const WRITE_VS_OFF_MAX_MS = 1;
const SEARCH_MATCH_TOLERANCE_MS = 1;
const SEARCH_MATCH_TOLERANCE_RATIO = 0.25;
/** Targets from the issue ("must reach"), printed beside the figures and checked as bars. */
const TARGET_ADDED_OVER_RTT_MS = 15;
const TARGET_WARM_SEARCH_P50_MS: ReadonlyMap<number, number> = new Map([
  [10_000, 10],
  [100_000, 30],
]);
const TARGET_COLD_SEARCH_MS: ReadonlyMap<number, number> = new Map([
  [10_000, 50],
  [100_000, 300],
]);
const TARGET_RSS_MIB: ReadonlyMap<number, number> = new Map([[100_000, 500]]);
const TARGET_HOL_P99_RATIO = 2;
const TARGET_SAVES_PER_S = 100;

const sizeLabel = (n: number): string => (n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n));
/** The user of a size ("bench-user-10k" as before for 10,000). */
const userIdFor = (n: number): string => `bench-user-${sizeLabel(n)}`;
const hrMs = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

// ---------------------------------------------------------------------------------------------
// Deterministic text: memories and chat queries over one vocabulary
// ---------------------------------------------------------------------------------------------

const NAMES = [
  'Anna',
  'Ben',
  'Carla',
  'David',
  'Elena',
  'Farid',
  'Grace',
  'Hiro',
  'Ines',
  'Jonas',
  'Kira',
  'Liam',
  'Maya',
  'Noah',
  'Olga',
  'Pedro',
  'Quinn',
  'Rosa',
  'Sam',
  'Tara',
];
const RELATIONS = [
  'sister',
  'brother',
  'mother',
  'father',
  'cousin',
  'friend',
  'colleague',
  'neighbor',
  'partner',
  'daughter',
  'son',
  'uncle',
  'aunt',
];
const PLACES = [
  'Lisbon',
  'Berlin',
  'Kyoto',
  'Denver',
  'Oslo',
  'Naples',
  'Austin',
  'Seoul',
  'Dublin',
  'Porto',
  'Quebec',
  'Lima',
  'Zurich',
  'Hanoi',
  'Vienna',
  'Madrid',
  'Boston',
  'Prague',
  'Cairo',
  'Sydney',
];
const ACTIVITIES = [
  'hiking',
  'cycling',
  'swimming',
  'painting',
  'baking',
  'climbing',
  'running',
  'sailing',
  'reading',
  'gardening',
  'knitting',
  'skiing',
  'surfing',
  'fishing',
  'dancing',
  'chess',
];
const FOODS = [
  'Thai curry',
  'ramen',
  'tacos',
  'sushi',
  'lasagna',
  'falafel',
  'pho',
  'paella',
  'dumplings',
  'risotto',
  'pancakes',
  'burritos',
  'hummus',
  'kimchi stew',
  'pierogi',
];
const DAYS = ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'];
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const THINGS = ['bike', 'guitar', 'camera', 'laptop', 'kayak', 'piano', 'telescope', 'car', 'tent', 'drone', 'scooter'];
const COLORS = ['red', 'blue', 'green', 'black', 'white', 'yellow', 'silver', 'orange'];
const JOBS = [
  'nurse',
  'teacher',
  'engineer',
  'chef',
  'lawyer',
  'pilot',
  'architect',
  'designer',
  'dentist',
  'librarian',
  'plumber',
  'journalist',
];

type Pick = <T>(xs: readonly T[]) => T;
const picker =
  (next: () => number): Pick =>
  (xs) =>
    xs[Math.floor(next() * xs.length)] as (typeof xs)[number];

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

export function makeQueries(count: number): string[] {
  const p = picker(seededRandom(777));
  return Array.from({ length: count }, (_, i) => {
    const template = QUERY_TEMPLATES[i % QUERY_TEMPLATES.length];
    if (!template) throw new Error('makeQueries: no query templates');
    return template(p);
  });
}

function chatBody(query: string, stream: boolean): Buffer {
  return Buffer.from(
    JSON.stringify({ model: 'gpt-4o-mini', ...(stream ? { stream: true } : {}), messages: [{ role: 'user', content: query }] }),
  );
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
    type CompilableModule = {
      filename: string;
      paths: string[];
      exports: Record<string, unknown>;
      _compile(code: string, filename: string): void;
    };
    const ModuleCtor = Module as unknown as {
      new (id: string, parent?: unknown): CompilableModule;
      _nodeModulePaths(dir: string): string[];
    };
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
// Seeding (in child processes: entity extraction overlaps the proxy's tsc build)
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

type EntityList = Array<{ type: string; text: string }>;

const internalsNote = (loaded: Mem0Internals | string): string =>
  typeof loaded === 'string'
    ? `mem0ai helpers not reachable (${loaded}): textLemmatized approximated, no entity rows`
    : "textLemmatized and entities from mem0ai's own lemmatizeForBm25 / extractEntitiesBatch";

/** Child mode `--entities`: mem0's entities of texts [from, to) of generateFacts(count), as JSON into outFile. */
function extractEntitiesPart(outFile: string, root: string, count: number, from: number, to: number): { ms: number; note: string } {
  const t0 = Date.now();
  const loaded = loadMem0Internals(root);
  const internals = typeof loaded === 'string' ? FALLBACK_INTERNALS : loaded;
  const texts = generateFacts(count).slice(from, to);
  const lists: EntityList[] = internals.extractEntitiesBatch(texts).map((list) => list.map((e) => ({ type: e.type, text: e.text })));
  fs.writeFileSync(outFile, JSON.stringify(lists));
  return { ms: Date.now() - t0, note: internalsNote(loaded) };
}

const isEntity = (e: unknown): e is { type: string; text: string } =>
  typeof e === 'object' &&
  e !== null &&
  typeof (e as { type?: unknown }).type === 'string' &&
  typeof (e as { text?: unknown }).text === 'string';

/** The first `count` entity lists from the part files, in order. */
function readEntityLists(files: readonly string[], count: number): EntityList[] {
  const out: EntityList[] = [];
  for (const file of files) {
    if (out.length >= count) break;
    const parsed: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (!Array.isArray(parsed)) throw new Error(`${file}: not a JSON array`);
    for (const list of parsed) {
      if (out.length >= count) break;
      out.push(Array.isArray(list) ? list.filter(isEntity) : []);
    }
  }
  if (out.length < count) throw new Error(`entity lists: ${out.length} for ${count} memories`);
  return out;
}

interface SeedReport {
  entities: number;
  /** Wall time of the seeding child. */
  ms: number;
  /** Of which in EmbeddedVectorStore.insert (both collections). */
  insertMs: number;
  transactions: number;
  note: string;
}

/** Child mode `--seed`: writes the user's `count` memories (and entity rows) into `<dataDir>/vectors.db`. */
async function seedStore(
  dataDir: string,
  root: string,
  count: number,
  userId: string,
  entityFiles: readonly string[],
): Promise<SeedReport> {
  const t0 = Date.now();
  const loaded = loadMem0Internals(root);
  const internals = typeof loaded === 'string' ? FALLBACK_INTERNALS : loaded;
  const texts = generateFacts(count);
  const ids = seededIds(count, MEMORY_ID_SEED);
  const entityLists = readEntityLists(entityFiles, count);
  const dbPath = path.join(dataDir, 'vectors.db');
  // NORMAL: no fsync per commit (seeding a bench file; the proxy reopens it with its own setting).
  const files = new EmbeddedStoreFiles();
  const memories = new EmbeddedVectorStore({ dbPath, collectionName: COLLECTION, dimension: DIMS, synchronous: 'NORMAL', files });
  const entityStore = new EmbeddedVectorStore({
    dbPath,
    collectionName: `${COLLECTION}_entities`,
    dimension: DIMS,
    synchronous: 'NORMAL',
    files,
  });
  let entityCount = 0;
  let insertMs = 0;
  let transactions = 0;
  try {
    // Memories accumulated one a minute up to now, oldest first (listing order).
    const start = Date.now() - count * 60_000;
    for (let b = 0; b < texts.length; b += SEED_BATCH) {
      const slice = texts.slice(b, b + SEED_BATCH);
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
          user_id: userId,
        };
      });
      const vectors = slice.map((t) => fakeEmbedding(t, DIMS));
      const ti = Date.now();
      await memories.insert(vectors, ids.slice(b, b + SEED_BATCH), payloads);
      insertMs += Date.now() - ti;
      transactions++;
    }

    // Entity rows as addToVectorStore links them: one per distinct entity text (case-insensitive)
    // of the user, linked to every memory that mentions it.
    const entities = new Map<string, { type: string; text: string; memoryIds: Set<string> }>();
    entityLists.forEach((list, idx) => {
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
    for (let b = 0; b < all.length; b += SEED_BATCH) {
      const slice = all.slice(b, b + SEED_BATCH);
      const vectors = slice.map((e) => fakeEmbedding(e.text, DIMS));
      const ti = Date.now();
      await entityStore.insert(
        vectors,
        entityIds.slice(b, b + slice.length),
        slice.map((e) => ({ data: e.text, entityType: e.type, linkedMemoryIds: [...e.memoryIds].sort(), user_id: userId })),
      );
      insertMs += Date.now() - ti;
      transactions++;
    }
    entityCount = all.length;
  } finally {
    memories.close();
    entityStore.close();
    files.closeAll();
  }
  return { entities: entityCount, ms: Date.now() - t0, insertMs, transactions, note: internalsNote(loaded) };
}

/** Runs this file in a child process in one of its modes; resolves with its BENCH_READY report once it exited 0. */
async function runModeChild(name: string, modeArgs: readonly string[], scratchDir: string): Promise<Record<string, unknown>> {
  const child = spawnNode(name, ['--import', TSX_IMPORT, __filename, ...modeArgs], {
    env: baseEnv({ MEM0_TELEMETRY: 'false', MEM0_DIR: path.join(scratchDir, 'mem0'), NODE_ENV: 'production' }),
  });
  const exited = new Promise<number | null>((resolve) => {
    if (child.proc.exitCode !== null) resolve(child.proc.exitCode);
    else child.proc.once('exit', (code) => resolve(code));
  });
  const info = await waitForReadyLine(child, 900_000);
  const code = await exited;
  if (code !== 0) throw new Error(`${name} exited with ${String(code)}:\n${child.tail()}`);
  return info;
}

/** Entity lists of generateFacts(count), extracted by `parts` children in parallel. */
async function extractEntitiesInChildren(
  scratchDir: string,
  root: string,
  count: number,
  parts: number,
): Promise<{ files: string[]; ms: number; note: string }> {
  const t0 = Date.now();
  const chunk = Math.ceil(count / parts);
  const jobs = Array.from({ length: parts }, (_, p) => ({
    from: p * chunk,
    to: Math.min(count, (p + 1) * chunk),
    file: path.join(scratchDir, `entities-${p}.json`),
  })).filter((j) => j.to > j.from);
  const reports = await Promise.all(
    jobs.map((j) =>
      runModeChild(`chat-memory-entities-${j.from}`, ['--entities', j.file, root, String(count), String(j.from), String(j.to)], scratchDir),
    ),
  );
  return { files: jobs.map((j) => j.file), ms: Date.now() - t0, note: String(reports[0]?.['note'] ?? '') };
}

async function seedInChild(
  dataDir: string,
  root: string,
  count: number,
  userId: string,
  entityFiles: readonly string[],
): Promise<SeedReport> {
  const info = await runModeChild(
    `chat-memory-seed-${sizeLabel(count)}`,
    ['--seed', dataDir, root, String(count), userId, ...entityFiles],
    dataDir,
  );
  return {
    entities: Number(info['entities']),
    ms: Number(info['ms']),
    insertMs: Number(info['insertMs']),
    transactions: Number(info['transactions']),
    note: String(info['note']),
  };
}

if (require.main === module) {
  const [mode, ...rest] = process.argv.slice(2);
  const fail = (err: unknown): void => {
    process.stderr.write(`${String(mode)} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  };
  if (mode === '--seed') {
    const [dir, root, count, userId, ...files] = rest;
    seedStore(dir ?? '', root ?? ROOT, Number(count), userId ?? '', files).then(
      (report) => process.stdout.write(`${READY_PREFIX}${JSON.stringify(report)}\n`),
      fail,
    );
  } else if (mode === '--entities') {
    const [outFile, root, count, from, to] = rest;
    try {
      const report = extractEntitiesPart(outFile ?? '', root ?? ROOT, Number(count), Number(from), Number(to));
      process.stdout.write(`${READY_PREFIX}${JSON.stringify(report)}\n`);
    } catch (err) {
      fail(err);
    }
  }
}

/** Rows of the user in the memories collection, read straight from the file (read-only). */
function countUserRows(dataDir: string, userId: string): number {
  const db = new Database(path.join(dataDir, 'vectors.db'), { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT COUNT(*) AS n FROM evs_vectors WHERE collection = ? AND user_id = ?').get(COLLECTION, userId) as {
      n: number;
    };
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
    const t0 = process.hrtime.bigint();
    const req = http.request(
      `${origin}${pathName}`,
      {
        method,
        agent,
        headers: {
          authorization: `Bearer ${BENCH_TOKEN}`,
          ...(body ? { 'content-type': 'application/json', 'content-length': body.length } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), ms: hrMs(t0) }));
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

async function adminMemories(
  origin: string,
  pathName: '/list' | '/search',
  json: unknown,
  timeoutMs = 120_000,
): Promise<{ memories: ListedMemory[]; ms: number }> {
  const r = await proxyCall(origin, 'POST', pathName, json, timeoutMs);
  if (r.status !== 200) throw new Error(`${pathName} answered ${r.status}: ${r.text.slice(0, 200)}`);
  const parsed = JSON.parse(r.text) as { memories?: ListedMemory[] };
  return { memories: parsed.memories ?? [], ms: r.ms };
}

async function queueDepth(origin: string, agent: http.Agent | false = false): Promise<{ depth: number; failures: number }> {
  const r = await proxyCall(origin, 'GET', '/health', undefined, 30_000, agent);
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

/** The fake upstream's request counters (`GET /__stats` of bench/fake-upstream-server.ts). */
async function fakeStats(fakeOrigin: string): Promise<FakeUpstreamStats> {
  const r = await proxyCall(fakeOrigin, 'GET', '/__stats');
  if (r.status !== 200) throw new Error(`fake upstream /__stats answered ${r.status}`);
  return JSON.parse(r.text) as FakeUpstreamStats;
}

// ---------------------------------------------------------------------------------------------
// The run: one chat table per size
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

/** Polls /health until save_queue.depth is 0 (bounded); returns the ms waited and the polls made. */
async function waitDrained(
  origin: string,
  agent: http.Agent,
  timeoutMs: number,
  pollMs = 5,
): Promise<{ ms: number; drained: boolean; polls: number }> {
  const t0 = process.hrtime.bigint();
  let polls = 0;
  for (;;) {
    const r = await proxyCall(origin, 'GET', '/health', undefined, 10_000, agent);
    polls++;
    const depth = (JSON.parse(r.text) as { save_queue?: { depth?: number } }).save_queue?.depth;
    if (depth === 0) return { ms: hrMs(t0), drained: true, polls };
    if (hrMs(t0) > timeoutMs) return { ms: hrMs(t0), drained: false, polls };
    await sleep(pollMs);
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

type OurProxy = Awaited<ReturnType<typeof startOurProxyChild>>;

interface Ctx {
  args: BenchArgs;
  root: string;
  prepared: { runtime: ProxyRuntime; note: string };
  /** The fake upstream without embedding delay (stream pacing only). */
  fake: FakeUpstreamChild;
  entityFiles: string[];
  bars: TableOutcome['bars'];
  queries: string[];
  /** Print the chat table's explanations once. */
  explained: boolean;
}

function proxyTarget(name: string, proxy: OurProxy, userId: string, mode: string): Target {
  return {
    name,
    origin: proxy.origin,
    pathPrefix: '/v1',
    headers: { authorization: `Bearer ${BENCH_TOKEN}`, 'x-mem0-memory': mode, 'x-mem0-user-id': userId },
    pid: proxy.child.pid,
  };
}

/** Our proxy on `dataDir`, with `upstreamV1Url` as chat upstream, LLM and embedder. */
async function startProxyOn(ctx: Ctx, dataDir: string, upstreamV1Url: string): Promise<{ proxy: OurProxy; startMs: number }> {
  const t0 = process.hrtime.bigint();
  const proxy = await startOurProxyChild(
    upstreamV1Url,
    ctx.prepared.runtime,
    {
      DATA_DIR: dataDir,
      MEM0_DIR: path.join(dataDir, 'mem0'),
      EMBEDDING_DIMS: String(DIMS),
      // The 100k user is past the default per-user limit; the bench measures saves at that size.
      MEMORY_MAX_PER_USER: '0',
      RATE_LIMIT_SEARCH: MANY,
      RATE_LIMIT_LIST: MANY,
      RATE_LIMIT_REMEMBER: MANY,
      RATE_LIMIT_FORGET: MANY,
    },
    ctx.args.proxyRoot,
  );
  return { proxy, startMs: hrMs(t0) };
}

function dumpLog(proxy: OurProxy): void {
  console.log(`[chat-memory] our proxy log tail (${proxy.dataDir}/proxy.log, kept):`);
  for (const l of proxy.child.tail().split('\n').slice(-8)) console.log(`    ${l.slice(0, 400)}`);
}

/** Stops a proxy (SIGTERM, its shutdown drains in-flight requests); keeps its log when `keepLog`. */
async function stopProxy(proxy: OurProxy, keepLog: boolean): Promise<void> {
  await stopChild(proxy.child, 15_000);
  if (keepLog) dumpLog(proxy);
  else removeTempDirLater(proxy.dataDir);
}

/** Waits (bounded) until the save queue is empty. */
async function drainQueue(origin: string, timeoutMs: number): Promise<{ depth: number; failures: number; ms: number; startDepth: number }> {
  const t0 = Date.now();
  const first = await queueDepth(origin);
  let end = first;
  while (end.depth > 0 && Date.now() - t0 < timeoutMs) {
    await sleep(100);
    end = await queueDepth(origin);
  }
  return { ...end, ms: Date.now() - t0, startDepth: first.depth };
}

/** The seed check: exactly `size` memories listed, and a search finds one by its text. */
async function checkSeed(
  origin: string,
  size: number,
  userId: string,
  texts: readonly string[],
  ids: readonly string[],
): Promise<{ ok: boolean; firstSearchMs: number }> {
  const lastId = ids[size - 1];
  const probeIdx = Math.min(1234, Math.floor(size / 3));
  const probeText = texts[probeIdx] ?? '';
  const last = await adminMemories(origin, '/list', { user_id: userId, offset: size - 1, limit: 5 });
  const past = await adminMemories(origin, '/list', { user_id: userId, offset: size, limit: 5 });
  const found = await adminMemories(origin, '/search', { user_id: userId, query: probeText, limit: 3 });
  const again = await adminMemories(origin, '/search', { user_id: userId, query: probeText, limit: 3 });
  const top = found.memories[0];
  const lastOk = last.memories.length === 1 && last.memories[0]?.id === lastId && last.memories[0]?.memory === texts[size - 1];
  const ok = lastOk && past.memories.length === 0 && top?.id === ids[probeIdx];
  console.log(
    `[chat-memory] ${sizeLabel(size)}: mem0 sees the seed: POST /list offset ${size - 1} -> ${last.memories.length} memory ` +
      `(${lastOk ? 'the last seeded id and text' : `unexpected: ${last.memories[0]?.id ?? '-'}`}), offset ${size} -> ${past.memories.length} ` +
      `=> ${ok ? 'exactly' : 'NOT exactly'} ${size}; POST /search "${probeText}" -> top hit ${top?.id ?? '-'} ` +
      `(${top?.id === ids[probeIdx] ? `= seeded #${probeIdx}` : 'not the seeded one'}, score ${fmt(top?.score ?? NaN, 3)}; ` +
      `first search ${fmt(found.ms, 0)} ms incl. loading the partition, second ${fmt(again.ms, 0)} ms)`,
  );
  return { ok, firstSearchMs: found.ms };
}

interface ChatTableResult {
  /** Search stats of the quiet non-streamed phase. */
  search: SearchStats | undefined;
}

/** The chat table (direct + four memory modes, three phases) for one size; pushes its bars. */
async function measureChatTable(ctx: Ctx, proxy: OurProxy, dataDir: string, size: number, scale: number): Promise<ChatTableResult> {
  const label = sizeLabel(size);
  const userId = userIdFor(size);
  const origin = proxy.origin;
  const fakeOrigin = ctx.fake.url.replace(/\/v1$/, '');
  const rows: Row[] = [
    {
      mode: 'direct',
      target: {
        name: 'direct (fake upstream)',
        origin: fakeOrigin,
        pathPrefix: '/v1',
        headers: { authorization: 'Bearer sk-bench-upstream' },
        pid: undefined,
      },
      results: new Map(),
    },
    { mode: 'off', target: proxyTarget('proxy, memory off', proxy, userId, 'off'), results: new Map() },
    { mode: 'write', target: proxyTarget('proxy, memory write-only', proxy, userId, 'write'), results: new Map() },
    { mode: 'read', target: proxyTarget('proxy, memory read-only', proxy, userId, 'read'), results: new Map() },
    { mode: 'on', target: proxyTarget('proxy, memory on', proxy, userId, 'on'), results: new Map() },
  ];
  const queries = ctx.queries;
  for (const row of rows) {
    const agent = keepAliveAgent(1);
    const r = await sendChat(agent, row.target, chatBody(queries[0] ?? 'Hello', false), 10_000);
    agent.destroy();
    if (r.status !== 200) throw new Error(`${row.target.name}: sanity request got HTTP ${r.status}`);
  }

  // Quiet: after each request that queued a save, wait until the queue is empty, so every request
  // meets an idle proxy and shows only its own cost. Back-to-back: no waiting, saves run in the
  // background while the next requests are served.
  const phase = (name: string, phaseLabel: string, stream: boolean, quiet: boolean, rounds: number, offset: number): Phase => ({
    name,
    label: phaseLabel,
    stream,
    quiet,
    rounds,
    offset,
    waits: [],
    waitTimeouts: 0,
  });
  const warmJson = phase('warm', '', false, true, Math.max(5, Math.round(20 * scale)), 500);
  const warmSse = phase('warm-sse', '', true, true, 2, 600);
  const phases: Phase[] = [
    phase('json', 'non-streamed', false, true, Math.max(10, Math.round(150 * scale)), 0),
    phase('sse', 'streamed', true, true, Math.max(6, Math.round(30 * scale)), 200),
    phase('b2b', 'non-str. back-to-back', false, false, Math.max(10, Math.round(60 * scale)), 300),
  ];
  await runPhase(rows, warmJson, queries, origin, false);
  await runPhase(rows, warmSse, queries, origin, false);
  for (const p of phases) {
    console.log(
      `[chat-memory] ${label}: ${p.label}: ${p.rounds} rounds x ${rows.length} targets, order shuffled per round` +
        `${p.quiet ? ', waiting for the save queue to drain after each write/on request' : ', no waiting (saves overlap the next requests)'}`,
    );
    const before = await searchHistogram(origin);
    await runPhase(rows, p, queries, origin, true);
    p.search = searchDelta(before, await searchHistogram(origin));
  }

  // Let the save queue drain (bounded).
  const end = await drainQueue(origin, DRAIN_TIMEOUT_MS);
  const userRows = countUserRows(dataDir, userId);

  // Table.
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
    `Chat with memory: POST /v1/chat/completions for a user with ${size} memories (embedded store, ${DIMS} dims, fake embedder; MEMORY_TOP_K etc. default)`,
    ['request', 'target', 'p50 ms', 'p99 ms', '+p50 ms', 'search p50~/mean', 'X-Mem0-Memories', 'TTFB p50', '+TTFB p50', 'errors'],
    table,
  );
  const waitsAll = phases.flatMap((p) => p.waits);
  const waitTimeouts = phases.reduce((a, p) => a + p.waitTimeouts, 0);
  if (!ctx.explained) {
    ctx.explained = true;
    console.log(
      '(all proxy rows hit one proxy process; every round sends the same request to each target in an order shuffled per round, one keep-alive connection per target;',
    );
    console.log(' "+" = minus direct in the same phase; X-Mem0-Memories = the response header, p50 (min-max); errors = non-200 answers;');
    console.log(
      ' non-streamed / streamed = quiet phases: after each write-only / on request the bench waits until GET /health shows save_queue.depth 0;',
    );
    console.log(' back-to-back = no waiting: the saves of write-only / on requests run in the proxy while the next requests are served;');
    console.log(
      ` streamed: the fake upstream sends the headers at once, the first SSE event ${FIRST_TOKEN_MS} ms later, then one event every ${CHUNK_INTERVAL_MS} ms (one word each, ~15 events); TTFB = first body byte;`,
    );
    console.log(
      ` search = ${SEARCH_METRIC}{outcome="ok"} from the proxy's /metrics, diffed around each phase (read-only and on requests together))`,
    );
  }
  console.log(
    `(${label}: waits for the save queue in the quiet phases took p50 ${fmt(summarize(waitsAll).p50, 1)} ms (one save in the background)${waitTimeouts ? `; ${waitTimeouts} waits timed out` : ''}; search:`,
  );
  for (const p of phases) {
    const s = p.search;
    if (!s) continue;
    console.log(
      `   ${p.label}: ${s.ok} searches ok${s.notOk ? `, ${s.notOk} timed out/failed` : ''}; p50 ~${fmt(s.p50Ms, 2)} ms (interpolated in the buckets), mean ${fmt(s.meanMs, 2)} ms, p99 ~${fmt(s.p99Ms, 1)} ms`,
    );
  }
  console.log(
    ` save queue depth at the end (GET /health save_queue.depth): ${end.depth} (${end.startDepth} right after the last request; ` +
      `${end.depth === 0 ? `drained in ${fmt(end.ms / 1000, 1)} s` : `NOT drained after ${fmt(end.ms / 1000, 0)} s`}), save failures ${end.failures};`,
  );
  console.log(
    ` the user's memories in vectors.db after the table: ${userRows} = ${size} seeded + ${userRows - size} saved from the exchanges)`,
  );

  // Bars (quiet non-streamed phase), and what the other phases show.
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
      `bar (${label}): memory-on added p50 ${fmt(addedOn, 2)} - memory-off added p50 ${fmt(addedOff, 2)} = ${fmt(diff, 2)} ms ≈ search p50 ~${fmt(searchJson.p50Ms, 2)} ms ` +
        `(difference ${fmt(diff - searchJson.p50Ms, 2)} ms, allowed ±${fmt(tolerance, 2)})  ${searchPass ? 'PASS' : 'FAIL'}`,
    );
    const meanDiff = st('json', 'on').mean - st('json', 'off').mean;
    console.log(
      `     same with means (exact, no bucket estimate): mean on - mean off = ${fmt(meanDiff, 2)} ms vs search mean ${fmt(searchJson.meanMs, 2)} ms ` +
        `-> everything else memory-on adds: ${fmt(meanDiff - searchJson.meanMs, 2)} ms`,
    );
    const writeDiff = addedWrite - addedOff;
    const writePass = Number.isFinite(writeDiff) && writeDiff < WRITE_VS_OFF_MAX_MS;
    console.log(
      `bar (${label}): write-only added p50 ${fmt(addedWrite, 3)} - off added p50 ${fmt(addedOff, 3)} = ${fmt(writeDiff, 3)} ms (< ${WRITE_VS_OFF_MAX_MS} ms)  ${writePass ? 'PASS' : 'FAIL'}`,
    );
    ctx.bars.push(
      { name: `${label}: memory-on minus off ≈ search p50`, pass: searchPass },
      { name: `${label}: write-only minus off < 1 ms`, pass: writePass },
    );
    console.log(
      `info (${label}): on - read-only (the save on top of the search), non-streamed p50: ${fmt(st('json', 'on').p50 - st('json', 'read').p50, 2)} ms`,
    );
  }
  if (sse?.search) {
    console.log(
      `info (${label}): streamed: TTFB on - off = ${fmt(st('sse', 'on').ttfb - st('sse', 'off').ttfb, 2)} ms vs search p50 ~${fmt(sse.search.p50Ms, 2)} (mean ${fmt(sse.search.meanMs, 2)}) ms; ` +
        `total p50 write-only - off = ${fmt(st('sse', 'write').p50 - st('sse', 'off').p50, 2)} ms`,
    );
  }
  const b2b = phases[2];
  if (b2b) {
    const added = (m: Mode): string => fmt(st('b2b', m).p50 - st('b2b', 'direct').p50, 2);
    console.log(
      `info (${label}): back-to-back (saves running in the background): added p50 off ${added('off')}, write-only ${added('write')}, on ${added('on')} ms ` +
        `vs quiet off ${fmt(st('json', 'off').p50 - st('json', 'direct').p50, 2)} ms`,
    );
  }
  const drained = end.depth === 0;
  ctx.bars.push({ name: `${label}: save queue drained`, pass: drained });
  console.log(
    `bar (${label}): save queue depth at the end ${end.depth} (waited up to ${DRAIN_TIMEOUT_MS / 1000} s)  ${drained ? 'PASS' : 'FAIL'}`,
  );
  return { search: searchJson };
}

// ---------------------------------------------------------------------------------------------
// CPU per chat, saves/s, head-of-line, realistic network
// ---------------------------------------------------------------------------------------------

interface CpuResult {
  /** Proxy CPU ms per memory-on chat, its save included (minus the /health polls that waited for it). */
  onMs: number;
  offMs: number;
  healthMs: number;
  /** The same, counting only the thread that serves HTTP (the memory engine runs in a worker thread). */
  onMainMs: number;
  on: number;
  off: number;
}

/** Proxy CPU time (utime+stime from /proc) per chat: sequential memory-on chats, each followed by its save, then memory-off chats. */
async function measureCpu(
  proxy: OurProxy,
  userId: string,
  queries: readonly string[],
  onCount: number,
  offCount: number,
): Promise<CpuResult> {
  const pid = proxy.child.pid;
  const origin = proxy.origin;
  const healthAgent = keepAliveAgent(1);
  const agent = keepAliveAgent(1);
  try {
    const healthCount = 300;
    let c0 = procCpuMs(pid);
    let m0 = mainThreadCpuMs(pid);
    for (let i = 0; i < healthCount; i++) await proxyCall(origin, 'GET', '/health', undefined, 10_000, healthAgent);
    const healthMs = (procCpuMs(pid) - c0) / healthCount;
    const healthMainMs = (mainThreadCpuMs(pid) - m0) / healthCount;
    const on = proxyTarget('on', proxy, userId, 'on');
    let polls = 0;
    c0 = procCpuMs(pid);
    m0 = mainThreadCpuMs(pid);
    for (let i = 0; i < onCount; i++) {
      await sendChat(agent, on, chatBody(queries[(800 + i) % queries.length] ?? 'Hello', false));
      polls += (await waitDrained(origin, healthAgent, 15_000, 2)).polls;
    }
    const onMs = (procCpuMs(pid) - c0 - polls * healthMs) / onCount;
    const onMainMs = (mainThreadCpuMs(pid) - m0 - polls * healthMainMs) / onCount;
    const off = proxyTarget('off', proxy, userId, 'off');
    c0 = procCpuMs(pid);
    for (let i = 0; i < offCount; i++) await sendChat(agent, off, chatBody(queries[i % queries.length] ?? 'Hello', false));
    const offMs = (procCpuMs(pid) - c0) / offCount;
    return { onMs, offMs, healthMs, onMainMs, on: onCount, off: offCount };
  } finally {
    agent.destroy();
    healthAgent.destroy();
  }
}

interface SavesResult {
  n: number;
  errors: number;
  enqueueMs: number;
  depthAfterEnqueue: number;
  totalMs: number;
  drained: boolean;
  left: number;
  perSec: number;
  cpuMsPerSave: number;
  failures: number;
}

/**
 * Saves/s: `n` write-only chats (each a new fact) sent quickly on SAVES_CONCURRENCY connections,
 * then the time until GET /health shows the save queue empty; saves/s = saved / (first request
 * to empty queue).
 */
async function measureSaves(proxy: OurProxy, userId: string, queries: readonly string[], n: number): Promise<SavesResult> {
  const pid = proxy.child.pid;
  const origin = proxy.origin;
  await drainQueue(origin, DRAIN_TIMEOUT_MS);
  const before = await queueDepth(origin);
  const target = proxyTarget('write', proxy, userId, 'write');
  const agent = keepAliveAgent(SAVES_CONCURRENCY);
  const healthAgent = keepAliveAgent(1);
  try {
    const cpu0 = procCpuMs(pid);
    const t0 = process.hrtime.bigint();
    let next = 0;
    let errors = 0;
    await Promise.all(
      Array.from({ length: SAVES_CONCURRENCY }, async () => {
        while (next < n) {
          const i = next++;
          const r = await sendChat(
            agent,
            target,
            chatBody(`My note #${i}: ${queries[(900 + i) % queries.length] ?? 'I like tea.'}`, false),
          );
          if (r.status !== 200) errors++;
        }
      }),
    );
    const enqueueMs = hrMs(t0);
    let depth = (await queueDepth(origin, healthAgent)).depth;
    const depthAfterEnqueue = depth;
    while (depth > 0 && hrMs(t0) < SAVES_TIMEOUT_MS) {
      await sleep(20);
      depth = (await queueDepth(origin, healthAgent)).depth;
    }
    const totalMs = hrMs(t0);
    const cpu = procCpuMs(pid) - cpu0;
    const after = await queueDepth(origin, healthAgent);
    const saved = n - errors - depth;
    return {
      n,
      errors,
      enqueueMs,
      depthAfterEnqueue,
      totalMs,
      drained: depth === 0,
      left: depth,
      perSec: saved / (totalMs / 1000),
      cpuMsPerSave: cpu / Math.max(1, saved),
      failures: after.failures - before.failures,
    };
  } finally {
    agent.destroy();
    healthAgent.destroy();
  }
}

interface ProbeStats {
  off: number[];
  health: number[];
  errors: number;
}

/** One keep-alive connection for memory-off chats and one for GET /health, used alternately, `n` each (or until maxMs). */
async function probe(proxy: OurProxy, userId: string, queries: readonly string[], n: number, maxMs: number): Promise<ProbeStats> {
  const off = proxyTarget('off', proxy, userId, 'off');
  const offAgent = keepAliveAgent(1);
  const healthAgent = keepAliveAgent(1);
  const out: ProbeStats = { off: [], health: [], errors: 0 };
  const t0 = Date.now();
  try {
    for (let i = 0; i < n && Date.now() - t0 < maxMs; i++) {
      const r = await sendChat(offAgent, off, chatBody(queries[(100 + i) % queries.length] ?? 'Hello', false));
      if (r.status === 200) out.off.push(r.totalMs);
      else out.errors++;
      const h = await proxyCall(proxy.origin, 'GET', '/health', undefined, 10_000, healthAgent);
      if (h.status === 200) out.health.push(h.ms);
      else out.errors++;
    }
  } finally {
    offAgent.destroy();
    healthAgent.destroy();
  }
  return out;
}

interface HolResult {
  quiet: ProbeStats;
  loaded: ProbeStats;
  loadedMs: number;
  onChats: number;
  onErrors: number;
  onLatency: number[];
  depthAtProbeStart: number;
  depthAtProbeEnd: number;
  drainMs: number;
  drainDepth: number;
  drained: boolean;
}

/** Head-of-line: probes alone, then while HOL_LOOPS connections send memory-on chats back to back. */
async function measureHeadOfLine(
  proxy: OurProxy,
  userId: string,
  queries: readonly string[],
  quietN: number,
  loadedN: number,
  loadedMaxMs: number,
): Promise<HolResult> {
  await probe(proxy, userId, queries, 30, 5_000); // warm the probe path
  const quiet = await probe(proxy, userId, queries, quietN, 60_000);
  const on = proxyTarget('on', proxy, userId, 'on');
  let stop = false;
  let onChats = 0;
  let onErrors = 0;
  const onLatency: number[] = [];
  const loops = Array.from({ length: HOL_LOOPS }, async (_, k) => {
    const agent = keepAliveAgent(1);
    try {
      for (let i = 0; !stop; i++) {
        const r = await sendChat(agent, on, chatBody(queries[(400 + k * 97 + i) % queries.length] ?? 'Hello', false));
        onChats++;
        if (r.status === 200) onLatency.push(r.totalMs);
        else onErrors++;
      }
    } finally {
      agent.destroy();
    }
  });
  await sleep(500); // saves are running by now
  const depthAtProbeStart = (await queueDepth(proxy.origin)).depth;
  const onBefore = onChats;
  const t0 = Date.now();
  const loaded = await probe(proxy, userId, queries, loadedN, loadedMaxMs);
  const loadedMs = Date.now() - t0;
  const onDuring = onChats - onBefore;
  const depthAtProbeEnd = (await queueDepth(proxy.origin)).depth;
  stop = true;
  await Promise.all(loops);
  const drain = await drainQueue(proxy.origin, 180_000);
  return {
    quiet,
    loaded,
    loadedMs,
    onChats: onDuring,
    onErrors,
    onLatency,
    depthAtProbeStart,
    depthAtProbeEnd,
    drainMs: drain.ms,
    drainDepth: drain.startDepth,
    drained: drain.depth === 0,
  };
}

function printHeadOfLine(ctx: Ctx, size: number, hol: HolResult): void {
  const label = sizeLabel(size);
  const rows: string[][] = [];
  const check = (name: string, quiet: number[], loaded: number[]): void => {
    const q = summarize(quiet);
    const l = summarize(loaded);
    const ratio = l.p99 / q.p99;
    const pass = Number.isFinite(ratio) && ratio <= TARGET_HOL_P99_RATIO;
    rows.push([
      name,
      String(q.n),
      fmt(q.p50, 2),
      fmt(q.p99, 2),
      String(l.n),
      fmt(l.p50, 2),
      fmt(l.p99, 2),
      `${fmt(ratio, 2)}x ${pass ? '✓' : '✗'}`,
      `≤ ${TARGET_HOL_P99_RATIO}x`,
    ]);
    ctx.bars.push({ name: `target ${label}: ${name} p99 loaded/quiet ≤ ${TARGET_HOL_P99_RATIO}x`, pass });
  };
  check('memory-off chat', hol.quiet.off, hol.loaded.off);
  check('GET /health', hol.quiet.health, hol.loaded.health);
  printTable(
    `Head-of-line at ${label} memories: memory-off chats and GET /health, quiet vs while ${HOL_LOOPS} connections send memory-on chats (with saves) back to back`,
    ['probe', 'quiet n', 'quiet p50 ms', 'quiet p99 ms', 'loaded n', 'loaded p50 ms', 'loaded p99 ms', 'p99 loaded/quiet', 'target'],
    rows,
  );
  const onLat = summarize(hol.onLatency);
  console.log('(probe = one keep-alive connection for memory-off chats and one for GET /health, used alternately, one request at a time;');
  console.log(
    ` loaded: ${hol.onChats} memory-on chats on ${HOL_LOOPS} other connections during the ${fmt(hol.loadedMs / 1000, 1)} s of probes (${fmt((hol.onChats * 1000) / hol.loadedMs, 0)}/s, ` +
      `p50 ${fmt(onLat.p50, 1)} ms, p99 ${fmt(onLat.p99, 1)} ms, ${hol.onErrors} errors); save queue depth ${hol.depthAtProbeStart} when the probes started, ${hol.depthAtProbeEnd} when they ended;`,
  );
  console.log(
    ` after the load: ${hol.drainDepth} queued saves ${hol.drained ? `drained in ${fmt(hol.drainMs / 1000, 1)} s (${fmt(hol.drainDepth / (hol.drainMs / 1000), 1)} memory-on saves/s, proxy otherwise idle)` : `NOT drained after ${fmt(hol.drainMs / 1000, 0)} s`};` +
      ` errors in the probes: quiet ${hol.quiet.errors}, loaded ${hol.loaded.errors}; the load generator, the fake upstream and the proxy share ${os.cpus().length} CPUs)`,
  );
}

interface RealisticResult {
  rtt: number[];
  off: ChatResult[];
  on: ChatResult[];
  embeddingsPerSearch: { requests: number; inputs: number };
  embeddingsPerSave: { requests: number; inputs: number };
  search: SearchStats | undefined;
  waits: number[];
}

/**
 * Realistic network: a second fake upstream whose /v1/embeddings answers after
 * EMBEDDING_DELAY_MS, and the proxy restarted on the same DATA_DIR against it. Memory off and on,
 * non-streamed, interleaved (order shuffled per round), quiet (after each memory-on chat, wait
 * until its save is done).
 */
async function measureRealistic(ctx: Ctx, dataDir: string, size: number, rounds: number): Promise<RealisticResult> {
  const userId = userIdFor(size);
  const slowFake = await startFakeUpstreamChild({
    firstTokenDelayMs: FIRST_TOKEN_MS,
    chunkIntervalMs: CHUNK_INTERVAL_MS,
    embeddingDelayMs: EMBEDDING_DELAY_MS,
  });
  const fakeOrigin = slowFake.url.replace(/\/v1$/, '');
  let proxy: OurProxy | undefined;
  let failed = true;
  try {
    proxy = (await startProxyOn(ctx, dataDir, slowFake.url)).proxy;
    const origin = proxy.origin;
    console.log(
      `[chat-memory] ${sizeLabel(size)}: realistic network: fake upstream ${slowFake.url} (pid ${slowFake.child.pid}, embeddings delayed ${EMBEDDING_DELAY_MS} ms); proxy restarted on the same DATA_DIR (pid ${proxy.child.pid})`,
    );
    await adminMemories(origin, '/search', { user_id: userId, query: ctx.queries[1] ?? 'Hello', limit: 5 }); // loads the partitions
    const healthAgent = keepAliveAgent(1);
    const agent = keepAliveAgent(1);
    const offTarget = proxyTarget('proxy, memory off', proxy, userId, 'off');
    const onTarget = proxyTarget('proxy, memory on', proxy, userId, 'on');
    const readTarget = proxyTarget('read', proxy, userId, 'read');
    const writeTarget = proxyTarget('write', proxy, userId, 'write');
    try {
      // One embedding round trip, measured from here.
      const fakeTarget: Target = {
        name: 'fake embeddings',
        origin: fakeOrigin,
        pathPrefix: '/v1',
        headers: { authorization: 'Bearer sk-bench-upstream' },
        pid: undefined,
      };
      const rtt: number[] = [];
      for (let i = 0; i < 20; i++) {
        const body = Buffer.from(
          JSON.stringify({ model: 'text-embedding-3-small', input: ctx.queries[i] ?? 'Hello', encoding_format: 'float' }),
        );
        const r = await timedRequest(agent, fakeTarget, 'POST', '/embeddings', body);
        if (r.status === 200) rtt.push(r.totalMs);
      }
      // Embedding calls per search (read-only chats) and per save (write-only chats, each waited for).
      const perSearchN = 6;
      const perSaveN = 4;
      const s0 = await fakeStats(fakeOrigin);
      for (let i = 0; i < perSearchN; i++) await sendChat(agent, readTarget, chatBody(ctx.queries[20 + i] ?? 'Hello', false));
      const s1 = await fakeStats(fakeOrigin);
      for (let i = 0; i < perSaveN; i++) {
        await sendChat(agent, writeTarget, chatBody(ctx.queries[30 + i] ?? 'Hello', false));
        await waitDrained(origin, healthAgent, 30_000);
      }
      const s2 = await fakeStats(fakeOrigin);
      const per = (a: FakeUpstreamStats, b: FakeUpstreamStats, n: number): { requests: number; inputs: number } => ({
        requests: (b.embeddings.requests - a.embeddings.requests) / n,
        inputs: (b.embeddings.inputs - a.embeddings.inputs) / n,
      });
      // Warm-up, then the measured pair.
      for (let i = 0; i < 3; i++) {
        await sendChat(agent, onTarget, chatBody(ctx.queries[40 + i] ?? 'Hello', false));
        await waitDrained(origin, healthAgent, 30_000);
        await sendChat(agent, offTarget, chatBody(ctx.queries[40 + i] ?? 'Hello', false));
      }
      console.log(
        `[chat-memory] ${sizeLabel(size)}: realistic network: ${rounds} rounds x (memory off, memory on), order shuffled per round, waiting for the save after each memory-on chat`,
      );
      const off: ChatResult[] = [];
      const on: ChatResult[] = [];
      const waits: number[] = [];
      const shuffle = seededRandom(99);
      const onAgent = keepAliveAgent(1);
      const before = await searchHistogram(origin);
      try {
        for (let i = 0; i < rounds; i++) {
          const body = chatBody(ctx.queries[(50 + i) % ctx.queries.length] ?? 'Hello', false);
          const onFirst = shuffle() < 0.5;
          for (const which of onFirst ? ['on', 'off'] : ['off', 'on']) {
            if (which === 'off') off.push(await sendChat(agent, offTarget, body));
            else {
              on.push(await sendChat(onAgent, onTarget, body));
              waits.push((await waitDrained(origin, healthAgent, 30_000)).ms);
            }
          }
        }
      } finally {
        onAgent.destroy();
      }
      const search = searchDelta(before, await searchHistogram(origin));
      await drainQueue(origin, DRAIN_TIMEOUT_MS);
      failed = false;
      return { rtt, off, on, embeddingsPerSearch: per(s0, s1, perSearchN), embeddingsPerSave: per(s1, s2, perSaveN), search, waits };
    } finally {
      agent.destroy();
      healthAgent.destroy();
    }
  } finally {
    if (proxy) await stopProxy(proxy, failed);
    await stopChild(slowFake.child);
  }
}

function printRealistic(ctx: Ctx, size: number, r: RealisticResult): void {
  const label = sizeLabel(size);
  const ok = (xs: ChatResult[]): number[] => xs.filter((x) => x.status === 200).map((x) => x.totalMs);
  const off = summarize(ok(r.off));
  const on = summarize(ok(r.on));
  const rtt = summarize(r.rtt);
  const added = on.p50 - off.p50;
  const limit = rtt.p50 + TARGET_ADDED_OVER_RTT_MS;
  const pass = Number.isFinite(added) && added <= limit;
  ctx.bars.push({
    name: `target ${label}: realistic added p50 (on - off) ≤ one embedding round trip + ${TARGET_ADDED_OVER_RTT_MS} ms`,
    pass,
  });
  const memories = (xs: ChatResult[]): string => {
    const vals = xs.map((x) => x.memories).filter((v): v is number => v !== undefined && Number.isFinite(v));
    return vals.length === 0 ? '-' : `${fmt(summarize(vals).p50, 0)} (${Math.min(...vals)}-${Math.max(...vals)})`;
  };
  printTable(
    `Realistic network at ${label} memories: the fake's /v1/embeddings answers after ${EMBEDDING_DELAY_MS} ms; POST /v1/chat/completions non-streamed, quiet`,
    ['target', 'n', 'p50 ms', 'p99 ms', 'X-Mem0-Memories', 'errors', 'target'],
    [
      ['proxy, memory off', String(off.n), fmt(off.p50, 2), fmt(off.p99, 2), memories(r.off), String(r.off.length - off.n), ''],
      ['proxy, memory on', String(on.n), fmt(on.p50, 2), fmt(on.p99, 2), memories(r.on), String(r.on.length - on.n), ''],
      [
        'added (on - off)',
        '',
        `${fmt(added, 2)} ${pass ? '✓' : '✗'}`,
        fmt(on.p99 - off.p99, 2),
        '',
        '',
        `≤ one embedding round trip + ${TARGET_ADDED_OVER_RTT_MS} ms = ${fmt(rtt.p50, 1)} + ${TARGET_ADDED_OVER_RTT_MS} = ${fmt(limit, 1)} ms`,
      ],
    ],
  );
  const s = r.search;
  console.log(
    `(one embedding round trip = POST /v1/embeddings to the delayed fake from the bench, ${rtt.n} sequential: p50 ${fmt(rtt.p50, 2)} ms, p99 ${fmt(rtt.p99, 2)} ms;`,
  );
  console.log(
    ` embedding calls the proxy makes: ${fmt(r.embeddingsPerSearch.requests, 2)} requests (${fmt(r.embeddingsPerSearch.inputs, 2)} texts) per memory search (read-only chats), ` +
      `${fmt(r.embeddingsPerSave.requests, 2)} requests (${fmt(r.embeddingsPerSave.inputs, 2)} texts) per save (write-only chats);`,
  );
  console.log(
    ` search in this phase (/metrics): ${s ? `${s.ok} ok${s.notOk ? `, ${s.notOk} timed out/failed` : ''}, p50 ~${fmt(s.p50Ms, 1)} ms, mean ${fmt(s.meanMs, 1)} ms` : 'n/a'}; ` +
      `a save took p50 ${fmt(summarize(r.waits).p50, 0)} ms (the wait after each memory-on chat); the chat itself is not delayed by the fake)`,
  );
}

// ---------------------------------------------------------------------------------------------
// Per size, summary, entry point
// ---------------------------------------------------------------------------------------------

interface SizeResult {
  size: number;
  seed: SeedReport | undefined;
  /** First admin search in the first process on the seeded DATA_DIR (the seed check). */
  freshFirstSearchMs: number;
  restartMs: number;
  /** First admin search after stopping and restarting the proxy on the same DATA_DIR. */
  coldFirstSearchMs: number;
  /** p50 of the admin searches right after the cold one. */
  warmAdminSearchMs: number;
  rssLoaded: { rss: number; peak: number } | undefined;
  rssEnd: { rss: number; peak: number } | undefined;
  search: SearchStats | undefined;
  cpu: CpuResult | undefined;
  saves: SavesResult | undefined;
  memoriesAtEnd: number;
  error: string | undefined;
}

async function runSize(ctx: Ctx, size: number, headline: boolean): Promise<SizeResult> {
  const label = sizeLabel(size);
  const userId = userIdFor(size);
  const quick = ctx.args.quick;
  const scale = (quick ? 0.25 : 1) * (size >= LARGE_SIZE ? LARGE_SCALE : 1);
  const result: SizeResult = {
    size,
    seed: undefined,
    freshFirstSearchMs: NaN,
    restartMs: NaN,
    coldFirstSearchMs: NaN,
    warmAdminSearchMs: NaN,
    rssLoaded: undefined,
    rssEnd: undefined,
    search: undefined,
    cpu: undefined,
    saves: undefined,
    memoriesAtEnd: NaN,
    error: undefined,
  };
  const sizeStarted = Date.now();
  const dataDir = makeTempDir(`bench-chat-memory-${label}-`);
  removeTempDirLater(dataDir);
  console.log(
    `\n[chat-memory] ---- ${label}: ${size} memories x ${DIMS} dims for user "${userId}" into ${dataDir}/vectors.db (seeding child process) ----`,
  );
  try {
    result.seed = await seedInChild(dataDir, ctx.root, size, userId, ctx.entityFiles);
  } catch (err) {
    result.error = `seeding failed: ${err instanceof Error ? err.message : String(err)}`;
    console.log(`[chat-memory] ${label}: ${result.error}`);
    ctx.bars.push({ name: `${label}: seeded`, pass: false });
    return result;
  }
  const seed = result.seed;
  const dbMiB = fs.statSync(path.join(dataDir, 'vectors.db')).size / 1024 / 1024;
  console.log(
    `[chat-memory] ${label}: seeded ${size} memories + ${seed.entities} entity rows in ${fmt(seed.ms / 1000, 1)} s ` +
      `(${fmt(seed.insertMs / 1000, 1)} s of it in EmbeddedVectorStore.insert, ${seed.transactions} transactions of ≤ ${SEED_BATCH} rows, synchronous=NORMAL; vectors.db ${fmt(dbMiB, 0)} MiB; ` +
      `payload {source, data, textLemmatized, hash, createdAt, updatedAt, user_id}; vectors = fakeEmbedding(text, ${DIMS}); ${seed.note})`,
  );
  const texts = generateFacts(size);
  const ids = seededIds(size, MEMORY_ID_SEED);

  let proxy: OurProxy | undefined;
  let keepLog = false;
  try {
    // 1. First process on the seeded DATA_DIR: does mem0 see exactly the seeded memories?
    const first = await startProxyOn(ctx, dataDir, ctx.fake.url);
    proxy = first.proxy;
    console.log(
      `[chat-memory] ${label}: our proxy ${proxy.origin} (${ctx.prepared.note}, pid ${proxy.child.pid}, ready in ${fmt(first.startMs, 0)} ms, log ${proxy.dataDir}/proxy.log)`,
    );
    const check = await checkSeed(proxy.origin, size, userId, texts, ids);
    result.freshFirstSearchMs = check.firstSearchMs;
    ctx.bars.push({ name: `${label}: seeded memories visible to mem0`, pass: check.ok });
    if (!check.ok) keepLog = true;

    // 2. Restart on the same DATA_DIR; time the first search (cold: the partition is not loaded),
    //    then a few more (warm), then the RSS with the user's memories loaded.
    await stopProxy(proxy, keepLog);
    proxy = undefined;
    const restarted = await startProxyOn(ctx, dataDir, ctx.fake.url);
    proxy = restarted.proxy;
    result.restartMs = restarted.startMs;
    const cold = await adminMemories(proxy.origin, '/search', { user_id: userId, query: ctx.queries[3] ?? 'Hello', limit: 5 });
    result.coldFirstSearchMs = cold.ms;
    const warm: number[] = [];
    for (let i = 0; i < 5; i++)
      warm.push((await adminMemories(proxy.origin, '/search', { user_id: userId, query: ctx.queries[4 + i] ?? 'Hello', limit: 5 })).ms);
    result.warmAdminSearchMs = summarize(warm).p50;
    result.rssLoaded = procRssMiB(proxy.child.pid);
    console.log(
      `[chat-memory] ${label}: restarted the proxy on the same DATA_DIR (pid ${proxy.child.pid}, ready in ${fmt(restarted.startMs, 0)} ms): first POST /search ${fmt(cold.ms, 1)} ms ` +
        `(${cold.memories.length} memories), next 5 p50 ${fmt(result.warmAdminSearchMs, 1)} ms; RSS ${fmt(result.rssLoaded.rss, 0)} MiB (peak ${fmt(result.rssLoaded.peak, 0)})`,
    );

    // 3. The chat table.
    const table = await measureChatTable(ctx, proxy, dataDir, size, scale);
    result.search = table.search;

    // 4. CPU per chat, then saves/s, then (headline size) head-of-line.
    result.cpu = await measureCpu(proxy, userId, ctx.queries, Math.max(10, Math.round(40 * scale)), 300);
    result.saves = await measureSaves(proxy, userId, ctx.queries, quick ? 60 : 200);
    const s = result.saves;
    console.log(
      `[chat-memory] ${label}: saves/s: ${s.n} write-only chats on ${SAVES_CONCURRENCY} connections answered in ${fmt(s.enqueueMs, 0)} ms (queue depth then ${s.depthAfterEnqueue}), ` +
        `${s.drained ? 'queue empty' : `${s.left} still queued`} after ${fmt(s.totalMs / 1000, 2)} s => ${fmt(s.perSec, 1)} saves/s; ` +
        `proxy CPU ${fmt(s.cpuMsPerSave, 1)} ms per write-only chat + its save; ${s.errors} errors, ${s.failures} save failures`,
    );
    if (headline) {
      const hol = await measureHeadOfLine(proxy, userId, ctx.queries, quick ? 100 : 300, quick ? 80 : 200, quick ? 5_000 : 15_000);
      printHeadOfLine(ctx, size, hol);
    }
    await drainQueue(proxy.origin, DRAIN_TIMEOUT_MS);
    result.rssEnd = procRssMiB(proxy.child.pid);
    result.memoriesAtEnd = countUserRows(dataDir, userId);
    await stopProxy(proxy, keepLog);
    proxy = undefined;

    // 5. (headline size) memory on vs off with the embeddings delayed like OpenAI's.
    if (headline) {
      const realistic = await measureRealistic(ctx, dataDir, size, quick ? 20 : 60);
      printRealistic(ctx, size, realistic);
      result.memoriesAtEnd = countUserRows(dataDir, userId);
    }
  } catch (err) {
    result.error = err instanceof Error ? err.message : String(err);
    console.log(`[chat-memory] ${label}: failed: ${result.error}`);
    ctx.bars.push({ name: `${label}: measured`, pass: false });
    keepLog = true;
  } finally {
    if (proxy) await stopProxy(proxy, keepLog);
  }
  console.log(`[chat-memory] ${label}: wall time ${fmt((Date.now() - sizeStarted) / 1000, 1)} s`);
  return result;
}

/** "12.3 ✓" / "12.3 ✗" when a target applies, else the plain figure. */
function withTarget(value: number, digits: number, limit: number | undefined, atMost: boolean): string {
  if (limit === undefined) return fmt(value, digits);
  const pass = Number.isFinite(value) && (atMost ? value <= limit : value >= limit);
  return `${fmt(value, digits)} ${pass ? '✓' : '✗'}`;
}

function printSummary(ctx: Ctx, results: readonly SizeResult[], entities: { ms: number; parts: number; count: number }): void {
  const cols = results.map((r) => sizeLabel(r.size));
  const row = (name: string, cell: (r: SizeResult) => string, target = ''): string[] => [name, ...results.map(cell), target];
  const targetText = (m: ReadonlyMap<number, number>, unit: string, op: string): string =>
    [...m].map(([s, v]) => `${op} ${v}${unit} @${sizeLabel(s)}`).join(', ');
  const rows: string[][] = [
    row('seeding s (entity rows)', (r) => (r.seed ? `${fmt(r.seed.ms / 1000, 1)} (${r.seed.entities})` : 'n/a')),
    row('first search, first process ms', (r) => fmt(r.freshFirstSearchMs, 1)),
    row(
      'cold first search after restart ms',
      (r) => withTarget(r.coldFirstSearchMs, 1, TARGET_COLD_SEARCH_MS.get(r.size), true),
      targetText(TARGET_COLD_SEARCH_MS, ' ms', '≤'),
    ),
    row('warm admin /search ms (p50 of 5)', (r) => fmt(r.warmAdminSearchMs, 1)),
    row(
      'warm chat search p50 ms (/metrics)',
      (r) => withTarget(r.search?.p50Ms ?? NaN, 2, TARGET_WARM_SEARCH_P50_MS.get(r.size), true),
      targetText(TARGET_WARM_SEARCH_P50_MS, ' ms', '≤'),
    ),
    row('warm chat search mean ms (/metrics)', (r) => fmt(r.search?.meanMs ?? NaN, 2)),
    row(
      'RSS MiB, memories loaded (peak)',
      (r) => (r.rssLoaded ? `${withTarget(r.rssLoaded.rss, 0, TARGET_RSS_MIB.get(r.size), true)} (${fmt(r.rssLoaded.peak, 0)})` : 'n/a'),
      targetText(TARGET_RSS_MIB, ' MiB', '≤'),
    ),
    row('RSS MiB at the end (peak)', (r) => (r.rssEnd ? `${fmt(r.rssEnd.rss, 0)} (${fmt(r.rssEnd.peak, 0)})` : 'n/a')),
    row('saves/s (write-only burst)', (r) => withTarget(r.saves?.perSec ?? NaN, 1, TARGET_SAVES_PER_S, false), `≥ ${TARGET_SAVES_PER_S}`),
    row('CPU ms per memory-on chat (+ save)', (r) => fmt(r.cpu?.onMs ?? NaN, 2)),
    row('  of it on the serving thread', (r) => fmt(r.cpu?.onMainMs ?? NaN, 2), '≤ 10 ms'),
    row('CPU ms per memory-off chat', (r) => fmt(r.cpu?.offMs ?? NaN, 3)),
    row('CPU ms per write-only chat (+ save)', (r) => fmt(r.saves?.cpuMsPerSave ?? NaN, 2)),
    row("user's memories at the end", (r) => (Number.isFinite(r.memoriesAtEnd) ? String(r.memoriesAtEnd) : 'n/a')),
  ];
  printTable(
    `Memory at scale: one user with ${cols.join(' / ')} memories (embedded store, ${DIMS} dims, fake upstream without delays)`,
    ['figure', ...cols, 'target'],
    rows,
  );
  console.log(
    `(seeding = the per-size child (lemmatize, fake embeddings, inserts); before it, mem0's entity extraction of all ${entities.count} texts took ${fmt(entities.ms / 1000, 1)} s on ${entities.parts} processes, shared by all sizes;`,
  );
  console.log(
    ' first search = POST /search in the first proxy process on the seeded DATA_DIR (after two /list calls); cold = the same after stopping that process and starting another (OS page cache warm);',
  );
  console.log(
    ' warm chat search = the quiet non-streamed phase of the chat table (read-only and on chats); RSS = VmRSS (VmHWM) of the proxy after the cold search and 5 more;',
  );
  console.log(
    ` saves/s = write-only chats sent on ${SAVES_CONCURRENCY} connections, saved / (first request until GET /health shows save_queue.depth 0);`,
  );
  console.log(
    ' CPU = utime+stime of the proxy process (/proc, 10 ms ticks): memory-on chats one at a time, each waited until its save was done (the /health polls subtracted); ✓/✗ = target met / not met)',
  );
  for (const r of results) {
    if (r.error) console.log(`note: ${sizeLabel(r.size)}: ${r.error}`);
    const label = sizeLabel(r.size);
    const bar = (name: string, value: number, limit: number | undefined, atMost: boolean, unit: string): void => {
      if (limit === undefined) return;
      const pass = Number.isFinite(value) && (atMost ? value <= limit : value >= limit);
      ctx.bars.push({ name: `target ${label}: ${name} ${atMost ? '≤' : '≥'} ${limit}${unit}`, pass });
      console.log(`target (${label}): ${name} ${fmt(value, 1)}${unit} (${atMost ? '≤' : '≥'} ${limit}${unit})  ${pass ? 'PASS' : 'FAIL'}`);
    };
    bar('warm chat search p50', r.search?.p50Ms ?? NaN, TARGET_WARM_SEARCH_P50_MS.get(r.size), true, ' ms');
    bar('cold first search', r.coldFirstSearchMs, TARGET_COLD_SEARCH_MS.get(r.size), true, ' ms');
    bar('RSS', r.rssLoaded?.rss ?? NaN, TARGET_RSS_MIB.get(r.size), true, ' MiB');
    bar('saves/s', r.saves?.perSec ?? NaN, TARGET_SAVES_PER_S, false, '');
  }
}

function headlineSize(sizes: readonly number[]): number | undefined {
  let best: number | undefined;
  for (const s of sizes)
    if (best === undefined || Math.abs(Math.log(s / HEADLINE_SIZE)) < Math.abs(Math.log(best / HEADLINE_SIZE))) best = s;
  return best;
}

export async function runChatMemoryBench(args: BenchArgs): Promise<TableOutcome> {
  const bars: TableOutcome['bars'] = [];
  const root = args.proxyRoot ?? ROOT;
  const started = Date.now();
  const sizes = args.sizes ?? (args.quick ? QUICK_SIZES : DEFAULT_SIZES);
  const maxSize = Math.max(...sizes);
  const headline = headlineSize(sizes);
  console.log(
    `\n[chat-memory] host: ${os.cpus().length} CPU(s) (${os.cpus()[0]?.model ?? '?'}), node ${process.version}, load avg ${os
      .loadavg()
      .map((l) => fmt(l, 2))
      .join(' ')}`,
  );
  console.log(
    `[chat-memory] sizes: ${sizes.map(sizeLabel).join(', ')} memories; head-of-line and realistic-network tables at ${headline === undefined ? '-' : sizeLabel(headline)}`,
  );
  if (args.oursStandIn) console.log('[chat-memory] --ours=bare does not apply here (the bare proxy has no memory): our proxy is used');

  // 1. mem0's entity extraction for the largest size, in parallel children, while the proxy builds.
  const scratch = makeTempDir('bench-chat-memory-entities-');
  removeTempDirLater(scratch);
  const parts = Math.max(1, Math.min(4, os.cpus().length));
  console.log(`[chat-memory] extracting mem0 entities of ${maxSize} texts in ${parts} child processes, building the proxy meanwhile ...`);
  const extracting = extractEntitiesInChildren(scratch, root, maxSize, parts);
  extracting.catch(() => undefined); // awaited below; avoids an unhandled rejection while the build runs
  const prepared = prepareOurProxy(args.proxyRuntime, args.proxyRoot);
  let entities: Awaited<typeof extracting>;
  try {
    entities = await extracting;
  } catch (err) {
    console.log(`[chat-memory] entity extraction failed: ${err instanceof Error ? err.message : String(err)}`);
    bars.push({ name: 'seeded', pass: false });
    await stopAllChildren();
    return { bars };
  }
  console.log(`[chat-memory] entities of ${maxSize} texts extracted in ${fmt(entities.ms / 1000, 1)} s (${entities.note})`);
  if (!prepared) {
    console.log('[chat-memory] our proxy: src/index.ts or src/app.ts does not exist - table skipped');
    return { bars };
  }

  // 2. One fake upstream (stream pacing, no delays) for everything but the realistic-network table.
  const fake = await startFakeUpstreamChild({ firstTokenDelayMs: FIRST_TOKEN_MS, chunkIntervalMs: CHUNK_INTERVAL_MS });
  console.log(`[chat-memory] fake upstream ${fake.url} (pid ${fake.child.pid}); proxy: ${prepared.note}`);
  const ctx: Ctx = { args, root, prepared, fake, entityFiles: entities.files, bars, queries: makeQueries(997), explained: false };

  // 3. Each size in turn.
  const results: SizeResult[] = [];
  for (const size of sizes) results.push(await runSize(ctx, size, size === headline));

  // 4. Across sizes.
  printSummary(ctx, results, { ms: entities.ms, parts, count: maxSize });
  console.log(`[chat-memory] table wall time ${fmt((Date.now() - started) / 1000, 1)} s`);
  await stopAllChildren();
  return { bars };
}
