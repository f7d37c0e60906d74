/**
 * One embedding round trip per recall and per save's entity batch, counted at the fake upstream,
 * with the real mem0 engine on the embedded store. The same engine with batching turned off is
 * the control: it makes mem0's own two requests, and its results and scores are the ones the
 * batched engine must give.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Config, loadConfig } from '../../src/config';
import { createMem0Service, WARM_UP_QUERY } from '../../src/memory/mem0/build';
import { mem0NounPhrases } from '../../src/memory/mem0/load';
import type { MemoryService } from '../../src/memory/types';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { captureLogger } from '../helpers/app';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

const EMBEDDINGS = '/v1/embeddings';

let fake: FakeUpstream;
let dataDir: string;
let config: Config;
let batched: MemoryService;
let control: MemoryService;

/** The texts of one recorded embeddings request. */
function inputsOf(body: Buffer): string[] {
  const parsed = JSON.parse(body.toString()) as { input: string | string[] };
  return Array.isArray(parsed.input) ? parsed.input : [parsed.input];
}

async function embeddingRequestsDuring(fn: () => Promise<unknown>): Promise<string[][]> {
  const before = fake.requestsTo(EMBEDDINGS).length;
  await fn();
  return fake
    .requestsTo(EMBEDDINGS)
    .slice(before)
    .map((r) => inputsOf(r.body));
}

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'round-trips-'));
  config = loadConfig({
    env: {
      UPSTREAM_BASE_URL: fake.url,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      DATA_DIR: dataDir,
      EMBEDDING_DIMS: '64',
    },
  });
  const { logger } = captureLogger(config);
  batched = await createMem0Service(config, logger);
  control = await createMem0Service(config, logger, { batchEmbeddings: false });
});

afterAll(async () => {
  await batched?.close();
  await control?.close();
  await fake?.close();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('warm-up at start', () => {
  it('each engine ran one warm-up search (one embedding request) before it was handed out; none when turned off', async () => {
    const warmUps = (): number => fake.requestsTo(EMBEDDINGS).filter((r) => inputsOf(r.body)[0] === WARM_UP_QUERY).length;
    // beforeAll started two engines; the control one runs mem0's own search (no recall to warm).
    expect(warmUps()).toBe(1);
    const cold = await createMem0Service(config, captureLogger(config).logger, { warmUp: false });
    try {
      expect(warmUps()).toBe(1);
    } finally {
      await cold.close();
    }
  });
});

describe('embedding round trips', () => {
  const scope = { userId: 'alice' };

  it('a save sends the extracted memories and their entities in one request (mem0 alone: two)', async () => {
    const messages = [{ role: 'user' as const, content: 'My sister Maria Lopez lives in Buenos Aires. I work at Acme Robotics.' }];
    const requests = await embeddingRequestsDuring(() => batched.add(scope, { messages, infer: true }));
    // 1: the exchange, to find existing memories; 2: memory texts + entities together.
    expect(requests).toHaveLength(2);
    const batch = requests[1] ?? [];
    expect(batch).toEqual(
      expect.arrayContaining(['My sister Maria Lopez lives in Buenos Aires', 'Maria Lopez', 'Buenos Aires', 'Acme Robotics']),
    );

    const controlRequests = await embeddingRequestsDuring(() =>
      control.add({ userId: 'bob' }, { messages: [{ role: 'user', content: 'My brother Tom Baker lives in Cape Town.' }], infer: true }),
    );
    expect(controlRequests).toHaveLength(3);
  });

  it('a recall sends the query and its entities in one request, and ranks and scores exactly as mem0 does alone', async () => {
    const query = 'Where does Maria Lopez live these days?';
    let got: Awaited<ReturnType<MemoryService['search']>> = [];
    const requests = await embeddingRequestsDuring(async () => {
      got = await batched.search(scope, query, { limit: 5 });
    });
    expect(requests).toHaveLength(1);
    expect(requests[0]).toEqual([query, 'Maria Lopez']);
    // Through the engine's own embedder (http-embedder.ts): vectors as base64, not JSON numbers.
    const sent = JSON.parse(fake.requestsTo(EMBEDDINGS).at(-1)?.body.toString() ?? '{}') as { encoding_format?: string };
    expect(sent.encoding_format).toBe('base64');

    let expected: typeof got = [];
    const controlRequests = await embeddingRequestsDuring(async () => {
      expected = await control.search(scope, query, { limit: 5 });
    });
    expect(controlRequests).toEqual([[query], ['Maria Lopez']]);
    expect(got.length).toBeGreaterThan(0);
    expect(got.map((m) => [m.id, m.score])).toEqual(expected.map((m) => [m.id, m.score]));
    // The entity boost is in the score: the memory naming Maria Lopez ranks first.
    expect(got[0]?.memory).toContain('Maria Lopez');
  });

  it('a query without entities makes one request too, and concurrent recalls never mix their vectors', async () => {
    const queries = ['what about my sister', 'Acme Robotics office', 'Buenos Aires weather', 'my job'];
    const requests = await embeddingRequestsDuring(() => Promise.all(queries.map((q) => batched.search(scope, q, { limit: 3 }))));
    expect(requests).toHaveLength(queries.length);
    const controls = await Promise.all(queries.map((q) => control.search(scope, q, { limit: 3 })));
    const results = await Promise.all(queries.map((q) => batched.search(scope, q, { limit: 3 })));
    expect(results.map((r) => r.map((m) => [m.id, m.score]))).toEqual(controls.map((r) => r.map((m) => [m.id, m.score])));
  });

  it("a save's and a recall's noun phrases are parsed once, on the second thread, not on the engine's", async () => {
    const nouns = mem0NounPhrases();
    expect(nouns).toBeDefined();
    if (!nouns) return;
    // The thread starts on the first prefetch that could use it (earlier saves in this file made one).
    const end = Date.now() + 15_000;
    while (!nouns.threadReady && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(nouns.threadReady).toBe(true);
    const before = { ...nouns.counts };
    const user = { userId: 'hana' };
    const messages = [
      { role: 'user' as const, content: 'My cousin Kenji Sato teaches jazz piano in Osaka. I drive his red Vespa to Kyoto.' },
    ];
    const requests = await embeddingRequestsDuring(() => batched.add(user, { messages, infer: true }));
    // The extracted memories (the fake splits the message into sentences), parsed on the thread;
    // the oracle's prediction and mem0's own extraction then find them: no parse on this thread.
    const memories = (requests[1] ?? []).filter((text) => text.startsWith('My cousin') || text.startsWith('I drive'));
    expect(memories).toHaveLength(2);
    expect(requests[1]).toEqual(expect.arrayContaining(['Kenji Sato', 'Osaka']));
    expect(nouns.counts.parsedThere - before.parsedThere).toBe(memories.length);
    expect(nouns.counts.parsedHere).toBe(before.parsedHere);
    expect(nouns.counts.hits - before.hits).toBeGreaterThanOrEqual(2 * memories.length);

    const query = 'Which instrument does Kenji Sato teach?';
    const got = await batched.search(user, query, { limit: 3 });
    expect(nouns.counts.parsedThere - before.parsedThere).toBe(memories.length + 1);
    expect(nouns.counts.parsedHere).toBe(before.parsedHere);
    const expected = await control.search(user, query, { limit: 3 });
    expect(got.map((m) => [m.id, m.score])).toEqual(expected.map((m) => [m.id, m.score]));
    expect(got[0]?.memory).toContain('Kenji Sato');
  });

  it('ranks and scores exactly as mem0 does across many memories, entities, thresholds, limits and an expired memory', async () => {
    const user = { userId: 'gail' };
    const facts = [
      'My manager Priya Natarajan runs the Lisbon office. I meet Priya every Monday.',
      'My favourite food is ramen. I cook ramen on Fridays. My brother Ken prefers sushi.',
      'I play chess at the Oxford Chess Club. My rating is 1800. I also like hiking in Wales.',
      'My daughter Ana studies physics at Porto University. I visit Porto every spring.',
    ];
    for (const fact of facts) await batched.add(user, { messages: [{ role: 'user', content: fact }], infer: true });
    await batched.add(user, {
      messages: [{ role: 'user', content: 'My old phone is a Nokia.' }],
      infer: false,
      metadata: { expiration_date: '2020-01-01' },
    });
    const queries: Array<[string, { limit: number; threshold?: number }]> = [
      ['Who runs the Lisbon office?', { limit: 5 }],
      ['What does Priya Natarajan do on Mondays?', { limit: 3 }],
      ['ramen or sushi for dinner', { limit: 10 }],
      ['chess club in Oxford', { limit: 10, threshold: 0.3 }],
      ['Tell me about Ana and Porto University', { limit: 2 }],
      ['Nokia phone', { limit: 10 }],
      ['hello there', { limit: 10 }],
    ];
    for (const [query, options] of queries) {
      const ours = await batched.search(user, query, options);
      const theirs = await control.search(user, query, options);
      expect({ query, ranked: ours.map((m) => [m.memory, m.score]) }).toEqual({ query, ranked: theirs.map((m) => [m.memory, m.score]) });
      expect(ours.map((m) => m.metadata)).toEqual(theirs.map((m) => m.metadata));
    }
    expect((await batched.search(user, 'Nokia phone', { limit: 10 })).map((m) => m.memory)).not.toContain('My old phone is a Nokia.');
  });
});
