/**
 * Drives the fake Anthropic upstream with the official Anthropic SDK (alias `anthropic-sdk-v1`,
 * @anthropic-ai/sdk 1.16.0) and with raw Claude Code-shaped bytes over node:http, so the proxy's
 * Anthropic tests can rely on it: wire format, auth, scripted faults, the prompt cache simulation,
 * and the Claude Code fixture's byte-offset scanner.
 */
import Anthropic from 'anthropic-sdk-v1';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { flattenPromptBlocks, startFakeAnthropic, type FakeAnthropic, type FakeAnthropicOptions } from '../fakes/anthropic-upstream';
import {
  cacheBreakpointOffsets,
  claudeCodeHeaders,
  firstRequest,
  nextTurnRequest,
  toolLoopRequest,
  type ClaudeCodeRequest,
} from '../fixtures/claude-code';
import { bearerClient as sdkBearerClient, xApiKeyClient as sdkXApiKeyClient } from '../helpers/anthropic-client';
import { rawRequest, type RawResponse } from '../helpers/raw-http';

const MODEL = 'claude-sonnet-4-5-20250929';
const KEY = 'sk-ant-fake-upstream-key';

/** A client passing the key as the SDK's `apiKey` (which it sends as `Authorization: Bearer`). */
const bearerClient = (fake: FakeAnthropic, apiKey = KEY): Anthropic => sdkBearerClient(fake.url, apiKey, { as: 'apiKey', timeout: 5000 });

/** A client sending only `x-api-key` (via defaultHeaders). */
const xApiKeyClient = (fake: FakeAnthropic, key = KEY): Anthropic => sdkXApiKeyClient(fake.url, key, { timeout: 5000 });

/** Sends exact bytes to the fake with node:http (no SDK in between). */
const sendRaw = (fake: FakeAnthropic, urlPath: string, headers: Record<string, string>, body: Buffer): Promise<RawResponse> =>
  rawRequest(`${fake.url}${urlPath}`, 'POST', headers, body);

interface ParsedEvent {
  event: string;
  data: unknown;
}

function parseSse(text: string): ParsedEvent[] {
  return text
    .split('\n\n')
    .filter((chunk) => chunk.trim().length > 0)
    .map((chunk) => {
      const event = /^event: (.*)$/m.exec(chunk)?.[1] ?? '';
      const data = /^data: (.*)$/m.exec(chunk)?.[1] ?? 'null';
      return { event, data: JSON.parse(data) as unknown };
    });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The usage object of a raw SSE reply's message_start event. */
function startUsage(reply: RawResponse): Record<string, unknown> {
  const start = parseSse(reply.text).find((e) => e.event === 'message_start');
  const message = isRecord(start?.data) ? start.data['message'] : undefined;
  const usage = isRecord(message) ? message['usage'] : undefined;
  if (!isRecord(usage)) throw new Error(`no usage in message_start: ${reply.text.slice(0, 300)}`);
  return usage;
}

const rawClaudeCode = (fake: FakeAnthropic, body: ClaudeCodeRequest, sessionId = 'sess-1'): Promise<RawResponse> =>
  sendRaw(fake, '/v1/messages?beta=true', { ...claudeCodeHeaders(sessionId), 'x-api-key': KEY }, Buffer.from(JSON.stringify(body)));

const toolStep = {
  assistantText: 'Let me list the files first.',
  toolUseId: 'toolu_01AbCdEf',
  toolName: 'Bash',
  toolInput: { command: 'ls -la', description: 'List files' },
  toolResult: 'total 8\ndrwxr-xr-x  src\n-rw-r--r--  package.json',
};

/**
 * One fake for the enclosing describe: started before all its tests (handed to `started`), reset
 * after each, closed after all.
 */
function withFake(options: FakeAnthropicOptions, started: (fake: FakeAnthropic) => void): void {
  let fake: FakeAnthropic | undefined;
  beforeAll(async () => {
    fake = await startFakeAnthropic(options);
    started(fake);
  });
  afterEach(() => fake?.reset());
  afterAll(async () => {
    await fake?.close();
  });
}

/** Collects a promise's rejection (fails the test if it resolves). */
async function rejectionOf(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('fake Anthropic upstream (open, no API key required)', () => {
  let fake: FakeAnthropic;
  let client: Anthropic;

  withFake({}, (started) => {
    fake = started;
    client = bearerClient(fake);
  });

  test('url has no /v1 and non-streamed messages.create answers "Answer: <prompt>"', async () => {
    expect(fake.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const msg = await client.messages.create({ model: MODEL, max_tokens: 1024, messages: [{ role: 'user', content: 'hello there' }] });
    expect(msg.type).toBe('message');
    expect(msg.role).toBe('assistant');
    expect(msg.id).toMatch(/^msg_/);
    expect(msg.model).toBe(MODEL);
    expect(msg.stop_reason).toBe('end_turn');
    expect(msg.stop_sequence).toBeNull();
    expect(msg.content).toEqual([{ type: 'text', text: 'Answer: hello there' }]);
    expect(msg.usage.input_tokens).toBeGreaterThan(0);
    expect(msg.usage.output_tokens).toBeGreaterThan(0);
    expect(msg.usage.cache_read_input_tokens).toBe(0);
    expect(msg.usage.cache_creation_input_tokens).toBe(0);

    const rec = fake.requests[0];
    expect(rec?.method).toBe('POST');
    expect(rec?.url).toBe('/v1/messages');
    expect(rec?.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(rec?.headers['anthropic-version']).toBeDefined();
    expect(rec?.body.toString('utf8')).toBe(JSON.stringify(rec?.json));
    expect(rec?.status).toBe(200);
    expect(rec?.completed).toBe(true);
    expect(rec?.aborted).toBe(false);
    expect(rec?.usage?.output_tokens).toBe(msg.usage.output_tokens);
  });

  test('the prompt skips <system-reminder> blocks and tool results', async () => {
    const msg = await client.messages.create({
      model: MODEL,
      max_tokens: 64,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'the real question' },
            { type: 'text', text: '<system-reminder>\nctx\n</system-reminder>' },
          ],
        },
        { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'Bash', input: { command: 'ls' } }] },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'a b' }] },
      ],
    });
    expect(msg.content).toEqual([{ type: 'text', text: 'Answer: the real question' }]);
  });

  test('create({stream: true}) yields the Anthropic event sequence with several text deltas', async () => {
    const stream = await client.messages.create({
      model: MODEL,
      max_tokens: 1024,
      stream: true,
      messages: [{ role: 'user', content: 'one two three' }],
    });
    const types: string[] = [];
    let text = '';
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') text += event.delta.text;
      if (event.type === 'message_delta') expect(event.delta.stop_reason).toBe('end_turn');
    }
    expect(text).toBe('Answer: one two three');
    const deltas = types.filter((t) => t === 'content_block_delta').length;
    expect(deltas).toBeGreaterThanOrEqual(3);
    expect(types).toEqual([
      'message_start',
      'content_block_start',
      ...Array<string>(deltas).fill('content_block_delta'),
      'content_block_stop',
      'message_delta',
      'message_stop',
    ]);
  });

  test('raw SSE framing: event/data lines, ping after message_start, text/event-stream', async () => {
    const reply = await sendRaw(
      fake,
      '/v1/messages',
      { 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      Buffer.from(JSON.stringify({ model: MODEL, max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'hi' }] })),
    );
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(reply.headers['request-id']).toMatch(/^req_/);
    expect(reply.text.startsWith('event: message_start\ndata: {')).toBe(true);
    const events = parseSse(reply.text);
    expect(events.map((e) => e.event).slice(0, 2)).toEqual(['message_start', 'ping']);
    expect(events[events.length - 1]?.event).toBe('message_stop');
    const start = events[0]?.data;
    expect(isRecord(start) && isRecord(start['message']) ? start['message']['content'] : undefined).toEqual([]);
    const delta = events.find((e) => e.event === 'message_delta')?.data;
    expect(delta).toEqual({
      type: 'message_delta',
      delta: { stop_reason: 'end_turn', stop_sequence: null },
      usage: { output_tokens: expect.any(Number) },
    });
  });

  test('messages.stream with a scripted thinking + text reply', async () => {
    fake.setNext({ kind: 'text', text: 'The answer is 42.', thinking: 'Let me think about this carefully.' });
    const stream = client.messages.stream({
      model: MODEL,
      max_tokens: 2048,
      thinking: { type: 'enabled', budget_tokens: 1024 },
      messages: [{ role: 'user', content: 'meaning of life?' }],
    });
    const textDeltas: string[] = [];
    const thinkingDeltas: string[] = [];
    stream.on('text', (delta) => textDeltas.push(delta));
    stream.on('thinking', (delta) => thinkingDeltas.push(delta));
    const final = await stream.finalMessage();
    expect(textDeltas.length).toBeGreaterThan(1);
    expect(thinkingDeltas.join('')).toBe('Let me think about this carefully.');
    const [thinking, text] = final.content;
    expect(thinking?.type).toBe('thinking');
    if (thinking?.type === 'thinking') {
      expect(thinking.thinking).toBe('Let me think about this carefully.');
      expect(thinking.signature.length).toBeGreaterThan(10);
    }
    expect(text).toMatchObject({ type: 'text', text: 'The answer is 42.' });
    expect(final.stop_reason).toBe('end_turn');
  });

  test('a scripted tool_use reply, streamed (input parsed from input_json_delta) and not streamed', async () => {
    const input = { command: 'npm test', description: 'Run the tests', nested: { a: [1, 2, 3] } };
    fake.setNext({ kind: 'tool_use', text: 'Running the tests.', name: 'Bash', input }, { times: 2 });
    const final = await client.messages
      .stream({ model: MODEL, max_tokens: 1024, messages: [{ role: 'user', content: 'run tests' }] })
      .finalMessage();
    expect(final.stop_reason).toBe('tool_use');
    expect(final.content[0]).toMatchObject({ type: 'text', text: 'Running the tests.' });
    const tool = final.content[1];
    expect(tool?.type).toBe('tool_use');
    if (tool?.type === 'tool_use') {
      expect(tool.id).toMatch(/^toolu_/);
      expect(tool.name).toBe('Bash');
      expect(tool.input).toEqual(input);
    }
    const plain = await client.messages.create({ model: MODEL, max_tokens: 1024, messages: [{ role: 'user', content: 'run tests' }] });
    expect(plain.stop_reason).toBe('tool_use');
    expect(plain.content[1]).toMatchObject({ type: 'tool_use', name: 'Bash', input });
  });

  test('count_tokens is deterministic', async () => {
    const params = { model: MODEL, messages: [{ role: 'user' as const, content: 'count me please' }] };
    const a = await client.messages.countTokens(params);
    const b = await client.messages.countTokens(params);
    expect(a.input_tokens).toBeGreaterThan(0);
    expect(b.input_tokens).toBe(a.input_tokens);
    expect(fake.requests[0]?.path).toBe('/v1/messages/count_tokens');
  });

  test('models.list / models.retrieve, and unknown paths are 404 not_found_error', async () => {
    const ids: string[] = [];
    for await (const m of client.models.list()) {
      expect(m.type).toBe('model');
      expect(typeof m.display_name).toBe('string');
      ids.push(m.id);
    }
    expect(ids).toContain(MODEL);
    const one = await client.models.retrieve(MODEL);
    expect(one.id).toBe(MODEL);
    expect(await rejectionOf(client.models.retrieve('claude-nope'))).toBeInstanceOf(Anthropic.NotFoundError);
    const raw = await sendRaw(fake, '/v1/nothing', { 'anthropic-version': '2023-06-01' }, Buffer.alloc(0));
    expect(raw.status).toBe(404);
    expect(JSON.parse(raw.text)).toMatchObject({ type: 'error', error: { type: 'not_found_error' } });
  });

  test('a missing anthropic-version header is a 400 invalid_request_error', async () => {
    const raw = await sendRaw(fake, '/v1/messages', { 'content-type': 'application/json' }, Buffer.from('{}'));
    expect(raw.status).toBe(400);
    expect(raw.headers['request-id']).toBeDefined();
    expect(JSON.parse(raw.text)).toMatchObject({ type: 'error', error: { type: 'invalid_request_error' } });
  });

  test('scripted HTTP errors map to the SDK error classes', async () => {
    fake.setNext({ kind: 'error', status: 429, type: 'rate_limit_error', message: 'slow down', headers: { 'retry-after': '7' } });
    const rate = await rejectionOf(client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }));
    expect(rate).toBeInstanceOf(Anthropic.RateLimitError);
    if (rate instanceof Anthropic.RateLimitError) {
      expect(rate.status).toBe(429);
      expect(rate.type).toBe('rate_limit_error');
      expect(rate.apiMessage).toBe('slow down');
      expect(rate.requestID).toMatch(/^req_/);
      expect(rate.headers?.get('retry-after')).toBe('7');
    }

    fake.setNext({ kind: 'error', status: 400, type: 'invalid_request_error', message: 'bad' });
    expect(
      await rejectionOf(client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] })),
    ).toBeInstanceOf(Anthropic.BadRequestError);

    fake.setNext({ kind: 'error', status: 500, type: 'api_error' });
    expect(
      await rejectionOf(client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] })),
    ).toBeInstanceOf(Anthropic.InternalServerError);

    fake.setNext({ kind: 'error', status: 529, type: 'overloaded_error' });
    expect(
      await rejectionOf(client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] })),
    ).toBeInstanceOf(Anthropic.OverloadedError);

    // The queue is empty again: the next request gets the default answer.
    const ok = await client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] });
    expect(ok.content).toEqual([{ type: 'text', text: 'Answer: x' }]);
  });

  test('setNext with a path only applies to that path; content scripts only to /v1/messages', async () => {
    fake.setNext({ kind: 'error', status: 500, type: 'api_error' }, { path: '/v1/messages/count_tokens' });
    fake.setNext({ kind: 'text', text: 'scripted' });
    const countErr = await rejectionOf(client.messages.countTokens({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }));
    expect(countErr).toBeInstanceOf(Anthropic.InternalServerError);
    const models = await client.models.retrieve(MODEL);
    expect(models.id).toBe(MODEL);
    const msg = await client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] });
    expect(msg.content).toEqual([{ type: 'text', text: 'scripted' }]);
  });

  test('a stream-error event surfaces as an APIError from the stream (status undefined, typed)', async () => {
    fake.setNext({ kind: 'stream-error', afterEvents: 3 });
    const stream = await client.messages.create({
      model: MODEL,
      max_tokens: 10,
      stream: true,
      messages: [{ role: 'user', content: 'a b c d' }],
    });
    const seen: string[] = [];
    const err = await rejectionOf(
      (async (): Promise<void> => {
        for await (const e of stream) seen.push(e.type);
      })(),
    );
    expect(seen).toEqual(['message_start', 'content_block_start']); // ping was the 2nd event and is skipped by the SDK
    expect(err).toBeInstanceOf(Anthropic.APIError);
    if (err instanceof Anthropic.APIError) {
      expect(err.status).toBeUndefined();
      expect(err.type).toBe('overloaded_error');
      expect(err.error).toEqual({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } });
    }

    fake.setNext({ kind: 'stream-error', afterEvents: 1, type: 'api_error' });
    const viaHelper = await rejectionOf(
      client.messages.stream({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }).finalMessage(),
    );
    expect(viaHelper).toBeInstanceOf(Anthropic.APIError);
    if (viaHelper instanceof Anthropic.APIError) expect(viaHelper.type).toBe('api_error');

    // Not streamed, a stream-error is the HTTP status of its type.
    fake.setNext({ kind: 'stream-error', afterEvents: 0 });
    expect(
      await rejectionOf(client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] })),
    ).toBeInstanceOf(Anthropic.OverloadedError);
  });

  test('hang: the request stays open until the client aborts, and is recorded as aborted', async () => {
    fake.setNext({ kind: 'hang', afterEvents: 2 });
    const controller = new AbortController();
    const stream = await client.messages.create(
      { model: MODEL, max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'x' }] },
      { signal: controller.signal },
    );
    const seen: string[] = [];
    setTimeout(() => controller.abort(), 100);
    for await (const e of stream) seen.push(e.type);
    expect(seen).toEqual(['message_start']);
    await waitUntil(() => fake.requests[0]?.aborted === true);
    expect(fake.requests[0]?.completed).toBe(false);
  });

  test('reset: the socket is destroyed mid-stream and mid-JSON', async () => {
    fake.setNext({ kind: 'reset', afterEvents: 2 });
    const stream = await client.messages.create({ model: MODEL, max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'x' }] });
    const err = await rejectionOf(
      (async (): Promise<void> => {
        for await (const e of stream) void e;
      })(),
    );
    // Once the headers are in, the SDK does not wrap the failure: it is undici's own
    // `TypeError: terminated` (from the outer realm, so not `instanceof` jest's TypeError).
    expect(err).toMatchObject({ name: 'TypeError', message: 'terminated', cause: { code: 'ECONNRESET' } });
    fake.setNext({ kind: 'reset' });
    const jsonErr = await rejectionOf(client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }));
    expect(jsonErr).toMatchObject({ name: 'TypeError', message: 'terminated' });
    expect(fake.requests.every((r) => !r.aborted && !r.completed && r.status === 200)).toBe(true);
  });

  test('hang without afterEvents never answers: the SDK times out', async () => {
    fake.setNext({ kind: 'hang' });
    const err = await rejectionOf(
      client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }, { timeout: 200 }),
    );
    expect(err).toBeInstanceOf(Anthropic.APIConnectionTimeoutError);
    await waitUntil(() => fake.requests[0]?.aborted === true);
    expect(fake.requests[0]?.status).toBeUndefined();
  });

  test('chunkIntervalMs paces the events', async () => {
    fake.chunkIntervalMs = 20;
    try {
      const started = Date.now();
      await client.messages.stream({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }).finalMessage();
      // message_start, ping, block start, 2 deltas, block stop, message_delta, message_stop: 7 gaps.
      expect(Date.now() - started).toBeGreaterThanOrEqual(7 * 20 - 10);
    } finally {
      fake.chunkIntervalMs = 0;
    }
  });

  test('more than 4 cache breakpoints is a 400, as on the real API', async () => {
    const cc = { type: 'ephemeral' as const };
    const err = await rejectionOf(
      client.messages.create({
        model: MODEL,
        max_tokens: 10,
        system: [1, 2, 3, 4, 5].map((i) => ({ type: 'text' as const, text: `s${i}`, cache_control: cc })),
        messages: [{ role: 'user', content: 'x' }],
      }),
    );
    expect(err).toBeInstanceOf(Anthropic.BadRequestError);
  });
});

/** Polls `cond` every 10 ms for up to 2 s. */
async function waitUntil(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
}

describe('fake Anthropic upstream with an API key', () => {
  let fake: FakeAnthropic;

  withFake({ apiKey: KEY }, (started) => {
    fake = started;
  });

  test('x-api-key via defaultHeaders is accepted, and no Authorization header is sent', async () => {
    const msg = await xApiKeyClient(fake).messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] });
    expect(msg.content).toEqual([{ type: 'text', text: 'Answer: x' }]);
    expect(fake.requests[0]?.headers['x-api-key']).toBe(KEY);
    expect(fake.requests[0]?.headers.authorization).toBeUndefined();
  });

  test('the plain constructor form (apiKey: null, authToken: null, defaultHeaders) works with an empty config dir', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthropic-config-'));
    const saved = process.env['ANTHROPIC_CONFIG_DIR'];
    process.env['ANTHROPIC_CONFIG_DIR'] = dir;
    try {
      const plain = new Anthropic({
        apiKey: null,
        authToken: null,
        defaultHeaders: { 'x-api-key': KEY },
        baseURL: fake.url,
        maxRetries: 0,
      });
      await plain.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] });
      expect(fake.requests[0]?.headers['x-api-key']).toBe(KEY);
      expect(fake.requests[0]?.headers.authorization).toBeUndefined();
    } finally {
      if (saved === undefined) delete process.env['ANTHROPIC_CONFIG_DIR'];
      else process.env['ANTHROPIC_CONFIG_DIR'] = saved;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the SDK sends apiKey as Authorization: Bearer, which is accepted too', async () => {
    await bearerClient(fake).messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] });
    expect(fake.requests[0]?.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(fake.requests[0]?.headers['x-api-key']).toBeUndefined();
  });

  test('a wrong key is a 401 authentication_error → Anthropic.AuthenticationError, and keeps scripts queued', async () => {
    fake.setNext({ kind: 'text', text: 'kept for the authorised request' });
    for (const c of [xApiKeyClient(fake, 'wrong'), bearerClient(fake, 'wrong')]) {
      const err = await rejectionOf(c.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }));
      expect(err).toBeInstanceOf(Anthropic.AuthenticationError);
      if (err instanceof Anthropic.AuthenticationError) {
        expect(err.status).toBe(401);
        expect(err.error).toMatchObject({ type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key' } });
        expect(err.requestID).toMatch(/^req_/);
      }
    }
    const ok = await xApiKeyClient(fake).messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] });
    expect(ok.content).toEqual([{ type: 'text', text: 'kept for the authorised request' }]);
  });
});

describe('fake Anthropic upstream shutdown', () => {
  test('close() destroys sockets with a hanging request and reset() clears requests, scripts and cache', async () => {
    const fake = await startFakeAnthropic();
    await rawClaudeCode(fake, firstRequest({ prompt: 'p', sessionId: 's' }));
    expect(fake.cache.size).toBeGreaterThan(0);
    fake.setNext({ kind: 'text', text: 'never used' });
    fake.reset();
    expect(fake.requests).toHaveLength(0);
    expect(fake.cache.size).toBe(0);
    expect(fake.cache.lastUsage).toBeUndefined();

    fake.setNext({ kind: 'hang' });
    const pending = rejectionOf(sendRaw(fake, '/v1/messages', { 'anthropic-version': '2023-06-01' }, Buffer.from('{}')));
    await fake.waitForRequests(1);
    await fake.close();
    expect(await pending).toMatchObject({ message: 'socket hang up' }); // node:http errors come from the outer realm
    expect(fake.requests[0]?.aborted).toBe(false); // the fake closed it, not the client
  });
});

describe('prompt cache simulation with Claude Code-shaped traffic', () => {
  let fake: FakeAnthropic;

  withFake({ apiKey: KEY }, (started) => {
    fake = started;
  });

  test('first request creates the cache; the tool-loop request reads it (raw bytes over node:http)', async () => {
    const first = firstRequest({ prompt: 'What does this repo do?', sessionId: 'sess-1' });
    const second = toolLoopRequest(first, toolStep);
    const r1 = await rawClaudeCode(fake, first);
    expect(r1.status).toBe(200);
    const u1 = startUsage(r1);
    expect(u1['cache_read_input_tokens']).toBe(0);
    expect(u1['cache_creation_input_tokens']).toBeGreaterThan(10_000);

    const r2 = await rawClaudeCode(fake, second);
    const u2 = startUsage(r2);
    expect(u2['cache_read_input_tokens']).toBeGreaterThan(0);
    // Everything the first request cached (incl. the trailing system message) is read back.
    expect(u2['cache_read_input_tokens']).toBe(u1['cache_creation_input_tokens']);
    expect(u2['cache_creation_input_tokens']).toBeGreaterThan(0);
    expect(fake.requests[1]?.usage?.cache_read_input_tokens).toBe(u2['cache_read_input_tokens']);
    expect(fake.cache.lastUsage?.cache_read_input_tokens).toBe(u2['cache_read_input_tokens']);
    expect(fake.requests[1]?.url).toBe('/v1/messages?beta=true');
    expect(fake.requests[1]?.headers['x-claude-code-session-id']).toBe('sess-1');
    expect(fake.requests[1]?.body.equals(Buffer.from(JSON.stringify(second)))).toBe(true);

    // The default answer is about the prompt, not the <system-reminder> or the tool result.
    const text = parseSse(r2.text)
      .flatMap((e) =>
        isRecord(e.data) && isRecord(e.data['delta']) && typeof e.data['delta']['text'] === 'string' ? [e.data['delta']['text']] : [],
      )
      .join('');
    expect(text).toBe('Answer: What does this repo do?');

    // A second tool step and the next turn keep reading the growing prefix.
    const third = toolLoopRequest(second, { ...toolStep, toolUseId: 'toolu_02', toolInput: { command: 'cat package.json' } });
    const u3 = startUsage(await rawClaudeCode(fake, third));
    expect(u3['cache_read_input_tokens']).toBe(Number(u2['cache_read_input_tokens']) + Number(u2['cache_creation_input_tokens']));
    const fourth = nextTurnRequest(third, { assistantFinalText: 'It is a memory proxy.', prompt: 'Now add a test.' });
    const u4 = startUsage(await rawClaudeCode(fake, fourth));
    expect(u4['cache_read_input_tokens']).toBe(Number(u3['cache_read_input_tokens']) + Number(u3['cache_creation_input_tokens']));
  });

  test('changing the system blocks of the second request gives no cache read', async () => {
    const first = firstRequest({ prompt: 'What does this repo do?', sessionId: 'sess-2' });
    const r1 = startUsage(await rawClaudeCode(fake, first, 'sess-2'));
    // A memory block prepended to `system` changes the prefix of every breakpoint.
    const prepended = toolLoopRequest(first, toolStep);
    prepended.system.unshift({ type: 'text', text: '<memory>the user likes tabs</memory>' });
    const usage = startUsage(await rawClaudeCode(fake, prepended, 'sess-2'));
    expect(usage['cache_read_input_tokens']).toBe(0);
    expect(usage['cache_creation_input_tokens']).toBeGreaterThan(10_000);

    // Changing only the last system block still reads tools + the first two system blocks.
    fake.cache.clear();
    await rawClaudeCode(fake, first, 'sess-2');
    const edited = toolLoopRequest(first, toolStep);
    const block = edited.system[2];
    if (block) block.text = `<memory>the user likes tabs</memory>\n${block.text}`;
    const partial = startUsage(await rawClaudeCode(fake, edited, 'sess-2'));
    expect(partial['cache_read_input_tokens']).toBeGreaterThan(0);
    // …but not the edited instructions block (≈ 6.5 KB ≈ 1,600 tokens) nor anything after it.
    expect(partial['cache_read_input_tokens']).toBeLessThan(Number(r1['cache_creation_input_tokens']) - 1500);
  });

  test('cache_control itself and key order do not change a block’s identity; the model does', () => {
    const a = { model: MODEL, messages: [{ role: 'user', content: [{ type: 'text', text: 'x', cache_control: { type: 'ephemeral' } }] }] };
    const b = { messages: [{ content: [{ text: 'x', type: 'text' }], role: 'user' }], model: MODEL };
    expect(flattenPromptBlocks(a).map((x) => x.canonical)).toEqual(flattenPromptBlocks(b).map((x) => x.canonical));
    expect(flattenPromptBlocks(a)[0]?.breakpoint).toBe(true);
    fake.cache.clear();
    const first = firstRequest({ prompt: 'p', sessionId: 's' });
    expect(fake.cache.peek(first).cache_read_input_tokens).toBe(0);
    expect(fake.cache.size).toBe(0); // peek does not store
  });

  test('another model does not read the cache of the first', async () => {
    await rawClaudeCode(fake, firstRequest({ prompt: 'p', sessionId: 's' }));
    const other = toolLoopRequest(firstRequest({ prompt: 'p', sessionId: 's', model: 'claude-opus-4-1-20250805' }), toolStep);
    expect(startUsage(await rawClaudeCode(fake, other))['cache_read_input_tokens']).toBe(0);
  });
});

describe('Claude Code fixture', () => {
  test('headers look like Claude Code 2.1.332', () => {
    const h = claudeCodeHeaders('abc');
    expect(h['anthropic-version']).toBe('2023-06-01');
    expect(h['anthropic-beta']?.split(',')).toEqual(
      expect.arrayContaining([
        'claude-code-20250219',
        'interleaved-thinking-2025-05-14',
        'fine-grained-tool-streaming-2025-05-14',
        'context-management-2025-06-27',
      ]),
    );
    expect(h['X-Claude-Code-Session-Id']).toBe('abc');
    expect(h['user-agent']).toBe('claude-cli/2.1.332 (external, cli)');
    expect(h['x-app']).toBe('cli');
  });

  test('first request: ≈50 KB, 12 tools, 3 system blocks, ends with a cached system message', () => {
    const first = firstRequest({ prompt: 'hi', sessionId: 's' });
    const raw = Buffer.from(JSON.stringify(first));
    expect(raw.length).toBeGreaterThan(45_000);
    expect(raw.length).toBeLessThan(60_000);
    expect(first.tools.map((t) => t.name)).toEqual([
      'Bash',
      'Read',
      'Edit',
      'Write',
      'Glob',
      'Grep',
      'Task',
      'TodoWrite',
      'WebFetch',
      'WebSearch',
      'NotebookEdit',
      'BashOutput',
    ]);
    expect(first.system[0]?.cache_control).toBeUndefined();
    expect(first.system[0]?.text).toMatch(/^x-anthropic-billing-header: cc_version=2\.1\.332; cc_entrypoint=cli; cch=[0-9a-f]{5};$/);
    expect(first.system[1]?.cache_control).toEqual({ type: 'ephemeral' });
    expect(first.system[2]?.text.length).toBeGreaterThan(4000);
    expect(JSON.parse(first.metadata.user_id)).toMatchObject({ session_id: 's' });
    const last = first.messages[first.messages.length - 1];
    expect(last?.role).toBe('system');
    expect(Array.isArray(last?.content) && last.content[last.content.length - 1]?.cache_control).toEqual({ type: 'ephemeral' });
    expect(firstRequest({ prompt: 'hi', sessionId: 's' })).toEqual(first); // deterministic
    expect(firstRequest({ prompt: 'other', sessionId: 's' }).system[0]?.text).not.toBe(first.system[0]?.text);
  });

  test('toolLoopRequest keeps every byte before the trailing system message and moves the breakpoint', () => {
    const first = firstRequest({ prompt: 'hi', sessionId: 's' });
    const second = toolLoopRequest(first, toolStep);
    const raw1 = JSON.stringify(first);
    const raw2 = JSON.stringify(second);
    const systemMessageAt = raw1.indexOf('{"role":"system"');
    expect(systemMessageAt).toBeGreaterThan(0);
    expect(raw2.slice(0, systemMessageAt)).toBe(raw1.slice(0, systemMessageAt));
    expect(second.messages[1]?.content).toBe(
      typeof first.messages[1]?.content === 'string'
        ? first.messages[1].content
        : first.messages[1]?.content[0]?.type === 'text'
          ? first.messages[1].content[0].text
          : '',
    );
    expect(second.messages.map((m) => m.role)).toEqual(['user', 'system', 'assistant', 'user']);
    expect(first.messages).toHaveLength(2); // previous is not mutated

    const third = toolLoopRequest(second, { ...toolStep, toolUseId: 'toolu_2' });
    const messageBreakpoints = third.messages.flatMap((m) =>
      Array.isArray(m.content) ? m.content.filter((b) => b.cache_control !== undefined) : [],
    );
    expect(messageBreakpoints).toHaveLength(1);
    const lastMsg = third.messages[third.messages.length - 1];
    expect(Array.isArray(lastMsg?.content) ? lastMsg.content[0] : undefined).toMatchObject({
      type: 'tool_result',
      tool_use_id: 'toolu_2',
      cache_control: { type: 'ephemeral' },
    });

    const next = nextTurnRequest(third, { assistantFinalText: 'done', prompt: 'again' });
    const tail = next.messages.slice(-2);
    expect(tail[0]).toEqual({ role: 'assistant', content: [{ type: 'text', text: 'done' }] });
    const userBlocks = Array.isArray(tail[1]?.content) ? tail[1].content : [];
    expect(userBlocks[0]?.type === 'text' && userBlocks[0].text.startsWith('<system-reminder>')).toBe(true);
    expect(userBlocks[1]).toEqual({ type: 'text', text: 'again', cache_control: { type: 'ephemeral' } });
  });

  test('cacheBreakpointOffsets on the fixture: one offset per cache_control, at the end of its block', () => {
    const raw = Buffer.from(JSON.stringify(toolLoopRequest(firstRequest({ prompt: 'héllo — ünïcode ✔', sessionId: 's' }), toolStep)));
    const offsets = cacheBreakpointOffsets(raw);
    expect(offsets).toHaveLength(3);
    for (const off of offsets) {
      expect(raw[off - 1]).toBe(0x7d); // '}'
      expect(raw.subarray(0, off).toString('utf8').lastIndexOf('"cache_control"')).toBeGreaterThan(0);
    }
    expect(raw.length - (offsets[2] ?? 0)).toBe(4); // ...}]}]} closes content, message, messages, body
    expect(cacheBreakpointOffsets(raw.toString('utf8'))).toEqual(offsets);
  });
});

describe('cacheBreakpointOffsets scanner', () => {
  // Nested objects, escaped quotes and backslashes, braces inside strings, "cache_control" as a
  // value (not a key), an escaped key, and multi-byte UTF-8 (é = 2 bytes, 日本 = 3 bytes each,
  // € = 3 bytes, 😀 = 4 bytes).
  const crafted =
    '{"a":[{"t":"x\\"}{,\\\\","cache_control":{"type":"ephemeral"}}],' +
    '"é":"日本","b":{"c":{"s":"€:\\"cache_control\\"","cache_control":1}},' +
    '"d":["cache_control",{"k":"cache_control"}],"e":{"cache\\u005fcontrol":{}},"f":"😀","cache_control":null}';

  test('exact byte offsets', () => {
    expect(JSON.parse(crafted)).toBeDefined();
    const offsets = cacheBreakpointOffsets(crafted);
    expect(offsets).toEqual([59, 131, 206, 239]);
    const bytes = Buffer.from(crafted, 'utf8');
    expect(bytes.length).toBe(239);
    expect(bytes.subarray(0, 59).toString('utf8')).toBe('{"a":[{"t":"x\\"}{,\\\\","cache_control":{"type":"ephemeral"}}');
    expect(bytes.subarray(0, 131).toString('utf8').endsWith('"cache_control":1}')).toBe(true);
    expect(bytes.subarray(0, 206).toString('utf8').endsWith('"e":{"cache\\u005fcontrol":{}}')).toBe(true);
    expect(cacheBreakpointOffsets(bytes)).toEqual(offsets);
  });

  test('no cache_control, empty containers, and malformed input', () => {
    expect(cacheBreakpointOffsets('{"a":[],"b":{},"c":"{\\"cache_control\\":1}"}')).toEqual([]);
    expect(cacheBreakpointOffsets('[{"cache_control":{}},{"x":{"cache_control":{}}}]')).toEqual([21, 47]); // the inner object carries it, not the "x" object;
    expect(() => cacheBreakpointOffsets('{"a":"unterminated}')).toThrow(/unterminated/);
    expect(() => cacheBreakpointOffsets('{"a":[}')).toThrow(/closing/);
    expect(() => cacheBreakpointOffsets('{"a":1')).toThrow(/unbalanced/);
  });
});
