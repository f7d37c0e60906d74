/**
 * The memory service over mem0ai's open-source `Memory` (MEMORY_BACKEND=embedded, pgvector or
 * qdrant): one class, three vector-store configurations.
 *
 * - embedded: our EmbeddedVectorStore (provider "embedded") in `<DATA_DIR>/vectors.db`.
 * - pgvector: mem0ai's `pgvector` provider on DATABASE_URL (needs the `pg` package).
 * - qdrant:   mem0ai's `qdrant` provider on QDRANT_URL / QDRANT_API_KEY (needs `@qdrant/js-client-rest`).
 *
 * Every backend keeps mem0's history in `<DATA_DIR>/history.db`, and mem0's own files (an
 * anonymous id, notice state) in `<DATA_DIR>/mem0` through MEM0_DIR, so nothing lands in the home
 * directory or the working directory. mem0ai is loaded lazily, after MEM0_TELEMETRY is set,
 * because it reads that variable once, when first loaded.
 *
 * Engine calls run under the shared failure policy (resilience.ts). Results are narrowed from
 * `unknown` into the contract's MemoryItem; a memory is only ever returned to, or deleted for,
 * the user it belongs to.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Memory, MemoryConfig, VectorStore } from 'mem0ai/oss';
import { z } from 'zod';
import type { Config } from '../config';
import { BadRequestError, MemoryLimitError, MemoryUnavailableError, NotFoundError } from '../errors';
import type { Logger } from '../logger';
import { BatchingEmbedder, type EmbedderLike } from './batching-embedder';
import { EntityOracle } from './entity-oracle';
import { Recall, type RecallStores } from './recall';
import { EngineGuard, withTimeout, type GuardTuning } from './resilience';
import type { AddInput, ListFilter, ListOptions, MemoryItem, MemoryScope, MemoryService, SearchOptions, UserSummary, UsersOptions, UsersPage } from './types';
import { UnavailableMemoryService } from './unavailable';
import { EmbeddedVectorStore } from './vector-store/embedded-store';
import { registerEmbeddedVectorStore } from './vector-store/register';

// ---------------------------------------------------------------------------------------------
// Mapping engine results to the contract's MemoryItem (shared with the Platform backend)
// ---------------------------------------------------------------------------------------------

const dateish = z
  .union([z.string(), z.date()])
  .nullish()
  .transform((v) => (v === null || v === undefined ? null : v instanceof Date ? v.toISOString() : v));
const optionalId = z
  .union([z.string(), z.number()])
  .nullish()
  .transform((v) => (v === null || v === undefined || v === '' ? undefined : String(v)));

/**
 * What the engines return for a memory, in either spelling: mem0 OSS uses snake_case ids and
 * camelCase dates; the Platform client camel-cases everything but `metadata`; Platform add
 * results (output format v1.1) carry the text in `data.memory`.
 */
const engineItemSchema = z
  .object({
    id: z.union([z.string(), z.number()]).transform(String),
    memory: z.string().nullish(),
    data: z.object({ memory: z.string().nullish() }).passthrough().nullish(),
    user_id: optionalId,
    userId: optionalId,
    agent_id: optionalId,
    agentId: optionalId,
    run_id: optionalId,
    runId: optionalId,
    metadata: z.record(z.string(), z.unknown()).nullish(),
    created_at: dateish,
    createdAt: dateish,
    updated_at: dateish,
    updatedAt: dateish,
    score: z.number().nullish(),
  })
  .passthrough();

type EngineItem = z.infer<typeof engineItemSchema>;

function parseEngineItem(raw: unknown): EngineItem | undefined {
  const parsed = engineItemSchema.safeParse(raw);
  return parsed.success ? parsed.data : undefined;
}

/** The user a raw engine memory belongs to, if it names one. */
export function engineItemOwner(raw: unknown): string | undefined {
  const item = parseEngineItem(raw);
  return item ? (item.user_id ?? item.userId) : undefined;
}

/**
 * Narrows one engine result into the contract's item, or undefined when it is not a memory
 * (no id or no text). `fallbackUserId` fills in a missing owner for results the engine already
 * filtered by user.
 */
export function toMemoryItem(raw: unknown, fallbackUserId: string): MemoryItem | undefined {
  const item = parseEngineItem(raw);
  if (!item) return undefined;
  const text = item.memory ?? item.data?.memory;
  if (typeof text !== 'string') return undefined;
  const out: MemoryItem = {
    id: item.id,
    memory: text,
    user_id: item.user_id ?? item.userId ?? fallbackUserId,
    metadata: { ...(item.metadata ?? {}) },
    created_at: item.created_at ?? item.createdAt,
    updated_at: item.updated_at ?? item.updatedAt,
  };
  const agentId = item.agent_id ?? item.agentId;
  const runId = item.run_id ?? item.runId;
  if (agentId !== undefined) out.agent_id = agentId;
  if (runId !== undefined) out.run_id = runId;
  if (typeof item.score === 'number' && Number.isFinite(item.score)) out.score = item.score;
  return out;
}

/**
 * Maps a list of engine results, keeping only this user's memories: the engines filter by user
 * already, and this makes sure a filter bug could never hand out someone else's memory.
 */
export function toUserItems(raws: readonly unknown[], userId: string): MemoryItem[] {
  const out: MemoryItem[] = [];
  for (const raw of raws) {
    const item = toMemoryItem(raw, userId);
    if (item && item.user_id === userId) out.push(item);
  }
  return out;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** mem0 (OSS and Platform) gives every memory a UUID: no other id can exist. */
export function isMemoryId(id: string): boolean {
  return UUID.test(id);
}

export function memoryNotFound(): NotFoundError {
  return new NotFoundError('Memory not found', 'No memory with this id for this user');
}

// ---------------------------------------------------------------------------------------------
// The engine surface we use
// ---------------------------------------------------------------------------------------------

type EntityOptions = { userId?: string; agentId?: string; runId?: string };
type ScopeFilters = { user_id: string; agent_id?: string; run_id?: string };

/** The part of mem0ai's `Memory` this service calls (the real class fits it). */
export interface Mem0Engine {
  add(
    messages: Array<{ role: string; content: string }>,
    config: EntityOptions & { metadata?: Record<string, unknown>; infer?: boolean },
  ): Promise<{ results: readonly unknown[] }>;
  search(query: string, config: { topK?: number; threshold?: number; filters?: ScopeFilters }): Promise<{ results: readonly unknown[] }>;
  getAll(config: { topK?: number; filters?: ScopeFilters }): Promise<{ results: readonly unknown[] }>;
  get(memoryId: string): Promise<unknown>;
  update(memoryId: string, text: string): Promise<unknown>;
  delete(memoryId: string): Promise<unknown>;
  deleteAll(config: EntityOptions): Promise<unknown>;
}

function entityOptions(scope: MemoryScope): EntityOptions {
  return {
    userId: scope.userId,
    ...(scope.agentId !== undefined ? { agentId: scope.agentId } : {}),
    ...(scope.runId !== undefined ? { runId: scope.runId } : {}),
  };
}

function scopeFilters(scope: MemoryScope): ScopeFilters {
  return {
    user_id: scope.userId,
    ...(scope.agentId !== undefined ? { agent_id: scope.agentId } : {}),
    ...(scope.runId !== undefined ? { run_id: scope.runId } : {}),
  };
}

/** mem0 OSS refuses ids with whitespace; say so as a 400 instead of failing inside the engine. */
function checkScope(scope: MemoryScope): void {
  for (const [name, value] of [['user_id', scope.userId], ['agent_id', scope.agentId], ['run_id', scope.runId]] as const) {
    if (value !== undefined && /\s/.test(value)) {
      throw new BadRequestError(`${name} must not contain whitespace`, [{ field: name, message: 'must not contain whitespace' }]);
    }
    // Vector stores read "*" as "any value": as a scope it would reach every user.
    if (value === '*') throw new BadRequestError(`${name} must not be "*"`, [{ field: name, message: 'must not be "*"' }]);
  }
}

/** A user nobody has: the probe and the start-up check read its (empty) partition. */
const PROBE_USER = '__mem0_proxy_probe__';

export interface Mem0ServiceOptions {
  backend: 'embedded' | 'pgvector' | 'qdrant';
  engine: Mem0Engine;
  logger: Logger;
  /** Releases what the engine holds open (vector stores, the history database). */
  release: () => Promise<void> | void;
  tuning?: Partial<GuardTuning> | undefined;
  onAvailabilityChange?: ((available: boolean) => void) | undefined;
  /** Called after every successful engine call (pgvector: guard new connections). */
  afterSuccess?: (() => void) | undefined;
  /** The engine's embedder, when it batches an operation's embeddings into one request. */
  batching?: BatchingEmbedder | undefined;
  /** mem0's search run by us with one embedding request (recall.ts); mem0's own search otherwise. */
  recall?: Recall | undefined;
  /** Most memories a user may have (0 or unset: no limit), counted by `countMemories` before each add. */
  maxPerUser?: number | undefined;
  countMemories?: ((userId: string) => Promise<number>) | undefined;
  /** The users with memories (the console's directory); `users` is unavailable without it. */
  userDirectory?: ((options: UsersOptions) => Promise<UsersPage>) | undefined;
}

/** Most memories a filtered listing reads when no per-user limit bounds them. */
const LIST_FILTER_SCAN_LIMIT = 100_000;

/** Whether a memory passes the console's filters (text substring, creation window). */
export function matchesListFilter(filter: ListFilter): (item: MemoryItem) => boolean {
  const text = filter.text?.toLowerCase();
  const since = filter.since === undefined ? undefined : Date.parse(filter.since);
  const until = filter.until === undefined ? undefined : Date.parse(filter.until);
  return (item) => {
    if (text !== undefined && !item.memory.toLowerCase().includes(text)) return false;
    if (since === undefined && until === undefined) return true;
    const created = item.created_at === null ? NaN : Date.parse(item.created_at);
    if (Number.isNaN(created)) return false;
    return (since === undefined || created >= since) && (until === undefined || created < until);
  };
}

/**
 * MemoryService over mem0 OSS. `list` returns memories in the engine's listing order: oldest
 * first with the embedded store (insertion order), so pages stay stable while new memories are
 * added at the end; pgvector and Qdrant list in their own storage order.
 */
export class Mem0MemoryService implements MemoryService {
  readonly backend: string;
  private readonly guard: EngineGuard;
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(private readonly options: Mem0ServiceOptions) {
    this.backend = options.backend;
    this.guard = new EngineGuard({
      backend: options.backend,
      logger: options.logger,
      tuning: options.tuning,
      onAvailabilityChange: options.onAvailabilityChange,
      // One query embedding plus a vector search of an empty partition: it fails exactly when
      // searches and adds would (embedder or store down), at the cost of one tiny embedding.
      probe: async () => {
        await this.engine().search('ping', { filters: { user_id: PROBE_USER }, topK: 1 });
      },
    });
  }

  /**
   * Waits for the engine to initialise (store opened, collections created) by listing an empty
   * partition: no embedder or LLM involved, so an upstream outage at start does not count.
   */
  async startupCheck(timeoutMs: number): Promise<Error | undefined> {
    try {
      await withTimeout(this.engine().getAll({ filters: { user_id: PROBE_USER }, topK: 1 }), timeoutMs, 'memory store start-up');
      this.options.afterSuccess?.();
      return undefined;
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      this.guard.record(false, error);
      return error;
    }
  }

  async search(scope: MemoryScope, query: string, options: SearchOptions): Promise<MemoryItem[]> {
    checkScope(scope);
    const config = {
      filters: scopeFilters(scope),
      topK: options.limit,
      ...(options.threshold !== undefined ? { threshold: options.threshold } : {}),
    };
    const recall = this.options.recall;
    const search = (): ReturnType<Mem0Engine['search']> => {
      const engine = this.engine();
      return recall ? recall.search(query, config) : engine.search(query, config);
    };
    const result = await this.call('read', 'search', 'all', search);
    return toUserItems(result.results, scope.userId);
  }

  async list(scope: MemoryScope, options: ListOptions): Promise<MemoryItem[]> {
    checkScope(scope);
    const end = options.offset + options.limit;
    const filter = options.filter;
    if (filter && (filter.text !== undefined || filter.since !== undefined || filter.until !== undefined)) {
      // The engine filters by scope only: read the user's memories (bounded) and narrow them here.
      const topK = this.options.maxPerUser || LIST_FILTER_SCAN_LIMIT;
      const result = await this.call('read', 'list', 'part', () => this.engine().getAll({ filters: scopeFilters(scope), topK }));
      return toUserItems(result.results, scope.userId).filter(matchesListFilter(filter)).slice(options.offset, end);
    }
    // mem0's getAll has no offset and returns 20 unless told: ask for everything up to the end of
    // the page and slice.
    const result = await this.call('read', 'list', 'part', () => this.engine().getAll({ filters: scopeFilters(scope), topK: end }));
    return toUserItems(result.results.slice(options.offset, end), scope.userId);
  }

  async update(scope: MemoryScope, id: string, text: string): Promise<MemoryItem> {
    if (!(await this.get(scope, id))) throw memoryNotFound();
    await this.call('write', 'update', 'all', () => this.engine().update(id, text));
    const stored = await this.get(scope, id);
    if (!stored) throw memoryNotFound();
    return stored;
  }

  async users(options: UsersOptions): Promise<UsersPage> {
    const directory = this.options.userDirectory;
    if (!directory) throw new MemoryUnavailableError(false);
    const page = await this.call('read', 'users', 'part', () => directory(options));
    return { total: page.total, users: page.users.filter((u) => u.user_id !== PROBE_USER) };
  }

  async add(scope: MemoryScope, input: AddInput): Promise<MemoryItem[]> {
    checkScope(scope);
    const metadata = input.metadata ?? {};
    const base = { ...entityOptions(scope) };
    const added: unknown[] = [];
    if (input.infer === false) {
      // One engine call per message, so a retry after a failure never stores an earlier message
      // twice. mem0 stores no system message verbatim; neither do we.
      await this.checkLimit(scope.userId, input.messages.filter((m) => m.role !== 'system').length);
      for (const message of input.messages) {
        if (message.role === 'system') continue;
        const result = await this.call('write', 'add', 'all', () =>
          this.engine().add([{ role: message.role, content: message.content }], { ...base, metadata: { ...metadata }, infer: false }),
        );
        added.push(...result.results);
      }
    } else {
      await this.checkLimit(scope.userId, 1);
      const messages = input.messages.map((m) => ({ role: m.role, content: m.content }));
      const batching = this.options.batching;
      const add = (): ReturnType<Mem0Engine['add']> => this.engine().add(messages, { ...base, metadata: { ...metadata }, infer: true });
      const result = await this.call('write', 'add', 'all', () => (batching ? batching.duringAdd(add) : add()));
      added.push(...result.results);
    }
    // mem0's add answers with {id, memory, metadata:{event}} only: read each memory back for the
    // full item (owner, metadata, dates). The add already succeeded, so a failed read-back falls
    // back to what we know instead of failing the request.
    const items = await Promise.all(
      added.map(async (raw) => {
        const summary = toMemoryItem(raw, scope.userId);
        if (!summary) return undefined;
        const stored = await this.call('read', 'get', 'part', () => this.engine().get(summary.id)).catch(() => undefined);
        const full = stored ? toMemoryItem(stored, scope.userId) : undefined;
        return full ?? { ...summary, metadata: { ...metadata }, created_at: null, updated_at: null };
      }),
    );
    return items.filter((i): i is MemoryItem => i !== undefined);
  }

  async get(scope: MemoryScope, id: string): Promise<MemoryItem | undefined> {
    checkScope(scope);
    if (!isMemoryId(id)) return undefined;
    const raw = await this.call('read', 'get', 'part', () => this.engine().get(id));
    if (raw === null || raw === undefined || engineItemOwner(raw) !== scope.userId) return undefined;
    return toMemoryItem(raw, scope.userId);
  }

  async delete(scope: MemoryScope, id: string): Promise<void> {
    if (!(await this.get(scope, id))) throw memoryNotFound();
    await this.call('write', 'delete', 'part', async () => {
      try {
        await this.engine().delete(id);
      } catch (err) {
        // Deleted by someone else between our check and now.
        if (err instanceof Error && /^Memory with ID .* not found$/.test(err.message)) throw memoryNotFound();
        throw err;
      }
    });
  }

  async deleteAll(scope: MemoryScope): Promise<void> {
    checkScope(scope);
    await this.call('write', 'deleteAll', 'part', () => this.engine().deleteAll(entityOptions(scope)));
  }

  available(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    return this.guard.available();
  }

  /** The availability last observed, without a probe (undefined before any call). */
  knownAvailability(): boolean | undefined {
    return this.closed ? false : this.guard.known();
  }

  /** Stops new calls, lets running ones finish (bounded), then closes the stores. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      await this.guard.drain(5_000);
      await this.options.release();
    })();
    return this.closing;
  }

  /**
   * Refuses an add of `adding` memories that would take the user past `maxPerUser`, before
   * anything is stored. An extraction counts as one: it can add several facts, so the user may
   * end a few past the limit (then nothing more is added).
   */
  private async checkLimit(userId: string, adding: number): Promise<void> {
    const { maxPerUser, countMemories } = this.options;
    if (!maxPerUser || !countMemories || adding === 0) return;
    const count = await this.call('read', 'count', 'part', () => countMemories(userId));
    if (count + adding > maxPerUser) throw new MemoryLimitError(maxPerUser);
  }

  private engine(): Mem0Engine {
    if (this.closed) throw new MemoryUnavailableError(true);
    return this.options.engine;
  }

  private async call<T>(kind: 'read' | 'write', op: string, proves: 'all' | 'part', fn: () => Promise<T>): Promise<T> {
    const value = kind === 'read' ? await this.guard.read(op, fn, proves) : await this.guard.write(op, fn, proves);
    this.options.afterSuccess?.();
    return value;
  }
}

// ---------------------------------------------------------------------------------------------
// Building the engine from the configuration
// ---------------------------------------------------------------------------------------------

/** Optional packages mem0ai loads on demand, by LLM/embedder provider and by vector store. */
const PROVIDER_PACKAGES: Readonly<Record<string, string>> = {
  ollama: 'ollama',
  anthropic: '@anthropic-ai/sdk',
  groq: 'groq-sdk',
  mistral: '@mistralai/mistralai',
  google: '@google/genai',
  gemini: '@google/genai',
};
const STORE_PACKAGES: Readonly<Record<string, string>> = { pgvector: 'pg', qdrant: '@qdrant/js-client-rest' };

/** Whether `pkg` is installed where mem0ai would find it (without loading either). */
function packageInstalled(pkg: string): boolean {
  let from: string;
  try {
    from = path.dirname(require.resolve('mem0ai/oss'));
  } catch {
    return false;
  }
  const dirs = require.resolve.paths(pkg) ?? [];
  for (let dir = from; ; dir = path.dirname(dir)) {
    dirs.unshift(path.join(dir, 'node_modules'));
    if (path.dirname(dir) === dir) break;
  }
  return dirs.some((dir) => fs.existsSync(path.join(dir, pkg, 'package.json')));
}

/** Why the engine cannot be built with this configuration, or undefined when it can. */
export function mem0Preconditions(config: Config): string | undefined {
  const { backend, provider } = config.memory;
  const p = provider.toLowerCase();
  if (p === 'openai' && !config.openaiApiKey) {
    return 'OPENAI_API_KEY is not set: the memory engine (MEM0_PROVIDER=openai) needs it for extraction and embeddings';
  }
  const providerPackage = PROVIDER_PACKAGES[p];
  if (providerPackage && !packageInstalled(providerPackage)) {
    return `MEM0_PROVIDER=${provider} needs the '${providerPackage}' package (npm install ${providerPackage})`;
  }
  const storePackage = STORE_PACKAGES[backend];
  if (storePackage && !packageInstalled(storePackage)) {
    return `MEMORY_BACKEND=${backend} needs the '${storePackage}' package (npm install ${storePackage})`;
  }
  if (backend === 'pgvector' && !config.memory.databaseUrl) return 'DATABASE_URL is not set (MEMORY_BACKEND=pgvector)';
  if (backend === 'qdrant' && !config.memory.qdrantUrl) return 'QDRANT_URL is not set (MEMORY_BACKEND=qdrant)';
  return undefined;
}

/** Ollama's native API lives at the server root; an OpenAI-style `/v1` suffix would break it. */
function ollamaHost(url: string): string {
  return url.replace(/\/v1\/?$/, '');
}

function vectorStoreConfig(config: Config, logger: Logger): MemoryConfig['vectorStore'] {
  const m = config.memory;
  const common = { collectionName: 'memories', dimension: m.embeddingDims };
  switch (m.backend) {
    case 'pgvector':
      // embeddingModelDims sizes the table mem0 creates; hnsw adds a cosine index at creation.
      // Our pooled subclass of mem0's store (register.ts): it reconnects after a database restart.
      return {
        provider: 'pgvector',
        config: {
          ...common,
          embeddingModelDims: m.embeddingDims,
          connectionString: m.databaseUrl,
          hnsw: true,
          poolSize: m.pgPoolSize,
          onConnectionError: (err: Error) => logger.warn('memory database connection lost; the pool replaces it', { error: err.message }),
        },
      };
    case 'qdrant':
      return {
        provider: 'qdrant',
        config: { ...common, embeddingModelDims: m.embeddingDims, url: m.qdrantUrl, onDisk: true, ...(m.qdrantApiKey ? { apiKey: m.qdrantApiKey } : {}) },
      };
    default:
      return { provider: 'embedded', config: { ...common, dbPath: path.join(config.dataDir, 'vectors.db'), preloadImages: true, logger } };
  }
}

/** mem0's configuration from ours. One provider serves extraction (LLM) and embeddings. */
export function buildMem0Config(config: Config, logger: Logger, tuning: Pick<GuardTuning, 'writeTimeoutMs'>): MemoryConfig {
  const m = config.memory;
  const provider = m.provider.toLowerCase();
  const apiKey = config.openaiApiKey !== undefined ? { apiKey: config.openaiApiKey } : {};
  const llmBaseURL = provider === 'ollama' ? ollamaHost(m.llmBaseUrl) : m.llmBaseUrl;
  const embedderBaseURL = provider === 'ollama' ? ollamaHost(m.embedderBaseUrl) : m.embedderBaseUrl;
  return {
    version: 'v1.1',
    embedder: { provider, config: { ...apiKey, model: m.embeddingModel, baseURL: embedderBaseURL, embeddingDims: m.embeddingDims } },
    llm: { provider, config: { ...apiKey, model: m.model, baseURL: llmBaseURL, timeout: tuning.writeTimeoutMs } },
    vectorStore: vectorStoreConfig(config, logger),
    historyStore: { provider: 'sqlite', config: { historyDbPath: path.join(config.dataDir, 'history.db') } },
  };
}

/** The private parts of mem0's `Memory` we touch: HTTP client settings at start, stores at close. */
interface EngineInternals {
  embedder?: unknown;
  llm?: unknown;
  db?: unknown;
  vectorStore?: unknown;
  _entityStore?: unknown;
  _ensureInitialized?: unknown;
  getEntityStore?: unknown;
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
      const counted = await pg.client.query(`SELECT COUNT(DISTINCT payload->>'user_id')::int AS n FROM ${pg.col()} WHERE ${match}`, [query]);
      const grouped = await pg.client.query(
        `SELECT payload->>'user_id' AS user_id, COUNT(*)::int AS memories,
                MAX(COALESCE(payload->>'updatedAt', payload->>'createdAt')) AS last
         FROM ${pg.col()} WHERE ${match} GROUP BY 1 ORDER BY 1 LIMIT $2 OFFSET $3`,
        [query, options.limit, options.offset],
      );
      return {
        total: Number(counted.rows[0]?.['n'] ?? 0),
        users: grouped.rows.map((r) => ({ user_id: String(r['user_id']), memories: Number(r['memories']), last_activity: typeof r['last'] === 'string' ? r['last'] : null })),
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
): Promise<{ batching?: BatchingEmbedder; recall?: Recall }> {
  const inner = internals.embedder;
  if (!isEmbedder(inner)) return {};
  const oracle = await EntityOracle.create(oss);
  if (!oracle) {
    logger.warn('memory engine: entity prediction unavailable; each search and save makes two embedding requests');
    return {};
  }
  const batching = new BatchingEmbedder(inner, oracle, logger);
  internals.embedder = batching;
  return { batching, recall: new Recall(oracle, inner, engineStores(memory, internals), logger) };
}

export interface CreateMem0Options {
  tuning?: Partial<GuardTuning> | undefined;
  onAvailabilityChange?: ((available: boolean) => void) | undefined;
  /** How long start-up waits for the store to open (default 15 s). */
  startupTimeoutMs?: number | undefined;
  /** One embedding request per search and per save (default true; false keeps mem0's two, for comparisons). */
  batchEmbeddings?: boolean | undefined;
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
  // Both are read by mem0ai: telemetry once at load, MEM0_DIR at each use.
  process.env.MEM0_TELEMETRY = config.memory.telemetry ? 'true' : 'false';
  process.env.MEM0_DIR = path.join(config.dataDir, 'mem0');

  const oss = require('mem0ai/oss') as typeof import('mem0ai/oss');
  if (backend === 'embedded' || backend === 'pgvector') registerEmbeddedVectorStore(oss.VectorStoreFactory);

  const writeTimeoutMs = options.tuning?.writeTimeoutMs ?? 60_000;
  const readTimeoutMs = options.tuning?.readTimeoutMs ?? 10_000;
  let memory: Memory;
  try {
    memory = new oss.Memory(buildMem0Config(config, logger, { writeTimeoutMs }));
  } catch (err) {
    return new UnavailableMemoryService(backend, `the memory engine rejected its configuration: ${(err as Error).message}`);
  }
  const internals = memory as unknown as EngineInternals;
  tuneHttpClient(internals.embedder, readTimeoutMs);
  tuneHttpClient(internals.llm, writeTimeoutMs);
  const { batching, recall } = options.batchEmbeddings === false ? {} : await batchEmbeddings(oss, memory, internals, logger);

  const release = async (): Promise<void> => {
    // The stores are reference-counted per file, so closing our own instances (not every store
    // of the process) leaves other services in this process alone.
    await closeQuietly(internals._entityStore, logger, 'entity store');
    await closeQuietly(internals.vectorStore, logger, 'vector store');
    await closeQuietly(internals.db, logger, 'history');
  };
  const service = new Mem0MemoryService({
    backend,
    engine: memory,
    logger,
    release,
    tuning: options.tuning,
    onAvailabilityChange: options.onAvailabilityChange,
    afterSuccess: backend === 'pgvector' ? guardConnectionErrors(internals, logger) : undefined,
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
  if (failure) {
    logger.warn('memory store not reachable at start; mem0 retries on the next call', { backend, err: failure });
  }
  return service;
}
