/**
 * MEMORY_BACKEND=platform through the HTTP API: mem0ai's real MemoryClient against a fake Mem0
 * Platform that checks the wire format (Token auth, v3 add/search/list, v1 get/delete).
 */
import request from 'supertest';
import { createMemoryService } from '../../src/memory/factory';
import type { GuardTuning } from '../../src/memory/resilience';
import type { MemoryItem } from '../../src/memory/types';
import { startFakePlatform, type FakePlatform } from '../fakes/mem0-platform';
import { buildTestApp, type TestApp } from '../helpers/app';
import { TEST_AUTH_TOKEN, TEST_MEM0_KEY, TEST_OPENAI_KEY, runtimeSecrets } from '../helpers/secrets';

interface ListBody {
  memories: MemoryItem[];
  count: number;
}

const auth = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
const tuning: Partial<GuardTuning> = { baseDelayMs: 20, readTimeoutMs: 2_000, unhealthyTtlMs: 200, healthyTtlMs: 200 };
const WRONG_KEY = 'm0-wrong-platform-key-5d1f7b';
runtimeSecrets.push(WRONG_KEY);

function startApp(host: string, env: Record<string, string> = {}): Promise<TestApp> {
  return buildTestApp(
    {
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      MEMORY_BACKEND: 'platform',
      MEM0_API_KEY: TEST_MEM0_KEY,
      MEM0_HOST: host,
      RATE_LIMIT_SEARCH: '100000',
      RATE_LIMIT_LIST: '100000',
      RATE_LIMIT_REMEMBER: '100000',
      RATE_LIMIT_FORGET: '100000',
      RATE_LIMIT_HEALTH: '100000',
      ...env,
    },
    { memory: (config, logger) => createMemoryService(config, logger, { tuning }) },
  );
}

function post(app: TestApp, route: string, body: unknown): request.Test {
  return request(app.app)
    .post(route)
    .set(auth)
    .send(body as object);
}

async function ok(app: TestApp, route: string, body: Record<string, unknown>): Promise<ListBody> {
  const res = await post(app, route, body).expect(200);
  const out = res.body as ListBody;
  expect(out.count).toBe(out.memories.length);
  return out;
}

async function available(app: TestApp): Promise<boolean> {
  const res = await request(app.app).get('/health').set(auth).expect(200);
  return (res.body as { memory_service_available: boolean }).memory_service_available;
}

async function waitForHealth(app: TestApp, want: boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await available(app)) !== want) {
    if (Date.now() > deadline) throw new Error(`/health did not report memory_service_available=${want}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** mem0ai's MemoryClient reports a failed start-up ping on the console itself; keep test output clean. */
function quietConsole(): { warn: jest.SpyInstance; restore: () => void } {
  const error = jest.spyOn(console, 'error').mockImplementation(() => undefined);
  const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
  return {
    warn,
    restore: () => {
      error.mockRestore();
      warn.mockRestore();
    },
  };
}

describe('platform backend', () => {
  let platform: FakePlatform;
  let app: TestApp;

  beforeAll(async () => {
    platform = await startFakePlatform({ apiKey: TEST_MEM0_KEY });
    app = await startApp(platform.url);
  });
  afterAll(async () => {
    await app.close();
    await platform.close();
  });
  beforeEach(() => platform.reset());

  it('remembers (queued by the Platform), then lists and searches with the wire format MemoryClient uses', async () => {
    const added = await ok(app, '/remember', {
      user_id: 'alice',
      messages: [
        { role: 'user', content: 'My favourite colour is teal. I live in Lisbon.' },
        { role: 'assistant', content: 'Noted.' },
      ],
      metadata: { source: 'test' },
    });
    // The Platform answers an add with an event id; the memories follow in the background.
    expect(added.count).toBe(0);

    const [add] = platform.requestsTo('/v3/memories/add/', 'POST');
    expect(add?.authorization).toBe(`Token ${TEST_MEM0_KEY}`);
    expect(add?.json).toMatchObject({
      user_id: 'alice',
      infer: true,
      metadata: { source: 'test' },
      messages: [{ role: 'user' }, { role: 'assistant' }],
    });

    const listed = await ok(app, '/list', { user_id: 'alice' });
    expect(listed.memories.map((m) => m.memory).sort()).toEqual(['I live in Lisbon', 'My favourite colour is teal']);
    for (const m of listed.memories) {
      expect(m).toMatchObject({ user_id: 'alice', metadata: { source: 'test' } });
      expect(typeof m.created_at).toBe('string');
    }
    expect(platform.requestsTo('/v3/memories/', 'POST')[0]?.json).toEqual({ filters: { user_id: 'alice' } });

    const found = await ok(app, '/search', { user_id: 'alice', query: 'favourite colour', limit: 3 });
    expect(found.memories[0]).toMatchObject({ memory: 'My favourite colour is teal', user_id: 'alice' });
    expect(typeof found.memories[0]?.score).toBe('number');
    expect(platform.requestsTo('/v3/memories/search/')[0]?.json).toMatchObject({
      query: 'favourite colour',
      top_k: 3,
      filters: { user_id: 'alice' },
    });
  });

  it('stores content as given with infer:false and scopes by run_id with an AND filter', async () => {
    await ok(app, '/remember', { user_id: 'dave', content: 'Remember the milk', infer: false, run_id: 'run-1' });
    await ok(app, '/remember', { user_id: 'dave', content: 'Water the plants', infer: false });
    const inRun = await ok(app, '/list', { user_id: 'dave', run_id: 'run-1' });
    expect(inRun.memories.map((m) => [m.memory, m.run_id])).toEqual([['Remember the milk', 'run-1']]);
    expect(platform.requestsTo('/v3/memories/', 'POST')[0]?.json).toEqual({ filters: { AND: [{ user_id: 'dave' }, { run_id: 'run-1' }] } });
    expect((await ok(app, '/list', { user_id: 'dave' })).count).toBe(2);
  });

  it('pages /list with limit and offset across the Platform’s pages', async () => {
    const notes = Array.from({ length: 25 }, (_, i) => `Note number ${i}`);
    await ok(app, '/remember', { user_id: 'pager', infer: false, messages: notes.map((content) => ({ role: 'user', content })) });
    const all = (await ok(app, '/list', { user_id: 'pager' })).memories.map((m) => m.memory);
    expect([...all].sort()).toEqual([...notes].sort());

    const pages: string[] = [];
    for (const offset of [0, 10, 20])
      pages.push(...(await ok(app, '/list', { user_id: 'pager', limit: 10, offset })).memories.map((m) => m.memory));
    expect(pages).toEqual(all);
    expect((await ok(app, '/list', { user_id: 'pager', limit: 7, offset: 3 })).memories.map((m) => m.memory)).toEqual(all.slice(3, 10));
    expect((await ok(app, '/list', { user_id: 'pager', limit: 10, offset: 30 })).count).toBe(0);
  });

  it('forgets one memory, then all, and never another user’s', async () => {
    await ok(app, '/remember', { user_id: 'alice', content: 'My cat is called Miso' });
    await ok(app, '/remember', { user_id: 'alice', content: 'My dog is called Rex' });
    await ok(app, '/remember', { user_id: 'bob', content: 'My fish is called Nemo' });
    const [cat, dog] = (await ok(app, '/list', { user_id: 'alice' })).memories.sort((a, b) => a.memory.localeCompare(b.memory));

    const refused = await post(app, '/forget', { user_id: 'bob', memory_id: cat?.id }).expect(404);
    expect(refused.body).toMatchObject({ error: 'Not found' });
    expect(platform.memories.has(cat?.id ?? '')).toBe(true);
    expect(platform.requestsTo(`/v1/memories/${cat?.id}/`, 'DELETE')).toHaveLength(0);

    await post(app, '/forget', { user_id: 'alice', memory_id: cat?.id }).expect(200);
    expect(platform.memories.has(cat?.id ?? '')).toBe(false);
    expect(platform.memories.has(dog?.id ?? '')).toBe(true);

    await post(app, '/forget', { user_id: 'alice' }).expect(200);
    const [deleteAll] = platform.requestsTo('/v1/memories/', 'DELETE');
    expect(deleteAll?.query).toEqual({ user_id: 'alice' });
    expect((await ok(app, '/list', { user_id: 'alice' })).count).toBe(0);
    expect((await ok(app, '/list', { user_id: 'bob' })).count).toBe(1);

    await post(app, '/forget', { user_id: 'alice', memory_id: '6f1c1b7e-9a1d-4f6e-8a57-0c5d1e2f3a4b' }).expect(404);
  });

  it('lists the Platform’s users and edits a memory with PUT, never another user’s', async () => {
    await ok(app, '/remember', { user_id: 'plat-ann', content: 'Ann sails', infer: false });
    await ok(app, '/remember', { user_id: 'plat-ann', content: 'Ann rows', infer: false });
    await ok(app, '/remember', { user_id: 'plat-bo', content: 'Bo climbs', infer: false });
    const users = await post(app, '/users', { query: 'PLAT-' }).expect(200);
    expect(users.body).toMatchObject({
      total: 2,
      users: [
        { user_id: 'plat-ann', memories: 2 },
        { user_id: 'plat-bo', memories: 1 },
      ],
    });
    const [bo] = (await ok(app, '/list', { user_id: 'plat-bo' })).memories;
    await post(app, '/update', { user_id: 'plat-ann', memory_id: bo?.id, memory: 'stolen' }).expect(404);
    expect(platform.requestsTo(`/v1/memories/${bo?.id}/`, 'PUT')).toHaveLength(0);
    const res = await post(app, '/update', { user_id: 'plat-bo', memory_id: bo?.id, memory: 'Bo skis' }).expect(200);
    expect(res.body).toMatchObject({ memories: [{ id: bo?.id, memory: 'Bo skis' }] });
    expect(platform.requestsTo(`/v1/memories/${bo?.id}/`, 'PUT')[0]?.json).toEqual({ text: 'Bo skis' });
    expect((await ok(app, '/list', { user_id: 'plat-bo', text: 'skis' })).memories.map((m) => m.memory)).toEqual(['Bo skis']);
  });

  it('answers 503 "temporarily unavailable" while the Platform fails, and recovers by itself', async () => {
    platform.failNext(503, { times: Infinity });
    const res = await post(app, '/search', { user_id: 'alice', query: 'anything' }).expect(503);
    expect(res.body).toEqual({ error: 'Service unavailable', details: 'Memory service is temporarily unavailable', status_code: 503 });
    expect(platform.requestsTo('/v3/memories/search/')).toHaveLength(3);
    expect(await available(app)).toBe(false);

    platform.clearFaults();
    await waitForHealth(app, true, 5_000);
    await ok(app, '/search', { user_id: 'alice', query: 'anything' });
  });

  it('answers 400 when the Platform refuses the request itself, without retrying', async () => {
    platform.failNext(422, { path: '/v3/memories/search/' });
    const res = await post(app, '/search', { user_id: 'alice', query: 'anything' }).expect(400);
    expect(res.body).toMatchObject({ error: 'Invalid request' });
    expect(platform.requestsTo('/v3/memories/search/')).toHaveLength(1);
    expect(await available(app)).toBe(true);
  });
});

describe('platform backend that cannot be used', () => {
  it('answers 503 "Memory service is unavailable" when the Platform refuses the key', async () => {
    const platform = await startFakePlatform({ apiKey: TEST_MEM0_KEY });
    const { restore } = quietConsole();
    const app = await startApp(platform.url, { MEM0_API_KEY: WRONG_KEY });
    try {
      const res = await post(app, '/search', { user_id: 'alice', query: 'x' }).expect(503);
      expect(res.body).toEqual({ error: 'Service unavailable', details: 'Memory service is unavailable', status_code: 503 });
      expect(await available(app)).toBe(false);
      expect(app.logs.some((l) => l.includes('the Mem0 Platform refused MEM0_API_KEY'))).toBe(true);
      expect(platform.requests.every((r) => r.path === '/v1/ping/')).toBe(true);
    } finally {
      await app.close();
      await platform.close();
      restore();
    }
  });

  it('answers 503 "Memory service is unavailable" without MEM0_API_KEY', async () => {
    const app = await startApp('http://127.0.0.1:9', { MEM0_API_KEY: '' });
    try {
      await post(app, '/list', { user_id: 'alice' }).expect(503, {
        error: 'Service unavailable',
        details: 'Memory service is unavailable',
        status_code: 503,
      });
      expect(app.logs.some((l) => l.includes('MEM0_API_KEY is not set'))).toBe(true);
    } finally {
      await app.close();
    }
  });

  it('starts while the Platform is down, answers 503 "temporarily unavailable", and recovers once it is up', async () => {
    // Reserve a port, then free it: nothing listens there when the app starts.
    const probe = await startFakePlatform({ apiKey: TEST_MEM0_KEY });
    const port = probe.port;
    await probe.close();
    const { warn, restore } = quietConsole();
    const app = await startApp(`http://127.0.0.1:${port}`);
    let platform: FakePlatform | undefined;
    try {
      expect(await available(app)).toBe(false);
      await post(app, '/search', { user_id: 'alice', query: 'x' }).expect(503, {
        error: 'Service unavailable',
        details: 'Memory service is temporarily unavailable',
        status_code: 503,
      });

      platform = await startFakePlatform({ apiKey: TEST_MEM0_KEY, port });
      await waitForHealth(app, true, 5_000);
      warn.mockClear();
      await ok(app, '/remember', { user_id: 'alice', content: 'My kite is yellow' });
      expect((await ok(app, '/search', { user_id: 'alice', query: 'kite' })).memories[0]?.memory).toBe('My kite is yellow');
      // The client built during the outage was replaced: the new one has an identity, so
      // MemoryClient does not warn "No telemetry ID found" on every call.
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(warn).not.toHaveBeenCalled();
    } finally {
      await app.close();
      await platform?.close();
      restore();
    }
  });
});
