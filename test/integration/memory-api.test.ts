/**
 * The memory admin API end to end with the default backend: HTTP -> admin routes ->
 * Mem0MemoryService -> mem0ai's real `Memory` -> EmbeddedVectorStore in a temp DATA_DIR, with the
 * fake OpenAI upstream answering mem0's extraction call and embeddings. Also the failure policy:
 * outages, timeouts, recovery, and an engine that was never initialised.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import { createMemoryService } from '../../src/memory/factory';
import type { GuardTuning } from '../../src/memory/resilience';
import type { MemoryItem } from '../../src/memory/types';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { buildTestApp, type TestApp } from '../helpers/app';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

interface ListBody {
  memories: MemoryItem[];
  count: number;
}

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
let tmp: string;
const homeMem0Existed = fs.existsSync(path.join(os.homedir(), '.mem0'));

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'memory-api-test-'));
});

afterAll(async () => {
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function freshDataDir(): string {
  return fs.mkdtempSync(path.join(tmp, 'data-'));
}

async function startApp(dataDir: string, options: { env?: Record<string, string>; tuning?: Partial<GuardTuning>; auth?: boolean } = {}): Promise<TestApp> {
  const env: Record<string, string> = {
    UPSTREAM_BASE_URL: fake.url,
    DATA_DIR: dataDir,
    EMBEDDING_DIMS: '64',
    ...generousLimits,
    ...(options.auth === false ? {} : { AUTH_TOKEN: TEST_AUTH_TOKEN, OPENAI_API_KEY: TEST_OPENAI_KEY }),
    ...options.env,
  };
  return buildTestApp(env, { memory: (config, logger) => createMemoryService(config, logger, { tuning: options.tuning }) });
}

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

/** Polls /health until it reports `available`, failing after `timeoutMs`. */
async function waitForHealth(app: TestApp, available: boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if ((await health(app)).memory_service_available === available) return;
    if (Date.now() > deadline) throw new Error(`/health did not report memory_service_available=${available} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const texts = (items: MemoryItem[]): string[] => items.map((m) => m.memory);

describe('memory admin API with the embedded backend', () => {
  let app: TestApp;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = freshDataDir();
    app = await startApp(dataDir);
  });
  afterAll(() => app.close());
  beforeEach(() => fake.reset());

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
    // mem0 v3 makes exactly one LLM call per add: the extraction.
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

    // The fake extractor finds no personal fact in it: nothing new is stored.
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

  it('pages /list with limit and offset beyond mem0’s default of 20, oldest first', async () => {
    const notes = Array.from({ length: 25 }, (_, i) => `Note number ${i}`);
    const added = await remember(app, { user_id: 'pager', infer: false, messages: notes.map((content) => ({ role: 'user', content })) });
    expect(added.count).toBe(25);

    expect(texts((await list(app, { user_id: 'pager' })).memories)).toEqual(notes);
    const pages: string[] = [];
    for (const offset of [0, 10, 20]) {
      const page = await list(app, { user_id: 'pager', limit: 10, offset });
      expect(page.count).toBe(offset === 20 ? 5 : 10);
      pages.push(...texts(page.memories));
    }
    expect(pages).toEqual(notes);
    expect(texts((await list(app, { user_id: 'pager', limit: 7, offset: 3 })).memories)).toEqual(notes.slice(3, 10));
    expect((await list(app, { user_id: 'pager', offset: 25 })).count).toBe(0);
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
    ['/search', { user_id: 'a', query: 5 }],
    ['/search', { user_id: 'a', query: '' }],
    ['/search', { user_id: 'a', query: 'x', limit: 0 }],
    ['/list', { user_id: 'a', limit: '5' }],
    ['/list', { user_id: 'a', limit: 0 }],
    ['/list', { user_id: 'a', limit: 1001 }],
    ['/list', { user_id: 'a', offset: -1 }],
    ['/list', { user_id: 'a', surprise: true }],
    ['/remember', { user_id: 'a' }],
    ['/remember', { user_id: 'a', content: 'x', messages: [{ role: 'user', content: 'x' }] }],
    ['/remember', { user_id: 'a', messages: [{ role: 'robot', content: 'x' }] }],
    ['/remember', { user_id: 'a', content: 'x', infer: 'no' }],
    ['/remember', { user_id: 'a b', content: 'x' }],
    ['/forget', { user_id: 'a', memory_id: 7 }],
  ])('answers 400 to POST %s %j', async (route, body) => {
    const res = await post(app, route, body).expect(400);
    expect(res.body).toMatchObject({ error: 'Invalid request' });
  });

  it('refuses "*" as a user, agent or run id, and deletes nothing', async () => {
    await remember(app, { user_id: 'star-a', content: 'Star A keeps this', infer: false });
    for (const body of [{ user_id: '*' }, { user_id: 'star-a', agent_id: '*' }, { user_id: 'star-a', run_id: '*' }]) {
      await post(app, '/forget', body).expect(400);
      await post(app, '/list', body).expect(400);
      await post(app, '/search', { ...body, query: 'keeps' }).expect(400);
    }
    expect((await list(app, { user_id: 'star-a' })).count).toBe(1);
  });

  it('answers 404 for a memory id that does not exist or is not a memory id', async () => {
    for (const memoryId of ['6f1c1b7e-9a1d-4f6e-8a57-0c5d1e2f3a4b', 'not-a-uuid']) {
      const res = await post(app, '/forget', { user_id: 'alice', memory_id: memoryId }).expect(404);
      expect(res.body).toMatchObject({ error: 'Not found' });
    }
  });

  it('answers 415 to a body that is not JSON', async () => {
    await request(app.app).post('/search').set(auth).set('Content-Type', 'text/plain').send('user_id=a&query=x').expect(415);
  });

  it('reports a healthy memory service', async () => {
    expect(await health(app)).toMatchObject({ status: 'healthy', memory_service_available: true });
  });

  it('keeps everything under DATA_DIR', () => {
    expect(fs.existsSync(path.join(dataDir, 'vectors.db'))).toBe(true);
    expect(fs.existsSync(path.join(dataDir, 'history.db'))).toBe(true);
    expect(fs.existsSync(path.join(dataDir, 'mem0'))).toBe(true);
    // mem0 runs in its worker thread with MEM0_DIR there: its home-directory default stays untouched.
    if (!homeMem0Existed) expect(fs.existsSync(path.join(os.homedir(), '.mem0'))).toBe(false);
  });
});

describe('persistence', () => {
  it('finds the same memories after a restart on the same DATA_DIR', async () => {
    const dataDir = freshDataDir();
    const first = await startApp(dataDir);
    const added = await remember(first, { user_id: 'erin', content: 'My bike is green. I commute by train.' });
    expect(added.count).toBe(2);
    await first.close();

    const second = await startApp(dataDir);
    try {
      const after = await list(second, { user_id: 'erin' });
      expect(after.memories.map((m) => m.id).sort()).toEqual(added.memories.map((m) => m.id).sort());
      const found = await search(second, { user_id: 'erin', query: 'what colour is my bike?' });
      expect(found.memories[0]?.memory).toBe('My bike is green');
    } finally {
      await second.close();
    }
  });
});

describe('failure policy', () => {
  let app: TestApp;
  const tuning: Partial<GuardTuning> = { readTimeoutMs: 1_000, baseDelayMs: 20, unhealthyTtlMs: 300, healthyTtlMs: 300 };

  let consoleError: jest.SpyInstance;

  beforeAll(async () => {
    // mem0ai prints every failed LLM extraction to the console itself; keep the output readable.
    consoleError = jest.spyOn(console, 'error').mockImplementation(() => undefined);
    app = await startApp(freshDataDir(), { tuning });
  });
  afterAll(async () => {
    await app.close();
    consoleError.mockRestore();
  });
  beforeEach(() => fake.reset());

  it('answers 503 "temporarily unavailable" during an embeddings outage, shows it in /health, and recovers by itself', async () => {
    await remember(app, { user_id: 'olga', content: 'My plant is a fern' });
    fake.reset();
    fake.failNext(500, { times: Infinity, path: '/v1/embeddings' });

    const res = await post(app, '/search', { user_id: 'olga', query: 'plant' }).expect(503);
    expect(res.body).toEqual({ error: 'Service unavailable', details: 'Memory service is temporarily unavailable', status_code: 503 });
    // Three attempts, each a single request: mem0's own SDK retries are turned off.
    expect(fake.requestsTo('/v1/embeddings')).toHaveLength(3);
    await post(app, '/remember', { user_id: 'olga', content: 'My tree is an oak' }).expect(503);
    expect(await health(app)).toMatchObject({ status: 'degraded', memory_service_available: false });

    // Listing needs no embedder: it still works, and does not claim the engine is healthy.
    expect((await list(app, { user_id: 'olga' })).count).toBe(1);
    expect((await health(app)).memory_service_available).toBe(false);

    fake.clearFaults();
    await waitForHealth(app, true, 5_000);
    expect(await health(app)).toMatchObject({ status: 'healthy', memory_service_available: true });
    expect((await search(app, { user_id: 'olga', query: 'plant' })).memories[0]?.memory).toBe('My plant is a fern');
  });

  it('retries a transient LLM failure and succeeds', async () => {
    fake.failNext(503, { times: 1, path: '/v1/chat/completions' });
    const added = await remember(app, { user_id: 'paul', content: 'My car is blue' });
    expect(texts(added.memories)).toEqual(['My car is blue']);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(2);
  });

  it('does not retry a request the LLM refuses (401), and reports the engine unavailable', async () => {
    fake.failNext(401, { times: 1, path: '/v1/chat/completions' });
    await post(app, '/remember', { user_id: 'paul', content: 'My boat is red' }).expect(503);
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
    await waitForHealth(app, true, 5_000);
  });

  it('gives up on an embedder that hangs, within the per-attempt deadline', async () => {
    fake.setNext({ kind: 'hang' }, { times: 3, path: '/v1/embeddings' });
    const started = Date.now();
    await post(app, '/search', { user_id: 'olga', query: 'plant' }).expect(503);
    // Three attempts of 1 s each plus short backoffs; the margin absorbs a loaded machine.
    expect(Date.now() - started).toBeLessThan(3 * 1_000 + 3_000);
    await waitForHealth(app, true, 5_000);
  });
});

describe('memory engine never initialised', () => {
  it('answers 503 "Memory service is unavailable" without OPENAI_API_KEY, keeps /v1 working and says why once', async () => {
    // AUTH_TOKEN requires OPENAI_API_KEY, so this runs in development mode (no auth).
    const app = await startApp(freshDataDir(), { auth: false });
    try {
      const unavailable = { error: 'Service unavailable', details: 'Memory service is unavailable', status_code: 503 };
      await request(app.app).post('/search').send({ user_id: 'a', query: 'x' }).expect(503, unavailable);
      await request(app.app).post('/remember').send({ user_id: 'a', content: 'x' }).expect(503, unavailable);
      await request(app.app).post('/list').send({ user_id: 'a' }).expect(503, unavailable);
      await request(app.app).post('/forget').send({ user_id: 'a' }).expect(503, unavailable);
      const h = await request(app.app).get('/health').expect(200);
      expect(h.body).toMatchObject({ status: 'degraded', memory_service_available: false });
      await request(app.app).get('/v1/models').set('Authorization', 'Bearer sk-caller-own-key').expect(200);

      const lines = app.logs.filter((l) => l.includes('memory service unavailable'));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain('OPENAI_API_KEY is not set');
    } finally {
      await app.close();
    }
  });
});
