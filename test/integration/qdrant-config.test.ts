/**
 * The qdrant backend is configuration only here (no Qdrant server on this machine): with its
 * server unreachable the proxy must still start, pass /v1 through, and answer 503 on memory.
 */
import request from 'supertest';
import { startEngine } from '../helpers/engine';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { buildTestApp, type TestApp } from '../helpers/app';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

let fake: FakeUpstream;
let t: TestApp;
const auth = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  t = await buildTestApp(
    {
      UPSTREAM_BASE_URL: fake.url,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      MEMORY_BACKEND: 'qdrant',
      QDRANT_URL: 'http://127.0.0.1:1',
      EMBEDDING_DIMS: '64',
    },
    {
      memory: (config, logger) =>
        startEngine(config, logger, { tuning: { readTimeoutMs: 1000, writeTimeoutMs: 1000, attempts: 1, probeTimeoutMs: 500 } }),
    },
  );
});
afterAll(async () => {
  await t.close();
  await fake.close();
});

it('starts with Qdrant unreachable: /v1 passes through, memory answers 503, /health is degraded', async () => {
  await request(t.app).get('/v1/models').set(auth).expect(200);
  const res = await request(t.app).post('/search').set(auth).send({ user_id: 'u', query: 'q' }).expect(503);
  expect(res.body.error).toBe('Service unavailable');
  const health = await request(t.app).get('/health').set(auth).expect(200);
  expect(health.body).toMatchObject({ status: 'degraded', memory_service_available: false });
});
