/**
 * The memory admin API end to end with MEMORY_BACKEND=pgvector: HTTP -> admin routes ->
 * Mem0MemoryService -> mem0ai's real `Memory` -> mem0's pgvector store -> `pg` over TCP -> PGlite
 * with pgvector behind pglite-socket (test/helpers/pglite-server.ts), with the fake OpenAI upstream
 * answering mem0's extraction call and embeddings. The same scenarios as memory-api.test.ts (the
 * embedded backend), then what only a shared store gives: a new instance, or a second instance
 * running at the same time, sees the same memories.
 *
 * Differences from the embedded run, on purpose: mem0's pgvector `list` has no ORDER BY, so /list
 * order is the database's (checked as a set, plus pages agreeing with the full listing); vectors
 * live in Postgres (tables `memories`, `memories_entities`), not in DATA_DIR/vectors.db.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import type { MemoryItem } from '../../src/memory/types';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { capturedLogLines } from '../helpers/app';
import { startPgliteServer, type PgliteServer } from '../helpers/pglite-server';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

interface ListBody {
  memories: MemoryItem[];
  count: number;
}

const ROOT = path.resolve(__dirname, '..', '..');
const TSX = require.resolve('tsx');
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const auth = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
const generousLimits = {
  RATE_LIMIT_HEALTH: '100000',
  RATE_LIMIT_SEARCH: '100000',
  RATE_LIMIT_LIST: '100000',
  RATE_LIMIT_REMEMBER: '100000',
  RATE_LIMIT_FORGET: '100000',
  RATE_LIMIT_V1: '100000',
};

let fake: FakeUpstream;
let pg: PgliteServer;
let tmp: string;

// PGlite's WebAssembly start-up and initdb take several seconds: once for the whole file.
beforeAll(async () => {
  [fake, pg] = await Promise.all([startFakeUpstream({ embeddingDimensions: 64 }), startPgliteServer()]);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'memory-api-pgvector-test-'));
}, 60_000);

afterAll(async () => {
  await fake.close();
  await pg.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/**
 * One proxy instance, run as users run it (`src/index.ts` in its own process): mem0 loads `pg`
 * with a dynamic `import()`, which Jest's CommonJS sandbox refuses, so the pgvector backend cannot
 * run inside the test process. Its log lines join the suite-wide secret scan.
 */
interface Instance {
  /** What supertest is given: the instance's base URL. */
  app: string;
  dataDir: string;
  out: string[];
  /** SIGTERM, then the exit code. Idempotent. */
  close(): Promise<number | null>;
}

/** Each instance has its own DATA_DIR (history, mem0's files, save queue); the memories are in the database. */
function freshDataDir(): string {
  return fs.mkdtempSync(path.join(tmp, 'data-'));
}

async function startApp(dataDir: string = freshDataDir()): Promise<Instance> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: dataDir,
    MEM0_TELEMETRY: 'false',
    DEBUG: 'true',
    SERVER_HOST: '127.0.0.1',
    SERVER_PORT: '0',
    UPSTREAM_BASE_URL: fake.url,
    DATA_DIR: dataDir,
    EMBEDDING_DIMS: '64',
    MEMORY_BACKEND: 'pgvector',
    DATABASE_URL: pg.url,
    AUTH_TOKEN: TEST_AUTH_TOKEN,
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    ...generousLimits,
  };
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, ['--import', TSX, path.join(ROOT, 'src', 'index.ts')], { cwd: dataDir, env });
  const out: string[] = [];
  const err: string[] = [];
  let partial = '';
  child.stdout.on('data', (chunk: Buffer) => {
    partial += chunk.toString('utf8');
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      out.push(line);
      capturedLogLines.push(line);
    }
  });
  child.stderr.on('data', (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    err.push(text);
    capturedLogLines.push(text);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let closing: Promise<number | null> | undefined;
  const close = (): Promise<number | null> => {
    closing ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    })();
    return closing;
  };

  const deadline = Date.now() + 30_000;
  for (;;) {
    // Readable lines with DEBUG=true: the port is `"port":N`.
    const line = out.find((l) => l.includes('listening'));
    const port = line ? /"port":(\d+)/.exec(line)?.[1] : undefined;
    if (port) return { app: `http://127.0.0.1:${port}`, dataDir, out, close };
    if (child.exitCode !== null) throw new Error(`proxy exited early: ${err.join('')}`);
    if (Date.now() > deadline) {
      await close();
      throw new Error(`proxy not listening in time: ${err.join('')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

type TestApp = Instance;

function post(app: TestApp, route: string, body: unknown): request.Test {
  return request(app.app).post(route).set(auth).send(body as object);
}

async function list(app: TestApp, body: Record<string, unknown>): Promise<ListBody> {
  const res = await post(app, '/list', body).expect(200);
  const out = res.body as ListBody;
  expect(out.count).toBe(out.memories.length);
  return out;
}

async function remember(app: TestApp, body: Record<string, unknown>): Promise<ListBody> {
  const res = await post(app, '/remember', body).expect(200);
  const out = res.body as ListBody;
  expect(out.count).toBe(out.memories.length);
  return out;
}

async function search(app: TestApp, body: Record<string, unknown>): Promise<ListBody> {
  const res = await post(app, '/search', body).expect(200);
  const out = res.body as ListBody;
  expect(out.count).toBe(out.memories.length);
  return out;
}

async function health(app: TestApp): Promise<{ status: string; memory_service_available: boolean }> {
  const res = await request(app.app).get('/health').set(auth).expect(200);
  return res.body as { status: string; memory_service_available: boolean };
}

/** The part of `pg` used here to look inside the database (no @types/pg installed). */
interface PgClient {
  connect(): Promise<void>;
  query(text: string): Promise<{ rows: Array<Record<string, unknown>> }>;
  end(): Promise<void>;
}
const { Client } = require('pg') as { Client: new (config: { connectionString: string }) => PgClient };

/** Runs one query on its own connection. */
async function sql(text: string): Promise<Array<Record<string, unknown>>> {
  const client = new Client({ connectionString: pg.url });
  await client.connect();
  try {
    return (await client.query(text)).rows;
  } finally {
    await client.end();
  }
}

const texts = (items: MemoryItem[]): string[] => items.map((m) => m.memory);
const ids = (items: MemoryItem[]): string[] => items.map((m) => m.id).sort();

describe('memory admin API with the pgvector backend', () => {
  let app: TestApp;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = freshDataDir();
    app = await startApp(dataDir);
  }, 40_000);
  afterAll(async () => {
    expect(await app.close()).toBe(0);
  });
  beforeEach(() => fake.reset());

  it('starts healthy on the pgvector backend', async () => {
    expect(await health(app)).toMatchObject({ status: 'healthy', memory_service_available: true });
    const ready = app.out.find((l) => l.includes('memory service ready'));
    expect(ready).toContain('pgvector');
    expect(app.out.some((l) => l.includes('memory service unavailable'))).toBe(false);
  });

  it('remembers, lists, searches, then forgets one memory and then all of them', async () => {
    const added = await remember(app, {
      user_id: 'alice',
      messages: [
        { role: 'user', content: 'My favourite colour is teal. I live in Lisbon.' },
        { role: 'assistant', content: 'Noted, teal and Lisbon.' },
      ],
    });
    expect(texts(added.memories).sort()).toEqual(['I live in Lisbon', 'My favourite colour is teal']);
    for (const item of added.memories) {
      expect(item).toMatchObject({ user_id: 'alice', metadata: {} });
      expect(item.id).toMatch(UUID);
      expect(typeof item.created_at).toBe('string');
    }
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1);

    expect(texts((await list(app, { user_id: 'alice' })).memories).sort()).toEqual(['I live in Lisbon', 'My favourite colour is teal']);

    const found = await search(app, { user_id: 'alice', query: 'what is my favourite colour?' });
    expect(found.memories[0]?.memory).toBe('My favourite colour is teal');
    expect(typeof found.memories[0]?.score).toBe('number');

    const colour = found.memories[0]!;
    const forgotten = await post(app, '/forget', { user_id: 'alice', memory_id: colour.id }).expect(200);
    expect(forgotten.body).toMatchObject({ success: true });
    expect(texts((await list(app, { user_id: 'alice' })).memories)).toEqual(['I live in Lisbon']);

    await post(app, '/forget', { user_id: 'alice' }).expect(200, { success: true, message: 'All memories of user alice deleted' });
    expect((await list(app, { user_id: 'alice' })).count).toBe(0);
  });

  it('stores content as given with infer:false, and extracts only facts with infer on', async () => {
    const raw = await remember(app, { user_id: 'carol', content: 'Remember the milk', infer: false });
    expect(texts(raw.memories)).toEqual(['Remember the milk']);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(0);

    const inferred = await remember(app, { user_id: 'carol', content: 'Remember the milk' });
    expect(inferred.count).toBe(0);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
    expect((await list(app, { user_id: 'carol' })).count).toBe(1);
  });

  it('keeps metadata and run_id, narrows list and search by run_id, and ignores owner keys in metadata', async () => {
    const chess = await remember(app, { user_id: 'dave', content: 'I play chess on Sundays', metadata: { source: 'test', n: 1 }, run_id: 'run-1' });
    expect(chess.memories).toHaveLength(1);
    expect(chess.memories[0]).toMatchObject({ memory: 'I play chess on Sundays', user_id: 'dave', run_id: 'run-1', metadata: { source: 'test', n: 1 } });

    await remember(app, { user_id: 'dave', content: 'I play tennis on Mondays', infer: false });
    const spoof = await remember(app, { user_id: 'dave', content: 'I like spoofing', infer: false, metadata: { user_id: 'eve', note: 'x' } });
    expect(spoof.memories[0]).toMatchObject({ user_id: 'dave', metadata: { note: 'x' } });
    expect(spoof.memories[0]?.metadata).not.toHaveProperty('user_id');
    expect((await list(app, { user_id: 'eve' })).count).toBe(0);

    const inRun = await list(app, { user_id: 'dave', run_id: 'run-1' });
    expect(texts(inRun.memories)).toEqual(['I play chess on Sundays']);
    expect((await list(app, { user_id: 'dave' })).count).toBe(3);

    const found = await search(app, { user_id: 'dave', run_id: 'run-1', query: 'which games do I play?' });
    expect(found.count).toBeGreaterThan(0);
    expect(found.memories.every((m) => m.run_id === 'run-1')).toBe(true);
  });

  it('pages /list with limit and offset beyond mem0’s default of 20, pages agreeing with the full listing', async () => {
    const notes = Array.from({ length: 25 }, (_, i) => `Note number ${i}`);
    const added = await remember(app, { user_id: 'pager', infer: false, messages: notes.map((content) => ({ role: 'user', content })) });
    expect(added.count).toBe(25);

    // No ORDER BY in mem0's pgvector list: the order is the database's, stable while nothing changes.
    const all = texts((await list(app, { user_id: 'pager' })).memories);
    expect([...all].sort()).toEqual([...notes].sort());
    const pages: string[] = [];
    for (const offset of [0, 10, 20]) {
      const page = await list(app, { user_id: 'pager', limit: 10, offset });
      expect(page.count).toBe(offset === 20 ? 5 : 10);
      pages.push(...texts(page.memories));
    }
    expect(pages).toEqual(all);
    expect(texts((await list(app, { user_id: 'pager', limit: 7, offset: 3 })).memories)).toEqual(all.slice(3, 10));
    expect((await list(app, { user_id: 'pager', offset: 25 })).count).toBe(0);
  });

  it('lists users with their counts from one grouped query, and edits a memory (re-embedded in the table)', async () => {
    await remember(app, { user_id: 'pg-ann', infer: false, messages: [{ role: 'user', content: 'Ann sails' }, { role: 'user', content: 'Ann rows' }] });
    const [one] = (await remember(app, { user_id: 'pg-bo', infer: false, content: 'Bo climbs' })).memories;
    const res = await post(app, '/users', { query: 'pg-' }).expect(200);
    expect(res.body).toMatchObject({ total: 2, count: 2, users: [{ user_id: 'pg-ann', memories: 2 }, { user_id: 'pg-bo', memories: 1 }] });
    const updated = await post(app, '/update', { user_id: 'pg-bo', memory_id: one?.id, memory: 'Bo skis' }).expect(200);
    expect(updated.body).toMatchObject({ memories: [{ id: one?.id, memory: 'Bo skis' }] });
    const found = await search(app, { user_id: 'pg-bo', query: 'Does Bo ski? skis' });
    expect(found.memories[0]?.memory).toBe('Bo skis');
    await post(app, '/update', { user_id: 'pg-ann', memory_id: one?.id, memory: 'stolen' }).expect(404);
  });

  it('never shows or deletes one user’s memories to another', async () => {
    const cat = (await remember(app, { user_id: 'alice', content: 'My cat is called Miso' })).memories[0]!;
    await remember(app, { user_id: 'bob', content: 'My dog is called Rex' });

    expect(texts((await list(app, { user_id: 'bob' })).memories)).toEqual(['My dog is called Rex']);
    const bobSearch = await search(app, { user_id: 'bob', query: 'cat called Miso' });
    expect(bobSearch.memories.map((m) => m.id)).not.toContain(cat.id);
    expect(bobSearch.memories.every((m) => m.user_id === 'bob')).toBe(true);

    const refused = await post(app, '/forget', { user_id: 'bob', memory_id: cat.id }).expect(404);
    expect(refused.body).toMatchObject({ error: 'Not found' });
    await post(app, '/forget', { user_id: 'bob' }).expect(200);
    expect((await list(app, { user_id: 'alice' })).memories.map((m) => m.id)).toContain(cat.id);
    expect((await list(app, { user_id: 'bob' })).count).toBe(0);
  });

  it.each([
    ['/search', { query: 'no user' }],
    ['/list', {}],
    ['/remember', { content: 'no user' }],
    ['/forget', {}],
    ['/list', { user_id: 'a', limit: 1001 }],
    ['/remember', { user_id: 'a b', content: 'x' }],
    ['/forget', { user_id: 'a', memory_id: 7 }],
  ])('answers 400 to POST %s %j', async (route, body) => {
    const res = await post(app, route, body).expect(400);
    expect(res.body).toMatchObject({ error: 'Invalid request' });
  });

  it('answers 404 for a memory id that does not exist or is not a memory id', async () => {
    for (const memoryId of ['6f1c1b7e-9a1d-4f6e-8a57-0c5d1e2f3a4b', 'not-a-uuid']) {
      const res = await post(app, '/forget', { user_id: 'alice', memory_id: memoryId }).expect(404);
      expect(res.body).toMatchObject({ error: 'Not found' });
    }
  });

  it('keeps the vectors in the database and only history and mem0’s files under DATA_DIR', async () => {
    const tables = await sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'");
    expect(tables.map((r) => r['table_name'])).toEqual(expect.arrayContaining(['memories', 'memories_entities']));
    const index = await sql("SELECT indexdef FROM pg_indexes WHERE tablename = 'memories' AND indexname = 'memories_hnsw_idx'");
    expect(index[0]?.['indexdef']).toEqual(expect.stringContaining('USING hnsw'));
    const column = await sql("SELECT format_type(atttypid, atttypmod) AS type FROM pg_attribute WHERE attrelid = 'memories'::regclass AND attname = 'vector'");
    expect(column[0]?.['type']).toBe('vector(64)');
    // Every memory row belongs to a user we stored for: no probe or stray rows.
    const owners = await sql("SELECT DISTINCT payload->>'user_id' AS owner FROM memories");
    expect(owners.map((r) => r['owner'])).not.toContain(null);

    expect(fs.existsSync(path.join(dataDir, 'vectors.db'))).toBe(false);
    expect(fs.existsSync(path.join(dataDir, 'history.db'))).toBe(true);
    expect(fs.existsSync(path.join(dataDir, 'mem0'))).toBe(true);
  });
});

describe('persistence', () => {
  it('finds the same memories from a new instance (new DATA_DIR) on the same database', async () => {
    const first = await startApp();
    const added = await remember(first, { user_id: 'erin', content: 'My bike is green. I commute by train.' });
    expect(added.count).toBe(2);
    expect(await first.close()).toBe(0);

    const second = await startApp();
    try {
      const after = await list(second, { user_id: 'erin' });
      expect(ids(after.memories)).toEqual(ids(added.memories));
      const found = await search(second, { user_id: 'erin', query: 'what colour is my bike?' });
      expect(found.memories[0]?.memory).toBe('My bike is green');
    } finally {
      await second.close();
    }
  }, 60_000);

  it('releases its database connections on close', async () => {
    const before = await pg.activeConnections();
    const app = await startApp();
    await remember(app, { user_id: 'frank', content: 'I own a kayak' });
    expect(await pg.activeConnections()).toBeGreaterThan(before);
    expect(await app.close()).toBe(0);
    const deadline = Date.now() + 2_000;
    while ((await pg.activeConnections()) > before && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await pg.activeConnections()).toBe(before);
  }, 40_000);
});

describe('two instances at once on the same database', () => {
  let a: TestApp;
  let b: TestApp;

  beforeAll(async () => {
    [a, b] = await Promise.all([startApp(), startApp()]);
  }, 60_000);
  afterAll(async () => {
    expect(await Promise.all([a.close(), b.close()])).toEqual([0, 0]);
  });
  beforeEach(() => fake.reset());

  it('B lists and searches what A remembered; after B forgets it, A no longer sees it', async () => {
    const added = await remember(a, { user_id: 'grace', content: 'My sister lives in Oslo. I drink green tea.' });
    expect(added.count).toBe(2);

    expect(ids((await list(b, { user_id: 'grace' })).memories)).toEqual(ids(added.memories));
    const found = await search(b, { user_id: 'grace', query: 'where does my sister live?' });
    expect(found.memories[0]?.memory).toBe('My sister lives in Oslo');

    const oslo = found.memories[0]!;
    await post(b, '/forget', { user_id: 'grace', memory_id: oslo.id }).expect(200);
    expect(texts((await list(a, { user_id: 'grace' })).memories)).toEqual(['I drink green tea']);
    expect((await search(a, { user_id: 'grace', query: 'where does my sister live?' })).memories.map((m) => m.id)).not.toContain(oslo.id);
    await post(a, '/forget', { user_id: 'grace', memory_id: oslo.id }).expect(404);

    await post(a, '/forget', { user_id: 'grace' }).expect(200);
    expect((await list(b, { user_id: 'grace' })).count).toBe(0);
  });

  it('takes writes from both instances at the same time without losing or mixing any', async () => {
    const notes = (who: string): string[] => Array.from({ length: 6 }, (_, i) => `${who} note ${i}`);
    const [fromA, fromB] = await Promise.all([
      Promise.all(notes('Alpha').map((content) => remember(a, { user_id: 'heidi', content, infer: false }))),
      Promise.all(notes('Bravo').map((content) => remember(b, { user_id: 'ivan', content, infer: false }))),
    ]);
    expect(fromA.flatMap((r) => texts(r.memories)).sort()).toEqual(notes('Alpha').sort());
    expect(fromB.flatMap((r) => texts(r.memories)).sort()).toEqual(notes('Bravo').sort());

    for (const app of [a, b]) {
      expect(texts((await list(app, { user_id: 'heidi' })).memories).sort()).toEqual(notes('Alpha').sort());
      expect(texts((await list(app, { user_id: 'ivan' })).memories).sort()).toEqual(notes('Bravo').sort());
    }
  });

  it('both report a healthy memory service', async () => {
    for (const app of [a, b]) expect(await health(app)).toMatchObject({ status: 'healthy', memory_service_available: true });
  });
});
