/**
 * A fake Mem0 Platform: a real `node:http` server on 127.0.0.1 (port 0 by default) speaking the
 * wire format mem0ai's `MemoryClient` (3.3.x, node_modules/mem0ai/dist/index.js) uses, so the
 * platform backend runs end to end against it without the network.
 *
 * Every request needs `Authorization: Token <apiKey>` (else 401 `{"detail":"Invalid API key"}`).
 * Endpoints (trailing slashes as the client sends them):
 *   GET    /v1/ping/                       {status:"ok", org_id, project_id}; the client calls it on construction
 *   POST   /v3/memories/add/               {messages, user_id|agent_id|run_id|app_id, metadata?, infer?}
 *                                          -> {message, status:"PENDING", event_id} (processed at once here)
 *   POST   /v3/memories/search/            {query, filters, top_k?, threshold?} -> {results:[memory + score]}
 *   POST   /v3/memories/?page=&page_size=  {filters} -> {count, next, previous, results}; 404 past the last page
 *   GET    /v1/memories/{id}/              memory, or 404
 *   DELETE /v1/memories/{id}/              {message}, or 404
 *   DELETE /v1/memories/?user_id=…         {message}; 400 without an entity
 * A memory: {id (UUID), memory, user_id, agent_id, run_id, app_id, metadata, categories,
 * created_at, updated_at}. Listing is newest first. Filters: `{field: value}`, `"*"`,
 * `{field: {in: [...]}}`, and `AND` / `OR` lists of those.
 *
 * "Extraction" with infer (the default): every sentence of the user's messages becomes one
 * memory. With `infer: false`: every message is stored as given. Search scores by word overlap.
 *
 * Faults: `failNext(status, {times, path})` answers the next matching requests with that status.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface PlatformMemory {
  id: string;
  memory: string;
  user_id: string | null;
  agent_id: string | null;
  run_id: string | null;
  app_id: string | null;
  metadata: Record<string, unknown> | null;
  categories: string[];
  created_at: string;
  updated_at: string;
}

export interface PlatformRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  authorization: string | undefined;
  json: unknown;
}

export interface FakePlatformOptions {
  /** The only key accepted. */
  apiKey: string;
  port?: number;
}

export interface FakePlatform {
  readonly url: string;
  readonly port: number;
  readonly requests: PlatformRequest[];
  /** Stored memories by id (insertion order). */
  readonly memories: Map<string, PlatformMemory>;
  /** Requests to `path` (without query), optionally of one method. */
  requestsTo(path: string, method?: string): PlatformRequest[];
  failNext(status: number, opts?: { times?: number; path?: string }): void;
  clearFaults(): void;
  /** Forgets requests, memories and faults. */
  reset(): void;
  close(): Promise<void>;
}

type Json = Record<string, unknown>;

const ENTITY_FIELDS = ['user_id', 'agent_id', 'run_id', 'app_id'] as const;
const STOP_WORDS = new Set([
  'a',
  'an',
  'the',
  'is',
  'are',
  'was',
  'to',
  'of',
  'in',
  'on',
  'at',
  'and',
  'or',
  'my',
  'i',
  'what',
  'which',
  'do',
  'does',
]);

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function words(text: string): Set<string> {
  return new Set((text.toLowerCase().match(/[a-z0-9]+/g) ?? []).filter((w) => !STOP_WORDS.has(w)));
}

function overlap(query: string, text: string): number {
  const q = words(query);
  if (q.size === 0) return 0;
  const t = words(text);
  let shared = 0;
  for (const w of q) if (t.has(w)) shared++;
  return shared / q.size;
}

function matches(memory: PlatformMemory, filter: unknown): boolean {
  if (!isObject(filter)) return false;
  return Object.entries(filter).every(([key, condition]) => {
    if (key === 'AND') return Array.isArray(condition) && condition.every((c) => matches(memory, c));
    if (key === 'OR') return Array.isArray(condition) && condition.some((c) => matches(memory, c));
    const value = (memory as unknown as Json)[key];
    if (condition === '*') return value !== null && value !== undefined;
    if (isObject(condition) && Array.isArray(condition['in'])) return condition['in'].includes(value);
    return value === condition;
  });
}

/** Whether a filter names at least one entity (the Platform refuses unscoped reads). */
function hasEntity(filter: unknown): boolean {
  if (!isObject(filter)) return false;
  return Object.entries(filter).some(([key, condition]) =>
    key === 'AND' || key === 'OR'
      ? Array.isArray(condition) && condition.some(hasEntity)
      : (ENTITY_FIELDS as readonly string[]).includes(key),
  );
}

function sentences(text: string): string[] {
  return text
    .split(/(?<=[.!?])\s+|\n+/)
    .map((s) =>
      s
        .trim()
        .replace(/[.!?]+$/, '')
        .trim(),
    )
    .filter((s) => s.length > 0);
}

export async function startFakePlatform(options: FakePlatformOptions): Promise<FakePlatform> {
  const requests: PlatformRequest[] = [];
  const memories = new Map<string, PlatformMemory>();
  const sockets = new Set<Socket>();
  let faults: Array<{ status: number; remaining: number; path: string | undefined }> = [];
  let clock = Date.parse('2026-01-01T00:00:00Z');
  let baseUrl = '';

  const send = (res: http.ServerResponse, status: number, body: unknown): void => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };

  const takeFault = (path: string): number | undefined => {
    const fault = faults.find((f) => f.remaining > 0 && (f.path === undefined || f.path === path));
    if (!fault) return undefined;
    fault.remaining--;
    faults = faults.filter((f) => f.remaining > 0);
    return fault.status;
  };

  const store = (text: string, body: Json): PlatformMemory => {
    clock += 1000;
    const now = new Date(clock).toISOString();
    const entity = (name: string): string | null => (typeof body[name] === 'string' ? (body[name] as string) : null);
    const memory: PlatformMemory = {
      id: randomUUID(),
      memory: text,
      user_id: entity('user_id'),
      agent_id: entity('agent_id'),
      run_id: entity('run_id'),
      app_id: entity('app_id'),
      metadata: isObject(body['metadata']) ? body['metadata'] : null,
      categories: [],
      created_at: now,
      updated_at: now,
    };
    memories.set(memory.id, memory);
    return memory;
  };

  const newestFirst = (items: PlatformMemory[]): PlatformMemory[] => [...items].reverse();

  const route = (req: http.IncomingMessage, res: http.ServerResponse, path: string, query: URLSearchParams, json: unknown): void => {
    const method = req.method ?? 'GET';
    const body = isObject(json) ? json : {};

    if (method === 'GET' && path === '/v1/ping/') {
      send(res, 200, { status: 'ok', org_id: 'org_fake', project_id: 'proj_fake' });
      return;
    }

    if (method === 'POST' && path === '/v3/memories/add/') {
      const messages = body['messages'];
      if (!Array.isArray(messages) || messages.length === 0) {
        send(res, 400, { error: 'messages must be a non-empty array' });
        return;
      }
      if (!ENTITY_FIELDS.some((f) => typeof body[f] === 'string')) {
        send(res, 400, { error: 'At least one of user_id, agent_id, app_id or run_id is required' });
        return;
      }
      const infer = body['infer'] !== false;
      for (const m of messages) {
        if (!isObject(m) || typeof m['content'] !== 'string') continue;
        if (!infer) store(m['content'], body);
        else if (m['role'] === 'user') for (const s of sentences(m['content'])) store(s, body);
      }
      send(res, 200, { message: 'Memory processing has been queued for background execution', status: 'PENDING', event_id: randomUUID() });
      return;
    }

    if (method === 'POST' && path === '/v3/memories/search/') {
      const filters = body['filters'];
      if (typeof body['query'] !== 'string' || !hasEntity(filters)) {
        send(res, 400, { error: 'query and filters with an entity are required' });
        return;
      }
      const query = body['query'];
      const topK = typeof body['top_k'] === 'number' ? body['top_k'] : 10;
      const threshold = typeof body['threshold'] === 'number' ? body['threshold'] : Number.MIN_VALUE;
      const results = [...memories.values()]
        .filter((m) => matches(m, filters))
        .map((m) => ({ ...m, score: overlap(query, m.memory) }))
        .filter((m) => m.score >= threshold)
        .sort((a, b) => b.score - a.score)
        .slice(0, topK);
      send(res, 200, { results });
      return;
    }

    if (method === 'POST' && path === '/v3/memories/') {
      const filters = body['filters'];
      if (!hasEntity(filters)) {
        send(res, 400, { error: 'filters with an entity are required' });
        return;
      }
      const page = Number(query.get('page') ?? '1');
      const pageSize = Number(query.get('page_size') ?? '100');
      const all = newestFirst([...memories.values()].filter((m) => matches(m, filters)));
      const pages = Math.max(1, Math.ceil(all.length / pageSize));
      if (!Number.isInteger(page) || page < 1 || page > pages) {
        send(res, 404, { detail: 'Invalid page.' });
        return;
      }
      const pageUrl = (p: number): string => `${baseUrl}/v3/memories/?page=${p}&page_size=${pageSize}`;
      send(res, 200, {
        count: all.length,
        next: page < pages ? pageUrl(page + 1) : null,
        previous: page > 1 ? pageUrl(page - 1) : null,
        results: all.slice((page - 1) * pageSize, page * pageSize),
      });
      return;
    }

    if (method === 'GET' && path === '/v1/entities/') {
      const byUser = new Map<string, { count: number; updated: string }>();
      for (const m of memories.values()) {
        if (typeof m.user_id !== 'string') continue;
        const seen = byUser.get(m.user_id);
        byUser.set(m.user_id, {
          count: (seen?.count ?? 0) + 1,
          updated: seen && seen.updated > m.updated_at ? seen.updated : m.updated_at,
        });
      }
      const results = [...byUser].map(([name, u]) => ({
        id: randomUUID(),
        name,
        type: 'user',
        total_memories: u.count,
        owner: 'fake',
        organization: 'org_fake',
        metadata: null,
        created_at: u.updated,
        updated_at: u.updated,
      }));
      send(res, 200, { count: results.length, results });
      return;
    }

    const one = /^\/v1\/memories\/([^/]+)\/$/.exec(path);
    if (one?.[1] !== undefined && method === 'PUT') {
      const memory = memories.get(decodeURIComponent(one[1]));
      if (!memory) {
        send(res, 404, { detail: 'Memory not found.' });
        return;
      }
      if (typeof body['text'] === 'string') memory.memory = body['text'];
      memory.updated_at = new Date().toISOString();
      send(res, 200, memory);
      return;
    }
    if (one?.[1] !== undefined && (method === 'GET' || method === 'DELETE')) {
      const memory = memories.get(decodeURIComponent(one[1]));
      if (!memory) {
        send(res, 404, { detail: 'Memory not found.' });
        return;
      }
      if (method === 'GET') send(res, 200, memory);
      else {
        memories.delete(memory.id);
        send(res, 200, { message: 'Memory deleted successfully!' });
      }
      return;
    }

    if (method === 'DELETE' && path === '/v1/memories/') {
      const filter: Json = {};
      for (const f of ENTITY_FIELDS) {
        const v = query.get(f);
        if (v !== null) filter[f] = v;
      }
      if (Object.keys(filter).length === 0) {
        send(res, 400, { error: 'At least one filter is required' });
        return;
      }
      for (const m of [...memories.values()]) if (matches(m, filter)) memories.delete(m.id);
      send(res, 200, { message: 'Memories deleted successfully!' });
      return;
    }

    send(res, 404, { detail: 'Not found.' });
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://fake');
      let json: unknown;
      const raw = Buffer.concat(chunks).toString('utf8');
      if (raw) {
        try {
          json = JSON.parse(raw);
        } catch {
          json = undefined;
        }
      }
      requests.push({
        method: req.method ?? 'GET',
        path: url.pathname,
        query: Object.fromEntries(url.searchParams),
        authorization: req.headers.authorization,
        json,
      });
      if (req.headers.authorization !== `Token ${options.apiKey}`) {
        send(res, 401, { detail: 'Invalid API key' });
        return;
      }
      const fault = takeFault(url.pathname);
      if (fault !== undefined) {
        send(res, fault, { detail: `Fake platform error (${fault})` });
        return;
      }
      route(req, res, url.pathname, url.searchParams, json);
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  baseUrl = `http://127.0.0.1:${port}`;

  return {
    url: baseUrl,
    port,
    requests,
    memories,
    requestsTo: (path, method) => requests.filter((r) => r.path === path && (method === undefined || r.method === method)),
    failNext: (status, opts = {}) => {
      faults.push({ status, remaining: opts.times ?? 1, path: opts.path });
    },
    clearFaults: () => {
      faults = [];
    },
    reset: () => {
      requests.length = 0;
      memories.clear();
      faults = [];
    },
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await closed;
    },
  };
}
