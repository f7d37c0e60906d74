/**
 * Hostile or unlucky callers against a served proxy with the real memory engine (issue 16): each
 * case is one way a caller could lose someone's memories or stall the proxy for others.
 */
import Database from 'better-sqlite3';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import { createHttpServer } from '../../src/http/server';
import { fakeMemory } from '../fakes/memory-service';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { buildTestApp, serve, type Served, type TestApp } from '../helpers/app';
import { startMemoryProxy, startSharedEngine, type MemoryProxy, type MemoryProxyOptions, type SharedEngine } from '../helpers/memory-proxy';
import { rawRequest } from '../helpers/raw-http';
import { TEST_ANTHROPIC_KEY, TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';
import { memoriesOf, waitFor } from '../helpers/wait';

const auth = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
let fake: FakeUpstream;
let tmp: string;
/** The engine the proxies of this file share (each test has its own users), unless one needs its own settings. */
let engine: SharedEngine;

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hardening-'));
  engine = await startSharedEngine(fake.url);
});
afterAll(async () => {
  await engine.close();
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A proxy on the shared engine; `ownEngine: true` starts its own (for engine settings in `env`). */
const startProxy = (
  env: Record<string, string> = {},
  options: Partial<MemoryProxyOptions> & { ownEngine?: boolean } = {},
): Promise<MemoryProxy> => {
  const { ownEngine, ...rest } = options;
  return startMemoryProxy({
    upstreamUrl: fake.url,
    dataDir: fs.mkdtempSync(path.join(tmp, 'data-')),
    env,
    ...(ownEngine ? {} : { engine }),
    ...rest,
  });
};

/** mem0's extraction calls to the fake (one per exchange saved). */
const extractions = (): number =>
  fake.requestsTo('/v1/chat/completions').filter((r) => JSON.stringify(r.json).includes('Memory Extractor')).length;

describe('idempotency of saves', () => {
  let p: MemoryProxy;
  beforeAll(async () => {
    p = await startProxy();
  });
  afterAll(() => p.close());
  beforeEach(() => fake.reset());

  it("saves two users' exchanges that reuse one X-Request-ID under one key, and a replay of either once", async () => {
    const chat = (user: string, text: string) =>
      p.client.chat.completions.create(
        { model: 'm', user, messages: [{ role: 'user', content: text }] },
        { headers: { 'X-Request-ID': 'shared-request-1' } },
      );
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

describe('tool loops keep their memory', () => {
  let p: MemoryProxy;
  beforeAll(async () => {
    p = await startProxy();
    await request(p.app.app)
      .post('/remember')
      .set(auth)
      .send({ user_id: 'kim', content: 'Kim is allergic to shellfish', infer: false })
      .expect(200);
  });
  afterAll(() => p.close());
  beforeEach(() => fake.reset());

  const tools = [
    {
      type: 'function' as const,
      function: { name: 'get_menu', description: "Tonight's menu", parameters: { type: 'object', properties: {} } },
    },
  ];
  const question = { role: 'user' as const, content: 'Which dish on the menu is safe for Kim with shellfish?' };

  it('recalls on the request after the tool results too, and saves the final answer once with the user text', async () => {
    fake.setBehaviour({ toolCall: 'auto' });
    const first = await p.client.chat.completions.create({ model: 'm', user: 'kim', tools, messages: [question] }).withResponse();
    expect(first.data.choices[0]?.message.tool_calls?.length).toBe(1);
    expect(first.response.headers.get('x-mem0-memories')).toBe('1');

    fake.setBehaviour({ toolCall: false });
    const call = first.data.choices[0]?.message.tool_calls?.[0];
    if (!call) throw new Error('no tool call');
    const second = await p.client.chat.completions
      .create({
        model: 'm',
        user: 'kim',
        tools,
        messages: [
          question,
          { role: 'assistant', content: null, tool_calls: [call] },
          { role: 'tool', tool_call_id: call.id, content: 'paella, risotto' },
        ],
      })
      .withResponse();
    expect(second.response.headers.get('x-mem0-memories')).toBe('1');
    const forwarded = fake.requestsTo('/v1/chat/completions').filter((r) => !JSON.stringify(r.json).includes('Memory Extractor'));
    expect(forwarded).toHaveLength(2);
    for (const r of forwarded) expect(JSON.stringify(r.json)).toContain('Kim is allergic to shellfish');

    await waitFor(() => (p.app.queue?.depth() === 0 && extractions() >= 1 ? true : undefined));
    await new Promise((r) => setTimeout(r, 300));
    expect(extractions()).toBe(1);
    const extraction = JSON.stringify(
      fake.requestsTo('/v1/chat/completions').find((r) => JSON.stringify(r.json).includes('Memory Extractor'))?.json,
    );
    expect(extraction).toContain('Which dish on the menu is safe for Kim with shellfish?');
    expect(extraction).toContain(`assistant: ${second.data.choices[0]?.message.content ?? 'missing'}`);
  });
});

describe('a save queue that cannot be written', () => {
  it('answers the chats, and counts and shows every exchange it could not queue (/health degraded, /metrics)', async () => {
    // The queue file capped at a few pages fails its writes exactly as a full disk does (SQLITE_FULL).
    const p = await startProxy({}, { startQueue: false, queueOptions: { maxBytes: 64 * 1024 } });
    try {
      const long = `My notes say: ${'the quick brown fox jumps over the lazy dog. '.repeat(400)}`;
      let answered = 0;
      for (let i = 0; i < 20; i++) {
        // write-only: no recall, so the test spends its time on the queue, not on searching.
        const reply = await p.client.chat.completions.create(
          { model: 'm', user: 'lou', messages: [{ role: 'user', content: `${i} ${long}` }] },
          { headers: { 'X-Mem0-Memory': 'write' } },
        );
        if (reply.choices[0]?.message.content) answered++;
      }
      expect(answered).toBe(20);
      const health = await request(p.app.app).get('/health').set(auth).expect(200);
      const body = health.body as { status: string; save_queue: { depth: number; enqueue_failures: number; writable: boolean } };
      expect(body.status).toBe('degraded');
      expect(body.save_queue.writable).toBe(false);
      expect(body.save_queue.enqueue_failures).toBeGreaterThan(0);
      expect(body.save_queue.depth + body.save_queue.enqueue_failures).toBe(20);
      const metrics = await request(p.app.app).get('/metrics').set(auth).expect(200);
      expect(metrics.text).toMatch(new RegExp(`^proxy_save_enqueue_failures_total ${body.save_queue.enqueue_failures}$`, 'm'));
      expect(p.app.logs.some((l) => l.includes('could not queue an exchange for saving; it is lost'))).toBe(true);
    } finally {
      await p.close();
    }
  });
});

describe('browsers on other origins (development mode)', () => {
  let app: TestApp;
  let served: Served;
  beforeAll(async () => {
    app = await buildTestApp({
      UPSTREAM_BASE_URL: fake.url,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      ALLOWED_ORIGINS: 'https://console.example.com',
    });
    served = await serve(app.app);
  });
  afterAll(async () => {
    await served.close();
    await app.close();
  });
  beforeEach(() => fake.reset());

  const post = (headers: Record<string, string>, body = '{"model":"m","messages":[{"role":"user","content":"My PIN is 1234"}]}') =>
    new Promise<number>((resolve, reject) => {
      const req = http.request(`${served.url}/v1/chat/completions`, { method: 'POST', headers }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end(body);
    });

  it("refuses a foreign page's text/plain form post and cross-site fetches before they reach the upstream", async () => {
    expect(await post({ 'content-type': 'text/plain', origin: 'https://evil.example' })).toBe(403);
    expect(await post({ 'content-type': 'application/json', origin: 'null' })).toBe(403);
    expect(await post({ 'content-type': 'application/json', 'sec-fetch-site': 'cross-site' })).toBe(403);
    expect(await post({ 'content-type': 'text/plain' })).toBe(415);
    expect(fake.requests).toHaveLength(0);
  });

  it('serves programs, same-origin pages and the allowed origins', async () => {
    const host = new URL(served.url).host;
    expect(await post({ 'content-type': 'application/json' })).toBe(200);
    expect(
      await post({ 'content-type': 'application/json; charset=utf-8', origin: `http://${host}`, 'sec-fetch-site': 'same-origin' }),
    ).toBe(200);
    expect(await post({ 'content-type': 'application/json', origin: 'https://console.example.com', 'sec-fetch-site': 'cross-site' })).toBe(
      200,
    );
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(3);
  });
});

describe('a deeply nested chat body', () => {
  let app: TestApp;
  let served: Served;
  beforeAll(async () => {
    // An Anthropic key, so /v1/messages gets as far as reading the body (never forwarded here).
    app = await buildTestApp({
      UPSTREAM_BASE_URL: fake.url,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY,
      ANTHROPIC_UPSTREAM_BASE_URL: 'http://127.0.0.1:9',
      MAX_BODY_BYTES: String(32 * 1024 * 1024),
    });
    served = await serve(app.app);
  });
  afterAll(async () => {
    await served.close();
    await app.close();
  });

  it('is refused with 400 at once, without stalling /health, on both APIs', async () => {
    const depth = 9_000_000;
    const body = Buffer.from(`{"model":"m","messages":[{"role":"user","content":"hi","x":${'['.repeat(depth)}${']'.repeat(depth)}}]}`);
    const started = Date.now();
    const chat = rawRequest(`${served.url}/v1/chat/completions`, 'POST', { ...auth, 'content-type': 'application/json' }, body);
    const health = await request(app.app).get('/health').set(auth);
    expect(health.status).toBe(200);
    const res = await chat;
    expect(res.status).toBe(400);
    expect(JSON.parse(res.text)).toMatchObject({
      error: { message: 'Request body nests deeper than 400 levels', type: 'invalid_request_error' },
    });
    const messages = await rawRequest(
      `${served.url}/v1/messages`,
      'POST',
      { ...auth, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
      body,
    );
    expect(messages.status).toBe(400);
    expect(Date.now() - started).toBeLessThan(3000);
    // 400 levels is fine.
    const ok = await rawRequest(
      `${served.url}/v1/chat/completions`,
      'POST',
      { ...auth, 'content-type': 'application/json' },
      Buffer.from(`{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata_x":${'['.repeat(395)}${']'.repeat(395)}}`),
    );
    expect(ok.status).toBe(200);
  });
});

describe("an exchange the memory engine's model refuses", () => {
  it("goes dead at once (400 context_length_exceeded is never retried) while other users' exchanges are saved", async () => {
    const p = await startProxy({}, { startQueue: false });
    try {
      fake.reset();
      await p.client.chat.completions.create(
        { model: 'm', user: 'moe', messages: [{ role: 'user', content: 'My essay is far too long for the model.' }] },
        { headers: { 'X-Mem0-Memory': 'write' } },
      );
      // The next call to the fake is the queue's extraction for moe's exchange: the model refuses it.
      fake.setNext(
        {
          kind: 'error',
          status: 400,
          type: 'invalid_request_error',
          code: 'context_length_exceeded',
          message: "This model's maximum context length is 128000 tokens.",
        },
        { path: '/v1/chat/completions' },
      );
      p.app.queue?.start();
      await waitFor(() => (p.app.queue?.deadCount() === 1 ? true : undefined));
      await p.client.chat.completions.create(
        { model: 'm', user: 'noa', messages: [{ role: 'user', content: 'My bike is blue.' }] },
        { headers: { 'X-Mem0-Memory': 'write' } },
      );
      const started = Date.now();
      await waitFor(async () => ((await memoriesOf(p, 'noa')).length > 0 ? true : undefined));
      expect(Date.now() - started).toBeLessThan(3000);
      // One extraction attempt for moe (refused), one for noa: no retries of the refused one.
      expect(extractions()).toBe(2);
      const metrics = await request(p.app.app).get('/metrics').set(auth).expect(200);
      expect(metrics.text).toMatch(/^proxy_save_dead_total 1$/m);
      expect((await request(p.app.app).get('/health').set(auth)).body).toMatchObject({ status: 'healthy', memory_service_available: true });
    } finally {
      await p.close();
    }
  });
});

describe('slow request bodies', () => {
  let app: TestApp;
  let server: http.Server;
  let port: number;
  beforeAll(async () => {
    app = await buildTestApp({ UPSTREAM_BASE_URL: fake.url, OPENAI_API_KEY: TEST_OPENAI_KEY, AUTH_TOKEN: TEST_AUTH_TOKEN });
    server = createHttpServer(app.app, { requestTimeoutMs: 1000, checkIntervalMs: 100 });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await app.close();
  });

  /** Opens a socket, sends `head` and one byte of body, and reports what came back and whether the server closed it. */
  function dribble(head: string, waitMs: number): Promise<{ response: string; closedByServer: boolean }> {
    return new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      let response = '';
      let closedByServer = false;
      socket.on('data', (d: Buffer) => (response += d.toString('utf8')));
      socket.on('end', () => (closedByServer = true));
      socket.on('close', () => (closedByServer = true));
      socket.on('error', () => (closedByServer = true));
      socket.write(`${head}\r\n\r\n{`);
      setTimeout(() => {
        resolve({ response, closedByServer });
        socket.destroy();
      }, waitMs);
    });
  }

  it('answers a keyless POST announcing a huge body with 401 and closes the connection instead of reading on', async () => {
    const result = await dribble(
      `POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000000`,
      500,
    );
    expect(result.response).toMatch(/^HTTP\/1.1 401/);
    expect(result.response.toLowerCase()).toContain('connection: close');
    expect(result.closedByServer).toBe(true);
  });

  it('cuts off an authenticated request whose body does not arrive in time (408)', async () => {
    fake.reset();
    const result = await dribble(
      `POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${TEST_AUTH_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000`,
      2500,
    );
    expect(result.response).toMatch(/^HTTP\/1.1 408/);
    expect(result.closedByServer).toBe(true);
    expect(fake.requests).toHaveLength(0);
  });
});

describe('failed logins', () => {
  let app: TestApp;
  beforeAll(async () => {
    app = await buildTestApp({
      UPSTREAM_BASE_URL: fake.url,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      RATE_LIMIT_FAILED_AUTH: '5',
      RATE_LIMIT_HEALTH: '1000',
    });
  });
  afterAll(() => app.close());

  it('answers 429 to an address past its refused credentials per minute, without checking or logging more', async () => {
    const longPath = `/health?${'x'.repeat(5000)}`;
    for (let i = 0; i < 5; i++) await request(app.app).get(longPath).set('Authorization', `Bearer guess-${i}`).expect(401);
    const refusals = app.logs.filter((l) => l.includes('Invalid authorization token provided'));
    expect(refusals).toHaveLength(5);
    expect(Math.max(...refusals.map((l) => l.length))).toBeLessThan(600);
    const limited = await request(app.app).get('/health').set('Authorization', 'Bearer guess-6').expect(429);
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0);
    // Even the right key waits: otherwise 429 versus 200 would still tell a guesser when it is right.
    await request(app.app).get('/health').set('Authorization', `Bearer ${TEST_AUTH_TOKEN}`).expect(429);
    expect(app.logs.filter((l) => l.includes('Invalid authorization token provided'))).toHaveLength(5);
  });
});

describe('the memory user from safety_identifier', () => {
  let p: MemoryProxy;
  beforeAll(async () => {
    // Which user the chat path resolves is the proxy's business: the fake memory service will do.
    p = await startMemoryProxy({ upstreamUrl: fake.url, dataDir: fs.mkdtempSync(path.join(tmp, 'data-')), memory: fakeMemory() });
    await request(p.app.app)
      .post('/remember')
      .set(auth)
      .send({ user_id: 'sid-olga', content: 'Olga plays the cello', infer: false })
      .expect(200);
  });
  afterAll(() => p.close());
  beforeEach(() => fake.reset());

  it('takes safety_identifier when there is no user, and user when both are sent', async () => {
    const ask = (extra: Record<string, string>) =>
      p.client.chat.completions
        .create({ model: 'm', messages: [{ role: 'user', content: 'Which instrument does Olga play, the cello?' }], ...extra } as never, {
          headers: { 'X-Mem0-Memory': 'read' },
        })
        .withResponse();
    expect((await ask({ safety_identifier: 'sid-olga' })).response.headers.get('x-mem0-memories')).toBe('1');
    expect((await ask({ user: 'someone-else', safety_identifier: 'sid-olga' })).response.headers.get('x-mem0-memories')).toBe('0');
  });
});

describe('MCP batches', () => {
  let app: TestApp;
  beforeAll(async () => {
    app = await buildTestApp({ UPSTREAM_BASE_URL: fake.url, OPENAI_API_KEY: TEST_OPENAI_KEY, AUTH_TOKEN: TEST_AUTH_TOKEN });
  });
  afterAll(() => app.close());
  const mcp = () =>
    request(app.app).post('/mcp').set(auth).set('Accept', 'application/json, text/event-stream').set('Content-Type', 'application/json');

  it('refuses a JSON-RPC batch (one rate-limited request may not carry a hundred tool calls), and deep bodies', async () => {
    const calls = Array.from({ length: 100 }, (_, i) => ({
      jsonrpc: '2.0',
      id: i,
      method: 'tools/call',
      params: { name: 'add_memory', arguments: { user_id: 'u', content: `fact ${i}` } },
    }));
    const batch = await mcp().send(JSON.stringify(calls)).expect(400);
    expect(batch.body).toMatchObject({ jsonrpc: '2.0', error: { code: -32600 }, id: null });
    const deep = await mcp()
      .send(`{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}}`)
      .expect(400);
    expect(deep.body).toMatchObject({ error: { code: -32700 } });
    const ping = await mcp()
      .send(JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'ping' }))
      .expect(200);
    expect(ping.body).toMatchObject({ jsonrpc: '2.0', id: 7, result: {} });
  });
});

describe('DNS rebinding', () => {
  const hostOf = async (env: Record<string, string>, host: string): Promise<number> => {
    const app = await buildTestApp({ UPSTREAM_BASE_URL: fake.url, OPENAI_API_KEY: TEST_OPENAI_KEY, ...env });
    try {
      return (await request(app.app).get('/v1/models').set('Host', host)).status;
    } finally {
      await app.close();
    }
  };

  it('a proxy on loopback answers only requests addressed to loopback names', async () => {
    expect(await hostOf({ SERVER_HOST: 'localhost' }, 'attacker.example:8000')).toBe(403);
    expect(await hostOf({ SERVER_HOST: 'localhost' }, 'localhost:8000')).toBe(200);
    expect(await hostOf({ SERVER_HOST: '127.0.0.1' }, '[::1]:8000')).toBe(200);
  });

  it('ALLOWED_HOSTS names the hosts otherwise; * or a public listen address allows any', async () => {
    expect(await hostOf({ SERVER_HOST: '0.0.0.0', ALLOWED_HOSTS: 'proxy.internal' }, 'proxy.internal')).toBe(200);
    expect(await hostOf({ SERVER_HOST: '0.0.0.0', ALLOWED_HOSTS: 'proxy.internal' }, 'localhost')).toBe(403);
    expect(await hostOf({ SERVER_HOST: '0.0.0.0' }, 'anything.example')).toBe(200);
    expect(await hostOf({ ALLOWED_HOSTS: '*' }, 'anything.example')).toBe(200);
  });
});

describe('memory size', () => {
  let p: MemoryProxy;
  beforeAll(async () => {
    p = await startProxy();
  });
  afterAll(() => p.close());

  it('refuses a memory stored as it is (infer: false) past 8000 characters, before the engine sees it', async () => {
    fake.reset();
    const res = await request(p.app.app)
      .post('/remember')
      .set(auth)
      .send({ user_id: 'pia', content: 'y'.repeat(95_000), infer: false })
      .expect(400);
    expect(JSON.stringify(res.body)).toContain('at most 8000 characters');
    expect(fake.requestsTo('/v1/embeddings')).toHaveLength(0);
    await request(p.app.app)
      .post('/remember')
      .set(auth)
      .send({ user_id: 'pia', content: 'Pia keeps notes short', infer: false })
      .expect(200);
  });
});

describe('an oversized exchange', () => {
  it('is queued with its user text cut to 100,000 characters', async () => {
    const p = await startProxy({}, { startQueue: false });
    try {
      const huge = `My document: ${'lorem ipsum '.repeat(100_000)}`;
      await p.client.chat.completions.create(
        { model: 'm', user: 'ray', messages: [{ role: 'user', content: huge }] },
        { headers: { 'X-Mem0-Memory': 'write', 'X-Request-ID': 'huge-1' } },
      );
      const db = new Database(path.join(p.app.config.dataDir, 'save-queue.db'), { readonly: true });
      try {
        const row = db.prepare('SELECT messages FROM save_jobs').get() as { messages: string };
        const messages = JSON.parse(row.messages) as Array<{ role: string; content: string }>;
        expect(messages[0]?.content.length).toBe(100_000);
        expect(huge.startsWith(messages[0]?.content ?? 'x')).toBe(true);
      } finally {
        db.close();
      }
    } finally {
      await p.close();
    }
  });
});

describe('memories per user (MEMORY_MAX_PER_USER)', () => {
  let p: MemoryProxy;
  beforeAll(async () => {
    // Its own engine: the per-user limit is the engine's setting.
    p = await startProxy({ MEMORY_MAX_PER_USER: '3', RATE_LIMIT_MCP: '100000' }, { ownEngine: true });
  });
  afterAll(() => p.close());
  beforeEach(() => fake.reset());

  const remember = (user: string, content: string | string[]) =>
    request(p.app.app)
      .post('/remember')
      .set(auth)
      .send({
        user_id: user,
        infer: false,
        ...(Array.isArray(content) ? { messages: content.map((c) => ({ role: 'user', content: c })) } : { content }),
      });
  const mcpAdd = (user: string, content: string) =>
    request(p.app.app)
      .post('/mcp')
      .set(auth)
      .set('Accept', 'application/json, text/event-stream')
      .set('Content-Type', 'application/json')
      .send(
        JSON.stringify({
          jsonrpc: '2.0',
          id: 1,
          method: 'tools/call',
          params: { name: 'add_memory', arguments: { user_id: user, content, infer: false } },
        }),
      );
  const mcpResult = (res: request.Response): { isError?: boolean; content: Array<{ text: string }> } => {
    // Streamable HTTP may answer as one SSE event.
    const text = res.text.startsWith('{') ? res.text : (/^data: (.*)$/m.exec(res.text)?.[1] ?? '{}');
    return (JSON.parse(text) as { result: { isError?: boolean; content: Array<{ text: string }> } }).result;
  };

  it('refuses adds past the limit on every door (413, an MCP tool error, a dead save) and only for that user', async () => {
    await remember('rue', 'Rue plays the cello').expect(200);
    await remember('rue', 'Rue lives in Oslo').expect(200);
    // Two at once would make four: refused whole, nothing stored.
    const both = await remember('rue', ['Rue has a cat', 'Rue has a dog']).expect(413);
    expect(both.body).toMatchObject({ error: 'Memory limit reached' });
    expect(JSON.stringify(both.body)).toMatch(/limit of 3 memories/);
    expect(await memoriesOf(p, 'rue')).toHaveLength(2);
    await remember('rue', 'Rue has a cat').expect(200);
    expect(await memoriesOf(p, 'rue')).toHaveLength(3);

    await remember('rue', 'Rue drinks tea').expect(413);
    const tool = mcpResult(await mcpAdd('rue', 'Rue drinks tea').expect(200));
    expect(tool.isError).toBe(true);
    expect(tool.content[0]?.text).toMatch(/^memory limit reached: .*limit of 3 memories/);
    // The chat is answered; its exchange is not saved (dead at once, no extraction call).
    const chat = await p.client.chat.completions.create({
      model: 'm',
      user: 'rue',
      messages: [{ role: 'user', content: 'I also play the piano.' }],
    });
    expect(chat.choices[0]?.message.content).toBeTruthy();
    await waitFor(() => (p.app.queue?.deadCount() === 1 ? true : undefined));
    expect(extractions()).toBe(0);
    const metrics = await request(p.app.app).get('/metrics').set(auth).expect(200);
    expect(metrics.text).toMatch(/^proxy_save_dead_total 1$/m);
    expect(await memoriesOf(p, 'rue')).toHaveLength(3);

    // Other users are not affected, and a deletion makes room again.
    await remember('sam', 'Sam runs marathons').expect(200);
    const [first] = await memoriesOf(p, 'rue');
    await request(p.app.app).post('/forget').set(auth).send({ user_id: 'rue', memory_id: first?.id }).expect(200);
    await remember('rue', 'Rue drinks tea').expect(200);
    expect(await memoriesOf(p, 'rue')).toHaveLength(3);
  });
});
