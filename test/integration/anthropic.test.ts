/**
 * Anthropic clients and Claude Code through the proxy: the official Anthropic SDK (and raw Claude
 * Code-shaped requests) → the proxy → a fake Anthropic upstream, with the real memory engine
 * (mem0 on the embedded store, extraction and embeddings on the fake OpenAI upstream) where the
 * test is about what reaches the engine, and the fake memory service where it is about the door.
 *
 * Routing, both ways of sending the proxy key, the caller's key never reaching the upstream, errors
 * in Anthropic's shape (so the SDK raises its own classes), memory injected after the last block
 * with every cached prefix byte-identical (and the fake's prompt cache hitting as it does without
 * the proxy), one save per turn at `end_turn`, nothing saved on aborts or stream errors.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Anthropic from 'anthropic-sdk-v1';
import request from 'supertest';
import { keyDigestHex } from '../../src/keys/registry';
import { startEngine } from '../helpers/engine';
import type { MemoryItem } from '../../src/memory/types';
import { startFakeAnthropic, type FakeAnthropic, type RecordedRequest } from '../fakes/anthropic-upstream';
import { FakeMemoryService, fakeMemory } from '../fakes/memory-service';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import {
  cacheBreakpointOffsets,
  claudeCodeHeaders,
  firstRequest,
  nextTurnRequest,
  toolLoopRequest,
  type ClaudeCodeRequest,
} from '../fixtures/claude-code';
import { bearerClient as sdkBearerClient, xApiKeyClient } from '../helpers/anthropic-client';
import { buildTestApp, serve, type Served, type TestApp } from '../helpers/app';
import { buildKeyedTestApp, newTestKey } from '../helpers/keyed-app';
import { GENEROUS_LIMITS, startMemoryProxy, type MemoryProxy } from '../helpers/memory-proxy';
import { rawRequest, type RawResponse } from '../helpers/raw-http';
import { TEST_ANTHROPIC_KEY, TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';
import { memoriesOf, waitFor } from '../helpers/wait';

/** A client sending the proxy key as `x-api-key` (as Claude Code does with ANTHROPIC_API_KEY). */
const apiKeyClient = (baseURL: string, key = TEST_AUTH_TOKEN): Anthropic => xApiKeyClient(baseURL, key);

/** A client sending the proxy key as `Authorization: Bearer` (ANTHROPIC_AUTH_TOKEN). */
const bearerClient = (baseURL: string, key = TEST_AUTH_TOKEN): Anthropic => sdkBearerClient(baseURL, key);

const admin = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };

let openai: FakeUpstream;
let anthropic: FakeAnthropic;
let tmp: string;

beforeAll(async () => {
  openai = await startFakeUpstream({ embeddingDimensions: 64 });
  anthropic = await startFakeAnthropic({ apiKey: TEST_ANTHROPIC_KEY });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'anthropic-'));
});
afterAll(async () => {
  await anthropic.close();
  await openai.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function startProxy(env: Record<string, string> = {}): Promise<MemoryProxy> {
  return startMemoryProxy({
    upstreamUrl: openai.url,
    dataDir: fs.mkdtempSync(path.join(tmp, 'data-')),
    env: { ANTHROPIC_UPSTREAM_BASE_URL: anthropic.url, ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY, ...env },
  });
}

/**
 * The same proxy on the fake memory service, for the tests about the Anthropic door itself (routing,
 * keys, errors, failing open) rather than what the engine does with the exchange.
 */
function startProxyOnFake(memory?: FakeMemoryService): Promise<MemoryProxy> {
  return startMemoryProxy({
    upstreamUrl: openai.url,
    dataDir: fs.mkdtempSync(path.join(tmp, 'data-')),
    env: { ANTHROPIC_UPSTREAM_BASE_URL: anthropic.url, ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY },
    memory: memory ? () => memory : fakeMemory(),
  });
}

/** Sends `body` as the exact bytes given (Claude Code's JSON), and reads the whole reply. */
const send = (baseUrl: string, method: string, target: string, headers: Record<string, string>, body?: Buffer): Promise<RawResponse> =>
  rawRequest(`${baseUrl}${target}`, method, headers, body);

const claudeCode = (sessionId: string, user: string): Record<string, string> => ({
  ...claudeCodeHeaders(sessionId),
  'x-api-key': TEST_AUTH_TOKEN,
  'x-mem0-user-id': user,
});
const bytesOf = (body: ClaudeCodeRequest): Buffer => Buffer.from(JSON.stringify(body));
/**
 * The same JSON with every `<` written as `\u003c` (valid, same value): bytes a re-serialising proxy
 * could not reproduce, so the prefix checks below really compare bytes.
 */
const escapedBytesOf = (body: ClaudeCodeRequest): Buffer => Buffer.from(JSON.stringify(body).replace(/</g, '\\u003c'));

/** The requests the proxy sent to /v1/messages, in order. */
const forwardedMessages = (): RecordedRequest[] => anthropic.requestsTo('/v1/messages');

function commonPrefix(a: Buffer, b: Buffer): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

function commonSuffix(a: Buffer, b: Buffer, limit: number): number {
  let i = 0;
  while (i < limit && a[a.length - 1 - i] === b[b.length - 1 - i]) i++;
  return i;
}

/**
 * `received` is `sent` with one thing added at one place: every byte before it is identical
 * (every breakpoint there has its whole prefix unchanged), every byte after it is identical too
 * (fields the client wrote after `messages`, moved but unchanged), no breakpoint falls inside the
 * change, and what was there before (a string content) is kept byte for byte inside it.
 */
function expectOnlyAnAddition(sent: Buffer, received: Buffer): void {
  const before = commonPrefix(sent, received);
  const after = commonSuffix(sent, received, Math.min(sent.length, received.length) - before);
  const sentMiddle = sent.subarray(before, sent.length - after);
  const receivedMiddle = received.subarray(before, received.length - after);
  expect(received.length).toBeGreaterThan(sent.length);
  expect(sentMiddle.length === 0 || receivedMiddle.includes(sentMiddle)).toBe(true);
  const offsets = cacheBreakpointOffsets(sent);
  expect(offsets.length).toBeGreaterThanOrEqual(3);
  for (const offset of offsets) {
    expect({ offset, outsideTheChange: offset <= before || offset >= sent.length - after }).toEqual({ offset, outsideTheChange: true });
    if (offset <= before) expect(received.subarray(0, offset).equals(sent.subarray(0, offset))).toBe(true);
  }
}

/** The same request with `messages` written before `system` and `tools` (key order is the client's). */
function messagesFirst(body: ClaudeCodeRequest): ClaudeCodeRequest {
  const { model, messages, ...rest } = body;
  return { model, messages, ...rest };
}

/** The memory-extraction calls mem0 made to the OpenAI fake (one per saved exchange). */
const extractions = (): number =>
  openai.requestsTo('/v1/chat/completions').filter((r) => JSON.stringify(r.json).includes('Memory Extractor')).length;

/** Waits until the save queue is empty and nothing is being saved. */
const drained = (p: MemoryProxy): Promise<true> => waitFor(async () => (p.app.queue?.depth() === 0 ? true : undefined));

describe('the Anthropic API through the proxy', () => {
  let p: MemoryProxy;
  beforeAll(async () => {
    p = await startProxyOnFake();
  });
  afterAll(() => p.close());
  beforeEach(() => {
    anthropic.reset();
    openai.reset();
  });

  it("creates a message with the proxy key as x-api-key; the upstream gets the proxy's Anthropic key, never the caller's", async () => {
    const client = apiKeyClient(p.served.url);
    const message = await client.messages.create({
      model: 'claude-test',
      max_tokens: 100,
      messages: [{ role: 'user', content: 'Say hello' }],
    });
    expect(message.content).toEqual([{ type: 'text', text: 'Answer: Say hello' }]);
    const [seen] = forwardedMessages();
    expect(seen?.headers['x-api-key']).toBe(TEST_ANTHROPIC_KEY);
    expect(seen?.headers.authorization).toBeUndefined();
    expect(seen?.headers['anthropic-version']).toBeDefined();
    expect(JSON.stringify(anthropic.requests)).not.toContain(TEST_AUTH_TOKEN);
    expect(openai.requestsTo('/v1/messages')).toHaveLength(0);
  });

  it('accepts the proxy key as a bearer token, and streams the reply event by event', async () => {
    const client = bearerClient(p.served.url);
    const events: string[] = [];
    const stream = client.messages.stream({
      model: 'claude-test',
      max_tokens: 100,
      messages: [{ role: 'user', content: 'Tell me a long story about rivers' }],
    });
    stream.on('streamEvent', (event) => events.push(event.type));
    expect(await stream.finalText()).toBe('Answer: Tell me a long story about rivers');
    expect(events[0]).toBe('message_start');
    expect(events.filter((e) => e === 'content_block_delta').length).toBeGreaterThan(1);
    expect(events[events.length - 1]).toBe('message_stop');
    const [seen] = forwardedMessages();
    expect(seen?.headers['x-api-key']).toBe(TEST_ANTHROPIC_KEY);
    expect(seen?.headers.authorization).toBeUndefined();
  });

  it('passes count_tokens and the Anthropic model list through, and keeps anthropic-* headers and the query', async () => {
    const client = apiKeyClient(p.served.url);
    const counted = await client.messages.countTokens({
      model: 'claude-test',
      messages: [{ role: 'user', content: 'How many tokens is this?' }],
    });
    expect(counted.input_tokens).toBeGreaterThan(0);
    const models = await client.models.list();
    expect(models.data[0]?.type).toBe('model');
    expect(openai.requestsTo('/v1/models')).toHaveLength(0);

    const raw = await send(
      p.served.url,
      'POST',
      '/v1/messages/count_tokens?beta=true',
      { ...claudeCode('s-count', 'nobody') },
      Buffer.from('{"model":"m","messages":[{"role":"user","content":"x"}]}'),
    );
    expect(raw.status).toBe(200);
    const seen = anthropic.requestsTo('/v1/messages/count_tokens').pop();
    expect(seen?.url).toBe('/v1/messages/count_tokens?beta=true');
    expect(seen?.headers['anthropic-beta']).toBe(claudeCodeHeaders('s')['anthropic-beta']);
    expect(seen?.headers['x-claude-code-session-id']).toBe('s-count');
    expect(seen?.headers['x-mem0-user-id']).toBeUndefined();
  });

  it("refuses in Anthropic's error shape, so the SDK raises its own classes", async () => {
    const wrong = apiKeyClient(p.served.url, 'not-the-proxy-key');
    const refused = await wrong.messages
      .create({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(Anthropic.AuthenticationError);
    expect((refused as InstanceType<typeof Anthropic.AuthenticationError>).error).toEqual({
      type: 'error',
      error: { type: 'authentication_error', message: 'Invalid authorization token provided' },
    });

    const missing = await send(
      p.served.url,
      'POST',
      '/v1/messages',
      { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
      Buffer.from('{}'),
    );
    expect(missing.status).toBe(401);
    expect(JSON.parse(missing.text)).toEqual({
      type: 'error',
      error: { type: 'authentication_error', message: 'No authorization header provided' },
    });

    const notJson = await send(
      p.served.url,
      'POST',
      '/v1/messages',
      { ...claudeCode('s', 'u'), 'content-type': 'application/json' },
      Buffer.from('{"model":'),
    );
    expect(notJson.status).toBe(400);
    expect(JSON.parse(notJson.text)).toEqual({
      type: 'error',
      error: { type: 'invalid_request_error', message: 'Request body is not valid JSON' },
    });

    const badMode = await apiKeyClient(p.served.url)
      .messages.create(
        { model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] },
        { headers: { 'x-mem0-memory': 'sometimes' } },
      )
      .catch((e: unknown) => e);
    expect(badMode).toBeInstanceOf(Anthropic.BadRequestError);
    expect(anthropic.requests).toHaveLength(0);
  });

  it('passes upstream errors through unchanged (status, body, retry-after)', async () => {
    anthropic.setNext({
      kind: 'error',
      status: 429,
      type: 'rate_limit_error',
      message: 'Number of request tokens has exceeded your per-minute rate limit',
      headers: { 'retry-after': '7' },
    });
    const limited = await apiKeyClient(p.served.url)
      .messages.create({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] })
      .catch((e: unknown) => e);
    expect(limited).toBeInstanceOf(Anthropic.RateLimitError);
    const err = limited as InstanceType<typeof Anthropic.RateLimitError>;
    expect(err.headers?.get('retry-after')).toBe('7');
    expect((err.error as { error: { message: string } }).error.message).toBe(
      'Number of request tokens has exceeded your per-minute rate limit',
    );

    anthropic.setNext({ kind: 'error', status: 529, type: 'overloaded_error', message: 'Overloaded' });
    const overloaded = await apiKeyClient(p.served.url)
      .messages.create({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] })
      .catch((e: unknown) => e);
    expect(overloaded).toBeInstanceOf(Anthropic.OverloadedError);
  });

  it('answers HEAD / and HEAD /api/hello with an empty 200, without a key and without saying what it is', async () => {
    for (const target of ['/', '/api/hello']) {
      const res = await send(p.served.url, 'HEAD', target, {});
      expect(res.status).toBe(200);
      expect(res.text).toBe('');
      expect(res.headers['content-length']).toBe('0');
      expect(Object.keys(res.headers).filter((h) => /version|server|powered/i.test(h))).toEqual([]);
    }
  });

  it('counts requests by API in /metrics and logs the API', async () => {
    await apiKeyClient(p.served.url).messages.create(
      { model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] },
      { headers: { 'x-mem0-memory': 'off' } },
    );
    const metrics = await request(p.app.app).get('/metrics').set(admin).expect(200);
    expect(metrics.text).toMatch(/proxy_http_requests_total\{api="anthropic",route="\/v1\/messages",method="POST",status="200"\} [1-9]/);
    expect(metrics.text).toMatch(/proxy_overhead_seconds_count\{api="anthropic",route="\/v1\/messages"\} [1-9]/);
    expect(p.app.logs.some((l) => l.includes('"api":"anthropic"') && l.includes('"route":"/v1/messages"'))).toBe(true);
  });
});

describe('Claude Code with memory', () => {
  let p: MemoryProxy;
  beforeAll(async () => {
    p = await startProxy();
    await request(p.app.app)
      .post('/remember')
      .set(admin)
      .send({ user_id: 'dana', content: 'Dana deploys the service with Kubernetes on Fridays', infer: false })
      .expect(200);
  });
  afterAll(() => p.close());
  beforeEach(async () => {
    await drained(p);
    anthropic.reset();
    openai.reset();
  });

  it('injects one memory block after the last block, every cached prefix byte-identical, across a tool loop; saves the turn once at end_turn', async () => {
    const prompt = 'How do I deploy the service with Kubernetes?';
    const first = firstRequest({ prompt, sessionId: 'sess-dana-1' });
    const sentFirst = escapedBytesOf(first);
    expect(sentFirst.includes('\\u003csystem-reminder>')).toBe(true);
    expect(sentFirst.length).toBeGreaterThan(40_000);

    // Step 1: the model answers with a tool call. Nothing is saved for it.
    anthropic.setNext({ kind: 'tool_use', text: 'Let me check the manifests.', name: 'Bash', input: { command: 'ls deploy/' } });
    const step1 = await send(p.served.url, 'POST', '/v1/messages?beta=true', claudeCode('sess-dana-1', 'dana'), sentFirst);
    expect(step1.status).toBe(200);
    expect(step1.headers['x-mem0-memories']).toBe('1');
    expect(step1.text).toContain('"stop_reason":"tool_use"');

    // Step 2: the tool result goes back; the model ends the turn.
    const second = toolLoopRequest(first, {
      assistantText: 'Let me check the manifests.',
      toolUseId: 'toolu_01',
      toolName: 'Bash',
      toolInput: { command: 'ls deploy/' },
      toolResult: 'deployment.yaml\nservice.yaml',
    });
    const sentSecond = escapedBytesOf(second);
    anthropic.setNext({
      kind: 'text',
      text: 'Apply deploy/deployment.yaml with kubectl apply.',
      thinking: 'The user deploys with Kubernetes.',
    });
    const step2 = await send(p.served.url, 'POST', '/v1/messages?beta=true', claudeCode('sess-dana-1', 'dana'), sentSecond);
    expect(step2.status).toBe(200);
    expect(step2.headers['x-mem0-memories']).toBe('1');

    const [got1, got2] = forwardedMessages();
    expect(got1?.url).toBe('/v1/messages?beta=true');
    for (const [sent, got] of [
      [sentFirst, got1],
      [sentSecond, got2],
    ] as const) {
      if (!got) throw new Error('request not forwarded');
      expectOnlyAnAddition(sent, got.body);
      const forwarded = got.json as ClaudeCodeRequest;
      const original = JSON.parse(sent.toString('utf8')) as ClaudeCodeRequest;
      // system and tools untouched; exactly one block added, at the very end, with no breakpoint.
      expect(forwarded.system).toEqual(original.system);
      expect(forwarded.tools).toEqual(original.tools);
      expect(forwarded.messages.slice(0, -1)).toEqual(original.messages.slice(0, -1));
      const lastSent = original.messages[original.messages.length - 1];
      const lastGot = forwarded.messages[forwarded.messages.length - 1];
      const added = Array.isArray(lastGot?.content) ? lastGot.content[lastGot.content.length - 1] : undefined;
      expect(added).toEqual({
        type: 'text',
        text: expect.stringContaining('Dana deploys the service with Kubernetes on Fridays') as string,
      });
      expect(JSON.stringify(added)).not.toContain('cache_control');
      expect(Array.isArray(lastGot?.content) ? lastGot.content.length : 0).toBe(
        Array.isArray(lastSent?.content) ? lastSent.content.length + 1 : 2,
      );
    }
    // The same memories on both requests of the turn: the prompt was found through the tool result.
    const blockOf = (r: RecordedRequest | undefined): unknown => {
      if (!r) throw new Error('no recorded upstream request');
      const messages = (r.json as ClaudeCodeRequest).messages;
      const content = messages[messages.length - 1]?.content;
      return Array.isArray(content) ? content[content.length - 1] : undefined;
    };
    expect(blockOf(got2)).toEqual(blockOf(got1));

    // One save for the turn: the prompt and the final answer, not the thinking, tools or context.
    const saved = await waitFor(async () => {
      const items = await memoriesOf(p, 'dana');
      return items.length > 1 ? items : undefined;
    });
    await drained(p);
    expect(extractions()).toBe(1);
    const extraction = JSON.stringify(openai.requestsTo('/v1/chat/completions')[0]?.json);
    expect(extraction).toContain(prompt);
    expect(extraction).toContain('Apply deploy/deployment.yaml with kubectl apply.');
    for (const absent of [
      'The user deploys with Kubernetes.',
      'system-reminder',
      'deployment.yaml\\nservice.yaml',
      'Let me check the manifests.',
      'You are Claude Code',
    ]) {
      expect(extraction).not.toContain(absent);
    }
    const created = saved.filter((m) => m.metadata?.['source'] === 'messages');
    expect(created.length).toBeGreaterThan(0);
    expect(created[0]?.metadata).toMatchObject({ source: 'messages', session_id: 'sess-dana-1', model: 'claude-sonnet-4-5-20250929' });
  });

  it('changes nothing but the addition when the client writes messages before system and tools', async () => {
    const first = messagesFirst(firstRequest({ prompt: 'Which Kubernetes namespace do we deploy to?', sessionId: 'sess-order' }));
    const second = messagesFirst(
      toolLoopRequest(first, {
        assistantText: 'Checking.',
        toolUseId: 'toolu_09',
        toolName: 'Read',
        toolInput: { file_path: 'k8s.yaml' },
        toolResult: 'namespace: prod',
      }),
    );
    for (const body of [first, second]) {
      const sent = escapedBytesOf(body);
      expect(sent.indexOf('"messages"')).toBeLessThan(sent.indexOf('"system"'));
      anthropic.setNext({ kind: 'text', text: 'prod' });
      const res = await send(p.served.url, 'POST', '/v1/messages?beta=true', claudeCode('sess-order', 'dana'), sent);
      expect(Number(res.headers['x-mem0-memories'])).toBeGreaterThan(0);
      const got = forwardedMessages().pop();
      if (!got) throw new Error('request not forwarded');
      expectOnlyAnAddition(sent, got.body);
    }
  });

  it("keeps Anthropic's prompt cache hitting exactly as it does without the proxy", async () => {
    const first = firstRequest({ prompt: 'Where are the Kubernetes manifests kept?', sessionId: 'sess-cache' });
    const second = toolLoopRequest(first, {
      assistantText: 'Looking.',
      toolUseId: 'toolu_02',
      toolName: 'Glob',
      toolInput: { pattern: '**/*.yaml' },
      toolResult: 'deploy/app.yaml',
    });
    const third = nextTurnRequest(second, {
      assistantFinalText: 'They are in deploy/.',
      prompt: 'And how do I roll back a Kubernetes deploy?',
    });
    const run = async (baseUrl: string, headers: Record<string, string>): Promise<Array<[number, number]>> => {
      anthropic.reset();
      const usage: Array<[number, number]> = [];
      for (const body of [first, second, third]) {
        anthropic.setNext({ kind: 'text', text: 'ok' });
        const res = await send(baseUrl, 'POST', '/v1/messages?beta=true', headers, bytesOf(body));
        expect(res.status).toBe(200);
        const u = anthropic.cache.lastUsage;
        usage.push([u?.cache_read_input_tokens ?? -1, u?.cache_creation_input_tokens ?? -1]);
      }
      return usage;
    };
    const direct = await run(anthropic.url, { ...claudeCodeHeaders('sess-cache'), 'x-api-key': TEST_ANTHROPIC_KEY });
    const proxied = await run(p.served.url, claudeCode('sess-cache', 'dana'));
    expect(forwardedMessages().every((r) => r.json !== undefined && JSON.stringify(r.json).includes('<memories>'))).toBe(true);
    expect(direct[1]?.[0]).toBeGreaterThan(0);
    expect(direct[2]?.[0]).toBeGreaterThan(direct[1]?.[0] ?? 0);
    expect(proxied).toEqual(direct);
  });

  it('saves nothing when the client aborts the stream, or the stream ends in an error event', async () => {
    anthropic.setNext({ kind: 'hang', afterEvents: 3 });
    const client = apiKeyClient(p.served.url);
    const controller = new AbortController();
    const stream = await client.messages.create(
      { model: 'claude-test', max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'I always write tests in TypeScript' }] },
      { signal: controller.signal, headers: { 'x-mem0-user-id': 'erin' } },
    );
    let seen = 0;
    const reading = (async () => {
      for await (const _event of stream) {
        seen++;
        if (seen === 2) controller.abort();
      }
    })();
    // The SDK ends the iteration quietly (or throws its abort error) once aborted.
    await reading.catch(() => undefined);
    expect(seen).toBe(2);
    await waitFor(async () => (anthropic.requests[0]?.aborted ? true : undefined));

    anthropic.setNext({ kind: 'stream-error', afterEvents: 4 });
    const failing = client.messages.stream(
      { model: 'claude-test', max_tokens: 100, messages: [{ role: 'user', content: 'I prefer tabs over spaces' }] },
      { headers: { 'x-mem0-user-id': 'erin' } },
    );
    await expect(failing.finalMessage()).rejects.toMatchObject({ type: 'overloaded_error' });

    // A completed exchange afterwards is saved: it is the only extraction.
    await client.messages.create(
      { model: 'claude-test', max_tokens: 100, messages: [{ role: 'user', content: 'I deploy on Mondays' }] },
      { headers: { 'x-mem0-user-id': 'erin' } },
    );
    const items = await waitFor(async () => {
      const found = await memoriesOf(p, 'erin');
      return found.length > 0 ? found : undefined;
    });
    await drained(p);
    expect(extractions()).toBe(1);
    expect(items.map((m) => m.memory).join(' ')).not.toMatch(/TypeScript|tabs/);
  });

  it('with X-Mem0-Memory: off, forwards the bytes as sent and saves nothing', async () => {
    const body = bytesOf(firstRequest({ prompt: 'Deploy with Kubernetes please', sessionId: 'sess-off' }));
    const res = await send(p.served.url, 'POST', '/v1/messages', { ...claudeCode('sess-off', 'dana'), 'x-mem0-memory': 'off' }, body);
    expect(res.status).toBe(200);
    expect(res.headers['x-mem0-memories']).toBe('0');
    expect(forwardedMessages()[0]?.body.equals(body)).toBe(true);
    await new Promise((r) => setTimeout(r, 200));
    expect(p.app.queue?.depth()).toBe(0);
    expect(extractions()).toBe(0);
  });
});

describe('keys for the Anthropic upstream', () => {
  let served: Served | undefined;
  let app: TestApp | undefined;
  afterEach(async () => {
    await served?.close();
    await app?.close();
    served = undefined;
    app = undefined;
  });

  it('refuses Anthropic requests with 503 when the proxy has no Anthropic key of its own', async () => {
    app = await buildTestApp({
      UPSTREAM_BASE_URL: openai.url,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      ANTHROPIC_UPSTREAM_BASE_URL: anthropic.url,
    });
    served = await serve(app.app);
    anthropic.reset();
    const refused = await apiKeyClient(served.url)
      .messages.create({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(Anthropic.ServiceUnavailableError);
    expect((refused as InstanceType<typeof Anthropic.ServiceUnavailableError>).error).toEqual({
      type: 'error',
      error: { type: 'api_error', message: expect.stringContaining('ANTHROPIC_API_KEY') as string },
    });
    expect(anthropic.requests).toHaveLength(0);
  });

  it('refuses that 503 before any memory work: no search, no embedding request', async () => {
    const p = await startProxy({ ANTHROPIC_API_KEY: '' });
    try {
      openai.reset();
      anthropic.reset();
      const res = await send(
        p.served.url,
        'POST',
        '/v1/messages',
        claudeCode('sess-nokey', 'dana'),
        bytesOf(firstRequest({ prompt: 'Deploy with Kubernetes', sessionId: 'sess-nokey' })),
      );
      expect(res.status).toBe(503);
      expect(openai.requestsTo('/v1/embeddings')).toHaveLength(0);
      expect(anthropic.requests).toHaveLength(0);
    } finally {
      await p.close();
    }
  });

  it("forwards the caller's own Anthropic key in development mode (bring your own key)", async () => {
    app = await buildTestApp({ UPSTREAM_BASE_URL: openai.url, ANTHROPIC_UPSTREAM_BASE_URL: anthropic.url });
    served = await serve(app.app);
    anthropic.reset();
    const message = await apiKeyClient(served.url, TEST_ANTHROPIC_KEY).messages.create({
      model: 'm',
      max_tokens: 10,
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(message.type).toBe('message');
    expect(anthropic.requests[0]?.headers['x-api-key']).toBe(TEST_ANTHROPIC_KEY);
  });

  it("answers 429 with retry-after past the /v1 limit, and 413 for a body over the limit, in Anthropic's shape", async () => {
    app = await buildTestApp({
      UPSTREAM_BASE_URL: openai.url,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY,
      ANTHROPIC_UPSTREAM_BASE_URL: anthropic.url,
      RATE_LIMIT_V1: '2',
      MAX_BODY_BYTES: '2048',
    });
    served = await serve(app.app);
    anthropic.reset();
    const client = apiKeyClient(served.url);
    const tooLarge = await client.messages
      .create({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'x'.repeat(3000) }] })
      .catch((e: unknown) => e);
    expect(tooLarge).toBeInstanceOf(Anthropic.ContentTooLargeError);
    expect((tooLarge as InstanceType<typeof Anthropic.APIError>).error).toMatchObject({
      type: 'error',
      error: { type: 'request_too_large' },
    });
    await client.messages.create({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] });
    const limited = await client.messages
      .create({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] })
      .catch((e: unknown) => e);
    expect(limited).toBeInstanceOf(Anthropic.RateLimitError);
    const err = limited as InstanceType<typeof Anthropic.RateLimitError>;
    expect(err.error).toEqual({ type: 'error', error: { type: 'rate_limit_error', message: 'Rate limit exceeded: 2 per minute' } });
    expect(Number(err.headers?.get('retry-after'))).toBeGreaterThan(0);
    expect(anthropic.requestsTo('/v1/messages')).toHaveLength(1);
  });

  it("answers 502 in Anthropic's shape when the Anthropic upstream is down", async () => {
    app = await buildTestApp({
      UPSTREAM_BASE_URL: openai.url,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY,
      ANTHROPIC_UPSTREAM_BASE_URL: 'http://127.0.0.1:9',
    });
    served = await serve(app.app);
    const res = await send(
      served.url,
      'POST',
      '/v1/messages',
      { 'x-api-key': TEST_AUTH_TOKEN, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      Buffer.from('{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'),
    );
    expect(res.status).toBe(502);
    expect(JSON.parse(res.text)).toEqual({ type: 'error', error: { type: 'api_error', message: 'The upstream could not be reached' } });
  });
});

describe('memory failing open', () => {
  it('forwards the request as sent, with X-Mem0-Memories: 0, when the memory search fails', async () => {
    const memory = new FakeMemoryService();
    memory.failNext('search', { times: Infinity, error: () => new Error('engine down') });
    const p = await startProxyOnFake(memory);
    try {
      anthropic.reset();
      const body = escapedBytesOf(firstRequest({ prompt: 'Deploy it with Kubernetes', sessionId: 'sess-down' }));
      const res = await send(p.served.url, 'POST', '/v1/messages?beta=true', claudeCode('sess-down', 'dana'), body);
      expect(res.status).toBe(200);
      expect(res.headers['x-mem0-memories']).toBe('0');
      expect(Number(res.headers['x-mem0-overhead-ms'])).toBeGreaterThanOrEqual(0);
      expect(forwardedMessages()[0]?.body.equals(body)).toBe(true);
      expect(p.app.logs.some((l) => l.includes('memory search failed; answering without memories'))).toBe(true);
    } finally {
      await p.close();
    }
  });
});

describe('a key bound to one user', () => {
  const key = newTestKey();
  let app: TestApp;
  let served: Served;
  beforeAll(async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'keys-'));
    const env = {
      UPSTREAM_BASE_URL: openai.url,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      ANTHROPIC_UPSTREAM_BASE_URL: anthropic.url,
      ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY,
      DATA_DIR: path.join(dir, 'data'),
      EMBEDDING_DIMS: '64',
      ...GENEROUS_LIMITS,
    };
    ({ app } = await buildKeyedTestApp(env, {
      dir,
      keys: [{ id: 'frank-laptop', sha256: keyDigestHex(key), user_id: 'frank' }],
      memory: (config, logger) => startEngine(config, logger, { tuning: { readTimeoutMs: 3000, writeTimeoutMs: 3000 } }),
      queueOptions: { baseDelayMs: 50, maxDelayMs: 200 },
    }));
    served = await serve(app.app);
  });
  afterAll(async () => {
    await served.close();
    await app.close();
  });

  it('acts for its own user whatever metadata.user_id says, and may not name another user (403 permission_error)', async () => {
    anthropic.reset();
    openai.reset();
    const client = apiKeyClient(served.url, key);
    const other = JSON.stringify({ device_id: 'd', account_uuid: '', session_id: 'sess-frank' });
    await client.messages.create({
      model: 'm',
      max_tokens: 100,
      metadata: { user_id: other },
      messages: [{ role: 'user', content: 'My name is Frank and I use Vim' }],
    });
    await waitFor(async () => (app.queue?.depth() === 0 && extractions() === 1 ? true : undefined));
    const res = await request(app.app).post('/list').set('x-api-key', key).send({}).expect(200);
    const mine = (res.body as { memories: MemoryItem[] }).memories;
    expect(mine.length).toBeGreaterThan(0);
    expect(mine.every((m) => m.user_id === 'frank' && m.metadata?.['session_id'] === 'sess-frank')).toBe(true);

    const refused = await client.messages
      .create({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-mem0-user-id': 'grace' } })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(Anthropic.PermissionDeniedError);
    expect((refused as InstanceType<typeof Anthropic.APIError>).error).toMatchObject({
      type: 'error',
      error: { type: 'permission_error' },
    });
    expect(anthropic.requestsTo('/v1/messages')).toHaveLength(1);
  });
});

describe("Claude Code's side requests", () => {
  it('leaves a structured-output request (the session title) alone: no memories, nothing saved', async () => {
    const p = await startProxy();
    try {
      await request(p.app.app)
        .post('/remember')
        .set(admin)
        .send({ user_id: 'default', content: 'The favourite deploy tool is Helm', infer: false })
        .expect(200);
      anthropic.reset();
      openai.reset();
      // Shaped as Claude Code 2.1.197 sends it (captured through the proxy on this machine).
      const title = {
        model: 'claude-opus-4-8',
        messages: [
          {
            role: 'user',
            content: [
              {
                type: 'text',
                text: '<session>\nHow should I deploy this service with Helm?\n</session>\n\nWrite the title in the language the user wrote in.',
              },
            ],
          },
        ],
        system: [{ type: 'text', text: 'Generate a concise, sentence-case title (3-7 words).' }],
        tools: [],
        max_tokens: 64000,
        thinking: { type: 'disabled' },
        output_config: {
          effort: 'high',
          format: { type: 'json_schema', schema: { type: 'object', properties: { title: { type: 'string' } }, required: ['title'] } },
        },
        stream: true,
      };
      const sent = Buffer.from(JSON.stringify(title));
      const res = await send(
        p.served.url,
        'POST',
        '/v1/messages?beta=true',
        { ...claudeCodeHeaders('sess-title'), 'x-api-key': TEST_AUTH_TOKEN },
        sent,
      );
      expect(res.status).toBe(200);
      expect(res.headers['x-mem0-memories']).toBe('0');
      expect(forwardedMessages()[0]?.body.equals(sent)).toBe(true);
      await new Promise((r) => setTimeout(r, 300));
      expect(p.app.queue?.depth()).toBe(0);
      expect(extractions()).toBe(0);
    } finally {
      await p.close();
    }
  });
});
