// Typed client for the proxy's admin API: the bearer token (kept in sessionStorage), one
// `request` that sends it and turns every failure into an ApiError, and one function per endpoint.

export const TOKEN_KEY = 'mp-console-token';

export function getToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken(): void {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage unavailable: nothing to clear
  }
}

/** A failed call: HTTP status (0 when the request never got an answer), the body's title and details. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly details: unknown,
    /** Seconds from `Retry-After` (429). */
    readonly retryAfter: number | null = null,
  ) {
    super(title);
    this.name = 'ApiError';
  }
}

let onUnauthorized: (() => void) | null = null;

/** Called on every 401 (the shell signs out with "Token refused"). */
export function setUnauthorizedHandler(handler: (() => void) | null): void {
  onUnauthorized = handler;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

async function errorFrom(res: Response): Promise<ApiError> {
  let body: unknown = null;
  try {
    body = await res.json();
  } catch {
    // not JSON: fall back to the status text
  }
  const retry = Number(res.headers.get('Retry-After'));
  const retryAfter = res.headers.has('Retry-After') && Number.isFinite(retry) ? retry : null;
  if (isRecord(body) && typeof body.error === 'string') {
    return new ApiError(res.status, body.error, body.details ?? body.detail ?? null, retryAfter);
  }
  return new ApiError(res.status, res.statusText || `HTTP ${res.status}`, null, retryAfter);
}

/** Sends one call with the bearer token; resolves with the Response when it is 2xx. */
async function send(method: 'GET' | 'POST', path: string, body?: unknown): Promise<Response> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  const token = getToken();
  if (token !== null) headers.Authorization = `Bearer ${token}`;
  const init: RequestInit = { method, headers, credentials: 'omit', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res: Response;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, 'Network error', err instanceof Error ? err.message : String(err));
  }
  if (!res.ok) {
    const error = await errorFrom(res);
    if (res.status === 401) onUnauthorized?.();
    throw error;
  }
  return res;
}

/** One API call: adds the token, parses the JSON answer, throws ApiError on any failure. */
export async function request<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  const res = await send(method, path, body);
  try {
    return (await res.json()) as T;
  } catch {
    throw new ApiError(res.status, 'Bad response', `${path} did not answer JSON`);
  }
}

/** "Title: details" for the banner (429 adds "retry in N s"). */
export function describeError(err: unknown): string {
  if (!(err instanceof ApiError)) return err instanceof Error ? err.message : String(err);
  let text = err.title;
  const details = describeDetails(err.details);
  if (details) text += `: ${details}`;
  if (err.status === 429 && err.retryAfter !== null) text += ` (retry in ${err.retryAfter} s)`;
  return text;
}

function describeDetails(details: unknown): string {
  if (details === null || details === undefined) return '';
  if (typeof details === 'string') return details;
  if (Array.isArray(details)) return details.map(describeDetails).filter(Boolean).join('; ');
  if (isRecord(details) && typeof details.message === 'string') {
    // Validation issues: {"field":"user_id","message":"Required"}
    const field = typeof details.field === 'string' ? details.field : Array.isArray(details.path) ? details.path.join('.') : '';
    return field ? `${field}: ${details.message}` : details.message;
  }
  return JSON.stringify(details);
}

// ---- shapes ----

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface WhoAmI {
  caller: string;
  admin: boolean;
  user_id: string | null;
}

export interface Memory {
  id: string;
  memory: string;
  user_id: string;
  metadata: Record<string, Json> | null;
  created_at: string | null;
  updated_at: string | null;
  agent_id?: string | null;
  run_id?: string | null;
  score?: number;
}

export interface MemoryList {
  memories: Memory[];
  count: number;
}

export interface UserSummary {
  user_id: string;
  memories: number;
  last_activity: string | null;
}

export interface UserList {
  users: UserSummary[];
  count: number;
  total: number;
}

export interface PreviewMemory extends Memory {
  score: number;
  injected: boolean;
}

export interface Preview {
  block: string | null;
  injected: number;
  top_k: number;
  threshold: number;
  max_chars: number;
  memories: PreviewMemory[];
}

export interface Trace {
  request_id: string;
  at: string;
  caller: string;
  user_id: string;
  agent_id?: string | null;
  run_id?: string | null;
  api: 'openai' | 'anthropic';
  route: string;
  model: string | null;
  search_ms: number | null;
  recalled: { id: string; score: number }[];
  injected: string[];
  save: { status: 'none' | 'queued' | 'saved' | 'failed'; memory_ids: string[]; error?: string };
  prompt?: string;
}

export interface TraceList {
  traces: Trace[];
  count: number;
  /** false when the server keeps no traces. */
  enabled?: boolean;
}

export interface Stats {
  memory: { backend: string; available: boolean };
  save_queue: {
    depth: number;
    failures: number;
    dead: number;
    enqueue_failures: number;
    writable: boolean;
    last_error: string | null;
  } | null;
  search: { count: number; p50_ms: number | null; p95_ms: number | null };
  injected: { chats: number; mean: number | null };
}

export interface ListQuery {
  user_id: string;
  limit?: number;
  offset?: number;
  agent_id?: string;
  run_id?: string;
  text?: string;
  since?: string;
  until?: string;
}

// ---- endpoints ----

export const api = {
  whoami: () => request<WhoAmI>('GET', '/whoami'),
  users: (body: { query?: string; limit?: number; offset?: number }) => request<UserList>('POST', '/users', body),
  list: (body: ListQuery) => request<MemoryList>('POST', '/list', body),
  search: (user_id: string, query: string, limit: number) => request<MemoryList>('POST', '/search', { user_id, query, limit }),
  update: (user_id: string, memory_id: string, memory: string) => request<MemoryList>('POST', '/update', { user_id, memory_id, memory }),
  forgetOne: (user_id: string, memory_id: string) =>
    request<{ success: boolean; message: string }>('POST', '/forget', { user_id, memory_id }),
  forgetMany: (user_id: string, memory_ids: string[]) =>
    request<{ success: boolean; message: string; deleted: number }>('POST', '/forget', { user_id, memory_ids }),
  forgetAll: (user_id: string) => request<{ success: boolean; message: string }>('POST', '/forget', { user_id }),
  /** The export document exactly as the server wrote it. */
  exportBlob: async (user_id: string): Promise<Blob> => (await send('POST', '/export', { user_id })).blob(),
  preview: (body: { user_id: string; prompt: string; agent_id?: string; run_id?: string }) => request<Preview>('POST', '/preview', body),
  traces: (body: { user_id?: string; request_id?: string; limit?: number }) => request<TraceList>('POST', '/traces', body),
  stats: () => request<Stats>('GET', '/stats'),
};
