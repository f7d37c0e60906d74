/**
 * The memory engine in its worker thread, seen from the serving thread: a chat's exchange saved
 * by the worker is found by the next recall, typed errors cross the thread boundary, and a thread
 * that dies fails its calls as "temporarily unavailable" (so the save queue keeps them) and comes
 * back by itself.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { threadId } from 'node:worker_threads';
import request from 'supertest';
import { NotFoundError } from '../../src/errors';
import { WorkerMemoryService } from '../../src/memory/worker/worker-service';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { startMemoryProxy, type MemoryProxy } from '../helpers/memory-proxy';
import { TEST_AUTH_TOKEN } from '../helpers/secrets';

const auth = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
let fake: FakeUpstream;
let tmp: string;
let proxy: MemoryProxy;

function engine(): WorkerMemoryService {
  const memory = proxy.app.memory;
  if (!(memory instanceof WorkerMemoryService)) throw new Error('the memory service does not run in a worker thread');
  return memory;
}

async function search(user: string, query: string): Promise<Array<{ memory: string }>> {
  const res = await request(proxy.app.app).post('/search').set(auth).send({ user_id: user, query }).expect(200);
  return (res.body as { memories: Array<{ memory: string }> }).memories;
}

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'engine-thread-'));
  // From the sources through tsx, as `npm run dev` runs it (the other suites use the transpiled copy).
  proxy = await startMemoryProxy({ upstreamUrl: fake.url, dataDir: tmp, engineFromSource: true });
});

afterAll(async () => {
  await proxy?.close();
  await fake?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('memory engine thread', () => {
  it('runs the engine off the serving thread, and a recall sees the exchange the worker saved', async () => {
    expect(engine().threadId).not.toBe(threadId);
    await proxy.client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'My dog Rex loves the beach.' }],
      user: 'fran',
    });
    await proxy.app.queue?.drained(10_000);
    expect((await search('fran', 'Rex the dog')).map((m) => m.memory)).toEqual(['My dog Rex loves the beach']);
    // The next chat gets it injected.
    await proxy.client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'What does Rex love?' }],
      user: 'fran',
    });
    const forwarded = fake.requestsTo('/v1/chat/completions').filter((r) => !JSON.stringify(r.json).includes('Memory Extractor'));
    expect(JSON.stringify(forwarded.at(-1)?.json)).toContain('My dog Rex loves the beach');
  });

  it('brings typed errors across the thread boundary', async () => {
    await expect(engine().delete({ userId: 'fran' }, '00000000-0000-4000-8000-000000000000')).rejects.toBeInstanceOf(NotFoundError);
    await request(proxy.app.app)
      .post('/forget')
      .set(auth)
      .send({ user_id: 'fran', memory_id: '00000000-0000-4000-8000-000000000000' })
      .expect(404);
    await request(proxy.app.app).post('/search').set(auth).send({ user_id: 'a b', query: 'x' }).expect(400);
  });

  it('answers 503 while a crashed engine thread is down, then starts it again and serves the same memories', async () => {
    const before = engine().threadId;
    await engine().crashThreadForTest();
    const during = await request(proxy.app.app).post('/search').set(auth).send({ user_id: 'fran', query: 'Rex' });
    expect(during.status).toBe(503);
    expect(during.body).toMatchObject({ details: 'Memory service is temporarily unavailable' });
    // A chat meanwhile is answered (fail open) and its exchange waits in the durable queue.
    const chat = await proxy.client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'My cat Tom sleeps all day.' }],
      user: 'fran',
    });
    expect(chat.choices[0]?.message.content).toContain('Fake reply');

    const deadline = Date.now() + 15_000;
    while (!(await engine().available()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(engine().threadId).not.toBe(before);
    await proxy.app.queue?.drained(15_000);
    const memories = (await search('fran', 'Rex and Tom')).map((m) => m.memory);
    expect(memories).toEqual(expect.arrayContaining(['My dog Rex loves the beach', 'My cat Tom sleeps all day']));
  });
});
