/** Drives the fake OpenAI upstream with the official `openai` client, as the proxy and mem0ai will. */
import OpenAI from 'openai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cosineSimilarity, defaultExtract, startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { rawPost as rawPostTo, type RawResponse } from '../helpers/raw-http';

let fake: FakeUpstream;
let client: OpenAI;

beforeAll(async () => {
  fake = await startFakeUpstream();
  client = new OpenAI({ apiKey: 'sk-test-upstream', baseURL: fake.url, maxRetries: 0, timeout: 5000 });
});

afterEach(() => fake.reset());

afterAll(async () => {
  await fake.close();
});

/** Raw POST to the fake, for checks the SDK hides (SSE framing, status codes). */
const rawPost = (path: string, body: unknown): Promise<RawResponse> => rawPostTo(`http://127.0.0.1:${fake.port}${path}`, body);

describe('fake OpenAI upstream', () => {
  test('chat completion JSON: echoes the last user message, records the request and its Authorization', async () => {
    const out = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [
        { role: 'system', content: 'be brief' },
        { role: 'user', content: 'hello there' },
      ],
    });
    expect(out.object).toBe('chat.completion');
    expect(out.model).toBe('gpt-4o-mini');
    expect(out.choices[0]?.message.role).toBe('assistant');
    expect(out.choices[0]?.message.content).toBe('Fake reply to: hello there');
    expect(out.usage?.total_tokens).toBeGreaterThan(0);

    expect(fake.requests).toHaveLength(1);
    const rec = fake.requests[0];
    expect(rec?.method).toBe('POST');
    expect(rec?.url).toBe('/v1/chat/completions');
    expect(rec?.headers.authorization).toBe('Bearer sk-test-upstream');
    expect(rec?.json).toMatchObject({ model: 'gpt-4o-mini' });
    expect(rec?.aborted).toBe(false);
    expect(rec?.status).toBe(200);
  });

  test('configurable reply and n > 1', async () => {
    fake.setBehaviour({ reply: 'fixed answer' });
    const out = await client.chat.completions.create({ model: 'm', n: 2, messages: [{ role: 'user', content: 'x' }] });
    expect(out.choices.map((c) => c.message.content)).toEqual(['fixed answer', 'fixed answer (choice 2)']);
  });

  test('chat stream assembles to the full text, with a usage chunk when include_usage is set', async () => {
    fake.setBehaviour({ reply: 'one two three four' });
    const stream = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'count' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let role: string | undefined;
    let finish: string | null | undefined;
    let usageTotal: number | undefined;
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk');
      const c = chunk.choices[0];
      if (c?.delta.role) role = c.delta.role;
      text += c?.delta.content ?? '';
      if (c?.finish_reason) finish = c.finish_reason;
      if (chunk.usage) usageTotal = chunk.usage.total_tokens;
    }
    expect(role).toBe('assistant');
    expect(text).toBe('one two three four');
    expect(finish).toBe('stop');
    expect(usageTotal).toBeGreaterThan(0);

    const raw = await rawPost('/v1/chat/completions', { model: 'm', stream: true, messages: [{ role: 'user', content: 'a b' }] });
    expect(raw.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(raw.text.trim().endsWith('data: [DONE]')).toBe(true);
  });

  test('tool call when configured and tools are offered', async () => {
    fake.setBehaviour({ toolCall: 'auto' });
    const out = await client.chat.completions.create({
      model: 'm',
      messages: [{ role: 'user', content: 'weather?' }],
      tools: [
        {
          type: 'function',
          function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
        },
      ],
    });
    const call = out.choices[0]?.message.tool_calls?.[0];
    expect(out.choices[0]?.finish_reason).toBe('tool_calls');
    expect(call?.type === 'function' ? call.function.name : undefined).toBe('get_weather');
    expect(call?.type === 'function' ? JSON.parse(call.function.arguments) : undefined).toEqual({ city: 'fake' });
  });

  test('embeddings: shared words are more similar than unrelated text; SDK default base64 and explicit float agree', async () => {
    const texts = ['I love hiking in the mountains', 'hiking mountains is what I love', 'quarterly tax report spreadsheet'];
    const res = await client.embeddings.create({ model: 'text-embedding-3-small', input: texts });
    // The v6 SDK asks for base64 when the caller does not choose a format, and decodes it.
    expect((fake.requests[0]?.json as { encoding_format?: string } | undefined)?.encoding_format).toBe('base64');
    const [a, b, c] = res.data.map((d) => d.embedding);
    expect(a).toHaveLength(1536);
    const related = cosineSimilarity(a ?? [], b ?? []);
    const unrelated = cosineSimilarity(a ?? [], c ?? []);
    expect(related).toBeGreaterThan(0.8);
    expect(unrelated).toBeLessThan(0.2);
    expect(related).toBeGreaterThan(unrelated);

    const asFloat = await client.embeddings.create({
      model: 'text-embedding-3-small',
      input: texts[0] ?? '',
      encoding_format: 'float',
      dimensions: 256,
    });
    const f = asFloat.data[0]?.embedding ?? [];
    expect(f).toHaveLength(256);
    const again = await client.embeddings.create({ model: 'text-embedding-3-small', input: texts[0] ?? '', dimensions: 256 });
    const g = again.data[0]?.embedding ?? [];
    expect(cosineSimilarity(f, g)).toBeCloseTo(1, 5);
  });

  test('responses API: JSON and stream', async () => {
    fake.setBehaviour({ reply: 'alpha beta gamma' });
    const json = await client.responses.create({ model: 'gpt-4.1-mini', input: 'hi' });
    expect(json.object).toBe('response');
    expect(json.output_text).toBe('alpha beta gamma');

    const stream = await client.responses.create({ model: 'gpt-4.1-mini', input: [{ role: 'user', content: 'hi' }], stream: true });
    const types: string[] = [];
    let text = '';
    let done = '';
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.output_text.done') done = ev.text;
    }
    expect(types[0]).toBe('response.created');
    expect(types[types.length - 1]).toBe('response.completed');
    expect(types).toContain('response.output_text.delta');
    expect(text).toBe('alpha beta gamma');
    expect(done).toBe('alpha beta gamma');

    const raw = await rawPost('/v1/responses', { model: 'm', input: 'x', stream: true });
    expect(raw.text).toMatch(/^event: response\.created\ndata: \{/);
  });

  test('mem0ai extraction prompt gets {"memory":[...]} facts', async () => {
    const user =
      '## Summary\n\n## Existing Memories\n[]\n\n## New Messages\nuser: My name is Alice. The weather is nice. I live in Paris!\nassistant: Nice to meet you, my friend.\n\n## Observation Date\n2025-01-01\n\n# Output:';
    const out = await client.chat.completions.create({
      model: 'gpt-5-mini',
      response_format: { type: 'json_object' },
      messages: [
        { role: 'system', content: '\n# ROLE\n\nYou are a Memory Extractor \u2014 a precise...' },
        { role: 'user', content: user },
      ],
    });
    const parsed = JSON.parse(out.choices[0]?.message.content ?? '') as { memory: Array<{ id: string; text: string }> };
    expect(parsed.memory.map((m) => m.text)).toEqual(['My name is Alice', 'I live in Paris']);
    expect(parsed.memory.map((m) => m.id)).toEqual(['0', '1']);
    expect(defaultExtract('user: nothing personal here')).toEqual([]);
  });

  test('unknown paths get 404 in OpenAI error shape', async () => {
    const res = await rawPost('/v1/nope', {});
    expect(res.status).toBe(404);
    expect(JSON.parse(res.text)).toEqual({
      error: { message: 'Invalid URL (POST /v1/nope)', type: 'invalid_request_error', param: null, code: null },
    });
    const models = await client.models.list();
    expect(models.data.length).toBeGreaterThan(0);
  });

  test('an injected 500 surfaces as InternalServerError, then the fake recovers', async () => {
    fake.failNext(500, { message: 'boom' });
    const call = client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] });
    await expect(call).rejects.toBeInstanceOf(OpenAI.InternalServerError);
    await expect(call).rejects.toMatchObject({ status: 500, error: { message: 'boom', type: 'server_error' } });
    const ok = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] });
    expect(ok.choices[0]?.message.content).toBe('Fake reply to: x');
  });

  test('fault counts and path filters', async () => {
    fake.failNext(429, { times: 2, path: '/v1/chat/completions' });
    const emb = await client.embeddings.create({ model: 'e', input: 'still works' });
    expect(emb.data).toHaveLength(1);
    for (let i = 0; i < 2; i++) {
      await expect(client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] })).rejects.toBeInstanceOf(
        OpenAI.RateLimitError,
      );
    }
    const ok = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] });
    expect(ok.choices).toHaveLength(1);
  });

  test('a hung request aborted by the client is recorded as aborted', async () => {
    fake.setNext({ kind: 'hang' });
    const controller = new AbortController();
    const call = client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] }, { signal: controller.signal });
    await fake.waitForRequests(1);
    controller.abort();
    await expect(call).rejects.toBeInstanceOf(OpenAI.APIUserAbortError);
    for (let i = 0; i < 50 && !fake.requests[0]?.aborted; i++) await new Promise((r) => setTimeout(r, 10));
    expect(fake.requests[0]?.aborted).toBe(true);
    expect(fake.requests[0]?.completed).toBe(false);
  });

  test('a stream reset after K chunks errors the client mid-stream', async () => {
    fake.setBehaviour({ reply: 'a b c d e f g h' });
    fake.setNext({ kind: 'reset', afterChunks: 3 });
    const stream = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }], stream: true });
    let text = '';
    const consume = async (): Promise<void> => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    };
    await expect(consume()).rejects.toThrow();
    expect(text).toBe('a b ');
    expect(fake.requests[0]?.aborted).toBe(false);
  });

  test('malformed SSE breaks the SDK parser', async () => {
    fake.setNext({ kind: 'malformed-sse', afterChunks: 2 });
    const quiet = new OpenAI({ apiKey: 'k', baseURL: fake.url, maxRetries: 0, logLevel: 'off' });
    const stream = await quiet.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x y z' }], stream: true });
    const consume = async (): Promise<void> => {
      for await (const chunk of stream) void chunk;
    };
    await expect(consume()).rejects.toThrow(SyntaxError);
  });

  test('stream pacing and delay fault', async () => {
    fake.setBehaviour({ reply: 'p q', firstTokenDelayMs: 60, chunkIntervalMs: 20 });
    const t0 = Date.now();
    const stream = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }], stream: true });
    let first = 0;
    for await (const chunk of stream) {
      if (!first) first = Date.now() - t0;
      void chunk;
    }
    const total = Date.now() - t0;
    expect(first).toBeGreaterThanOrEqual(55);
    expect(total).toBeGreaterThanOrEqual(55 + 4 * 20 - 10);

    fake.setBehaviour({ firstTokenDelayMs: 0, chunkIntervalMs: 0 });
    fake.setNext({ kind: 'delay', ms: 80 });
    const t1 = Date.now();
    await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] });
    expect(Date.now() - t1).toBeGreaterThanOrEqual(75);
  });

  test('mem0ai Memory.add / search work end to end against the fake', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-upstream-mem0-'));
    const savedDir = process.env['MEM0_DIR'];
    process.env['MEM0_DIR'] = dir; // mem0ai writes its config.json there instead of ~/.mem0
    try {
      const { Memory } = await import('mem0ai/oss');
      const memory = new Memory({
        embedder: { provider: 'openai', config: { apiKey: 'sk-mem0', baseURL: fake.url, model: 'text-embedding-3-small' } },
        llm: { provider: 'openai', config: { apiKey: 'sk-mem0', baseURL: fake.url, model: 'gpt-5-mini' } },
        vectorStore: { provider: 'memory', config: { collectionName: 'memories', dimension: 1536, dbPath: path.join(dir, 'vectors.db') } },
        disableHistory: true,
      });
      const added = await memory.add(
        [
          { role: 'user', content: 'My name is Alice. I love hiking in the mountains. The sky is blue.' },
          { role: 'assistant', content: 'Nice to meet you!' },
        ],
        { userId: 'u1' },
      );
      expect(added.results.map((r) => r.memory).sort()).toEqual(['I love hiking in the mountains', 'My name is Alice']);
      const found = await memory.search('where does she go hiking', { filters: { user_id: 'u1' } });
      expect(found.results[0]?.memory).toBe('I love hiking in the mountains');
      const extraction = fake.requestsTo('/v1/chat/completions');
      expect(extraction).toHaveLength(1);
      expect(fake.requestsTo('/v1/embeddings').every((r) => (r.json as { encoding_format?: string }).encoding_format === 'float')).toBe(
        true,
      );
    } finally {
      if (savedDir === undefined) delete process.env['MEM0_DIR'];
      else process.env['MEM0_DIR'] = savedDir;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
