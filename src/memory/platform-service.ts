/**
 * The memory service over the hosted Mem0 Platform (MEMORY_BACKEND=platform), through mem0ai's
 * `MemoryClient` (MEM0_API_KEY; MEM0_HOST for another deployment).
 *
 * Wire format, as MemoryClient 3.3.x sends it (`Authorization: Token <key>`, JSON bodies, keys
 * snake_cased on the way out and camelCased on the way back, except `metadata`):
 *   GET    /v1/ping/                      on construction (and our probe): {status:"ok", org_id, project_id, user_email?}
 *   POST   /v3/memories/add/              {messages, user_id, agent_id?, run_id?, metadata?, infer}
 *                                         -> queued: {message, status:"PENDING", event_id}
 *   POST   /v3/memories/search/           {query, output_format:"v1.1", top_k, threshold?, filters} -> {results:[…]}
 *   POST   /v3/memories/?page=&page_size= {filters} -> {count, next, previous, results:[…]}
 *   GET    /v1/memories/{id}/             -> memory, 404 when unknown
 *   DELETE /v1/memories/{id}/             -> {message}
 *   PUT    /v1/memories/{id}/             {text} -> the memory (or a list of it)
 *   DELETE /v1/memories/?user_id=…        -> {message}
 *   GET    /v1/entities/                  -> {count, results:[{name, type:"user"|…, total_memories, updated_at}]}
 * Errors come back as mem0ai's MemoryError subclasses with `errorCode` "HTTP_<status>".
 *
 * The Platform processes adds in the background, so `/remember` answers with the memories only
 * when the Platform returns them (older synchronous format); a queued add answers with none and
 * the memories appear in search and list a few seconds later.
 *
 * MemoryClient's requests take no deadline or abort signal: our guard stops waiting at its
 * deadline while the request itself ends with undici's own timeouts.
 */
import type { MemoryClient } from 'mem0ai';
import type { Config } from '../config';
import { MemoryUnavailableError } from '../errors';
import type { Logger } from '../logger';
import { engineItemOwner, isMemoryId, matchesListFilter, memoryNotFound, toMemoryItem, toUserItems } from './mem0/results';
import { EngineGuard, isTransientError, isTransientStatus, withTimeout, type FailureKind, type GuardTuning } from './resilience';
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
} from './types';
import { loadMem0Client } from './mem0/load';
import { UnavailableMemoryService } from './unavailable';

/** The part of MemoryClient this service calls. */
export type PlatformClient = Pick<MemoryClient, 'ping' | 'add' | 'search' | 'getAll' | 'get' | 'update' | 'delete' | 'deleteAll' | 'users'>;

/** Largest page we ask the Platform for; a longer listing takes several pages. */
const MAX_PAGE_SIZE = 100;
/** Most memories a filtered listing reads from the Platform. */
const FILTER_SCAN_LIMIT = 10_000;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

/** The HTTP status behind a MemoryClient error (`errorCode` "HTTP_404"), if any. */
function platformStatus(err: unknown): number | undefined {
  if (!isRecord(err)) return undefined;
  const code = err['errorCode'];
  const match = typeof code === 'string' ? /^HTTP_(\d{3})$/.exec(code) : null;
  return match?.[1] !== undefined ? Number(match[1]) : undefined;
}

/** 400/409/422 are our request's fault; 408/429/5xx and network failures are transient. */
export function classifyPlatformError(err: unknown): FailureKind {
  const status = platformStatus(err);
  if (status !== undefined) {
    if (isTransientStatus(status)) return 'transient';
    if (status === 400 || status === 409 || status === 422) return 'caller';
    return 'engine';
  }
  return isTransientError(err) ? 'transient' : 'engine';
}

function isNotFound(err: unknown): boolean {
  return platformStatus(err) === 404;
}

/** Whether a ping failure means the key was refused (as opposed to the Platform being unreachable). */
export function isAuthRejection(err: unknown): boolean {
  const status = platformStatus(err);
  if (status === 401 || status === 403) return true;
  // ping() throws its own APIError when the answer is not {status:"ok"}.
  return (
    isRecord(err) && err['name'] === 'APIError' && typeof err['message'] === 'string' && !err['message'].startsWith('Failed to ping server')
  );
}

/** Platform filters: one entity as is, several combined with AND. */
function platformFilters(scope: MemoryScope): Record<string, unknown> {
  const parts: Array<Record<string, string>> = [{ user_id: scope.userId }];
  if (scope.agentId !== undefined) parts.push({ agent_id: scope.agentId });
  if (scope.runId !== undefined) parts.push({ run_id: scope.runId });
  return parts.length === 1 ? (parts[0] ?? {}) : { AND: parts };
}

function entityOptions(scope: MemoryScope): { userId: string; agentId?: string; runId?: string } {
  return {
    userId: scope.userId,
    ...(scope.agentId !== undefined ? { agentId: scope.agentId } : {}),
    ...(scope.runId !== undefined ? { runId: scope.runId } : {}),
  };
}

/** Memories in a Platform answer: a bare array, or `{results: […]}`; anything else has none. */
function resultList(response: unknown): readonly unknown[] {
  if (Array.isArray(response)) return response;
  if (isRecord(response) && Array.isArray(response['results'])) return response['results'];
  return [];
}

export interface PlatformServiceOptions {
  /** Builds a client (again, when the first one was built while the Platform was unreachable). */
  makeClient: () => PlatformClient;
  logger: Logger;
  tuning?: Partial<GuardTuning> | undefined;
  onAvailabilityChange?: ((available: boolean) => void) | undefined;
  /**
   * True when the client was built while the Platform was unreachable: MemoryClient resolves its
   * identity only once, at construction, and a client without one warns on every call; so it is
   * replaced after the first success.
   */
  rebuildClientOnRecovery?: boolean | undefined;
}

/** MemoryService over the Mem0 Platform. `list` keeps the Platform's own order. */
export class PlatformMemoryService implements MemoryService {
  readonly backend = 'platform';
  private client: PlatformClient;
  private readonly guard: EngineGuard;
  private rebuildClient: boolean;
  private closed = false;

  constructor(private readonly options: PlatformServiceOptions) {
    this.client = options.makeClient();
    this.rebuildClient = options.rebuildClientOnRecovery ?? false;
    this.guard = new EngineGuard({
      backend: this.backend,
      logger: options.logger,
      classify: classifyPlatformError,
      tuning: options.tuning,
      onAvailabilityChange: (available) => {
        if (available && this.rebuildClient) {
          this.rebuildClient = false;
          this.client = this.options.makeClient();
        }
        options.onAvailabilityChange?.(available);
      },
      // The Platform's ping checks both reachability and the key, and costs nothing.
      probe: () => this.api().ping(),
    });
  }

  async search(scope: MemoryScope, query: string, options: SearchOptions): Promise<MemoryItem[]> {
    const request = {
      filters: platformFilters(scope),
      topK: options.limit,
      ...(options.threshold !== undefined ? { threshold: options.threshold } : {}),
    };
    const response = await this.guard.read('search', () => this.api().search(query, request));
    return toUserItems(resultList(response), scope.userId);
  }

  async list(scope: MemoryScope, options: ListOptions): Promise<MemoryItem[]> {
    const filter = options.filter;
    if (filter && (filter.text !== undefined || filter.since !== undefined || filter.until !== undefined)) {
      // The Platform filters by entity here: read the user's memories (bounded) and narrow them.
      const all = await this.list(scope, { limit: FILTER_SCAN_LIMIT, offset: 0 });
      return all.filter(matchesListFilter(filter)).slice(options.offset, options.offset + options.limit);
    }
    // Offset and limit on top of page-number pagination: fetch the pages that cover the window.
    const pageSize = Math.min(options.limit, MAX_PAGE_SIZE);
    const firstPage = Math.floor(options.offset / pageSize) + 1;
    const lastPage = Math.floor((options.offset + options.limit - 1) / pageSize) + 1;
    const collected: unknown[] = [];
    for (let page = firstPage; page <= lastPage; page++) {
      const response: unknown = await this.guard.read('list', async (): Promise<unknown> => {
        try {
          return await this.api().getAll({ filters: platformFilters(scope), page, pageSize });
        } catch (err) {
          // Page-number pagination answers 404 past the last page.
          if (isNotFound(err)) return { results: [] };
          throw err;
        }
      });
      const results = resultList(response);
      collected.push(...results);
      const hasNext = isRecord(response) && typeof response['next'] === 'string' && response['next'] !== '';
      if (results.length < pageSize || !hasNext) break;
    }
    const start = options.offset - (firstPage - 1) * pageSize;
    return toUserItems(collected.slice(start, start + options.limit), scope.userId);
  }

  async add(scope: MemoryScope, input: AddInput): Promise<MemoryItem[]> {
    // MemoryClient sends user and assistant turns; system text is instructions, not memory.
    const messages = input.messages.flatMap((m) => (m.role === 'system' ? [] : [{ role: m.role, content: m.content }]));
    if (messages.length === 0) return [];
    const request = {
      ...entityOptions(scope),
      ...(input.metadata !== undefined ? { metadata: input.metadata } : {}),
      infer: input.infer ?? true,
    };
    const response: unknown = await this.guard.write('add', () => this.api().add(messages, request));
    const items = resultList(response).flatMap((raw) => {
      const item = toMemoryItem(raw, scope.userId);
      return item ? [{ ...item, metadata: { ...(input.metadata ?? {}), ...item.metadata } }] : [];
    });
    if (items.length === 0) this.options.logger.debug('memory add queued by the Platform', { user_id: scope.userId });
    return items;
  }

  async get(scope: MemoryScope, id: string): Promise<MemoryItem | undefined> {
    if (!isMemoryId(id)) return undefined;
    const raw: unknown = await this.guard.read('get', async () => {
      try {
        return await this.api().get(id);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    });
    if (raw === undefined || engineItemOwner(raw) !== scope.userId) return undefined;
    return toMemoryItem(raw, scope.userId);
  }

  async update(scope: MemoryScope, id: string, text: string): Promise<MemoryItem> {
    if (!(await this.get(scope, id))) throw memoryNotFound();
    await this.guard.write('update', async () => {
      try {
        await this.api().update(id, { text });
      } catch (err) {
        if (isNotFound(err)) throw memoryNotFound();
        throw err;
      }
    });
    const stored = await this.get(scope, id);
    if (!stored) throw memoryNotFound();
    return stored;
  }

  /** The Platform's user entities (one listing), filtered and paged here. */
  async users(options: UsersOptions): Promise<UsersPage> {
    const response: unknown = await this.guard.read('users', () => this.api().users());
    const query = options.query?.toLowerCase() ?? '';
    const users: UserSummary[] = [];
    for (const raw of resultList(response)) {
      if (!isRecord(raw) || raw['type'] !== 'user' || typeof raw['name'] !== 'string') continue;
      if (query !== '' && !raw['name'].toLowerCase().includes(query)) continue;
      const count = raw['total_memories'] ?? raw['totalMemories'];
      const at = raw['updated_at'] ?? raw['updatedAt'];
      users.push({
        user_id: raw['name'],
        memories: typeof count === 'number' ? count : 0,
        last_activity: typeof at === 'string' ? at : null,
      });
    }
    users.sort((a, b) => (a.user_id < b.user_id ? -1 : a.user_id > b.user_id ? 1 : 0));
    return { users: users.slice(options.offset, options.offset + options.limit), total: users.length };
  }

  async delete(scope: MemoryScope, id: string): Promise<void> {
    if (!(await this.get(scope, id))) throw memoryNotFound();
    await this.guard.write('delete', async () => {
      try {
        await this.api().delete(id);
      } catch (err) {
        if (isNotFound(err)) throw memoryNotFound();
        throw err;
      }
    });
  }

  async deleteAll(scope: MemoryScope): Promise<void> {
    await this.guard.write('deleteAll', () => this.api().deleteAll(entityOptions(scope)));
  }

  available(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    return this.guard.available();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.guard.drain(5_000);
  }

  /** Marks the service unhealthy from the start, when the Platform did not answer the start-up ping. */
  recordStartupFailure(err: unknown): void {
    this.guard.record(false, err);
  }

  private api(): PlatformClient {
    if (this.closed) throw new MemoryUnavailableError(true);
    return this.client;
  }
}

export interface CreatePlatformOptions {
  tuning?: Partial<GuardTuning> | undefined;
  onAvailabilityChange?: ((available: boolean) => void) | undefined;
  /** How long start-up waits for the Platform's ping (default 10 s). */
  startupTimeoutMs?: number | undefined;
}

/**
 * Builds the Platform service. No MEM0_API_KEY, or a key the Platform refuses at start, gives an
 * UnavailableMemoryService ("Memory service is unavailable"); an unreachable Platform gives a
 * service that starts unhealthy and recovers when the Platform answers.
 */
export async function createPlatformService(config: Config, logger: Logger, options: CreatePlatformOptions = {}): Promise<MemoryService> {
  const apiKey = config.memory.mem0ApiKey;
  if (!apiKey) return new UnavailableMemoryService('platform', 'MEM0_API_KEY is not set (MEMORY_BACKEND=platform)');
  const { MemoryClient: Client } = loadMem0Client(config);
  const host = config.memory.mem0Host?.replace(/\/+$/, '');
  const makeClient = (): PlatformClient => new Client({ apiKey, ...(host !== undefined ? { host } : {}) });

  let client: PlatformClient;
  try {
    client = makeClient();
  } catch (err) {
    return new UnavailableMemoryService('platform', `the Mem0 Platform client rejected its configuration: ${(err as Error).message}`);
  }
  let startupError: unknown;
  try {
    await withTimeout(client.ping(), options.startupTimeoutMs ?? 10_000, 'Mem0 Platform ping');
  } catch (err) {
    if (isAuthRejection(err)) {
      return new UnavailableMemoryService('platform', 'the Mem0 Platform refused MEM0_API_KEY');
    }
    startupError = err;
  }

  let first: PlatformClient | undefined = client;
  const service = new PlatformMemoryService({
    // Reuse the client built for the start-up check, then build fresh ones.
    makeClient: () => {
      const reuse = first;
      first = undefined;
      return reuse ?? makeClient();
    },
    logger,
    tuning: options.tuning,
    onAvailabilityChange: options.onAvailabilityChange,
    rebuildClientOnRecovery: startupError !== undefined,
  });
  if (startupError !== undefined) {
    logger.warn('Mem0 Platform not reachable at start; retrying on demand', { err: startupError });
    service.recordStartupFailure(startupError);
  }
  return service;
}
