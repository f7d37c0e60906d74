/**
 * The pgvector backend through a database outage, without restarting the proxy: PGlite (with
 * pgvector, over its socket) stops listening and drops every connection while chats flow; the
 * chats are answered without memories; their exchanges, which the save queue (in the same
 * database, the default) cannot take, are kept in DATA_DIR; once the database listens again the
 * next search finds the old memories and every exchange is moved in and saved, once.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import { startEngine } from '../helpers/engine';
import type { MemoryItem } from '../../src/memory/types';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { buildTestApp, type TestApp } from '../helpers/app';
import { GENEROUS_LIMITS } from '../helpers/memory-proxy';
import { startPgliteServer, type PgliteServer } from '../helpers/pglite-server';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';
import { waitFor } from '../helpers/wait';

jest.setTimeout(90_000);

const auth = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
let fake: FakeUpstream;
let pglite: PgliteServer;
let tmp: string;
let app: TestApp;

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  pglite = await startPgliteServer();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgvector-outage-'));
  app = await buildTestApp(
    {
      UPSTREAM_BASE_URL: fake.url,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      DATA_DIR: path.join(tmp, 'data'),
      EMBEDDING_DIMS: '64',
      MEMORY_BACKEND: 'pgvector',
      DATABASE_URL: pglite.url,
      ...GENEROUS_LIMITS,
    },
    {
      memory: (config, logger) =>
        startEngine(config, logger, {
          tuning: { readTimeoutMs: 3000, writeTimeoutMs: 3000, baseDelayMs: 20, maxDelayMs: 100, unhealthyTtlMs: 200, healthyTtlMs: 200 },
        }),
      queueOptions: { baseDelayMs: 100, maxDelayMs: 500, pollMs: 100 },
    },
  );
}, 90_000);
afterAll(async () => {
  await app?.close();
  await pglite?.close();
  await fake?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const memoriesOf = async (userId: string): Promise<MemoryItem[]> =>
  ((await request(app.app).post('/list').set(auth).send({ user_id: userId, limit: 1000 }).expect(200)).body as { memories: MemoryItem[] })
    .memories;

it('answers chats while the database is down, and searches and saves again once it is back, with no restart', async () => {
  await request(app.app).post('/remember').set(auth).send({ user_id: 'out', content: 'Out keeps a red bicycle', infer: false }).expect(200);
  await pglite.pause();

  const words = Array.from({ length: 3 }, () => `w${crypto.randomBytes(4).toString('hex')}`);
  for (const word of words) {
    const started = Date.now();
    const res = await request(app.app)
      .post('/v1/chat/completions')
      .set({ ...auth, 'X-Mem0-User-Id': 'out' })
      .send({ model: 'gpt-test', messages: [{ role: 'user', content: `My code word is ${word}. What colour is my bicycle?` }] })
      .expect(200);
    expect(res.headers['x-mem0-memories']).toBe('0');
    // Fails open within the memory search budget, not after a hang.
    expect(Date.now() - started).toBeLessThan(app.config.memory.searchTimeoutMs + 1500);
  }
  await request(app.app).post('/search').set(auth).send({ user_id: 'out', query: 'bicycle' }).expect(503);
  // Nothing lost: the queue's database is down too, so the exchanges wait in DATA_DIR.
  const health = (await request(app.app).get('/health').set(auth).expect(200)).body as {
    save_queue: { depth: number; enqueue_failures: number };
  };
  expect(health.save_queue).toMatchObject({ depth: words.length, enqueue_failures: 0 });

  await pglite.resume();
  const found = await waitFor(
    async () => {
      const res = await request(app.app).post('/search').set(auth).send({ user_id: 'out', query: 'What colour is the bicycle?' });
      return res.status === 200 ? (res.body as { memories: MemoryItem[] }).memories : undefined;
    },
    20_000,
    'a search to succeed after the database is back',
  );
  expect(found.map((m) => m.memory)).toContain('Out keeps a red bicycle');
  const saved = await waitFor(
    async () => {
      const texts = (await memoriesOf('out')).map((m) => m.memory);
      return words.every((w) => texts.some((t) => t.includes(w))) ? texts : undefined;
    },
    30_000,
    'the queued exchanges to be saved',
  );
  for (const word of words) expect(saved.filter((t) => t.includes(word))).toHaveLength(1);
});
