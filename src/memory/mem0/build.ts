/**
 * Building the mem0 OSS service from the configuration: the engine (mem0ai's `Memory`) with its
 * vector store, HTTP client settings, batched embeddings, the memory counter and the user
 * directory, and what closes it all.
 *
 * - embedded: our EmbeddedVectorStore (provider "embedded") in `<DATA_DIR>/vectors.db`.
 * - pgvector: mem0ai's `pgvector` provider on DATABASE_URL (needs the `pg` package).
 * - qdrant:   mem0ai's `qdrant` provider on QDRANT_URL / QDRANT_API_KEY (needs `@qdrant/js-client-rest`).
 *
 * Every backend keeps mem0's history in `<DATA_DIR>/history.db`, and mem0's own files (an
 * anonymous id, notice state) in `<DATA_DIR>/mem0` through MEM0_DIR, so nothing lands in the home
 * directory or the working directory. mem0ai is loaded lazily, after MEM0_TELEMETRY is set,
 * because it reads that variable once, when first loaded.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Memory, VectorStore, VectorStoreResult } from 'mem0ai/oss';
import type { Config } from '../../config';
import type { Logger } from '../../logger';
import { BatchingEmbedder, type EmbedderLike } from '../batching-embedder';
import { EntityOracle } from '../entity-oracle';
import { HttpEmbedder } from '../http-embedder';
import { Recall, type RecallStores } from '../recall';
import { DEFAULT_GUARD_TUNING, type GuardTuning, withTimeout } from '../resilience';
import type { MemoryService, UserSummary, UsersOptions, UsersPage } from '../types';
import { UnavailableMemoryService } from '../unavailable';
import { EmbeddedStoreFiles, EmbeddedVectorStore } from '../vector-store/embedded-store';
import { registerEmbeddedVectorStore } from '../vector-store/register';
import { buildMem0Config, mem0Preconditions } from './engine-config';
import { loadMem0Oss, mem0NounPhrases } from './load';
import { Mem0MemoryService, type Mem0ServiceOptions } from './service';

/** The private parts of mem0's `Memory` we touch: HTTP client settings at start, stores at close. */
interface EngineInternals {
  embedder?: unknown;
  llm?: unknown;
  db?: unknown;
  vectorStore?: unknown;
  _entityStore?: unknown;
  _ensureInitialized?: unknown;
  getEntityStore?: unknown;
  _existingEntitiesByText?: unknown;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

/**
 * Our guard owns retries and deadlines. mem0's OpenAI-compatible clients (openai SDK v4) would
 * otherwise retry twice more on their own (nine attempts for our three) and wait up to ten
 * minutes per request, long after our deadline gave up. Both settings are read per request.
 */
function tuneHttpClient(holder: unknown, timeoutMs: number): void {
  if (!isRecord(holder)) return;
  const client = holder['openai'];
  if (isRecord(client) && typeof client['maxRetries'] === 'number' && typeof client['timeout'] === 'number') {
    client['maxRetries'] = 0;
    client['timeout'] = timeoutMs;
  }
}

/**
 * For OpenAI-compatible servers, our embedder (http-embedder.ts) takes the place of mem0's: the
 * same requests, with less CPU per request and base64 vectors. It is put where mem0 keeps its
 * embedder, so every embedding of the engine (saves, recall, the health probe) goes through it.
 */
function ownEmbedder(config: Config, internals: EngineInternals, timeoutMs: number): HttpEmbedder | undefined {
  if (!isEmbedder(internals.embedder)) return undefined;
  const m = config.memory;
  const embedder = new HttpEmbedder({
    baseURL: m.embedderBaseUrl,
    apiKey: config.openaiApiKey,
    model: m.embeddingModel,
    dimensions: m.embeddingDims,
    timeoutMs,
  });
  internals.embedder = embedder;
  return embedder;
}

async function closeQuietly(target: unknown, logger: Logger, what: string): Promise<void> {
  if (!isRecord(target) || typeof target['close'] !== 'function') return;
  try {
    await (target['close'] as () => unknown).call(target);
  } catch (err) {
    logger.warn('memory engine: closing failed', { what, err });
  }
}

/**
 * pg's Client emits 'error' when the server drops the connection; with no listener Node treats
 * it as uncaught and the process dies. mem0's pgvector store adds none, so we do.
 */
function guardConnectionErrors(engine: EngineInternals, logger: Logger): () => void {
  const guarded = new WeakSet<object>();
  return () => {
    for (const store of [engine.vectorStore, engine._entityStore]) {
      const client = isRecord(store) ? store['client'] : undefined;
      if (!isRecord(client) || guarded.has(client) || typeof client['on'] !== 'function') continue;
      guarded.add(client);
      (client['on'] as (event: string, listener: (err: unknown) => void) => void).call(client, 'error', (err: unknown) => {
        // The calls that follow fail and mark the service unhealthy; nothing else to do here.
        logger.error('memory store connection failed', { err });
      });
    }
  };
}

/** What mem0 reads of its map of a scope's existing entities, by normalised text. */
interface EntityLookup {
  get(key: string): VectorStoreResult | undefined;
  has(key: string): boolean;
}

/**
 * mem0's `add` looks each extracted entity up by its text among the scope's existing entities,
 * which mem0 reads by listing up to 10,000 entity rows on every save (the longer a user's
 * history, the slower each save). On the embedded store the same question is one indexed read
 * per entity (`findByTextKey`), answering as the listing would (first row in insertion order),
 * without its 10,000-row horizon. Other stores keep mem0's listing.
 */
function indexEntityLookups(memory: Memory, internals: EngineInternals, logger: Logger): void {
  const listing = internals._existingEntitiesByText;
  if (typeof listing !== 'function') {
    logger.warn('memory engine: mem0 has no exact entity lookup to index; saves list the entity store as mem0 does');
    return;
  }
  internals._existingEntitiesByText = (entityStore: unknown, filters: Record<string, unknown>): Promise<EntityLookup> => {
    if (!(entityStore instanceof EmbeddedVectorStore))
      return (listing as (s: unknown, f: unknown) => Promise<EntityLookup>).call(memory, entityStore, filters);
    const lookup: EntityLookup = {
      get: (key) => entityStore.findByTextKey(filters, key),
      has: (key) => entityStore.findByTextKey(filters, key) !== undefined,
    };
    return Promise.resolve(lookup);
  };
}

/**
 * mem0's history file (`history.db`: each memory's change log and the last messages of each
 * session, which mem0 reads back as context for the next extraction) is opened with SQLite's
 * defaults: a rollback journal and a full sync, two or three fsyncs for each of its two commits
 * per save (≈ 2 ms each here). Write-ahead logging with NORMAL sync makes those commits cost
 * microseconds; a commit is still durable when the process dies (SIGKILL included), and only an
 * operating-system crash or power cut can lose the last of them. The memories themselves are in
 * the vector store, which keeps its full sync.
 */
function journalHistoryAhead(history: unknown, logger: Logger): void {
  const db = isRecord(history) ? history['db'] : undefined;
  if (!isRecord(db) || typeof db['pragma'] !== 'function') return;
  const pragma = db['pragma'] as (source: string) => unknown;
  try {
    pragma.call(db, 'journal_mode = WAL');
    pragma.call(db, 'synchronous = NORMAL');
  } catch (err) {
    logger.warn('memory engine: the history file keeps its rollback journal', { err });
  }
}

function isEmbedder(value: unknown): value is EmbedderLike {
  return isRecord(value) && typeof value['embed'] === 'function' && typeof value['embedBatch'] === 'function';
}

function isVectorStore(value: unknown): value is VectorStore {
  return isRecord(value) && typeof value['search'] === 'function' && typeof value['insert'] === 'function';
}

/** The engine's stores, for recall: they exist once mem0 has initialised (it retries a failed start). */
function engineStores(memory: Memory, internals: EngineInternals): RecallStores {
  const ready = async (): Promise<void> => {
    const ensure = internals._ensureInitialized;
    if (typeof ensure === 'function') await (ensure as () => Promise<void>).call(memory);
  };
  return {
    memories: async () => {
      await ready();
      if (!isVectorStore(internals.vectorStore)) throw new Error('the memory engine has no vector store');
      return internals.vectorStore;
    },
    entities: async () => {
      await ready();
      const get = internals.getEntityStore;
      const store: unknown = typeof get === 'function' ? await (get as () => Promise<unknown>).call(memory) : undefined;
      if (!isVectorStore(store)) throw new Error('the memory engine has no entity store');
      return store;
    },
  };
}

/**
 * How many memories a user has, from the store's own count: the embedded store and mem0's
 * pgvector provider count in `list` (one indexed COUNT); mem0's Qdrant provider reports the page
 * size there, so Qdrant is asked with its exact count API.
 */
interface QdrantInternals {
  collectionName: string;
  ensureClient?: () => Promise<void>;
  createFilter(filters: Record<string, unknown>): unknown;
  client: { count(collection: string, request: { filter: unknown; exact: boolean }): Promise<{ count: number }> };
}

function memoryCounter(backend: Mem0ServiceOptions['backend'], stores: RecallStores): (userId: string) => Promise<number> {
  return async (userId) => {
    const store: unknown = await stores.memories();
    if (backend === 'qdrant' && isRecord(store) && typeof store['createFilter'] === 'function') {
      const qdrant = store as unknown as QdrantInternals;
      await qdrant.ensureClient?.();
      const filter = qdrant.createFilter({ user_id: userId });
      return (await qdrant.client.count(qdrant.collectionName, { filter, exact: true })).count;
    }
    const [, total] = await (store as VectorStore).list({ user_id: userId }, 1);
    return total;
  };
}

/** Most memories the generic user directory reads (backends without a grouped query: Qdrant). */
export const USER_DIRECTORY_SCAN_LIMIT = 100_000;

interface PgVectorInternals {
  client: { query(sql: string, params: unknown[]): Promise<{ rows: Record<string, unknown>[] }> };
  col(): string;
  initialize?: () => Promise<void>;
}

const lastActivity = (payload: Record<string, unknown> | undefined): string | null => {
  const at = payload?.['updatedAt'] ?? payload?.['createdAt'];
  return typeof at === 'string' ? at : null;
};

/**
 * Users and their memory counts from any vector store's `list`: reads up to
 * USER_DIRECTORY_SCAN_LIMIT memories and groups them here.
 */
export async function scanUserDirectory(store: VectorStore, options: UsersOptions): Promise<UsersPage> {
  const [rows] = await store.list(undefined, USER_DIRECTORY_SCAN_LIMIT);
  const query = options.query?.toLowerCase() ?? '';
  const byUser = new Map<string, UserSummary>();
  for (const row of rows) {
    const userId = row.payload?.['user_id'];
    if (typeof userId !== 'string' || (query !== '' && !userId.toLowerCase().includes(query))) continue;
    const at = lastActivity(row.payload);
    const seen = byUser.get(userId);
    if (!seen) byUser.set(userId, { user_id: userId, memories: 1, last_activity: at });
    else {
      seen.memories++;
      if (at !== null && (seen.last_activity === null || at > seen.last_activity)) seen.last_activity = at;
    }
  }
  const users = [...byUser.values()].sort((a, b) => (a.user_id < b.user_id ? -1 : a.user_id > b.user_id ? 1 : 0));
  return { users: users.slice(options.offset, options.offset + options.limit), total: users.length };
}

/**
 * The users with memories, from the store: one grouped query on the embedded store and on mem0's
 * pgvector table, a bounded scan elsewhere.
 */
function userDirectory(backend: Mem0ServiceOptions['backend'], stores: RecallStores): (options: UsersOptions) => Promise<UsersPage> {
  return async (options) => {
    const store: unknown = await stores.memories();
    if (store instanceof EmbeddedVectorStore) return store.users(options.query ?? '', options.limit, options.offset);
    if (backend === 'pgvector' && isRecord(store) && typeof store['col'] === 'function' && isRecord(store['client'])) {
      const pg = store as unknown as PgVectorInternals;
      await pg.initialize?.();
      const match = `payload->>'user_id' IS NOT NULL AND ($1 = '' OR strpos(lower(payload->>'user_id'), lower($1)) > 0)`;
      const query = options.query ?? '';
      const counted = await pg.client.query(`SELECT COUNT(DISTINCT payload->>'user_id')::int AS n FROM ${pg.col()} WHERE ${match}`, [
        query,
      ]);
      const grouped = await pg.client.query(
        `SELECT payload->>'user_id' AS user_id, COUNT(*)::int AS memories,
                MAX(COALESCE(payload->>'updatedAt', payload->>'createdAt')) AS last
         FROM ${pg.col()} WHERE ${match} GROUP BY 1 ORDER BY 1 LIMIT $2 OFFSET $3`,
        [query, options.limit, options.offset],
      );
      return {
        total: Number(counted.rows[0]?.['n'] ?? 0),
        users: grouped.rows.map((r) => ({
          user_id: String(r['user_id']),
          memories: Number(r['memories']),
          last_activity: typeof r['last'] === 'string' ? r['last'] : null,
        })),
      };
    }
    return scanUserDirectory(store as VectorStore, options);
  };
}

/**
 * One embedding round trip per search and per save: a BatchingEmbedder in front of the engine's
 * embedder (saves) and Recall in place of mem0's search, both driven by the entity oracle.
 * Without an oracle (a mem0ai whose `Memory` it cannot drive) the engine keeps its own embedder
 * and search, logged once.
 */
async function batchEmbeddings(
  oss: typeof import('mem0ai/oss'),
  memory: Memory,
  internals: EngineInternals,
  logger: Logger,
): Promise<{ batching?: BatchingEmbedder; recall?: Recall; releaseNouns?: () => void }> {
  const inner = internals.embedder;
  if (!isEmbedder(inner)) return {};
  const nouns = mem0NounPhrases();
  const asked = nouns ? nouns.counts.parsedHere + nouns.counts.hits : 0;
  const oracle = await EntityOracle.create(oss);
  if (!oracle) {
    logger.warn('memory engine: entity prediction unavailable; each search and save makes two embedding requests');
    return {};
  }
  // The oracle's self-check ran mem0's entity extraction: if it did not reach the stand-in, mem0
  // holds compromise itself, and parsing texts ahead on another thread would be wasted.
  const inEffect = nouns !== undefined && nouns.counts.parsedHere + nouns.counts.hits > asked;
  const releaseNouns = inEffect ? nouns.useThread() : undefined;
  const prefetch = inEffect ? nouns : undefined;
  const batching = new BatchingEmbedder(inner, oracle, logger, prefetch);
  internals.embedder = batching;
  return {
    batching,
    recall: new Recall(oracle, inner, engineStores(memory, internals), logger, prefetch),
    ...(releaseNouns ? { releaseNouns } : {}),
  };
}

export interface CreateMem0Options {
  tuning?: Partial<GuardTuning> | undefined;
  onAvailabilityChange?: ((available: boolean) => void) | undefined;
  /** How long start-up waits for the store to open (default 15 s). */
  startupTimeoutMs?: number | undefined;
  /** One embedding request per search and per save (default true; false keeps mem0's two, for comparisons). */
  batchEmbeddings?: boolean | undefined;
  /** Exact entity lookups from the embedded store's index (default true; false keeps mem0's listing, for comparisons). */
  indexEntityLookups?: boolean | undefined;
  /** One search before the service is handed out (see `warmUp`; default true, embedded backend). */
  warmUp?: boolean | undefined;
}

/** A query with a proper name, so that the warm-up runs the entity search too. */
export const WARM_UP_QUERY = 'What do you remember about Alice Smith?';
/** The scope searched when the store has no recently active one (nobody's: no rows). */
const WARM_UP_USER = '__mem0_proxy_warm_up__';
const WARM_UP_TIMEOUT_MS = 3000;

/**
 * The first search after a start would otherwise pay for everything done once: loading the
 * indexes of the recently active users (the store's preload, still running when the first request
 * comes), the first embedding request on a new connection, and the first run of every piece of
 * the search path (query analysis, the vector kernel, the SQLite statements) before V8 has compiled
 * it. Here one recall runs before the engine is reported ready: it waits for the preload, then
 * searches the most recently active user's memories with a fixed query (one embedding request of
 * a few tokens). Measured at 10k memories (chat-memory bench): the first real search took 99–103
 * ms without, 50–58 ms with it (three warm-up recalls instead of one measured 64–69 ms: no
 * better). It reads and returns nothing, and gives up silently after a few seconds (an upstream
 * down at start): the engine starts either way.
 */
async function warmUp(recall: Recall, stores: RecallStores, logger: Logger): Promise<void> {
  const started = Date.now();
  try {
    await withTimeout(
      (async () => {
        const memories = await stores.memories();
        const recent = memories instanceof EmbeddedVectorStore ? await memories.whenPreloaded() : [];
        const entities = await stores.entities().catch(() => undefined);
        if (entities instanceof EmbeddedVectorStore) await entities.whenPreloaded();
        const user = recent.find((filters) => filters['user_id'] !== undefined)?.['user_id'] ?? WARM_UP_USER;
        await recall.search(WARM_UP_QUERY, { topK: 5, filters: { user_id: user } });
      })(),
      WARM_UP_TIMEOUT_MS,
      'memory warm-up',
    );
    logger.debug('memory engine warmed up', { ms: Date.now() - started });
  } catch (err) {
    logger.debug('memory engine warm-up skipped', { ms: Date.now() - started, err });
  }
}

/**
 * Builds the mem0 OSS service, or an UnavailableMemoryService saying why it cannot be built
 * (missing key or package, configuration mem0 rejects, embedded store that cannot be opened).
 * A remote store (pgvector, Qdrant) that is down at start is not fatal: the service starts
 * unhealthy and mem0 retries its initialisation on the next call.
 */
export async function createMem0Service(config: Config, logger: Logger, options: CreateMem0Options = {}): Promise<MemoryService> {
  const backend = config.memory.backend;
  if (backend === 'platform') throw new Error('createMem0Service: the platform backend is built by platform-service.ts');
  const problem = mem0Preconditions(config);
  if (problem) return new UnavailableMemoryService(backend, problem);

  try {
    fs.mkdirSync(path.join(config.dataDir, 'mem0'), { recursive: true });
  } catch (err) {
    return new UnavailableMemoryService(backend, `DATA_DIR cannot be created: ${(err as Error).message}`);
  }
  // Read by mem0ai at each use.
  process.env.MEM0_DIR = path.join(config.dataDir, 'mem0');

  const oss = loadMem0Oss(config);
  if (backend === 'embedded' || backend === 'pgvector') registerEmbeddedVectorStore(oss.VectorStoreFactory);

  const writeTimeoutMs = options.tuning?.writeTimeoutMs ?? DEFAULT_GUARD_TUNING.writeTimeoutMs;
  const readTimeoutMs = options.tuning?.readTimeoutMs ?? DEFAULT_GUARD_TUNING.readTimeoutMs;
  // The embedded store's open files belong to this engine: its stores join them, and `release` closes them.
  const files = new EmbeddedStoreFiles();
  let memory: Memory;
  try {
    memory = new oss.Memory(buildMem0Config(config, logger, { writeTimeoutMs }, files));
  } catch (err) {
    files.closeAll();
    return new UnavailableMemoryService(backend, `the memory engine rejected its configuration: ${(err as Error).message}`);
  }
  const internals = memory as unknown as EngineInternals;
  if (options.indexEntityLookups !== false) indexEntityLookups(memory, internals, logger);
  journalHistoryAhead(internals.db, logger);
  const httpEmbedder = config.memory.provider.toLowerCase() === 'openai' ? ownEmbedder(config, internals, readTimeoutMs) : undefined;
  tuneHttpClient(internals.embedder, readTimeoutMs);
  tuneHttpClient(internals.llm, writeTimeoutMs);
  const { batching, recall, releaseNouns } = options.batchEmbeddings === false ? {} : await batchEmbeddings(oss, memory, internals, logger);

  const release = async (): Promise<void> => {
    // The stores are reference-counted per file, so closing our own instances (not every store
    // of the process) leaves other services in this process alone.
    await closeQuietly(internals._entityStore, logger, 'entity store');
    await closeQuietly(internals.vectorStore, logger, 'vector store');
    await closeQuietly(internals.db, logger, 'history');
    // Last sweep: any embedded store file of this engine still open (nothing, once both stores
    // above are closed) is closed with it.
    files.closeAll();
    httpEmbedder?.close();
    releaseNouns?.();
  };
  const service = new Mem0MemoryService({
    backend,
    engine: memory,
    logger,
    release,
    tuning: options.tuning,
    onAvailabilityChange: options.onAvailabilityChange,
    afterSuccess: backend === 'pgvector' ? guardConnectionErrors(internals, logger) : undefined,
    // One save: its store writes in one transaction.
    perSave: (fn) => files.unit(fn),
    batching,
    recall,
    maxPerUser: config.memory.maxPerUser,
    countMemories: memoryCounter(backend, engineStores(memory, internals)),
    userDirectory: userDirectory(backend, engineStores(memory, internals)),
  });

  const failure = await service.startupCheck(options.startupTimeoutMs ?? 15_000);
  if (failure && backend === 'embedded') {
    await service.close();
    return new UnavailableMemoryService(backend, `the embedded store in DATA_DIR cannot be opened: ${failure.message}`);
  }
  if (!failure && backend === 'embedded' && recall && options.warmUp !== false) {
    await warmUp(recall, engineStores(memory, internals), logger);
  }
  if (failure) {
    logger.warn('memory store not reachable at start; mem0 retries on the next call', { backend, err: failure });
  }
  return service;
}
