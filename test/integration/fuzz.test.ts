/**
 * Property-based robustness: generated methods, paths, headers, credentials and bodies thrown at
 * every endpoint through a real socket (`serve` + node:http, not supertest), with the real memory
 * engine and the fake upstream behind. Whatever arrives:
 *   - the proxy answers (no hang, no crash) and never with a 5xx of its own making other than
 *     502/504 on /v1 (upstream unreachable or slow) and 503 (memory unavailable); a 5xx relayed from
 *     the upstream must be exactly what the fake sent;
 *   - no response carries a stack trace, a source path or a secret;
 *   - nothing reaches the upstream outside `/v1/`.
 */
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { keyDigestHex } from '../../src/keys/registry';
import { startEngine } from '../helpers/engine';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { serve, type Served, type TestApp } from '../helpers/app';
import { buildKeyedTestApp, newTestKey } from '../helpers/keyed-app';
import { ALL_TEST_SECRETS, TEST_ANTHROPIC_KEY, TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

jest.setTimeout(120_000);

const KEY = { alice: newTestKey(), admin: newTestKey(), expired: newTestKey() };
const SECRETS = [...ALL_TEST_SECRETS, ...Object.values(KEY)];
const ROOT = path.resolve(__dirname, '..', '..');
/** `at fn (/path/file.ts:12:3)` or `at /path/file.js:1:2`: a stack frame. */
const STACK_FRAME = /\bat\s+(?:[^\s()]+\s+)?\(?(?:\/|[A-Za-z]:\\|node:)[^\s()]*:\d+/;

let fake: FakeUpstream;
let tmp: string;
let app: TestApp;
let served: Served;
const agent = new http.Agent({ keepAlive: false, maxSockets: 4 });

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 32 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-'));
  const env: Record<string, string> = {
    UPSTREAM_BASE_URL: fake.url,
    AUTH_TOKEN: TEST_AUTH_TOKEN,
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    // Anthropic requests get as far as their body checks; nothing generated is forwarded there.
    ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY,
    ANTHROPIC_UPSTREAM_BASE_URL: 'http://127.0.0.1:9',
    DATA_DIR: path.join(tmp, 'data'),
    EMBEDDING_DIMS: '32',
    MAX_BODY_BYTES: '65536',
    ...Object.fromEntries(
      ['HEALTH', 'SEARCH', 'LIST', 'REMEMBER', 'FORGET', 'V1', 'MCP', 'FAILED_AUTH'].map((n) => [`RATE_LIMIT_${n}`, '1000000']),
    ),
  };
  ({ app } = await buildKeyedTestApp(env, {
    dir: tmp,
    keys: [
      { id: 'alice', sha256: keyDigestHex(KEY.alice), user_id: 'alice' },
      { id: 'ops', sha256: keyDigestHex(KEY.admin), admin: true },
      { id: 'old', sha256: keyDigestHex(KEY.expired), expires_at: '2001-01-01T00:00:00Z' },
    ],
    token: TEST_AUTH_TOKEN,
    memory: (config, l) => startEngine(config, l),
    queueOptions: { baseDelayMs: 50, maxDelayMs: 200 },
  }));
  served = await serve(app.app);
});
afterAll(async () => {
  agent.destroy();
  await served.close();
  await app.close();
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

// ------------------------------------------------------------------------------- arbitraries

const ENDPOINTS = [
  '/search',
  '/list',
  '/remember',
  '/forget',
  '/health',
  '/metrics',
  '/v1/chat/completions',
  '/v1/responses',
  '/v1/models',
  '/v1/embeddings',
  '/v1',
  '/',
];
const printable = fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c));
const headerValue = fc.oneof(
  fc.string({ unit: printable, maxLength: 40 }),
  fc.constantFrom('alice', 'bob', '', ' ', 'default', 'x'.repeat(300)),
);
const pathPiece = fc.constantFrom(
  '..',
  '%2e%2e',
  '%2F',
  '%00',
  'a',
  '?x=1',
  '?user_id=bob',
  '#frag',
  '/',
  '//',
  '%zz',
  '~',
  ';',
  '%ff',
  'v1',
  '..%2f',
  '\u00e9',
  '%0d%0aX:1',
);
const pathArb = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...ENDPOINTS) },
  {
    weight: 2,
    arbitrary: fc.tuple(fc.constantFrom(...ENDPOINTS), fc.array(pathPiece, { maxLength: 4 })).map(([p, rest]) => p + rest.join('')),
  },
  { weight: 1, arbitrary: fc.array(pathPiece, { minLength: 1, maxLength: 6 }).map((parts) => `/${parts.join('')}`) },
);
const authArb = fc.constantFrom<string | undefined>(
  undefined,
  `Bearer ${TEST_AUTH_TOKEN}`,
  `Bearer ${KEY.alice}`,
  `Bearer ${KEY.admin}`,
  `Bearer ${KEY.expired}`,
  'Bearer garbage',
  `Basic ${Buffer.from(`x:${KEY.alice}`).toString('base64')}`,
  `Bearer ${KEY.alice} ${KEY.admin}`,
  'Bearer',
  `bearer   ${KEY.alice}  `,
);
const id = fc.oneof(
  fc.constantFrom('alice', 'bob', 'default', '', '  ', 'x'.repeat(300)),
  fc.string({ maxLength: 20 }),
  fc.integer(),
  fc.constant(null),
  fc.array(fc.string(), { maxLength: 2 }),
);
const anyValue = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 3 }),
);
const message = fc.record(
  {
    role: fc.oneof(fc.constantFrom('user', 'assistant', 'system', 'tool', 'developer'), anyValue),
    content: fc.oneof(fc.constantFrom('I like tea', 'What do I like?', ''), fc.string({ maxLength: 60 }), anyValue),
  },
  { requiredKeys: [] },
);
const chatBody = fc.record(
  {
    model: fc.oneof(fc.constant('gpt-4o-mini'), anyValue),
    messages: fc.oneof(fc.array(message, { maxLength: 4 }), anyValue),
    input: fc.oneof(fc.string({ maxLength: 40 }), fc.array(message, { maxLength: 3 }), anyValue),
    user: id,
    stream: fc.oneof(fc.boolean(), anyValue),
    max_tokens: fc.oneof(fc.integer({ min: -5, max: 20 }), anyValue),
  },
  { requiredKeys: [] },
);
const adminBody = fc.record(
  {
    user_id: id,
    agent_id: id,
    run_id: id,
    query: fc.oneof(fc.string({ maxLength: 40 }), anyValue),
    limit: fc.oneof(fc.integer({ min: -2, max: 2000 }), anyValue),
    offset: fc.oneof(fc.integer({ min: -2, max: 5 }), anyValue),
    content: fc.oneof(fc.string({ maxLength: 60 }), anyValue),
    messages: fc.oneof(fc.array(message, { maxLength: 3 }), anyValue),
    metadata: anyValue,
    infer: fc.oneof(fc.constant(false), anyValue),
    memory_id: id,
    extra: anyValue,
  },
  { requiredKeys: [] },
);
const bodyArb = fc.oneof(
  fc.constant<Buffer | undefined>(undefined),
  chatBody.map((b) => Buffer.from(JSON.stringify(b))),
  adminBody.map((b) => Buffer.from(JSON.stringify(b))),
  fc.jsonValue({ maxDepth: 3 }).map((v) => Buffer.from(JSON.stringify(v))),
  fc.string({ maxLength: 80 }).map((s) => Buffer.from(s)),
  fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
  fc
    .constantFrom(
      '{',
      '{"messages":',
      '[]',
      'null',
      '"x"',
      '{"__proto__":{"admin":true},"user_id":"bob"}',
      '{"constructor":{"prototype":{"x":1}}}',
    )
    .map((s) => Buffer.from(s)),
);
const headersArb = fc.record(
  {
    'content-type': fc.constantFrom(
      'application/json',
      'text/plain',
      'application/json; charset=utf-16',
      'application/x-www-form-urlencoded',
      'garbage/',
      '',
    ),
    'x-mem0-user-id': headerValue,
    'x-mem0-agent-id': headerValue,
    'x-mem0-run-id': headerValue,
    'x-mem0-memory': fc.oneof(fc.constantFrom('off', 'read', 'write', 'on', 'both'), headerValue),
    'content-encoding': fc.constantFrom('gzip', 'br', 'identity', 'bogus'),
    'x-forwarded-for': headerValue,
    accept: headerValue,
  },
  { requiredKeys: [] },
);
const requestArb = fc.record({
  method: fc.constantFrom('GET', 'POST', 'POST', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD'),
  path: pathArb,
  auth: authArb,
  headers: headersArb,
  body: bodyArb,
  chunked: fc.boolean(),
});
interface GeneratedRequest {
  method: string;
  path: string;
  auth: string | undefined;
  headers: Record<string, string>;
  body: Buffer | undefined;
  chunked: boolean;
}

// ------------------------------------------------------------------------------- sending

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

function send(r: GeneratedRequest): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = { ...r.headers };
    if (r.auth !== undefined) headers.authorization = r.auth;
    if (r.body && !r.chunked) headers['content-length'] = String(r.body.length);
    const req = http.request(`${served.url}${r.path}`, { method: r.method, headers, agent, timeout: 15_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer in time: ${r.method} ${r.path}`)));
    req.on('error', reject);
    req.end(r.body);
  });
}

/** Normalised path of a URL as an HTTP server would resolve dot segments. */
const resolvedPath = (url: string): string => new URL(url, 'http://upstream.invalid').pathname;

function isV1(p: string): boolean {
  // Mirrors app.ts: `/v1`, `/v1/...`, `/v1?...`.
  return p === '/v1' || p.startsWith('/v1/') || p.startsWith('/v1?');
}

function checkReply(r: GeneratedRequest, reply: Reply, upstreamStatuses: ReadonlySet<number>): void {
  const where = `${r.method} ${r.path} → ${reply.status} ${reply.text.slice(0, 200)}`;
  if (reply.status >= 500) {
    const code = /"code":"([a-z_]+)"/.exec(reply.text)?.[1];
    const own = isV1(r.path)
      ? reply.status === 502 || reply.status === 504 || (reply.status === 503 && code === 'memory_unavailable')
      : reply.status === 503 && /"status_code":503/.test(reply.text);
    const relayed = isV1(r.path) && upstreamStatuses.has(reply.status);
    if (!own && !relayed) throw new Error(`unexpected 5xx: ${where}`);
  }
  if (STACK_FRAME.test(reply.text) || reply.text.includes(ROOT) || reply.text.includes('node_modules'))
    throw new Error(`stack or path leaked: ${where}`);
  const all = reply.text + JSON.stringify(reply.headers);
  for (const s of SECRETS) if (all.includes(s)) throw new Error(`secret leaked: ${where}`);
}

// ------------------------------------------------------------------------------- properties

let sent = 0;

it('answers every generated request without a crash, a stray 5xx, a stack trace or a secret', async () => {
  await fc.assert(
    fc.asyncProperty(requestArb, async (r) => {
      const before = fake.requests.length;
      const reply = await send(r);
      sent++;
      const statuses = new Set(fake.requests.slice(before).map((q) => q.status ?? 0));
      checkReply(r, reply, statuses);
    }),
    { numRuns: 1500 },
  );
  // Still healthy afterwards.
  const health = await send({
    method: 'GET',
    path: '/health',
    auth: `Bearer ${TEST_AUTH_TOKEN}`,
    headers: {},
    body: undefined,
    chunked: false,
  });
  expect(health.status).toBe(200);
});

it('focuses on the memory routes with well-formed JSON and every credential', async () => {
  const focused = fc.record({
    method: fc.constant('POST'),
    path: fc.constantFrom('/search', '/list', '/remember', '/forget', '/v1/chat/completions', '/v1/responses'),
    auth: authArb,
    headers: fc.record(
      {
        'content-type': fc.constant('application/json'),
        'x-mem0-user-id': headerValue,
        'x-mem0-memory': fc.constantFrom('off', 'read', 'write', 'on'),
      },
      { requiredKeys: ['content-type'] },
    ),
    body: fc.oneof(chatBody, adminBody).map((b) => Buffer.from(JSON.stringify(b))),
    chunked: fc.boolean(),
  });
  await fc.assert(
    fc.asyncProperty(focused, async (r) => {
      const before = fake.requests.length;
      const reply = await send(r);
      sent++;
      checkReply(r, reply, new Set(fake.requests.slice(before).map((q) => q.status ?? 0)));
      // A bound key naming another user is refused: never 2xx on a memory route.
      if (r.auth === `Bearer ${KEY.alice}` && r.headers['x-mem0-user-id']?.trim() === 'bob' && r.path.startsWith('/v1/')) {
        expect(reply.status).not.toBeLessThan(300);
      }
    }),
    { numRuns: 700 },
  );
});

it('refuses every JSON-RPC batch on /mcp and every body nested past 400 levels on the body-reading routes, and survives any single MCP message', async () => {
  const mcpHeaders = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
  const rpc = fc.record({
    jsonrpc: fc.constantFrom('2.0', '1.0'),
    id: fc.oneof(fc.integer(), fc.string({ maxLength: 8 })),
    method: fc.constantFrom('initialize', 'ping', 'tools/list', 'tools/call', 'resources/list', 'resources/read', 'nope'),
    params: fc.oneof(
      fc.constant(undefined),
      fc.record({
        name: fc.constantFrom('search_memories', 'list_memories', 'add_memory', 'delete_memory', 'x'),
        arguments: fc.dictionary(
          fc.constantFrom('user_id', 'query', 'limit', 'content', 'memory_id', 'offset'),
          fc.oneof(fc.string({ maxLength: 20 }), fc.integer({ min: -5, max: 5000 })),
        ),
      }),
    ),
  });
  const nested = fc.tuple(fc.integer({ min: 401, max: 20_000 }), fc.constantFrom('[', '{"a":')).map(([depth, open]) => {
    const close = open === '[' ? ']' : '}';
    return `{"model":"m","messages":[{"role":"user","content":"hi"}],"x":${open.repeat(depth)}1${close.repeat(depth)}}`;
  });
  const attack = fc.oneof(
    fc.record({
      kind: fc.constant('batch' as const),
      body: fc.array(rpc, { minLength: 0, maxLength: 30 }).map((b) => JSON.stringify(b)),
      path: fc.constant('/mcp'),
    }),
    fc.record({
      kind: fc.constant('deep' as const),
      body: nested,
      path: fc.constantFrom('/v1/chat/completions', '/v1/responses', '/v1/messages', '/mcp'),
    }),
    fc.record({ kind: fc.constant('single' as const), body: rpc.map((m) => JSON.stringify(m)), path: fc.constant('/mcp') }),
  );
  await fc.assert(
    fc.asyncProperty(attack, fc.constantFrom(`Bearer ${TEST_AUTH_TOKEN}`, `Bearer ${KEY.alice}`), async (a, auth) => {
      const r: GeneratedRequest = {
        method: 'POST',
        path: a.path,
        auth,
        headers:
          a.path === '/mcp'
            ? mcpHeaders
            : a.path === '/v1/messages'
              ? { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' }
              : { 'content-type': 'application/json' },
        body: Buffer.from(a.body),
        chunked: false,
      };
      const before = fake.requests.length;
      const reply = await send(r);
      sent++;
      checkReply(r, reply, new Set(fake.requests.slice(before).map((q) => q.status ?? 0)));
      if (a.kind === 'batch')
        expect({ status: reply.status, code: /"code":(-?\d+)/.exec(reply.text)?.[1] }).toEqual({ status: 400, code: '-32600' });
      // Too deep (400), or refused for its size first (413).
      if (a.kind === 'deep') expect([400, 413]).toContain(reply.status);
      if (a.kind !== 'single') expect(fake.requests.length).toBe(before);
    }),
    { numRuns: 300 },
  );
});

// Found by this file: body-parser reports a corrupt compressed body as an http-errors 400 without a
// `type`, which toAppError (src/errors.ts) used to turn into a 500.
it('answers 400 to a corrupt gzip body on the admin API', async () => {
  const reply = await send({
    method: 'POST',
    path: '/search',
    auth: `Bearer ${KEY.admin}`,
    headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
    body: Buffer.from('{'),
    chunked: false,
  });
  expect(reply.status).toBe(400);
});

it('survives malformed HTTP on a raw socket', async () => {
  const { port } = served.server.address() as net.AddressInfo;
  const raw = [
    'GET /health HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n',
    `GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
    'POST /search HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
    'POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}{}{}',
    'GET /v1/models HTTP/9.9\r\n\r\n',
    `GET /v1/../../etc/passwd HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${TEST_AUTH_TOKEN}\r\n\r\n`,
    'GARBAGE\r\n\r\n',
  ];
  for (const text of raw) {
    const answer = await new Promise<string>((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => socket.end(text));
      let data = '';
      socket.on('data', (c: Buffer) => (data += c.toString('latin1')));
      socket.on('close', () => resolve(data));
      socket.on('error', () => resolve(data));
      socket.setTimeout(5000, () => socket.destroy());
    });
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? '0');
    sent++;
    expect([400, 401, 404, 431]).toContain(status);
    expect(STACK_FRAME.test(answer)).toBe(false);
  }
});

it('never sent the upstream anything outside /v1/', () => {
  expect(sent).toBeGreaterThan(2000);
  expect(fake.requests.length).toBeGreaterThan(0);
  // `/v1` itself is the upstream base URL's own path (a bare `/v1` request is forwarded there).
  const outside = fake.requests.map((q) => q.url).filter((u) => resolvedPath(u) !== '/v1' && !resolvedPath(u).startsWith('/v1/'));
  expect(outside).toEqual([]);
});
