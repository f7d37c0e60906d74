/**
 * The transparent /v1 proxy, driven by the official `openai` client against the fake upstream.
 */
import http from 'node:http';
import OpenAI from 'openai';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { buildTestApp, serve, type Served, type TestApp } from '../helpers/app';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

let fake: FakeUpstream;
let test: TestApp;
let proxy: Served;
let client: OpenAI;

async function startProxy(env: Record<string, string> = {}): Promise<void> {
  test = await buildTestApp({
    UPSTREAM_BASE_URL: fake.url,
    AUTH_TOKEN: TEST_AUTH_TOKEN,
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    RATE_LIMIT_V1: '1000',
    ...env,
  });
  proxy = await serve(test.app);
  client = new OpenAI({ apiKey: TEST_AUTH_TOKEN, baseURL: `${proxy.url}/v1`, maxRetries: 0, timeout: 10_000 });
}

async function stopProxy(): Promise<void> {
  await proxy.close();
  await test.close();
}

/** A raw request, for what the SDK cannot send (odd targets, hop-by-hop headers, aborts). */
function rawRequest(
  options: http.RequestOptions & { body?: string | Buffer; chunked?: boolean },
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  const url = new URL(proxy.url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, ...options }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (options.body !== undefined) {
      if (options.chunked) {
        const body = Buffer.from(options.body);
        for (let i = 0; i < body.length; i += 1024) req.write(body.subarray(i, i + 1024));
      } else req.write(options.body);
    }
    req.end();
  });
}

const authHeaders = { authorization: `Bearer ${TEST_AUTH_TOKEN}` };

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
});
afterAll(async () => {
  await fake.close();
});

describe('forwarding', () => {
  beforeAll(() => startProxy());
  afterAll(() => stopProxy());
  beforeEach(() => fake.reset());

  it('forwards a chat completion with tools and unknown fields unchanged and returns the upstream answer', async () => {
    const body = {
      model: 'gpt-4o-mini',
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: [{ type: 'text', text: 'What is the weather in Paris?' }] },
      ],
      tools: [
        {
          type: 'function',
          function: { name: 'weather', description: 'Weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } },
        },
      ],
      temperature: 0.2,
      some_future_field: { nested: [1, 2, 3] },
    };
    const completion = await client.chat.completions.create(body as unknown as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
    expect(completion.object).toBe('chat.completion');
    expect(typeof completion.choices[0]?.message.content).toBe('string');
    const [seen] = fake.requestsTo('/v1/chat/completions');
    expect(seen?.json).toEqual(body);
  });

  it('streams a chat completion chunk by chunk, not buffered whole', async () => {
    fake.setBehaviour({ reply: 'one two three four five six', wordsPerChunk: 1, firstTokenDelayMs: 0, chunkIntervalMs: 150 });
    const started = Date.now();
    const stream = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      stream: true,
      messages: [{ role: 'user', content: 'count' }],
    });
    let text = '';
    let firstChunkAt = 0;
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta.content ?? '';
      if (delta && !firstChunkAt) firstChunkAt = Date.now() - started;
      text += delta;
    }
    const total = Date.now() - started;
    expect(text.replace(/\s+/g, ' ').trim()).toBe('one two three four five six');
    // Six chunks 150 ms apart: the first must arrive long before the stream ends.
    expect(total).toBeGreaterThanOrEqual(700);
    expect(firstChunkAt).toBeLessThan(total - 500);
  });

  it('passes /v1/models and /v1/embeddings through', async () => {
    const models = await client.models.list();
    expect(models.data.length).toBeGreaterThan(0);
    const emb = await client.embeddings.create({
      model: 'text-embedding-3-small',
      input: ['coffee in the morning', 'morning coffee'],
      dimensions: 64,
    });
    expect(emb.data).toHaveLength(2);
    expect(emb.data[0]?.embedding).toHaveLength(64);
    expect(fake.requestsTo('/v1/embeddings')).toHaveLength(1);
  });

  it('sends the server key upstream and never the caller token', async () => {
    await client.models.list();
    const [seen] = fake.requestsTo('/v1/models');
    expect(seen?.headers.authorization).toBe(`Bearer ${TEST_OPENAI_KEY}`);
    expect(JSON.stringify(fake.requests)).not.toContain(TEST_AUTH_TOKEN);
  });

  it("accepts the proxy key as x-api-key too, and never forwards a caller's x-api-key or api-key header", async () => {
    const res = await rawRequest({
      method: 'GET',
      path: '/v1/models',
      headers: { 'x-api-key': TEST_AUTH_TOKEN, 'api-key': 'caller-azure-key' },
    });
    expect(res.status).toBe(200);
    const bearerToo = await rawRequest({
      method: 'GET',
      path: '/v1/models',
      headers: { ...authHeaders, 'x-api-key': 'caller-other-key', 'api-key': 'caller-azure-key' },
    });
    expect(bearerToo.status).toBe(200);
    const seen = fake.requestsTo('/v1/models');
    expect(seen).toHaveLength(2);
    for (const request of seen) {
      expect(request.headers.authorization).toBe(`Bearer ${TEST_OPENAI_KEY}`);
      expect(request.headers['x-api-key']).toBeUndefined();
      expect(request.headers['api-key']).toBeUndefined();
    }
    expect(JSON.stringify(fake.requests)).not.toMatch(new RegExp(`${TEST_AUTH_TOKEN}|caller-azure-key|caller-other-key`));
  });

  it('keeps the query string and drops hop-by-hop and X-Mem0-* headers', async () => {
    const res = await rawRequest({
      method: 'GET',
      path: '/v1/models?limit=2&after=x',
      headers: {
        ...authHeaders,
        connection: 'keep-alive, x-secret-hop',
        'x-secret-hop': 'drop me',
        'keep-alive': 'timeout=5',
        te: 'trailers',
        'proxy-authorization': 'Basic abc',
        'x-mem0-user-id': 'alice',
        'x-mem0-memory': 'off',
        'x-custom': 'kept',
      },
    });
    expect(res.status).toBe(200);
    const [seen] = fake.requestsTo('/v1/models');
    expect(seen?.url).toBe('/v1/models?limit=2&after=x');
    for (const name of ['x-secret-hop', 'keep-alive', 'te', 'proxy-authorization', 'x-mem0-user-id', 'x-mem0-memory']) {
      expect(seen?.headers[name]).toBeUndefined();
    }
    expect(seen?.headers['x-custom']).toBe('kept');
  });

  it('echoes X-Request-ID and keeps the upstream id under X-Upstream-Request-ID', async () => {
    const res = await rawRequest({ method: 'GET', path: '/v1/models', headers: { ...authHeaders, 'x-request-id': 'abc-123' } });
    expect(res.headers['x-request-id']).toBe('abc-123');
    const generated = await rawRequest({ method: 'GET', path: '/v1/models', headers: authHeaders });
    expect(generated.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('tells the proxy overhead in X-Mem0-Overhead-Ms on every /v1 response, refusals included, and in /metrics', async () => {
    const overheadOf = (h: http.IncomingHttpHeaders): number => Number(h['x-mem0-overhead-ms']);
    const ok = await rawRequest({ method: 'GET', path: '/v1/models', headers: authHeaders });
    expect(overheadOf(ok.headers)).toBeGreaterThanOrEqual(0);
    expect(overheadOf(ok.headers)).toBeLessThan(1000);
    const { response } = await client.chat.completions
      .create({ model: 'm', stream: true, messages: [{ role: 'user', content: 'hi' }] })
      .withResponse();
    expect(Number(response.headers.get('x-mem0-overhead-ms'))).toBeGreaterThanOrEqual(0);
    const refused = await rawRequest({ method: 'GET', path: '/v1/models', headers: { authorization: 'Bearer nope' } });
    expect(refused.status).toBe(401);
    expect(overheadOf(refused.headers)).toBeGreaterThanOrEqual(0);
    const metrics = await rawRequest({ method: 'GET', path: '/metrics', headers: authHeaders });
    expect(metrics.body).toMatch(/proxy_overhead_seconds_count\{api="openai",route="\/v1\/models"\} [1-9]/);
    expect(metrics.body).toMatch(/proxy_overhead_seconds_count\{api="openai",route="\/v1\/chat\/completions"\} [1-9]/);
  });

  it('passes upstream errors through unchanged: a 500 raises InternalServerError', async () => {
    fake.failNext(500, { message: 'upstream exploded', type: 'server_error', code: 'boom' });
    const err = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect((err as InstanceType<typeof OpenAI.InternalServerError>).status).toBe(500);
    expect((err as InstanceType<typeof OpenAI.InternalServerError>).message).toContain('upstream exploded');
  });

  it('passes an upstream 429 through as RateLimitError', async () => {
    fake.failNext(429, { message: 'slow down', type: 'requests', code: 'rate_limit_exceeded' });
    const err = await client.models.list().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
  });

  it('answers 400 in OpenAI shape for a chat body that is not JSON', async () => {
    const res = await rawRequest({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { ...authHeaders, 'content-type': 'application/json' },
      body: '{not json',
    });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body)).toEqual({
      error: { message: 'Request body is not valid JSON', type: 'invalid_request_error', param: null, code: 'invalid_request' },
    });
    expect(fake.requests).toHaveLength(0);
  });

  it('aborts the upstream request when the client disconnects', async () => {
    fake.setNext({ kind: 'hang' });
    const controller = new AbortController();
    const pending = client.chat.completions
      .create({ model: 'm', messages: [{ role: 'user', content: 'hang' }] }, { signal: controller.signal })
      .catch((e: unknown) => e);
    await fake.waitForRequests(1, { path: '/v1/chat/completions' });
    controller.abort();
    await pending;
    await waitFor(() => fake.requests[0]?.aborted === true);
    expect(fake.requests[0]?.aborted).toBe(true);
  });

  it('aborts the upstream stream when the client disconnects mid-stream', async () => {
    fake.setBehaviour({ reply: Array.from({ length: 40 }, (_, i) => `w${i}`).join(' '), wordsPerChunk: 1, chunkIntervalMs: 50 });
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      { model: 'm', stream: true, messages: [{ role: 'user', content: 'long' }] },
      { signal: controller.signal },
    );
    let n = 0;
    await (async () => {
      for await (const _chunk of stream) {
        n += 1;
        if (n === 3) controller.abort();
      }
    })().catch(() => undefined);
    await waitFor(() => fake.requests[0]?.aborted === true);
    expect(fake.requests[0]?.completed).toBe(false);
  });
});

describe('authentication', () => {
  beforeAll(() => startProxy());
  afterAll(() => stopProxy());
  beforeEach(() => fake.reset());

  it('raises AuthenticationError for a wrong token and never contacts the upstream', async () => {
    const bad = new OpenAI({ apiKey: 'wrong-token', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
    await expect(bad.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    expect(fake.requests).toHaveLength(0);
    expect(test.logs.some((l) => l.includes('Invalid authorization token provided'))).toBe(true);
  });

  it('answers 401 without an Authorization header, on /health too', async () => {
    const res = await rawRequest({ method: 'GET', path: '/health' });
    expect(res.status).toBe(401);
    expect(JSON.parse(res.body)).toMatchObject({ error: 'Unauthorized' });
    expect(test.logs.some((l) => l.includes('No authorization header provided'))).toBe(true);
    const ok = await rawRequest({ method: 'GET', path: '/health', headers: authHeaders });
    expect(ok.status).toBe(200);
  });
});

describe('upstream failures', () => {
  afterEach(() => stopProxy());
  beforeEach(() => fake.reset());

  it('answers 502 in OpenAI shape when the upstream is down', async () => {
    const down = await startFakeUpstream();
    const deadUrl = down.url;
    await down.close();
    await startProxyAt(deadUrl);
    const err = await client.models.list().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect((err as InstanceType<typeof OpenAI.APIError>).status).toBe(502);
    const res = await rawRequest({ method: 'GET', path: '/v1/models', headers: authHeaders });
    expect(JSON.parse(res.body).error).toMatchObject({ type: 'server_error', code: 'upstream_unreachable' });
  });

  it('answers 504 when the upstream does not answer within UPSTREAM_TIMEOUT_MS, and aborts it', async () => {
    await startProxy({ UPSTREAM_TIMEOUT_MS: '300' });
    fake.setNext({ kind: 'hang' });
    const res = await rawRequest({ method: 'GET', path: '/v1/models', headers: authHeaders });
    expect(res.status).toBe(504);
    expect(JSON.parse(res.body).error.code).toBe('upstream_timeout');
    await waitFor(() => fake.requests[0]?.aborted === true);
  });
});

describe('body limits', () => {
  beforeAll(() => startProxy({ MAX_BODY_BYTES: '2048' }));
  afterAll(() => stopProxy());
  beforeEach(() => fake.reset());

  const big = JSON.stringify({ model: 'm', input: 'x'.repeat(5000) });

  it('answers 413 for a chat body over the limit', async () => {
    const res = await rawRequest({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { ...authHeaders, 'content-type': 'application/json' },
      body: big,
    });
    expect(res.status).toBe(413);
    expect(JSON.parse(res.body).error.type).toBe('invalid_request_error');
    expect(fake.requests).toHaveLength(0);
  });

  it('answers 413 for a passthrough body over the limit, with or without Content-Length', async () => {
    const withLength = await rawRequest({
      method: 'POST',
      path: '/v1/embeddings',
      headers: { ...authHeaders, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(big)) },
      body: big,
    });
    expect(withLength.status).toBe(413);
    const chunked = await rawRequest({
      method: 'POST',
      path: '/v1/embeddings',
      headers: { ...authHeaders, 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
      body: big,
      chunked: true,
    });
    expect(chunked.status).toBe(413);
    expect(fake.requests.filter((r) => r.completed && r.body.length > 2048)).toHaveLength(0);
  });

  it('forwards a chunked body under the limit', async () => {
    const small = JSON.stringify({ model: 'text-embedding-3-small', input: 'hello there' });
    const res = await rawRequest({
      method: 'POST',
      path: '/v1/embeddings',
      headers: { ...authHeaders, 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
      body: small,
      chunked: true,
    });
    expect(res.status).toBe(200);
    expect(fake.requestsTo('/v1/embeddings')[0]?.body.toString()).toBe(small);
  });
});

describe('request-target tricks', () => {
  beforeAll(() => startProxy());
  afterAll(() => stopProxy());
  beforeEach(() => fake.reset());

  const tricks = [
    '/v1/../health',
    '/v1/./models',
    '/v1/%2e%2e/health',
    '/v1/%2E%2E/%2E%2E/etc/passwd',
    '/v1/%252e%252e/health',
    '/v1/models/..%2f..%2fhealth',
    '/v1/models%2f..%2f..',
    '/v1//evil.example/v1/models',
    '/v1/models\\..\\..\\health',
    '/v1/%5c..%5chealth',
    '/v1/models/%00',
    '/v1/%zz',
    'http://evil.example/v1/models',
    '//evil.example/v1/models',
  ];

  it.each(tricks)('refuses %s without reaching another host or path', async (target) => {
    const res = await rawRequest({ method: 'GET', path: target, headers: authHeaders });
    expect([400, 404]).toContain(res.status);
    expect(fake.requests.filter((r) => !r.path.startsWith('/v1/'))).toHaveLength(0);
    expect(fake.requests).toHaveLength(0);
  });

  it('forwards ordinary encoded characters as they were sent', async () => {
    await rawRequest({ method: 'GET', path: '/v1/models/gpt-4o%3Amini', headers: authHeaders });
    expect(fake.requests[0]?.url).toBe('/v1/models/gpt-4o%3Amini');
  });
});

async function startProxyAt(upstreamUrl: string): Promise<void> {
  test = await buildTestApp({ UPSTREAM_BASE_URL: upstreamUrl, AUTH_TOKEN: TEST_AUTH_TOKEN, OPENAI_API_KEY: TEST_OPENAI_KEY });
  proxy = await serve(test.app);
  client = new OpenAI({ apiKey: TEST_AUTH_TOKEN, baseURL: `${proxy.url}/v1`, maxRetries: 0, timeout: 10_000 });
}

async function waitFor(condition: () => boolean, timeoutMs = 3000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
