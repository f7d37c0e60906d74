/**
 * The memory service over mem0ai's open-source `Memory` (MEMORY_BACKEND=embedded, pgvector or
 * qdrant): one class, three vector-store configurations (built by build.ts).
 *
 * Engine calls run under the shared failure policy (resilience.ts). Results are narrowed from
 * `unknown` into the contract's MemoryItem; a memory is only ever returned to, or deleted for,
 * the user it belongs to.
 */
import { MemoryLimitError, MemoryUnavailableError } from '../../errors';
import type { Logger } from '../../logger';
import type { BatchingEmbedder } from '../batching-embedder';
import type { Recall } from '../recall';
import { checkScopeIds } from '../scope';
import { EngineGuard, withTimeout, type GuardTuning } from '../resilience';
import type { AddInput, ListOptions, MemoryItem, MemoryScope, MemoryService, SearchOptions, UsersOptions, UsersPage } from '../types';
import { engineItemOwner, isMemoryId, matchesListFilter, memoryNotFound, toMemoryItem, toUserItems } from './results';

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
  /**
   * Runs one engine `add` as one save: its embedded-store writes commit together (build.ts);
   * without it each write commits alone.
   */
  perSave?: (<T>(fn: () => Promise<T>) => Promise<T>) | undefined;
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
/**
 * Longest a queued save waits for the searches queued on the engine's thread before it starts
 * anyway: under a burst of searches saves give way, and under a sustained one they still start.
 */
const BACKGROUND_YIELD_MS = 1000;

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
    checkScopeIds(scope);
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
    checkScopeIds(scope);
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
    checkScopeIds(scope);
    if (input.background) await this.options.recall?.searchesServed(BACKGROUND_YIELD_MS);
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
          this.asOneSave(() =>
            this.engine().add([{ role: message.role, content: message.content }], { ...base, metadata: { ...metadata }, infer: false }),
          ),
        );
        added.push(...result.results);
      }
    } else {
      await this.checkLimit(scope.userId, 1);
      const messages = input.messages.map((m) => ({ role: m.role, content: m.content }));
      const batching = this.options.batching;
      const add = (): ReturnType<Mem0Engine['add']> => this.engine().add(messages, { ...base, metadata: { ...metadata }, infer: true });
      const result = await this.call('write', 'add', 'all', () => this.asOneSave(() => (batching ? batching.duringAdd(add) : add())));
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

  /** One engine add as one save (`perSave`). */
  private asOneSave<T>(fn: () => Promise<T>): Promise<T> {
    return this.options.perSave ? this.options.perSave(fn) : fn();
  }

  async get(scope: MemoryScope, id: string): Promise<MemoryItem | undefined> {
    checkScopeIds(scope);
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
    checkScopeIds(scope);
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
