/**
 * Memory-augmented chat end to end: the official `openai` client → the proxy → the fake upstream,
 * with the real memory engine (mem0 on the embedded store) using the same fake for extraction and
 * embeddings. Recall and injection, the memory modes, capture of streamed and non-streamed replies,
 * the durable save queue across outages and restarts, aborts, and the search budget.
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import request from 'supertest';
import type { MemoryItem, MemoryService } from '../../src/memory/types';
import { startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../fakes/openai-upstream';
import { startMemoryProxy, startSharedEngine, type MemoryProxy, type MemoryProxyOptions, type SharedEngine } from '../helpers/memory-proxy';
import { TEST_AUTH_TOKEN } from '../helpers/secrets';
import { memoriesOf, waitFor } from '../helpers/wait';

const auth = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
let fake: FakeUpstream;
let tmp: string;
/** The engine the proxies of this file share (each test has its own users), unless a test needs its own. */
let engine: SharedEngine;

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-memory-'));
  engine = await startSharedEngine(fake.url);
});
afterAll(async () => {
  await engine.close();
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

type Proxy = MemoryProxy;

function startProxy(options: Omit<MemoryProxyOptions, 'upstreamUrl' | 'engine'> & { ownEngine?: boolean } = {}): Promise<Proxy> {
  const { ownEngine, ...rest } = options;
  return startMemoryProxy({
    upstreamUrl: fake.url,
    dataDir: options.dataDir ?? fs.mkdtempSync(path.join(tmp, 'data-')),
    ...(ownEngine ? {} : { engine }),
    ...rest,
  });
}

/** The chat requests the proxy forwarded (not the memory engine's own extraction calls). */
function forwardedChats(): RecordedRequest[] {
  return fake.requestsTo('/v1/chat/completions').filter((r) => !JSON.stringify(r.json).includes('Memory Extractor'));
}

async function waitForMemories(p: Proxy, userId: string, atLeast = 1): Promise<MemoryItem[]> {
  return waitFor(async () => {
    const items = await memoriesOf(p, userId);
    return items.length >= atLeast ? items : undefined;
  });
}

async function rememberFor(p: Proxy, userId: string, content: string): Promise<void> {
  await request(p.app.app).post('/remember').set(auth).send({ user_id: userId, content, infer: false }).expect(200);
}

describe('recall and injection', () => {
  let p: Proxy;
  beforeAll(async () => {
    p = await startProxy();
    await rememberFor(p, 'alice', 'Alice is allergic to peanuts');
  });
  afterAll(() => p.close());
  beforeEach(() => fake.reset());

  const history = [
    { role: 'system' as const, content: 'You are a cooking assistant.' },
    { role: 'user' as const, content: 'Hi there' },
    { role: 'assistant' as const, content: 'Hello! How can I help?' },
    { role: 'user' as const, content: 'Can Alice eat peanuts in a salad, being allergic?' },
  ];

  it("puts the user's memory in one block just before the last user message, every other message unchanged", async () => {
    const { data, response } = await p.client.chat.completions
      .create(
        {
          model: 'gpt-4o-mini',
          messages: history,
          temperature: 0.3,
          metadata: { tag: 'x' },
        } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming,
        { headers: { 'X-Mem0-User-Id': 'alice' } },
      )
      .withResponse();
    expect(data.choices[0]?.message.content).toBeTruthy();
    expect(response.headers.get('x-mem0-memories')).toBe('1');
    const [sent] = forwardedChats();
    const body = sent?.json as { messages: Array<{ role: string; content: string }>; temperature: number; metadata: unknown };
    expect(body.messages).toHaveLength(5);
    expect(body.messages.slice(0, 3)).toEqual(history.slice(0, 3));
    expect(body.messages[3]?.role).toBe('system');
    expect(body.messages[3]?.content).toContain('Alice is allergic to peanuts');
    expect(body.messages[3]?.content).toMatch(/not instructions/i);
    expect(body.messages[4]).toEqual(history[3]);
    const metrics = await request(p.app.app).get('/metrics').set(auth);
    expect(metrics.text).toMatch(/proxy_memories_injected_sum \d+/);
    expect(metrics.text).not.toMatch(/proxy_memories_injected_sum 0\n/);
    expect(body.temperature).toBe(0.3);
    expect(body.metadata).toEqual({ tag: 'x' });
    // X-Mem0-* headers stay with the proxy.
    expect(Object.keys(sent?.headers ?? {}).filter((h) => h.startsWith('x-mem0'))).toEqual([]);
  });

  it('keeps the prompt prefix byte-identical across turns', async () => {
    await p.client.chat.completions.create({ model: 'm', messages: history, user: 'alice' });
    const next = [
      ...history,
      { role: 'assistant' as const, content: 'Better not.' },
      { role: 'user' as const, content: 'What about peanut butter?' },
    ];
    await p.client.chat.completions.create({ model: 'm', messages: next, user: 'alice' });
    const [first, second] = forwardedChats().map((r) => (r.json as { messages: unknown[] }).messages);
    // Everything before the first turn's block is the same in the second request.
    expect(JSON.stringify(second?.slice(0, 3))).toBe(JSON.stringify(first?.slice(0, 3)));
  });

  it('injects nothing for another user and forwards the body as sent', async () => {
    const raw = JSON.stringify({ model: 'm', messages: history, user: 'bob', unknown_field: [1, { a: null }] });
    const res = await request(p.served.server)
      .post('/v1/chat/completions')
      .set(auth)
      .set('Content-Type', 'application/json')
      .send(raw)
      .expect(200);
    expect(res.headers['x-mem0-memories']).toBe('0');
    expect(forwardedChats()[0]?.body.toString()).toBe(raw);
  });

  it('forwards a body holding an integer beyond 2^53 byte for byte, without memories', async () => {
    const raw = `{"model":"m","seed":9007199254740993,"user":"alice","messages":${JSON.stringify(history)}}`;
    const res = await request(p.served.server)
      .post('/v1/chat/completions')
      .set(auth)
      .set('Content-Type', 'application/json')
      .send(raw)
      .expect(200);
    expect(res.headers['x-mem0-memories']).toBe('0');
    expect(forwardedChats()[0]?.body.toString()).toBe(raw);
  });

  it('puts the block in the first system message when configured', async () => {
    const q = await startProxy({ env: { MEMORY_INJECTION_PLACEMENT: 'first_system' } });
    try {
      await rememberFor(q, 'carol', 'Carol is allergic to peanuts');
      fake.reset();
      await q.client.chat.completions.create({ model: 'm', messages: history, user: 'carol' });
      const body = forwardedChats()[0]?.json as { messages: Array<{ role: string; content: string }> };
      expect(body.messages).toHaveLength(4);
      expect(body.messages[0]?.content.startsWith('You are a cooking assistant.')).toBe(true);
      expect(body.messages[0]?.content).toContain('Carol is allergic to peanuts');
      expect(body.messages.slice(1)).toEqual(history.slice(1));
    } finally {
      await q.close();
    }
  });

  it('X-Mem0-Memory: off injects nothing and saves nothing; write saves without injecting; read injects without saving', async () => {
    const ask = (mode: string, content: string) =>
      p.client.chat.completions
        .create({ model: 'm', messages: [{ role: 'user', content }] }, { headers: { 'X-Mem0-User-Id': 'alice', 'X-Mem0-Memory': mode } })
        .withResponse();
    const off = await ask('off', 'Is Alice allergic to peanuts? My cat is called Tom.');
    expect(off.response.headers.get('x-mem0-memories')).toBe('0');
    const read = await ask('read', 'Is Alice allergic to peanuts? My dog is called Rex.');
    expect(read.response.headers.get('x-mem0-memories')).toBe('1');
    const write = await ask('write', 'Is Alice allergic to peanuts? My fish is called Nemo.');
    expect(write.response.headers.get('x-mem0-memories')).toBe('0');
    const bodies = forwardedChats().map((r) => (r.json as { messages: unknown[] }).messages.length);
    expect(bodies).toEqual([1, 2, 1]);
    const saved = await waitFor(async () => {
      const items = await memoriesOf(p, 'alice');
      return items.some((m) => m.memory.includes('Nemo')) ? items : undefined;
    });
    await p.app.queue?.drained(5000);
    const all = saved.map((m) => m.memory).join('\n');
    expect(all).toContain('Nemo');
    expect(all).not.toContain('Tom');
    expect(all).not.toContain('Rex');
  });

  it('rejects an unknown X-Mem0-Memory value with 400 in OpenAI shape', async () => {
    const err = await p.client.chat.completions
      .create({ model: 'm', messages: [{ role: 'user', content: 'x' }] }, { headers: { 'X-Mem0-Memory': 'maybe' } })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
  });

  it('answers without memories and with X-Mem0-Memories: 0 when there is no user text', async () => {
    const { response } = await p.client.chat.completions
      .create({
        model: 'm',
        user: 'alice',
        messages: [
          { role: 'system', content: 'peanuts?' },
          { role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } }] },
        ],
      })
      .withResponse();
    expect(response.headers.get('x-mem0-memories')).toBe('0');
    expect(JSON.stringify(forwardedChats()[0]?.json)).not.toContain('allergic');
  });
});

describe('saving exchanges', () => {
  beforeEach(() => fake.reset());

  it('saves a non-streamed and a streamed reply as memories, with scope and metadata', async () => {
    const p = await startProxy();
    try {
      await p.client.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'My favourite colour is green.' }],
        user: 'dave',
      });
      const stream = await p.client.chat.completions.create({
        model: 'gpt-4o-mini',
        stream: true,
        messages: [{ role: 'user', content: 'My car is a red bicycle.' }],
        user: 'dave',
      });
      let text = '';
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
      expect(text).toContain('Fake reply');
      const items = await waitForMemories(p, 'dave', 2);
      const all = items.map((m) => m.memory).join('\n');
      expect(all).toContain('favourite colour is green');
      expect(all).toContain('red bicycle');
      expect(items[0]?.metadata).toMatchObject({ source: 'chat.completions', model: 'gpt-4o-mini' });
      expect(typeof items[0]?.metadata['request_id']).toBe('string');
      // The engine saw the whole exchange: the user turn and the assistant's reply.
      const extraction = fake
        .requestsTo('/v1/chat/completions')
        .find((r) => JSON.stringify(r.json).includes('red bicycle') && JSON.stringify(r.json).includes('Memory Extractor'));
      expect(JSON.stringify(extraction?.json)).toContain('assistant: Fake reply to: My car is a red bicycle.');
      // Nobody else got them.
      expect(await memoriesOf(p, 'erin')).toEqual([]);
    } finally {
      await p.close();
    }
  });

  it('answers while a deliberately slow save is still running', async () => {
    let releaseSave: () => void = () => undefined;
    let saveStarted = false;
    const gate = new Promise<void>((resolve) => {
      releaseSave = resolve;
    });
    const p = await startProxy({
      wrap: (real) =>
        Object.assign(Object.create(real) as MemoryService, {
          add: async (...args: Parameters<MemoryService['add']>) => {
            saveStarted = true;
            await gate;
            return real.add(...args);
          },
        }),
    });
    try {
      const started = Date.now();
      await p.client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'My boat is blue.' }], user: 'fay' });
      const answeredIn = Date.now() - started;
      await waitFor(async () => (saveStarted ? true : undefined));
      expect(answeredIn).toBeLessThan(2000);
      expect(await memoriesOf(p, 'fay')).toEqual([]);
      expect(p.app.queue?.depth()).toBe(1);
      releaseSave();
      const items = await waitForMemories(p, 'fay');
      expect(items[0]?.memory).toContain('boat is blue');
    } finally {
      releaseSave();
      await p.close();
    }
  });

  it('saves an exchange sent during an engine outage after recovery, across a restart', async () => {
    const dataDir = fs.mkdtempSync(path.join(tmp, 'data-'));
    // Its own engine: the outage and the restart are the whole proxy's.
    const first = await startProxy({ dataDir, ownEngine: true });
    fake.failNext(500, { times: Infinity, path: '/v1/embeddings' });
    const { response } = await first.client.chat.completions
      .create({ model: 'm', messages: [{ role: 'user', content: 'My garden has tomatoes.' }], user: 'gus' })
      .withResponse();
    expect(response.status).toBe(200);
    expect(response.headers.get('x-mem0-memories')).toBe('0');
    await waitFor(async () => ((first.app.queue?.failures ?? 0) > 0 ? true : undefined));
    expect(first.app.queue?.depth()).toBe(1);
    await first.close();

    fake.clearFaults();
    const second = await startProxy({ dataDir, ownEngine: true });
    try {
      const items = await waitForMemories(second, 'gus');
      expect(items.map((m) => m.memory).join('\n')).toContain('garden has tomatoes');
      await second.app.queue?.drained(5000);
      expect(second.app.queue?.depth()).toBe(0);
    } finally {
      await second.close();
    }
  });

  it('saves nothing when the client aborts mid-stream', async () => {
    const p = await startProxy();
    try {
      fake.setBehaviour({ reply: Array.from({ length: 30 }, (_, i) => `word${i}`).join(' '), wordsPerChunk: 1, chunkIntervalMs: 30 });
      const controller = new AbortController();
      const stream = await p.client.chat.completions.create(
        { model: 'm', stream: true, messages: [{ role: 'user', content: 'My hat is orange.' }], user: 'hal' },
        { signal: controller.signal },
      );
      let n = 0;
      await (async () => {
        for await (const _chunk of stream) if (++n === 3) controller.abort();
      })().catch(() => undefined);
      // Then a completed exchange for another user: once it is saved, the queue has seen both.
      fake.setBehaviour({ reply: 'ok', chunkIntervalMs: 0 });
      await p.client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'My hat is purple.' }], user: 'ivy' });
      await waitForMemories(p, 'ivy');
      expect(await memoriesOf(p, 'hal')).toEqual([]);
    } finally {
      await p.close();
    }
  });

  it('saves nothing for an upstream error or a truncated stream', async () => {
    const p = await startProxy();
    try {
      fake.failNext(500, { path: '/v1/chat/completions' });
      await p.client.chat.completions
        .create({ model: 'm', messages: [{ role: 'user', content: 'My shoe is brown.' }], user: 'jo' })
        .catch(() => undefined);
      fake.setNext({ kind: 'reset', afterChunks: 2 }, { path: '/v1/chat/completions' });
      const stream = await p.client.chat.completions.create({
        model: 'm',
        stream: true,
        messages: [{ role: 'user', content: 'My sock is brown.' }],
        user: 'jo',
      });
      await (async () => {
        for await (const _chunk of stream) {
          // drain until the cut
        }
      })().catch(() => undefined);
      await p.client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'My scarf is brown.' }], user: 'kim' });
      await waitForMemories(p, 'kim');
      expect(await memoriesOf(p, 'jo')).toEqual([]);
      expect(p.app.queue?.depth()).toBe(0);
    } finally {
      await p.close();
    }
  });
});

describe('identity on the chat path', () => {
  beforeEach(() => fake.reset());

  it('answers a chat whose body user cannot name a memory scope, without memory, and saves nothing', async () => {
    const p = await startProxy();
    try {
      const { response } = await p.client.chat.completions
        .create({ model: 'm', messages: [{ role: 'user', content: 'My kite is red.' }], user: 'John Smith' })
        .withResponse();
      expect(response.status).toBe(200);
      expect(response.headers.get('x-mem0-memories')).toBe('0');
      expect(p.app.queue?.depth()).toBe(0);
      expect(fake.requestsTo('/v1/embeddings')).toHaveLength(0);
    } finally {
      await p.close();
    }
  });

  it('refuses "*" or whitespace in X-Mem0-User-Id with 400', async () => {
    const p = await startProxy();
    try {
      for (const bad of ['*', 'a b']) {
        const err = await p.client.chat.completions
          .create({ model: 'm', messages: [{ role: 'user', content: 'x' }] }, { headers: { 'X-Mem0-User-Id': bad } })
          .catch((e: unknown) => e);
        expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      }
      expect(forwardedChats()).toHaveLength(0);
    } finally {
      await p.close();
    }
  });

  it('does not forward a chat whose client left during memory recall', async () => {
    const p = await startProxy({
      wrap: (real) =>
        Object.assign(Object.create(real) as MemoryService, {
          search: async (...args: Parameters<MemoryService['search']>) => {
            await new Promise((r) => setTimeout(r, 400));
            return real.search(...args);
          },
        }),
    });
    try {
      const req = http.request(`${p.served.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
      });
      req.on('error', () => undefined);
      req.end(JSON.stringify({ model: 'm', user: 'zoe', messages: [{ role: 'user', content: 'My drum is loud.' }] }));
      await new Promise((r) => setTimeout(r, 100));
      req.destroy();
      await new Promise((r) => setTimeout(r, 700));
      expect(forwardedChats()).toHaveLength(0);
      const metrics = await request(p.app.app).get('/metrics').set(auth);
      expect(metrics.text).toMatch(/proxy_upstream_errors_total\{reason="client_abort"\} 1/);
      expect(p.app.queue?.depth()).toBe(0);
    } finally {
      await p.close();
    }
  });
});

describe('search budget', () => {
  it('answers with X-Mem0-Memories: 0 when the memory search is slower than the budget', async () => {
    const p = await startProxy({
      env: { MEMORY_SEARCH_TIMEOUT_MS: '150' },
      wrap: (real) =>
        Object.assign(Object.create(real) as MemoryService, {
          search: async (...args: Parameters<MemoryService['search']>) => {
            await new Promise((r) => setTimeout(r, 1500));
            return real.search(...args);
          },
        }),
    });
    try {
      await rememberFor(p, 'lee', 'Lee likes jazz');
      const started = Date.now();
      const { response } = await p.client.chat.completions
        .create({ model: 'm', messages: [{ role: 'user', content: 'Does Lee like jazz?' }], user: 'lee' })
        .withResponse();
      expect(Date.now() - started).toBeLessThan(1200);
      expect(response.headers.get('x-mem0-memories')).toBe('0');
      // The budget is what the proxy spent before forwarding: at least 150 ms, far less than the search.
      const overhead = Number(response.headers.get('x-mem0-overhead-ms'));
      expect(overhead).toBeGreaterThanOrEqual(145);
      expect(overhead).toBeLessThan(1000);
      const metrics = await request(p.app.app).get('/metrics').set(auth);
      expect(metrics.text).toMatch(/proxy_memory_search_duration_seconds_count\{outcome="timeout"\} 1/);
    } finally {
      await p.close();
    }
  });
});

describe('the Responses API', () => {
  let p: Proxy;
  beforeAll(async () => {
    p = await startProxy();
    await rememberFor(p, 'max', 'Max speaks Portuguese');
  });
  afterAll(() => p.close());
  beforeEach(() => fake.reset());

  it('injects an input item before the last user input, keeps instructions, and saves the reply', async () => {
    const res = await p.client.responses
      .create(
        {
          model: 'gpt-4o-mini',
          instructions: 'Be terse.',
          input: [{ role: 'user', content: 'Which language does Max speak? My name is Max.' }],
        },
        { headers: { 'X-Mem0-User-Id': 'max' } },
      )
      .withResponse();
    expect(res.response.headers.get('x-mem0-memories')).toBe('1');
    const sent = fake.requestsTo('/v1/responses')[0]?.json as { instructions: string; input: Array<{ role: string; content: unknown }> };
    expect(sent.instructions).toBe('Be terse.');
    expect(sent.input).toHaveLength(2);
    expect(sent.input[0]?.role).toBe('system');
    expect(JSON.stringify(sent.input[0]?.content)).toContain('Max speaks Portuguese');
    expect(sent.input[1]).toEqual({ role: 'user', content: 'Which language does Max speak? My name is Max.' });
    const items = await waitForMemories(p, 'max', 2);
    expect(items.some((m) => m.metadata['source'] === 'responses')).toBe(true);
  });

  it('captures a streamed response (output_text deltas) and saves it', async () => {
    const stream = await p.client.responses.create(
      { model: 'gpt-4o-mini', stream: true, input: 'My piano is black.' },
      { headers: { 'X-Mem0-User-Id': 'nia' } },
    );
    let text = '';
    for await (const event of stream) if (event.type === 'response.output_text.delta') text += event.delta;
    expect(text).toContain('Fake reply');
    const items = await waitForMemories(p, 'nia');
    expect(items[0]?.memory).toContain('piano is black');
  });
});
