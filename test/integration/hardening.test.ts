/**
 * Hostile or unlucky callers against a served proxy with the real memory engine (issue 16): each
 * case is one way a caller could lose someone's memories or stall the proxy for others.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import type { MemoryItem } from '../../src/memory/types';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { startMemoryProxy, type MemoryProxy } from '../helpers/memory-proxy';
import { TEST_AUTH_TOKEN } from '../helpers/secrets';

const auth = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
let fake: FakeUpstream;
let tmp: string;

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hardening-'));
});
afterAll(async () => {
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const startProxy = (env: Record<string, string> = {}): Promise<MemoryProxy> =>
  startMemoryProxy({ upstreamUrl: fake.url, dataDir: fs.mkdtempSync(path.join(tmp, 'data-')), env });

/** mem0's extraction calls to the fake (one per exchange saved). */
const extractions = (): number => fake.requestsTo('/v1/chat/completions').filter((r) => JSON.stringify(r.json).includes('Memory Extractor')).length;

async function waitFor<T>(probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 8000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function memoriesOf(p: MemoryProxy, userId: string): Promise<MemoryItem[]> {
  const res = await request(p.app.app).post('/list').set(auth).send({ user_id: userId }).expect(200);
  return (res.body as { memories: MemoryItem[] }).memories;
}

describe('idempotency of saves', () => {
  let p: MemoryProxy;
  beforeAll(async () => {
    p = await startProxy();
  });
  afterAll(() => p.close());
  beforeEach(() => fake.reset());

  it("saves two users' exchanges that reuse one X-Request-ID under one key, and a replay of either once", async () => {
    const chat = (user: string, text: string) =>
      p.client.chat.completions.create({ model: 'm', user, messages: [{ role: 'user', content: text }] }, { headers: { 'X-Request-ID': 'shared-request-1' } });
    await chat('ann', 'My cat is called Pixel.');
    await chat('ben', 'My dog is called Rex.');
    await chat('ann', 'My cat is called Pixel.');
    await waitFor(() => (p.app.queue?.depth() === 0 && extractions() >= 2 ? true : undefined));
    // Give a wrongly accepted replay time to be saved too.
    await new Promise((r) => setTimeout(r, 300));
    expect(extractions()).toBe(2);
    expect((await memoriesOf(p, 'ann')).map((m) => m.memory).join(' ')).toMatch(/Pixel/);
    expect((await memoriesOf(p, 'ben')).map((m) => m.memory).join(' ')).toMatch(/Rex/);
  });
});
