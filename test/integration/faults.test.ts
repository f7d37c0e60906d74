/**
 * Fault injection end to end: the official `openai` client (maxRetries 0) → the proxy with the real
 * memory engine (mem0 on the embedded store) → the fake upstream, which also serves the engine's
 * extraction and embedding calls. Each case states the expected outcome and checks that nothing was
 * lost (or, for failed exchanges, that nothing was saved).
 *
 * Already covered elsewhere and not repeated here: upstream unreachable → 502 and upstream hanging
 * past UPSTREAM_TIMEOUT_MS → 504 (proxy.test.ts); a search slower than the budget inside the
 * service (chat-memory.test.ts, "search budget"); an outage across a graceful restart
 * (chat-memory.test.ts); SIGKILL at the queue level (save-queue.test.ts).
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import request from 'supertest';
import type { MemoryItem } from '../../src/memory/types';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { listeningPort, startProxyProcess, type ProxyProcess } from '../helpers/process';
import { GENEROUS_LIMITS, startMemoryProxy, type MemoryProxy } from '../helpers/memory-proxy';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';
import { memoriesOf, waitFor } from '../helpers/wait';

const auth = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
const CHAT = '/v1/chat/completions';
const EMBEDDINGS = '/v1/embeddings';

let fake: FakeUpstream;
let tmp: string;

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-'));
});
afterAll(async () => {
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function startProxy(env: Record<string, string> = {}): Promise<MemoryProxy> {
  return startMemoryProxy({ upstreamUrl: fake.url, dataDir: fs.mkdtempSync(path.join(tmp, 'data-')), env });
}

/** Rejects when `promise` has not settled within `ms` (a hang is a failure, not a slow pass). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms (hang)`)), ms);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

async function health(p: MemoryProxy): Promise<{ status: string; save_queue?: { depth: number; failures: number } }> {
  const res = await request(p.app.app).get('/health').set(auth).expect(200);
  return res.body as { status: string; save_queue?: { depth: number; failures: number } };
}

/**
 * A completed exchange for a control user, saved: since the queue runs jobs in order and this one
 * finished, an exchange of the faulty request, had it been queued earlier, would have been seen.
 */
async function controlExchangeSaved(p: MemoryProxy, userId: string): Promise<void> {
  await p.client.chat.completions.create({
    model: 'm',
    messages: [{ role: 'user', content: `My control word is ${userId}.` }],
    user: userId,
  });
  await waitFor(async () => ((await memoriesOf(p, userId)).length > 0 ? true : undefined), 8000, `memory of ${userId}`);
  await p.app.queue?.drained(5000);
  expect(p.app.queue?.depth()).toBe(0);
}

async function drainStream(stream: AsyncIterable<OpenAI.Chat.ChatCompletionChunk>): Promise<string> {
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
  return text;
}

describe('upstream faults mid-stream, memory on', () => {
  let p: MemoryProxy;
  beforeAll(async () => {
    p = await startProxy();
  });
  afterAll(() => p.close());
  beforeEach(() => {
    fake.reset();
    fake.setBehaviour({ reply: Array.from({ length: 12 }, (_, i) => `word${i}`).join(' '), chunkIntervalMs: 5 });
  });

  it.each(['rst', 'close'] as const)(
    'upstream resets mid-stream (%s): the client stream errors without hanging, the proxy stays healthy, nothing is saved',
    async (mode) => {
      const user = `reset-${mode}`;
      fake.setNext({ kind: 'reset', afterChunks: 3, mode }, { path: CHAT });
      const started = Date.now();
      const stream = await p.client.chat.completions.create({
        model: 'm',
        stream: true,
        messages: [{ role: 'user', content: 'My lamp is yellow.' }],
        user,
      });
      const outcome = await within(
        drainStream(stream).then(
          (text) => ({ ok: true as const, text }),
          (err: unknown) => ({ ok: false as const, err }),
        ),
        5000,
        'client stream after an upstream reset',
      );
      expect(outcome.ok).toBe(false);
      expect(Date.now() - started).toBeLessThan(5000);
      // The fake cut the socket; the upstream request is finished from its side.
      expect(fake.requestsTo(CHAT)[0]?.completed).toBe(false);

      // Healthy afterwards: /health answers, and the next chat completes normally.
      expect((await health(p)).status).toBe('healthy');
      fake.setBehaviour({ reply: 'fine', chunkIntervalMs: 0 });
      expect(
        await drainStream(
          await p.client.chat.completions.create(
            { model: 'm', stream: true, messages: [{ role: 'user', content: 'hello?' }], user: 'nobody' },
            { headers: { 'X-Mem0-Memory': 'off' } },
          ),
        ),
      ).toBe('fine');

      await controlExchangeSaved(p, `control-${mode}`);
      expect(await memoriesOf(p, user)).toEqual([]);
    },
  );

  it('malformed SSE mid-stream: the client gets the bytes as sent and the stream ends; nothing is saved', async () => {
    const garbage = '{"id":"broken","choices":[{"delta":{"content":"oo';
    // Raw HTTP first: exactly what the proxy hands the client.
    fake.setNext({ kind: 'malformed-sse', afterChunks: 2, garbage }, { path: CHAT });
    const raw = await within(
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const url = new URL(p.served.url);
        const body = JSON.stringify({
          model: 'm',
          stream: true,
          messages: [{ role: 'user', content: 'My kettle is silver.' }],
          user: 'malformed-raw',
        });
        const req = http.request(
          { host: url.hostname, port: url.port, method: 'POST', path: CHAT, headers: { ...auth, 'content-type': 'application/json' } },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
            res.on('error', reject);
          },
        );
        req.on('error', reject);
        req.end(body);
      }),
      5000,
      'raw malformed stream',
    );
    expect(raw.status).toBe(200);
    const events = raw.body.split('\n\n').filter((e) => e !== '');
    expect(events).toHaveLength(3);
    for (const e of events.slice(0, 2)) expect(() => JSON.parse(e.replace(/^data: /, '')) as unknown).not.toThrow();
    expect(events[2]).toBe(`data: ${garbage}`);
    expect(raw.body).not.toContain('[DONE]');

    // The SDK: the stream ends (with the SDK's parse error, which it also logs), it does not hang.
    const quiet = new OpenAI({ apiKey: TEST_AUTH_TOKEN, baseURL: `${p.served.url}/v1`, maxRetries: 0, timeout: 10_000, logLevel: 'off' });
    fake.setNext({ kind: 'malformed-sse', afterChunks: 2, garbage }, { path: CHAT });
    const stream = await quiet.chat.completions.create({
      model: 'm',
      stream: true,
      messages: [{ role: 'user', content: 'My kettle is golden.' }],
      user: 'malformed-sdk',
    });
    const outcome = await within(
      drainStream(stream).then(
        () => 'ended',
        () => 'errored',
      ),
      5000,
      'SDK stream after malformed SSE',
    );
    expect(['ended', 'errored']).toContain(outcome);

    await controlExchangeSaved(p, 'control-malformed');
    expect(await memoriesOf(p, 'malformed-raw')).toEqual([]);
    expect(await memoriesOf(p, 'malformed-sdk')).toEqual([]);
  });

  it('upstream 429 and 500 on a chat with memory on are passed through (streamed and not); nothing is saved', async () => {
    const ask = (stream: boolean, user: string): Promise<unknown> =>
      (stream
        ? p.client.chat.completions
            .create({ model: 'm', stream: true, messages: [{ role: 'user', content: `My bike is green, says ${user}.` }], user })
            .then(drainStream)
        : p.client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: `My bike is green, says ${user}.` }], user })
      ).catch((e: unknown) => e);
    for (const stream of [false, true]) {
      fake.failNext(429, {
        path: CHAT,
        message: 'slow down',
        type: 'requests',
        code: 'rate_limit_exceeded',
        headers: { 'retry-after': '7' },
      });
      const limited = await ask(stream, `limited-${stream}`);
      expect(limited).toBeInstanceOf(OpenAI.RateLimitError);
      const le = limited as InstanceType<typeof OpenAI.RateLimitError>;
      expect(le.status).toBe(429);
      expect(le.message).toContain('slow down');
      expect(le.code).toBe('rate_limit_exceeded');
      expect(le.headers.get('retry-after')).toBe('7');
      expect(le.headers.get('x-mem0-memories')).toBe('0');

      fake.failNext(500, { path: CHAT, message: 'upstream exploded', type: 'server_error', code: 'boom' });
      const failed = await ask(stream, `failed-${stream}`);
      expect(failed).toBeInstanceOf(OpenAI.InternalServerError);
      const fe = failed as InstanceType<typeof OpenAI.InternalServerError>;
      expect(fe.status).toBe(500);
      expect(fe.message).toContain('upstream exploded');
      expect(fe.code).toBe('boom');
    }
    await controlExchangeSaved(p, 'control-errors');
    for (const user of ['limited-false', 'failed-false', 'limited-true', 'failed-true']) expect(await memoriesOf(p, user)).toEqual([]);
  });
});

describe('memory engine faults', () => {
  beforeEach(() => fake.reset());

  it('embeddings slower than MEMORY_SEARCH_TIMEOUT_MS: chats are answered within the budget plus a small margin, with X-Mem0-Memories: 0', async () => {
    const budget = 200;
    const p = await startProxy({ MEMORY_SEARCH_TIMEOUT_MS: String(budget) });
    try {
      await request(p.app.app).post('/remember').set(auth).send({ user_id: 'slow', content: 'Slow likes tea', infer: false }).expect(200);
      // Sanity: without the fault the memory is found and injected. The engine's first search
      // (a cold start, on a machine the full suite keeps busy) may itself pass the 200 ms budget,
      // so warm it up without a budget first and allow the chat a few tries.
      await request(p.app.app).post('/search').set(auth).send({ user_id: 'slow', query: 'tea' }).expect(200);
      await waitFor(
        async () => {
          const warm = await p.client.chat.completions
            .create(
              { model: 'm', messages: [{ role: 'user', content: 'Does Slow like tea?' }], user: 'slow' },
              { headers: { 'X-Mem0-Memory': 'read' } },
            )
            .withResponse();
          return warm.response.headers.get('x-mem0-memories') === '1' ? true : undefined;
        },
        5000,
        'the memory injected without the fault',
      );

      fake.setNext({ kind: 'delay', ms: 3000 }, { path: EMBEDDINGS, times: Infinity });
      const elapsed: number[] = [];
      for (let i = 0; i < 5; i++) {
        const started = Date.now();
        const { data, response } = await p.client.chat.completions
          .create(
            { model: 'm', messages: [{ role: 'user', content: `Does Slow like tea? (${i})` }], user: 'slow' },
            { headers: { 'X-Mem0-Memory': 'read' } },
          )
          .withResponse();
        elapsed.push(Date.now() - started);
        expect(data.choices[0]?.message.content).toContain('Fake reply');
        expect(response.headers.get('x-mem0-memories')).toBe('0');
        // Far below the embedding's 3000 ms; the margin allows for the full suite sharing two
        // cores with this process (a 200 ms stall was seen there once at +150).
        expect(Number(response.headers.get('x-mem0-overhead-ms'))).toBeLessThan(budget + 250);
      }
      // The fake answers chats at once, so all of this is the budget plus the proxy's own work.
      expect(Math.max(...elapsed)).toBeLessThan(budget + 400);
    } finally {
      fake.clearFaults();
      await p.close();
    }
  }, 30_000);

  it('embeddings fail (500) for N exchanges: chats are answered, the N exchanges wait in the queue, and after recovery all N become memories, exactly', async () => {
    const N = 4;
    const p = await startProxy();
    try {
      fake.failNext(500, { times: Infinity, path: EMBEDDINGS });
      for (let i = 0; i < N; i++) {
        const { data, response } = await p.client.chat.completions
          .create({ model: 'm', messages: [{ role: 'user', content: `My locker number is ${1000 + i}.` }], user: `outage-${i}` })
          .withResponse();
        expect(response.status).toBe(200);
        expect(response.headers.get('x-mem0-memories')).toBe('0');
        expect(data.choices[0]?.message.content).toContain(`${1000 + i}`);
      }
      await waitFor(async () => ((p.app.queue?.failures ?? 0) > 0 ? true : undefined), 8000, 'a failed save attempt');
      expect(p.app.queue?.depth()).toBe(N);
      expect((await health(p)).save_queue?.depth).toBe(N);
      for (let i = 0; i < N; i++) expect(await memoriesOf(p, `outage-${i}`)).toEqual([]);

      fake.clearFaults();
      await waitFor(async () => ((await health(p)).save_queue?.depth === 0 ? true : undefined), 15_000, 'queue drained');
      for (let i = 0; i < N; i++) {
        const items = await memoriesOf(p, `outage-${i}`);
        expect(items.map((m) => m.memory)).toEqual([expect.stringContaining(`${1000 + i}`)]);
      }
      const metrics = await request(p.app.app).get('/metrics').set(auth).expect(200);
      const failures = Number(/^proxy_save_failures_total(?:\{[^}]*\})? (\d+)/m.exec(metrics.text)?.[1] ?? '0');
      expect(failures).toBeGreaterThan(0);
      expect(metrics.text).toMatch(/^proxy_save_queue_depth 0$/m);
    } finally {
      fake.clearFaults();
      await p.close();
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------
// SIGKILL with saves in the queue: the real process, restarted on the same DATA_DIR.
// ---------------------------------------------------------------------------------------------

describe('the process killed with SIGKILL while saves are queued', () => {
  let dir: string;
  const procs: ProxyProcess[] = [];
  beforeEach(() => {
    fake.reset();
    dir = fs.mkdtempSync(path.join(tmp, 'proc-'));
  });
  afterEach(async () => {
    fake.clearFaults();
    for (const p of procs.splice(0)) {
      if (p.child.exitCode === null && p.child.signalCode === null) {
        p.child.kill('SIGKILL');
        await p.exited;
      }
    }
  });

  it('delivers every queued exchange after a restart on the same DATA_DIR, exactly once each', async () => {
    const K = 3;
    const env = {
      SERVER_HOST: '127.0.0.1',
      SERVER_PORT: '0',
      DATA_DIR: path.join(dir, 'data'),
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      UPSTREAM_BASE_URL: fake.url,
      EMBEDDING_DIMS: '64',
      ...GENEROUS_LIMITS,
    };
    const get = async (port: number, p: string): Promise<unknown> =>
      (await fetch(`http://127.0.0.1:${port}${p}`, { headers: auth })).json();
    const list = async (port: number, userId: string): Promise<MemoryItem[]> => {
      const res = await fetch(`http://127.0.0.1:${port}/list`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ user_id: userId }),
      });
      expect(res.status).toBe(200);
      return ((await res.json()) as { memories: MemoryItem[] }).memories;
    };

    fake.failNext(500, { times: Infinity, path: EMBEDDINGS });
    const first = startProxyProcess(env, dir);
    procs.push(first);
    const port1 = await listeningPort(first);
    const client = new OpenAI({ apiKey: TEST_AUTH_TOKEN, baseURL: `http://127.0.0.1:${port1}/v1`, maxRetries: 0, timeout: 10_000 });
    for (let i = 0; i < K; i++) {
      const { response } = await client.chat.completions
        .create({ model: 'm', messages: [{ role: 'user', content: `My parcel code is P${500 + i}.` }], user: `killed-${i}` })
        .withResponse();
      expect(response.status).toBe(200);
    }
    const before = (await get(port1, '/health')) as { save_queue: { depth: number } };
    expect(before.save_queue.depth).toBe(K);
    first.child.kill('SIGKILL');
    expect(await first.exited).toBe('SIGKILL');

    fake.clearFaults();
    const second = startProxyProcess(env, dir);
    procs.push(second);
    const port2 = await listeningPort(second);
    const delivered = await waitFor(
      async () => {
        const lists = await Promise.all(Array.from({ length: K }, (_, i) => list(port2, `killed-${i}`)));
        return lists.every((l) => l.length > 0) ? lists : undefined;
      },
      25_000,
      'all queued exchanges delivered after the restart',
    );
    await waitFor(
      async () => (((await get(port2, '/health')) as { save_queue: { depth: number } }).save_queue.depth === 0 ? true : undefined),
      10_000,
      'queue drained',
    );
    // Exactly once each, also after the queue is empty (no late duplicate).
    for (let i = 0; i < K; i++) {
      expect(delivered[i]?.map((m) => m.memory)).toEqual([expect.stringContaining(`P${500 + i}`)]);
      expect((await list(port2, `killed-${i}`)).map((m) => m.memory)).toEqual([expect.stringContaining(`P${500 + i}`)]);
    }
    second.child.kill('SIGTERM');
    expect(await second.exited).toBe('0');
  }, 45_000);
});
