/**
 * Shared rate limits in the real Redis on 127.0.0.1:6379: several instances enforce one limit,
 * Redis being unreachable fails open (or closed, when configured) and is counted in /metrics, and
 * counting resumes when Redis is back. Outages are simulated with a TCP relay in front of Redis
 * that the test stops and starts; the real Redis is never touched. Each test uses its own key
 * prefix and deletes its keys afterwards.
 */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import Redis from 'ioredis';
import request from 'supertest';
import { loadConfig } from '../../src/config';
import type { RateLimitedEndpoint } from '../../src/config';
import { createRedisRateLimitStore, type RedisRateLimitStore } from '../../src/http/redis-store';
import type { Metrics } from '../../src/metrics';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { buildTestApp, captureLogger, type TestApp } from '../helpers/app';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

const REDIS_HOST = '127.0.0.1';
const REDIS_PORT = 6379;
const auth = `Bearer ${TEST_AUTH_TOKEN}`;

/** A TCP relay to the real Redis that can be cut (every connection dropped) and restored on the same port. */
class RedisGate {
  port = 0;
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();

  async open(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(REDIS_PORT, REDIS_HOST);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, REDIS_HOST, () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

let fake: FakeUpstream;
let admin: Redis;
let prefix: string;
const opened: Array<{ close(): Promise<void> }> = [];

beforeAll(async () => {
  fake = await startFakeUpstream();
  admin = new Redis(REDIS_PORT, REDIS_HOST, { lazyConnect: true });
  await admin.connect();
});
afterAll(async () => {
  await admin.quit();
  await fake.close();
});

beforeEach(() => {
  prefix = `mp:test:${randomUUID()}:`;
});
afterEach(async () => {
  // Close apps before their stores (reverse order of opening), then delete this test's keys.
  for (const o of opened.splice(0).reverse()) await o.close();
  const keys = await admin.keys(`${prefix}*`);
  if (keys.length > 0) await admin.del(...keys);
});

interface Instance {
  t: TestApp;
  store: RedisRateLimitStore;
  /** The store's own log lines. */
  storeLogs: string[];
}

/** One proxy instance whose limits count in Redis at `url`, with its store errors in its /metrics. */
async function instance(url: string, env: Record<string, string> = {}): Promise<Instance> {
  const fullEnv = {
    UPSTREAM_BASE_URL: fake.url,
    AUTH_TOKEN: TEST_AUTH_TOKEN,
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    REDIS_URL: url,
    RATE_LIMIT_REDIS_PREFIX: prefix,
    RATE_LIMIT_HEALTH: '5',
    RATE_LIMIT_V1: '5',
    ...env,
  };
  const config = loadConfig({ env: fullEnv });
  // The store is built before the app (the app builds its limiters at once), so its error
  // counter reaches the app's metrics once they exist.
  let metrics: Metrics | undefined;
  const { logger, lines: storeLogs } = captureLogger(config);
  const store = createRedisRateLimitStore({
    url,
    prefix: config.rateLimits.redisPrefix,
    logger,
    connectTimeoutMs: 500,
    onStoreError: (endpoint: RateLimitedEndpoint) => metrics?.rateLimitStoreErrors.inc({ endpoint }),
  });
  opened.push(store);
  const t = await buildTestApp(fullEnv, { rateLimitStore: store.storeFactory, failedLoginCounter: store.failureCounter });
  metrics = t.metrics;
  opened.push(t);
  return { t, store, storeLogs };
}

const health = (i: Instance) => request(i.t.app).get('/health').set('Authorization', auth);
const models = (i: Instance) => request(i.t.app).get('/v1/models').set('Authorization', auth);

async function storeErrors(i: Instance): Promise<number> {
  const res = await request(i.t.app).get('/metrics').set('Authorization', auth).expect(200);
  const lines = res.text.split('\n').filter((l) => l.startsWith('proxy_rate_limit_store_errors_total'));
  return lines.reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

async function waitUntil(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

const redisUrl = (port: number) => `redis://${REDIS_HOST}:${port}`;

it('lets two instances sharing Redis together allow exactly the configured limit', async () => {
  const a = await instance(redisUrl(REDIS_PORT));
  const b = await instance(redisUrl(REDIS_PORT));
  expect(await a.store.ready(5000)).toBe(true);
  expect(await b.store.ready(5000)).toBe(true);

  for (let i = 0; i < 3; i++) await health(a).expect(200);
  for (let i = 0; i < 2; i++) await health(b).expect(200);
  const refusedA = await health(a).expect(429);
  expect(refusedA.body).toEqual({ error: 'Rate limit exceeded', detail: '5 per minute' });
  expect(refusedA.headers['retry-after']).toBeDefined();
  await health(b).expect(429);

  // /v1 counts separately (its own key prefix), with the same shared budget.
  const ok = await models(b).expect(200);
  expect(ok.headers['x-ratelimit-limit']).toBe('5');
  expect(ok.headers['x-ratelimit-remaining']).toBe('4');
  for (let i = 0; i < 4; i++) await models(i % 2 === 0 ? a : b).expect(200);
  const refusedV1 = await models(a).expect(429);
  expect(refusedV1.body.error).toMatchObject({ type: 'rate_limit_error', code: 'rate_limit_exceeded' });

  const keys = await admin.keys(`${prefix}*`);
  expect(keys.some((k) => k.startsWith(`${prefix}health:`))).toBe(true);
  expect(keys.some((k) => k.startsWith(`${prefix}v1:`))).toBe(true);
});

it('counts refused credentials per address across instances: guesses spread over two stop at the shared limit', async () => {
  const a = await instance(redisUrl(REDIS_PORT), { RATE_LIMIT_FAILED_AUTH: '4', RATE_LIMIT_HEALTH: '1000' });
  const b = await instance(redisUrl(REDIS_PORT), { RATE_LIMIT_FAILED_AUTH: '4', RATE_LIMIT_HEALTH: '1000' });
  expect(await a.store.ready(5000)).toBe(true);
  expect(await b.store.ready(5000)).toBe(true);
  const guess = (i: Instance) => request(i.t.app).get('/health').set('Authorization', 'Bearer not-the-token');
  // Five guesses, alternating: each instance alone has seen at most three (< 4).
  for (const i of [a, b, a, b, a]) await guess(i).expect(401);
  const blocked = async (i: Instance): Promise<boolean> => {
    const until = Date.now() + 5000;
    while (Date.now() < until) {
      if ((await health(i)).status === 429) return true;
      await new Promise((r) => setTimeout(r, 25));
    }
    return false;
  };
  // b's second guess was the fourth in all, a's third the fifth: both know the shared total.
  expect(await blocked(a)).toBe(true);
  expect(await blocked(b)).toBe(true);
  const refused = await health(b).expect(429);
  expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
  const keys = await admin.keys(`${prefix}failed-auth:*`);
  expect(keys).toHaveLength(1);
  expect(Number(await admin.get(keys[0] ?? ''))).toBe(5);
  expect(await admin.pttl(keys[0] ?? '')).toBeGreaterThan(50_000);
});

it('serves requests without limits when Redis is unreachable, and counts the store errors', async () => {
  const down = await instance(redisUrl(1));
  for (let i = 0; i < 8; i++) {
    const res = await health(down).expect(200);
    expect(res.headers['x-ratelimit-limit']).toBeUndefined();
  }
  for (let i = 0; i < 7; i++) await models(down).expect(200);
  expect(await storeErrors(down)).toBeGreaterThanOrEqual(15);
  // Logged, but not one line per request (nor per reconnection attempt).
  const unavailable = down.storeLogs.filter((l) => l.includes('rate-limit store (Redis) unavailable'));
  expect(unavailable.length).toBeGreaterThanOrEqual(1);
  expect(unavailable.length).toBeLessThanOrEqual(2);
  expect(down.t.logs.filter((l) => l.includes('error from store')).length).toBeLessThanOrEqual(15);
});

it('refuses with 503 in each endpoint shape when RATE_LIMIT_FAIL_CLOSED=true and Redis is unreachable', async () => {
  const down = await instance(redisUrl(1), { RATE_LIMIT_FAIL_CLOSED: 'true' });
  const adminRes = await health(down).expect(503);
  expect(adminRes.body).toEqual({ error: 'Service unavailable', details: 'Rate limiting is temporarily unavailable', status_code: 503 });
  const v1Res = await models(down).expect(503);
  expect(v1Res.body).toEqual({
    error: { message: 'Rate limiting is temporarily unavailable', type: 'server_error', param: null, code: 'service_unavailable' },
  });
  expect(await storeErrors(down)).toBeGreaterThanOrEqual(2);
});

it('resumes counting when Redis comes back, also when it was down at start', async () => {
  const gate = new RedisGate();
  await gate.open();
  await gate.cut(); // the port is known; Redis is "down" before the instance starts
  const i = await instance(redisUrl(gate.port));
  expect(await i.store.ready(300)).toBe(false);

  // Down at start: the Lua scripts could not load; requests are served unlimited.
  for (let n = 0; n < 7; n++) await health(i).expect(200);
  const errorsWhileDown = await storeErrors(i);
  expect(errorsWhileDown).toBeGreaterThanOrEqual(7);

  // Back: the scripts load on the next request and the limit holds again.
  await gate.open();
  expect(await i.store.ready(10_000)).toBe(true);
  for (let n = 0; n < 5; n++) await health(i).expect(200);
  await health(i).expect(429);

  // Down again mid-window: served unlimited...
  await gate.cut();
  await waitUntil(() => i.store.client.status !== 'ready');
  await health(i).expect(200);
  expect(await storeErrors(i)).toBeGreaterThan(errorsWhileDown);

  // ...and back: the counter kept in Redis applies again.
  await gate.open();
  expect(await i.store.ready(10_000)).toBe(true);
  await health(i).expect(429);
  expect(i.storeLogs.join('')).toContain('rate-limit store (Redis) is back');
  await gate.cut();
});
