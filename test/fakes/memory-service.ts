/**
 * An in-memory MemoryService for the tests that are about the proxy around the memory engine
 * (routes, MCP, isolation, rate limits, the console), not about the engine: no worker thread, no
 * SQLite, no embedding requests. It keeps the contract of src/memory/types.ts as the mem0 backends
 * implement it:
 *
 * - a memory belongs to one user (and optionally an agent and a run); `get`, `update` and `delete`
 *   see only the caller's user's memories, and an unknown or foreign id is "not found";
 * - scope ids with whitespace, or "*", are refused with 400 (mem0 refuses whitespace; stores read
 *   "*" as "any");
 * - `list` is oldest first (the embedded store's insertion order), filtered by text substring and
 *   a creation window before the page is cut;
 * - `search` scores a memory by the cosine of the query's and the memory's word-stem sets (the same
 *   tokenisation as the fake upstream's embeddings, so what the real engine would find with the
 *   fake upstream, this finds too), keeps those at or above the threshold, best first, topK of them;
 * - `add` with `infer: false` stores each non-system message as given; with inference on it stores
 *   the facts the fake upstream's extractor finds in the transcript (user lines with "I"/"my"),
 *   skipping a fact the scope already has word for word (as mem0 v3 does by hash);
 * - after `close`, every call fails with "temporarily unavailable", and `available()` is false.
 *
 * Tests can make an operation fail (`failNext`), take time (`latency`), or the service report
 * itself down (`setAvailable`), and read what was called (`calls`).
 */
import crypto from 'node:crypto';
import { MemoryUnavailableError, NotFoundError } from '../../src/errors';
import type {
  AddInput,
  ListOptions,
  MemoryItem,
  MemoryScope,
  MemoryService,
  SearchOptions,
  UserSummary,
  UsersOptions,
  UsersPage,
} from '../../src/memory/types';
import type { Config } from '../../src/config';
import { checkScopeIds } from '../../src/memory/scope';
import { defaultExtract, wordStems } from './openai-upstream';

export type MemoryOperation = 'search' | 'list' | 'add' | 'get' | 'update' | 'users' | 'delete' | 'deleteAll';

export interface FakeMemoryOptions {
  /** The backend name /health and /stats report (default "embedded", the default backend). */
  backend?: string;
  /** Facts found in a transcript of "role: content" lines, for adds with inference on. */
  extract?: (transcript: string) => string[];
  /** The clock for created_at / updated_at (default: the real one). */
  now?: () => Date;
}

interface Stored {
  item: MemoryItem;
  /** Creation order: ties in time keep insertion order. */
  seq: number;
}

interface Failure {
  op: MemoryOperation | '*';
  error: () => Error;
  times: number;
}

export class FakeMemoryService implements MemoryService {
  readonly backend: string;
  /** Every call, in order (after scope checks, before failures and latency). */
  readonly calls: Array<{ op: MemoryOperation; scope?: MemoryScope }> = [];
  /** Extra wait before an operation answers, per operation. */
  readonly latency: Partial<Record<MemoryOperation, number>> = {};
  private readonly memories = new Map<string, Stored>();
  private readonly failures: Failure[] = [];
  private readonly extract: (transcript: string) => string[];
  private readonly now: () => Date;
  private seq = 0;
  private up = true;
  private closed = false;

  constructor(options: FakeMemoryOptions = {}) {
    this.backend = options.backend ?? 'embedded';
    this.extract = options.extract ?? defaultExtract;
    this.now = options.now ?? (() => new Date());
  }

  /** The next `times` calls of `op` ('*': any) fail with `error` (default: temporarily unavailable). */
  failNext(op: MemoryOperation | '*', options: { times?: number; error?: () => Error } = {}): void {
    this.failures.push({ op, times: options.times ?? 1, error: options.error ?? (() => new MemoryUnavailableError(true)) });
  }

  /** What `available()` answers while the service is open. */
  setAvailable(available: boolean): void {
    this.up = available;
  }

  /** How many memories are stored, for everyone. */
  get size(): number {
    return this.memories.size;
  }

  async search(scope: MemoryScope, query: string, options: SearchOptions): Promise<MemoryItem[]> {
    await this.enter('search', scope);
    const wanted = new Set(wordStems(query));
    const scored = this.inScope(scope).map((item) => ({ item, score: overlap(wanted, new Set(wordStems(item.memory))) }));
    return (
      scored
        .filter((s) => options.threshold === undefined || s.score >= options.threshold)
        // Array.prototype.sort is stable: equal scores stay oldest first.
        .sort((a, b) => b.score - a.score)
        .slice(0, options.limit)
        .map((s) => ({ ...copy(s.item), score: s.score }))
    );
  }

  async list(scope: MemoryScope, options: ListOptions): Promise<MemoryItem[]> {
    await this.enter('list', scope);
    const filter = options.filter;
    const text = filter?.text?.toLowerCase();
    const since = filter?.since === undefined ? undefined : Date.parse(filter.since);
    const until = filter?.until === undefined ? undefined : Date.parse(filter.until);
    return this.inScope(scope)
      .filter((item) => {
        if (text !== undefined && !item.memory.toLowerCase().includes(text)) return false;
        const created = item.created_at === null ? NaN : Date.parse(item.created_at);
        if (since !== undefined && !(created >= since)) return false;
        if (until !== undefined && !(created < until)) return false;
        return true;
      })
      .slice(options.offset, options.offset + options.limit)
      .map(copy);
  }

  async add(scope: MemoryScope, input: AddInput): Promise<MemoryItem[]> {
    await this.enter('add', scope);
    const metadata = { ...(input.metadata ?? {}) };
    if (input.infer === false) {
      return input.messages.filter((m) => m.role !== 'system').map((m) => copy(this.store(scope, m.content, metadata)));
    }
    const transcript = input.messages.map((m) => `${m.role}: ${m.content}`).join('\n');
    const known = new Set(this.inScope(scope).map((m) => m.memory));
    const added: MemoryItem[] = [];
    for (const fact of this.extract(transcript)) {
      if (known.has(fact)) continue;
      known.add(fact);
      added.push(copy(this.store(scope, fact, metadata)));
    }
    return added;
  }

  async get(scope: MemoryScope, id: string): Promise<MemoryItem | undefined> {
    await this.enter('get', scope);
    const item = this.own(scope, id);
    return item ? copy(item) : undefined;
  }

  async update(scope: MemoryScope, id: string, text: string): Promise<MemoryItem> {
    await this.enter('update', scope);
    const item = this.own(scope, id);
    if (!item) throw notFound();
    item.memory = text;
    item.updated_at = this.now().toISOString();
    return copy(item);
  }

  async users(options: UsersOptions): Promise<UsersPage> {
    await this.enter('users');
    const query = options.query?.toLowerCase() ?? '';
    const byUser = new Map<string, UserSummary>();
    for (const { item } of this.memories.values()) {
      if (query !== '' && !item.user_id.toLowerCase().includes(query)) continue;
      const at = item.updated_at ?? item.created_at;
      const seen = byUser.get(item.user_id);
      if (!seen) byUser.set(item.user_id, { user_id: item.user_id, memories: 1, last_activity: at });
      else {
        seen.memories++;
        if (at !== null && (seen.last_activity === null || at > seen.last_activity)) seen.last_activity = at;
      }
    }
    const users = [...byUser.values()].sort((a, b) => (a.user_id < b.user_id ? -1 : a.user_id > b.user_id ? 1 : 0));
    return { users: users.slice(options.offset, options.offset + options.limit), total: users.length };
  }

  async delete(scope: MemoryScope, id: string): Promise<void> {
    await this.enter('delete', scope);
    if (!this.own(scope, id)) throw notFound();
    this.memories.delete(id);
  }

  async deleteAll(scope: MemoryScope): Promise<void> {
    await this.enter('deleteAll', scope);
    for (const item of this.inScope(scope)) this.memories.delete(item.id);
  }

  available(): Promise<boolean> {
    return Promise.resolve(!this.closed && this.up);
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }

  /** Scope checks, the call record, then an injected failure or latency, as the engine's guard orders them. */
  private async enter(op: MemoryOperation, scope?: MemoryScope): Promise<void> {
    if (scope) checkScopeIds(scope);
    this.calls.push(scope ? { op, scope } : { op });
    if (this.closed) throw new MemoryUnavailableError(true);
    const failure = this.failures.find((f) => f.op === op || f.op === '*');
    if (failure) {
      if (--failure.times <= 0) this.failures.splice(this.failures.indexOf(failure), 1);
      throw failure.error();
    }
    const wait = this.latency[op] ?? 0;
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }

  private store(scope: MemoryScope, text: string, metadata: Record<string, unknown>): MemoryItem {
    const at = this.now().toISOString();
    // mem0 writes the scope over owner keys a caller put in metadata, and never returns them as metadata.
    const { user_id: _user, agent_id: _agent, run_id: _run, ...rest } = metadata;
    const item: MemoryItem = {
      id: crypto.randomUUID(),
      memory: text,
      user_id: scope.userId,
      metadata: rest,
      created_at: at,
      updated_at: at,
    };
    if (scope.agentId !== undefined) item.agent_id = scope.agentId;
    if (scope.runId !== undefined) item.run_id = scope.runId;
    this.memories.set(item.id, { item, seq: this.seq++ });
    return item;
  }

  /** The scope's memories, oldest first. */
  private inScope(scope: MemoryScope): MemoryItem[] {
    return [...this.memories.values()]
      .sort((a, b) => a.seq - b.seq)
      .map((s) => s.item)
      .filter(
        (m) =>
          m.user_id === scope.userId &&
          (scope.agentId === undefined || m.agent_id === scope.agentId) &&
          (scope.runId === undefined || m.run_id === scope.runId),
      );
  }

  /** The memory with this id if it is the scope's user's (agent and run do not narrow a lookup by id). */
  private own(scope: MemoryScope, id: string): MemoryItem | undefined {
    const stored = this.memories.get(id);
    return stored && stored.item.user_id === scope.userId ? stored.item : undefined;
  }
}

/** Cosine similarity of two sets of word stems (0 when either is empty). */
function overlap(a: ReadonlySet<string>, b: ReadonlySet<string>): number {
  if (a.size === 0 || b.size === 0) return 0;
  let shared = 0;
  for (const s of a) if (b.has(s)) shared++;
  return shared / Math.sqrt(a.size * b.size);
}

function copy(item: MemoryItem): MemoryItem {
  return { ...item, metadata: { ...item.metadata } };
}

function notFound(): NotFoundError {
  return new NotFoundError('Memory not found', 'No memory with this id for this user');
}

/** For buildTestApp's `memory` option: a fresh fake named after the configured backend. */
export function fakeMemory(options: Omit<FakeMemoryOptions, 'backend'> = {}): (config: Config) => FakeMemoryService {
  return (config) => new FakeMemoryService({ ...options, backend: config.memory.backend });
}
