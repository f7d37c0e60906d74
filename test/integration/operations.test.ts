/** Health, metrics, rate limits and the admin API's error shapes, before any memory engine. */
import http from 'node:http';
import OpenAI from 'openai';
import request from 'supertest';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { buildTestApp, serve, type Served, type TestApp } from '../helpers/app';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

let fake: FakeUpstream;
beforeAll(async () => {
  fake = await startFakeUpstream();
});
afterAll(() => fake.close());

const auth = `Bearer ${TEST_AUTH_TOKEN}`;

describe('with AUTH_TOKEN and no memory engine', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await buildTestApp({
      UPSTREAM_BASE_URL: fake.url,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      RATE_LIMIT_HEALTH: '1000',
    });
  });
  afterAll(() => t.close());

  it('reports degraded health while memory is unavailable, in the contract shape', async () => {
    const res = await request(t.app).get('/health').set('Authorization', auth).expect(200);
    expect(res.body).toEqual({
      status: 'degraded',
      memory_service_available: false,
      timestamp: expect.any(String),
      version: expect.any(String),
    });
    expect(new Date(res.body.timestamp).toISOString()).toBe(res.body.timestamp);
  });

  it.each(['/search', '/list', '/remember', '/forget'])('answers 503 "Memory service is unavailable" on %s', async (path) => {
    const body =
      path === '/search' ? { user_id: 'u', query: 'q' } : path === '/remember' ? { user_id: 'u', content: 'c' } : { user_id: 'u' };
    const res = await request(t.app).post(path).set('Authorization', auth).send(body).expect(503);
    expect(res.body).toEqual({ error: 'Service unavailable', details: 'Memory service is unavailable', status_code: 503 });
  });

  it('answers 401 in the admin shape without a token', async () => {
    const res = await request(t.app).post('/search').send({ user_id: 'u', query: 'q' }).expect(401);
    expect(res.body).toEqual({ error: 'Unauthorized', details: 'No authorization header provided' });
  });

  it('answers 415 for a non-JSON admin body and 404 for an unknown path', async () => {
    await request(t.app).post('/search').set('Authorization', auth).set('Content-Type', 'text/plain').send('user_id=u').expect(415);
    const res = await request(t.app).get('/nope').set('Authorization', auth).expect(404);
    expect(res.body).toEqual({ error: 'Not found', details: 'No such endpoint' });
  });

  it('answers 400 with details for an invalid admin body', async () => {
    const res = await request(t.app).post('/search').set('Authorization', auth).send({ user_id: 'u', query: 5, extra: true }).expect(400);
    expect(res.body.error).toBe('Invalid request');
    expect(JSON.stringify(res.body.details)).toContain('query');
    const notJson = await request(t.app)
      .post('/search')
      .set('Authorization', auth)
      .set('Content-Type', 'application/json')
      .send('{bad')
      .expect(400);
    expect(notJson.body).toEqual({ error: 'Invalid request', details: 'Request body is not valid JSON' });
  });

  it('exposes Prometheus metrics with requests by route and status', async () => {
    await request(t.app).get('/health').expect(401);
    const res = await request(t.app).get('/metrics').set('Authorization', auth).expect(200);
    expect(res.headers['content-type']).toContain('text/plain');
    expect(res.text).toMatch(/proxy_http_requests_total\{api="proxy",route="\/health",method="GET",status="401"\} \d+/);
    expect(res.text).toMatch(/proxy_http_requests_total\{api="proxy",route="\/search",method="POST",status="503"\} \d+/);
    expect(res.text).toContain('proxy_memory_service_available 0');
    expect(res.text).toContain('proxy_http_request_duration_seconds_bucket');
  });
});

describe('rate limits', () => {
  let t: TestApp;
  let served: Served;
  beforeEach(async () => {
    t = await buildTestApp({
      UPSTREAM_BASE_URL: fake.url,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      RATE_LIMIT_V1: '3',
    });
    served = await serve(t.app);
  });
  afterEach(async () => {
    await served.close();
    await t.close();
  });

  it('returns 429 with the contract body once the caller exceeds 30 searches a minute', async () => {
    const before = Math.floor(Date.now() / 1000);
    for (let i = 0; i < 30; i += 1) {
      const ok = await request(t.app).post('/search').set('Authorization', auth).send({ user_id: 'u', query: 'q' });
      expect(ok.status).toBe(503);
      expect(ok.headers['x-ratelimit-limit']).toBe('30');
      expect(ok.headers['x-ratelimit-remaining']).toBe(String(29 - i));
      // The window opens at the first request and the header is rounded up to a whole second.
      const reset = Number(ok.headers['x-ratelimit-reset']);
      expect(reset).toBeGreaterThanOrEqual(before + 60);
      expect(reset).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000) + 60);
    }
    const limited = await request(t.app).post('/search').set('Authorization', auth).send({ user_id: 'u', query: 'q' }).expect(429);
    expect(limited.body).toEqual({ error: 'Rate limit exceeded', detail: '30 per minute' });
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0);
    expect(Number(limited.headers['retry-after'])).toBeLessThanOrEqual(60);
    // Other endpoints count separately.
    await request(t.app).post('/list').set('Authorization', auth).send({ user_id: 'u' }).expect(503);
    const metrics = await request(t.app).get('/metrics').set('Authorization', auth);
    expect(metrics.text).toMatch(/proxy_rate_limited_total\{endpoint="search"\} 1/);
    expect(metrics.text).toMatch(/proxy_http_requests_total\{api="proxy",route="\/search",method="POST",status="429"\} 1/);
  });

  it('raises RateLimitError in the OpenAI SDK past RATE_LIMIT_V1', async () => {
    const client = new OpenAI({ apiKey: TEST_AUTH_TOKEN, baseURL: `${served.url}/v1`, maxRetries: 0 });
    for (let i = 0; i < 3; i += 1) await client.models.list();
    const err = await client.models.list().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    const res = await request(t.app).get('/v1/models').set('Authorization', auth).expect(429);
    expect(res.body.error).toEqual({
      message: 'Rate limit exceeded: 3 per minute',
      type: 'rate_limit_error',
      param: null,
      code: 'rate_limit_exceeded',
    });
    expect(res.headers['retry-after']).toBeDefined();
  });
});

describe('development mode (no AUTH_TOKEN)', () => {
  let t: TestApp;
  let served: Served;
  beforeAll(async () => {
    t = await buildTestApp({ UPSTREAM_BASE_URL: fake.url, RATE_LIMIT_HEALTH: '2' });
    served = await serve(t.app);
  });
  afterAll(async () => {
    await served.close();
    await t.close();
  });

  const get = (localAddress: string, headers: Record<string, string> = {}): Promise<number> =>
    new Promise((resolve, reject) => {
      const url = new URL(served.url);
      http
        .get({ host: url.hostname, port: url.port, path: '/health', localAddress, headers, agent: false }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
        .on('error', reject);
    });

  it('limits per client address, and X-Forwarded-For does not dodge the limit', async () => {
    expect(await get('127.0.0.1')).toBe(200);
    expect(await get('127.0.0.1', { 'x-forwarded-for': '10.1.1.1' })).toBe(200);
    expect(await get('127.0.0.1', { 'x-forwarded-for': '10.2.2.2' })).toBe(429);
    // Another address has its own budget.
    expect(await get('127.0.0.2')).toBe(200);
  });

  it("forwards the caller's own Authorization upstream (bring your own key)", async () => {
    fake.reset();
    const client = new OpenAI({ apiKey: 'sk-callers-own-key', baseURL: `${served.url}/v1`, maxRetries: 0 });
    await client.models.list();
    expect(fake.requestsTo('/v1/models')[0]?.headers.authorization).toBe('Bearer sk-callers-own-key');
  });
});
