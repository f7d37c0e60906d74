/**
 * The memory service: our own interface over the memory engine, used by the admin API and the
 * chat path. Backends (embedded mem0 OSS, the hosted Mem0 Platform, vector databases) implement
 * it; callers never see the engine's types.
 *
 * Failure policy: a backend throws `MemoryUnavailableError` (transient when it exists but fails or
 * times out, not transient when it was never initialised) and `NotFoundError` for an unknown id.
 */

/** Who the memories belong to. `userId` is always set; agent and run narrow it further. */
export interface MemoryScope {
  readonly userId: string;
  readonly agentId?: string | undefined;
  readonly runId?: string | undefined;
}

/** The contract's memory item. */
export interface MemoryItem {
  id: string;
  memory: string;
  user_id: string;
  metadata: Record<string, unknown>;
  created_at: string | null;
  updated_at: string | null;
  /** Present when the memory was stored with an agent or run scope. */
  agent_id?: string;
  run_id?: string;
  score?: number;
}

export interface ChatMessage {
  role: 'user' | 'assistant' | 'system';
  content: string;
}

export interface AddInput {
  messages: ChatMessage[];
  metadata?: Record<string, unknown> | undefined;
  /** Let the engine extract facts (true, the default) or store the text as given (false). */
  infer?: boolean | undefined;
  /**
   * A queued save that no caller waits for: an engine that serves searches on the same thread may
   * hold its start (up to a second) while searches wait there. Unset for adds a caller awaits.
   */
  background?: boolean | undefined;
}

export interface SearchOptions {
  limit: number;
  /** Minimum similarity score (0..1) a memory needs to be returned. */
  threshold?: number | undefined;
}

export interface ListOptions {
  limit: number;
  offset: number;
  /** Narrows the listing before the page is cut (the console's filters). */
  filter?: ListFilter | undefined;
}

export interface ListFilter {
  /** Case-insensitive substring of the memory text. */
  text?: string | undefined;
  /** Created at or after this instant (ISO 8601). */
  since?: string | undefined;
  /** Created before this instant (ISO 8601). */
  until?: string | undefined;
}

/** One user of the store: how many memories they have and when one last changed. */
export interface UserSummary {
  user_id: string;
  memories: number;
  last_activity: string | null;
}

export interface UsersOptions {
  /** Case-insensitive substring of the user id. */
  query?: string | undefined;
  limit: number;
  offset: number;
}

export interface UsersPage {
  users: UserSummary[];
  /** Users matching the query, on every page. */
  total: number;
}

export interface MemoryService {
  /** Backend name for logs and /health. */
  readonly backend: string;
  search(scope: MemoryScope, query: string, options: SearchOptions): Promise<MemoryItem[]>;
  list(scope: MemoryScope, options: ListOptions): Promise<MemoryItem[]>;
  add(scope: MemoryScope, input: AddInput): Promise<MemoryItem[]>;
  /** The memory with this id if it belongs to `scope.userId`, else undefined. */
  get(scope: MemoryScope, id: string): Promise<MemoryItem | undefined>;
  /** Replaces one memory's text (re-embedded by the engine); NotFoundError when it is not theirs. */
  update(scope: MemoryScope, id: string, text: string): Promise<MemoryItem>;
  /** The users who have memories, by user id, paged. */
  users(options: UsersOptions): Promise<UsersPage>;
  /** Deletes one memory of this user; throws NotFoundError when it is not theirs or does not exist. */
  delete(scope: MemoryScope, id: string): Promise<void>;
  deleteAll(scope: MemoryScope): Promise<void>;
  /** Whether the engine answers now (cheap; used by /health and /metrics). */
  available(): Promise<boolean>;
  close(): Promise<void>;
}
