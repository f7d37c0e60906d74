/**
 * The admin endpoints the memory console is built on, end to end on the embedded backend with
 * the fake upstream: /whoami, /users, /update, /list filters, /forget with memory_ids, /export,
 * /preview (the same block a chat then injects), /traces (a chat's injected ids and the memories
 * its save created), /stats, and the static /ui with its CSP. Bound keys see only their user.
 */
import crypto from 'node:crypto';
import request from 'supertest';
import type { TraceRecord } from '../../src/memory/trace-store';
import type { MemoryItem } from '../../src/memory/types';
import { startFakeAnthropic, type FakeAnthropic } from '../fakes/anthropic-upstream';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import type { TestApp } from '../helpers/app';
import { startConsoleApp, type ConsoleApp } from '../helpers/console-app';
import { TEST_ANTHROPIC_KEY, TEST_AUTH_TOKEN } from '../helpers/secrets';
import { waitFor } from '../helpers/wait';

const token = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
let aliceKey: Record<string, string>;

let fake: FakeUpstream;
let anthropic: FakeAnthropic;
let proxy: ConsoleApp;
let app: TestApp;

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  anthropic = await startFakeAnthropic({ apiKey: TEST_ANTHROPIC_KEY });
  proxy = await startConsoleApp(fake.url, { ANTHROPIC_UPSTREAM_BASE_URL: anthropic.url, ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY });
  app = proxy.app;
  aliceKey = { Authorization: `Bearer ${proxy.aliceKey}` };
});
afterAll(async () => {
  await proxy.close();
  await fake.close();
  await anthropic.close();
});

const post = (route: string, body: object, headers: Record<string, string> = token): request.Test =>
  request(app.app).post(route).set(headers).send(body);

async function remember(userId: string, content: string): Promise<MemoryItem> {
  const res = await post('/remember', { user_id: userId, content, infer: false }).expect(200);
  const item = (res.body as { memories: MemoryItem[] }).memories[0];
  if (!item) throw new Error('nothing remembered');
  return item;
}

async function listOf(userId: string, extra: object = {}): Promise<MemoryItem[]> {
  const res = await post('/list', { user_id: userId, limit: 1000, ...extra }).expect(200);
  return (res.body as { memories: MemoryItem[] }).memories;
}

describe('who the caller is', () => {
  it('says the token acts for anyone and a bound key for its user only', async () => {
    expect((await request(app.app).get('/whoami').set(token).expect(200)).body).toEqual({ caller: 'token', admin: true, user_id: null });
    expect((await request(app.app).get('/whoami').set(aliceKey).expect(200)).body).toEqual({
      caller: 'app-alice',
      admin: false,
      user_id: 'alice',
    });
    await request(app.app).get('/whoami').set({ Authorization: 'Bearer wrong' }).expect(401);
  });
});

describe('users, edits, filters, bulk delete, export', () => {
  beforeAll(async () => {
    for (const [user, n] of [
      ['u-amy', 3],
      ['u-ben', 1],
      ['u-cid', 2],
    ] as const) {
      for (let i = 0; i < n; i++) await remember(user, `${user} fact number ${i}`);
    }
  });

  it('lists every user with a memory count and last activity, by id, searchable and paged', async () => {
    const all = (await post('/users', { query: 'u-' }).expect(200)).body as {
      users: { user_id: string; memories: number; last_activity: string | null }[];
      count: number;
      total: number;
    };
    expect(all.users.map((u) => [u.user_id, u.memories])).toEqual([
      ['u-amy', 3],
      ['u-ben', 1],
      ['u-cid', 2],
    ]);
    expect(all.total).toBe(3);
    for (const u of all.users) expect(Date.parse(u.last_activity ?? '')).toBeGreaterThan(Date.now() - 60_000);
    const page = (await post('/users', { query: 'U-', limit: 1, offset: 1 }).expect(200)).body as typeof all;
    expect(page).toMatchObject({ count: 1, total: 3, users: [{ user_id: 'u-ben' }] });
    const none = (await post('/users', { query: 'nobody-has-this' }).expect(200)).body as typeof all;
    expect(none).toEqual({ users: [], count: 0, total: 0 });
    await post('/users', { limit: 0 }).expect(400);
    await post('/users', { what: 1 }).expect(400);
  });

  it('edits a memory’s text: list and search see the new text, another user cannot touch it', async () => {
    const item = await remember('u-dee', 'Dee lives in Lisbon');
    const res = await post('/update', { user_id: 'u-dee', memory_id: item.id, memory: 'Dee lives in Porto' }).expect(200);
    expect(res.body).toMatchObject({ count: 1, memories: [{ id: item.id, memory: 'Dee lives in Porto', user_id: 'u-dee' }] });
    expect((await listOf('u-dee')).map((m) => m.memory)).toEqual(['Dee lives in Porto']);
    const found = (await post('/search', { user_id: 'u-dee', query: 'Where does Dee live? Porto' }).expect(200)).body as {
      memories: MemoryItem[];
    };
    expect(found.memories[0]?.memory).toBe('Dee lives in Porto');
    await post('/update', { user_id: 'u-amy', memory_id: item.id, memory: 'hijacked' }).expect(404);
    await post('/update', { user_id: 'u-dee', memory_id: item.id, memory: 'x', extra: 1 }).expect(400);
    await post('/update', { user_id: 'u-dee', memory_id: item.id, memory: '   ' }).expect(400);
    expect((await listOf('u-dee'))[0]?.memory).toBe('Dee lives in Porto');
  });

  it('filters a user’s list by text and creation date', async () => {
    expect((await listOf('u-amy', { text: 'NUMBER 1' })).map((m) => m.memory)).toEqual(['u-amy fact number 1']);
    expect(await listOf('u-amy', { until: '2000-01-01' })).toEqual([]);
    expect(await listOf('u-amy', { since: new Date(Date.now() + 3600_000).toISOString() })).toEqual([]);
    expect(await listOf('u-amy', { since: '2000-01-01', text: 'fact' })).toHaveLength(3);
    expect(await listOf('u-amy', { text: 'fact', limit: 1, offset: 2 })).toHaveLength(1);
    await post('/list', { user_id: 'u-amy', since: 'yesterday' }).expect(400);
  });

  it('deletes the memories named in memory_ids, and reports ids that are not the user’s', async () => {
    const [a, b] = await listOf('u-cid');
    const other = (await listOf('u-ben'))[0];
    if (!a || !b || !other) throw new Error('setup');
    const res = await post('/forget', { user_id: 'u-cid', memory_ids: [a.id, other.id, b.id] }).expect(200);
    expect(res.body).toMatchObject({ success: true, deleted: 2, not_found: [other.id] });
    expect(await listOf('u-cid')).toEqual([]);
    expect(await listOf('u-ben')).toHaveLength(1);
    await post('/forget', { user_id: 'u-ben', memory_id: other.id, memory_ids: [other.id] }).expect(400);
    await post('/forget', { user_id: 'u-ben', memory_ids: [] }).expect(400);
  });

  it('exports all of a user’s memories as one JSON download', async () => {
    for (let i = 0; i < 520; i++) await remember('u-exp', `export item ${i}`);
    const res = await request(app.app)
      .post('/export')
      .set(token)
      .send({ user_id: 'u-exp' })
      .buffer(true)
      .parse((r, cb) => {
        let text = '';
        r.on('data', (c: Buffer) => (text += c.toString('utf8')));
        r.on('end', () => cb(null, text));
      });
    expect(res.status).toBe(200);
    expect(res.headers['content-disposition']).toBe('attachment; filename="memories-u-exp.json"');
    const doc = JSON.parse(res.body as string) as { user_id: string; count: number; memories: MemoryItem[]; exported_at: string };
    expect(doc.user_id).toBe('u-exp');
    expect(doc.count).toBe(520);
    expect(new Set(doc.memories.map((m) => m.memory)).size).toBe(520);
    expect(doc.memories.every((m) => m.user_id === 'u-exp')).toBe(true);
  });

  it('gives a bound key only its own user, and refuses it the others and the instance figures', async () => {
    await remember('alice', 'Alice likes tea');
    const mine = (await post('/users', {}, aliceKey).expect(200)).body as { users: { user_id: string }[]; total: number };
    expect(mine.users.map((u) => u.user_id)).toEqual(['alice']);
    expect(mine.total).toBe(1);
    const item = (await listOf('u-amy'))[0];
    if (!item) throw new Error('setup');
    await post('/update', { user_id: 'u-amy', memory_id: item.id, memory: 'x' }, aliceKey).expect(403);
    await post('/export', { user_id: 'u-amy' }, aliceKey).expect(403);
    await post('/preview', { user_id: 'u-amy', prompt: 'hi' }, aliceKey).expect(403);
    await post('/traces', { user_id: 'u-amy' }, aliceKey).expect(403);
    await request(app.app).get('/stats').set(aliceKey).expect(403);
  });
});

describe('injection preview and trace', () => {
  const chat = (userId: string, content: string, requestId: string): request.Test =>
    request(app.app)
      .post('/v1/chat/completions')
      .set({ ...token, 'X-Mem0-User-Id': userId, 'X-Request-ID': requestId })
      .send({ model: 'gpt-test', messages: [{ role: 'user', content }] });

  it('previews exactly the block a chat then injects, and traces that chat with its memory ids and what its save created', async () => {
    const peanuts = await remember('u-eve', 'Eve is allergic to peanuts');
    await remember('u-eve', 'Eve plays the cello');
    const prompt = 'Is Eve allergic to peanuts? My brother is called Sam.';
    const preview = (await post('/preview', { user_id: 'u-eve', prompt }).expect(200)).body as {
      block: string | null;
      injected: number;
      top_k: number;
      threshold: number;
      memories: (MemoryItem & { injected: boolean })[];
    };
    expect(preview.block).toContain('Eve is allergic to peanuts');
    expect(preview.top_k).toBe(app.config.memory.topK);
    expect(preview.memories.find((m) => m.id === peanuts.id)).toMatchObject({ injected: true });
    for (const m of preview.memories) expect(typeof m.score).toBe('number');

    fake.reset();
    const requestId = `trace-${crypto.randomUUID()}`;
    const res = await chat('u-eve', prompt, requestId).expect(200);
    expect(res.headers['x-mem0-memories']).toBe(String(preview.injected));
    const forwarded = fake.requestsTo('/v1/chat/completions').find((r) => !JSON.stringify(r.json).includes('Memory Extractor'));
    if (!forwarded) throw new Error('the chat was not forwarded upstream');
    const sent = (forwarded.json as { messages: { role: string; content: string }[] }).messages;
    expect(sent.some((m) => m.content === preview.block)).toBe(true);

    const saved = await waitFor(async () => {
      const traces = ((await post('/traces', { request_id: requestId }).expect(200)).body as { traces: TraceRecord[] }).traces;
      return traces[0]?.save.status === 'saved' ? traces[0] : undefined;
    });
    expect(saved).toMatchObject({
      request_id: requestId,
      caller: 'token',
      user_id: 'u-eve',
      api: 'openai',
      route: '/v1/chat/completions',
      model: 'gpt-test',
    });
    expect(saved.injected).toEqual(preview.memories.filter((m) => m.injected).map((m) => m.id));
    expect(saved.recalled.map((r) => r.id)).toEqual(preview.memories.map((m) => m.id));
    expect(saved.search_ms).toBeGreaterThanOrEqual(0);
    // The memories its save created exist and are Eve's (the fake extracts "My brother is called Sam").
    expect(saved.save.memory_ids.length).toBeGreaterThan(0);
    const eve = new Map((await listOf('u-eve')).map((m) => [m.id, m.memory]));
    for (const id of saved.save.memory_ids) expect(eve.has(id)).toBe(true);
    // DEBUG is on in tests: the prompt is kept; per user the trace is there too.
    expect(saved.prompt).toBe(prompt);
    const byUser = ((await post('/traces', { user_id: 'u-eve' }).expect(200)).body as { traces: TraceRecord[] }).traces;
    expect(byUser[0]?.request_id).toBe(requestId);
    const other = ((await post('/traces', { user_id: 'u-amy' }).expect(200)).body as { traces: TraceRecord[] }).traces;
    expect(other.some((t) => t.request_id === requestId)).toBe(false);
  });

  it('traces an Anthropic messages request the same way, and a request with memory off not at all', async () => {
    const cello = await remember('u-fin', 'Fin plays the cello');
    const requestId = `trace-${crypto.randomUUID()}`;
    await request(app.app)
      .post('/v1/messages')
      .set({ 'x-api-key': TEST_AUTH_TOKEN, 'anthropic-version': '2023-06-01', 'X-Mem0-User-Id': 'u-fin', 'X-Request-ID': requestId })
      .send({ model: 'claude-test', max_tokens: 100, messages: [{ role: 'user', content: 'Which instrument does Fin play? The cello?' }] })
      .expect(200);
    const [trace] = ((await post('/traces', { request_id: requestId }).expect(200)).body as { traces: TraceRecord[] }).traces;
    expect(trace).toMatchObject({ api: 'anthropic', route: '/v1/messages', model: 'claude-test', user_id: 'u-fin', injected: [cello.id] });
    const off = `trace-${crypto.randomUUID()}`;
    await request(app.app)
      .post('/v1/chat/completions')
      .set({ ...token, 'X-Mem0-User-Id': 'u-fin', 'X-Request-ID': off, 'X-Mem0-Memory': 'off' })
      .send({ model: 'gpt-test', messages: [{ role: 'user', content: 'Which instrument does Fin play?' }] })
      .expect(200);
    expect(((await post('/traces', { request_id: off }).expect(200)).body as { count: number }).count).toBe(0);
  });

  it('shows the search and injection figures and the save queue in /stats', async () => {
    const stats = (await request(app.app).get('/stats').set(token).expect(200)).body as {
      memory: { backend: string; available: boolean };
      save_queue: { depth: number; failures: number; dead: number; last_error: string | null };
      search: { count: number; p50_ms: number | null; p95_ms: number | null };
      injected: { chats: number; mean: number | null };
    };
    expect(stats.memory).toEqual({ backend: 'embedded', available: true });
    expect(stats.save_queue).toMatchObject({ depth: expect.any(Number), failures: 0, dead: 0, last_error: null });
    expect(stats.search.count).toBeGreaterThan(0);
    expect(stats.search.p50_ms).toBeGreaterThanOrEqual(0);
    expect(stats.search.p95_ms).toBeGreaterThanOrEqual(stats.search.p50_ms ?? 0);
    expect(stats.injected.chats).toBeGreaterThan(0);
    expect(stats.injected.mean).toBeGreaterThan(0);
  });
});

describe('the console page', () => {
  it('is served without a token, with a CSP that allows only this origin’s scripts and styles', async () => {
    for (const url of ['/ui', '/ui/']) {
      const res = await request(app.app).get(url).expect(200);
      expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(res.headers['content-security-policy']).toContain("script-src 'self'");
      expect(res.headers['content-security-policy']).toContain("frame-ancestors 'none'");
      expect(res.text).toContain('/ui/app.js');
    }
    const js = await request(app.app).get('/ui/app.js').expect(200);
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    await request(app.app).get('/ui/../config/keys.json').expect(404);
    await request(app.app).get('/ui/nothing.js').expect(404);
    // The API behind it still needs the token.
    await request(app.app).post('/users').send({}).expect(401);
    // Logged and counted under its own route label.
    const metrics = await request(app.app).get('/metrics').set(token).expect(200);
    expect(metrics.text).toMatch(/proxy_http_requests_total\{[^}]*route="\/ui"[^}]*status="200"[^}]*\}/);
  });
});
