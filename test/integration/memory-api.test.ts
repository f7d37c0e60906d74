/**
 * The memory admin API end to end with the default backend: HTTP -> admin routes ->
 * Mem0MemoryService -> mem0ai's real `Memory` -> EmbeddedVectorStore in a temp DATA_DIR, with the
 * fake OpenAI upstream answering mem0's extraction call and embeddings. The scenarios every
 * backend shares are in test/helpers/memory-api-suite.ts; here, what the in-process engine lets a
 * test reach: the failure policy (outages, timeouts, recovery, with short deadlines passed in
 * process), and an engine that was never initialised.
 */
import request from 'supertest';
import { startEngine } from '../helpers/engine';
import type { GuardTuning } from '../../src/memory/resilience';
import { buildTestApp, type TestApp } from '../helpers/app';
import {
  describeMemoryApi,
  health,
  list,
  memoryApiFixture,
  MEMORY_API_LIMITS,
  post,
  remember,
  search,
  texts,
  type MemoryApiInstance,
} from '../helpers/memory-api-suite';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

const fixture = memoryApiFixture('memory-api-test-');

async function startApp(
  dataDir: string,
  options: { env?: Record<string, string>; tuning?: Partial<GuardTuning>; auth?: boolean } = {},
): Promise<TestApp> {
  const env: Record<string, string> = {
    UPSTREAM_BASE_URL: fixture.fake.url,
    DATA_DIR: dataDir,
    EMBEDDING_DIMS: '64',
    ...MEMORY_API_LIMITS,
    ...(options.auth === false ? {} : { AUTH_TOKEN: TEST_AUTH_TOKEN, OPENAI_API_KEY: TEST_OPENAI_KEY }),
    ...options.env,
  };
  return buildTestApp(env, { memory: (config, logger) => startEngine(config, logger, { tuning: options.tuning }) });
}

/** A test app as the shared scenarios see an instance. */
function instance(app: TestApp, dataDir: string): MemoryApiInstance {
  return { app: app.app, dataDir, logs: () => app.logs, close: async () => void (await app.close()) };
}

describeMemoryApi(fixture, {
  kind: 'embedded',
  start: async (dataDir = fixture.freshDataDir()) => instance(await startApp(dataDir), dataDir),
});

/** Polls /health until it reports `available`, failing after `timeoutMs`. */
async function waitForHealth(app: TestApp, available: boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if ((await health(app)).memory_service_available === available) return;
    if (Date.now() > deadline) throw new Error(`/health did not report memory_service_available=${available} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('failure policy', () => {
  let app: TestApp;
  const tuning: Partial<GuardTuning> = { readTimeoutMs: 1_000, baseDelayMs: 20, unhealthyTtlMs: 300, healthyTtlMs: 300 };

  let consoleError: jest.SpyInstance;

  beforeAll(async () => {
    // mem0ai prints every failed LLM extraction to the console itself; keep the output readable.
    consoleError = jest.spyOn(console, 'error').mockImplementation(() => undefined);
    app = await startApp(fixture.freshDataDir(), { tuning });
  });
  afterAll(async () => {
    await app.close();
    consoleError.mockRestore();
  });
  beforeEach(() => fixture.fake.reset());

  it('answers 503 "temporarily unavailable" during an embeddings outage, shows it in /health, and recovers by itself', async () => {
    await remember(app, { user_id: 'olga', content: 'My plant is a fern' });
    fixture.fake.reset();
    fixture.fake.failNext(500, { times: Infinity, path: '/v1/embeddings' });

    const res = await post(app, '/search', { user_id: 'olga', query: 'plant' }).expect(503);
    expect(res.body).toEqual({ error: 'Service unavailable', details: 'Memory service is temporarily unavailable', status_code: 503 });
    // Three attempts, each a single request: mem0's own SDK retries are turned off.
    expect(fixture.fake.requestsTo('/v1/embeddings')).toHaveLength(3);
    await post(app, '/remember', { user_id: 'olga', content: 'My tree is an oak' }).expect(503);
    expect(await health(app)).toMatchObject({ status: 'degraded', memory_service_available: false });

    // Listing needs no embedder: it still works, and does not claim the engine is healthy.
    expect((await list(app, { user_id: 'olga' })).count).toBe(1);
    expect((await health(app)).memory_service_available).toBe(false);

    fixture.fake.clearFaults();
    await waitForHealth(app, true, 5_000);
    expect(await health(app)).toMatchObject({ status: 'healthy', memory_service_available: true });
    expect((await search(app, { user_id: 'olga', query: 'plant' })).memories[0]?.memory).toBe('My plant is a fern');
  });

  it('retries a transient LLM failure and succeeds', async () => {
    fixture.fake.failNext(503, { times: 1, path: '/v1/chat/completions' });
    const added = await remember(app, { user_id: 'paul', content: 'My car is blue' });
    expect(texts(added.memories)).toEqual(['My car is blue']);
    expect(fixture.fake.requestsTo('/v1/chat/completions')).toHaveLength(2);
  });

  it('does not retry a request the LLM refuses (401), and reports the engine unavailable', async () => {
    fixture.fake.failNext(401, { times: 1, path: '/v1/chat/completions' });
    await post(app, '/remember', { user_id: 'paul', content: 'My boat is red' }).expect(503);
    expect(fixture.fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
    await waitForHealth(app, true, 5_000);
  });

  it('gives up on an embedder that hangs, within the per-attempt deadline', async () => {
    fixture.fake.setNext({ kind: 'hang' }, { times: 3, path: '/v1/embeddings' });
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
    const app = await startApp(fixture.freshDataDir(), { auth: false });
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
