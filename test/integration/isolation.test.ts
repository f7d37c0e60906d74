/**
 * Many callers, one memory each: a registry with keys bound to alice and bob, an admin key, an
 * expired key and a key with its own rate limit, against the in-memory fake memory service (the
 * isolation is the proxy's, in front of any engine) and the fake upstream. A bound key naming
 * another user anywhere is refused before anything is read or changed; omitting the user acts as
 * itself; revocation by reload takes effect at once; and no caller's key ever reaches the upstream,
 * also through the real engine's own extraction and embedding requests.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import { combinedAuthenticator } from '../../src/keys/authenticator';
import { writeKeysFile } from '../../src/keys/file';
import { keyDigestHex, type KeyEntryJson, type KeyRegistry } from '../../src/keys/registry';
import { startEngine } from '../helpers/engine';
import type { MemoryItem } from '../../src/memory/types';
import { FakeMemoryService } from '../fakes/memory-service';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { buildTestApp, type TestApp } from '../helpers/app';
import { buildKeyedTestApp, newTestKey } from '../helpers/keyed-app';
import { TEST_OPENAI_KEY } from '../helpers/secrets';

const KEY = { alice: newTestKey(), bob: newTestKey(), admin: newTestKey(), expired: newTestKey(), limited: newTestKey() };
const bearer = (key: string): { Authorization: string } => ({ Authorization: `Bearer ${key}` });

const ENTRIES: KeyEntryJson[] = [
  { id: 'app-alice', sha256: keyDigestHex(KEY.alice), user_id: 'alice' },
  { id: 'app-bob', sha256: keyDigestHex(KEY.bob), user_id: 'bob' },
  { id: 'ops', sha256: keyDigestHex(KEY.admin), admin: true },
  { id: 'old', sha256: keyDigestHex(KEY.expired), user_id: 'alice', expires_at: '2020-01-01T00:00:00Z' },
  { id: 'slow', sha256: keyDigestHex(KEY.limited), user_id: 'carol', limits: { '/list': 3, '/v1': 2 } },
];

const generous = Object.fromEntries(['HEALTH', 'SEARCH', 'LIST', 'REMEMBER', 'FORGET', 'V1'].map((n) => [`RATE_LIMIT_${n}`, '100000']));

let fake: FakeUpstream;
let tmp: string;
let keysFile: string;
let registry: KeyRegistry;
let app: TestApp;
let memory: FakeMemoryService;

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'isolation-'));
  // No AUTH_TOKEN: the registry alone makes authentication required.
  const env = {
    UPSTREAM_BASE_URL: fake.url,
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    DATA_DIR: path.join(tmp, 'data'),
    EMBEDDING_DIMS: '64',
    ...generous,
  };
  ({ app, keysFile, registry } = await buildKeyedTestApp(env, {
    dir: tmp,
    keys: ENTRIES,
    memory: (config) => (memory = new FakeMemoryService({ backend: config.memory.backend })),
    queueOptions: { baseDelayMs: 50, maxDelayMs: 200 },
  }));
});
afterAll(async () => {
  await app.close();
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function post(route: string, key: string, body: object, headers: Record<string, string> = {}): request.Test {
  return request(app.app).post(route).set(bearer(key)).set(headers).send(body);
}

async function listOf(userId: string): Promise<MemoryItem[]> {
  const res = await post('/list', KEY.admin, { user_id: userId }).expect(200);
  return (res.body as { memories: MemoryItem[] }).memories;
}
const snapshot = async (userId: string): Promise<string[]> => (await listOf(userId)).map((m) => `${m.id}:${m.memory}`).sort();

describe('isolation between bound keys', () => {
  let bobBefore: string[];
  let bobMemoryId: string;

  beforeAll(async () => {
    for (const content of ['Alice likes green tea', 'Alice lives in Lisbon'])
      await post('/remember', KEY.admin, { user_id: 'alice', content, infer: false }).expect(200);
    for (const content of ['Bob likes black coffee', 'Bob lives in Oslo'])
      await post('/remember', KEY.admin, { user_id: 'bob', content, infer: false }).expect(200);
    bobBefore = await snapshot('bob');
    expect(bobBefore).toHaveLength(2);
    bobMemoryId = (await listOf('bob'))[0]?.id ?? '';
  });

  const foreign: Array<[string, object]> = [
    ['/search', { user_id: 'bob', query: 'coffee' }],
    ['/list', { user_id: 'bob' }],
    ['/remember', { user_id: 'bob', content: 'Bob hates coffee', infer: false }],
    ['/forget', { user_id: 'bob' }],
    ['/forget', { user_id: 'bob', memory_id: 'x' }],
  ];
  it.each(foreign)('refuses alice on %s naming bob in the body (403), with security headers, and changes nothing', async (route, body) => {
    const res = await post(route, KEY.alice, body).expect(403);
    expect(res.body).toEqual({ error: 'Forbidden', details: 'user_id does not match the caller' });
    expect(res.headers).toMatchObject({ 'x-content-type-options': 'nosniff', 'cache-control': 'no-store', 'x-frame-options': 'DENY' });
    expect(res.headers['content-security-policy']).toContain("default-src 'none'");
    expect(await snapshot('bob')).toEqual(bobBefore);
  });

  it('refuses alice on chat naming bob by body `user` or by X-Mem0-User-Id, before memory or upstream', async () => {
    fake.reset();
    const memoryCalls = memory.calls.length;
    const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'What do I like to drink?' }] };
    const byBody = await post('/v1/chat/completions', KEY.alice, { ...chat, user: 'bob' }).expect(403);
    expect(byBody.body).toMatchObject({ error: { code: 'forbidden' } });
    await post('/v1/chat/completions', KEY.alice, chat, { 'X-Mem0-User-Id': 'bob' }).expect(403);
    await post('/v1/responses', KEY.alice, { model: 'm', input: 'hi' }, { 'X-Mem0-User-Id': 'bob' }).expect(403);
    // A matching header is fine; a mismatching one next to it is not.
    await post('/v1/chat/completions', KEY.alice, { ...chat, user: 'alice' }, { 'X-Mem0-User-Id': 'bob' }).expect(403);
    expect(fake.requests).toHaveLength(0);
    expect(memory.calls.slice(memoryCalls)).toEqual([]);
    expect(await snapshot('bob')).toEqual(bobBefore);
  });

  it('lets alice omit user_id and act as herself: sees all of hers and none of bob’s', async () => {
    const listed = await post('/list', KEY.alice, {}).expect(200);
    const texts = (listed.body as { memories: MemoryItem[] }).memories.map((m) => m.memory).sort();
    expect(texts).toEqual(['Alice likes green tea', 'Alice lives in Lisbon']);
    // The header means nothing to the admin API: still alice.
    const withHeader = await post('/list', KEY.alice, {}, { 'X-Mem0-User-Id': 'bob' }).expect(200);
    expect((withHeader.body as { count: number }).count).toBe(2);
    await post('/list', KEY.alice, { user_id: 'alice' }).expect(200);

    const found = await post('/search', KEY.alice, { query: 'What do I like to drink, coffee or tea?' }).expect(200);
    const hits = (found.body as { memories: MemoryItem[] }).memories.map((m) => m.memory);
    expect(hits.length).toBeGreaterThan(0);
    expect(hits.every((t) => t.startsWith('Alice'))).toBe(true);

    await post('/remember', KEY.alice, { content: 'Alice owns a cat', infer: false }).expect(200);
    expect((await listOf('alice')).map((m) => m.memory)).toContain('Alice owns a cat');
    expect(await snapshot('bob')).toEqual(bobBefore);
  });

  it('does not let alice delete bob’s memory by its id', async () => {
    const res = await post('/forget', KEY.alice, { memory_id: bobMemoryId });
    expect(res.status).toBe(404);
    expect(await snapshot('bob')).toEqual(bobBefore);
  });

  it('injects only alice’s memories into alice’s chat', async () => {
    fake.reset();
    await post(
      '/v1/chat/completions',
      KEY.alice,
      { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Do I like tea or coffee, and where do I live?' }] },
      { 'X-Mem0-Memory': 'read' },
    ).expect(200);
    const forwarded = fake.requestsTo('/v1/chat/completions').map((r) => r.body.toString('utf8'));
    expect(forwarded).toHaveLength(1);
    expect(forwarded[0]).toMatch(/Alice/);
    expect(forwarded[0]).not.toMatch(/Bob|Oslo|coffee\b.*Bob/);
  });

  it('lets the admin key act for bob, and bob’s own key see his memories', async () => {
    await post('/search', KEY.admin, { user_id: 'bob', query: 'coffee' }).expect(200);
    const own = await post('/list', KEY.bob, {}).expect(200);
    expect((own.body as { memories: MemoryItem[] }).memories.map((m) => `${m.id}:${m.memory}`).sort()).toEqual(bobBefore);
    await post('/list', KEY.bob, { user_id: 'alice' }).expect(403);
  });
});

describe('metrics', () => {
  it('are for admin callers: a key bound to one user gets 403, the admin key the figures', async () => {
    await request(app.app).get('/metrics').set(bearer(KEY.alice)).expect(403);
    const res = await request(app.app).get('/metrics').set(bearer(KEY.admin)).expect(200);
    expect(res.text).toContain('proxy_http_requests_total');
  });
});

describe('refused keys', () => {
  it('answers 401 to an expired key, everywhere', async () => {
    await post('/list', KEY.expired, {}).expect(401);
    await post('/v1/chat/completions', KEY.expired, { model: 'm', messages: [] }).expect(401);
    await request(app.app).get('/health').set(bearer(KEY.expired)).expect(401);
    await request(app.app).get('/v1/models').expect(401);
  });

  it('answers 401 to a key revoked by a reload, and keeps the keys when the new file is bad', async () => {
    await post('/list', KEY.bob, {}).expect(200);
    writeKeysFile(keysFile, { keys: ENTRIES.filter((e) => e.id !== 'app-bob') });
    expect(registry.reload().ok).toBe(true);
    await post('/list', KEY.bob, {}).expect(401);
    await post('/list', KEY.alice, {}).expect(200);

    fs.writeFileSync(keysFile, '{"keys": [{"id": "broken"}]}');
    expect(registry.reload()).toMatchObject({ ok: false, problems: ['keys.0.sha256: Required'] });
    await post('/list', KEY.alice, {}).expect(200);
    await post('/list', KEY.bob, {}).expect(401);
    writeKeysFile(keysFile, { keys: ENTRIES });
    expect(registry.reload().ok).toBe(true);
    await post('/list', KEY.bob, {}).expect(200);
  });
});

describe('per-key limits', () => {
  it('returns 429 once the key exceeds its own limit, while others keep the configured one', async () => {
    for (let i = 0; i < 3; i++) await post('/list', KEY.limited, {}).expect(200);
    const refused = await post('/list', KEY.limited, {}).expect(429);
    expect(refused.body).toEqual({ error: 'Rate limit exceeded', detail: '3 per minute' });
    expect(refused.headers['retry-after']).toBeDefined();
    for (let i = 0; i < 2; i++) await request(app.app).get('/v1/models').set(bearer(KEY.limited)).expect(200);
    await request(app.app).get('/v1/models').set(bearer(KEY.limited)).expect(429);
    // Counted per caller id: alice is not affected.
    for (let i = 0; i < 5; i++) await post('/list', KEY.alice, {}).expect(200);
  });
});

describe('credentials upstream', () => {
  it('never forwards a caller key: the upstream sees only the proxy’s own key, also on the engine’s requests', async () => {
    // The real engine here: its extraction and embedding requests go to the same upstream, and
    // they must carry the proxy's key too, never the caller's.
    const engine = await buildTestApp(
      {
        UPSTREAM_BASE_URL: fake.url,
        OPENAI_API_KEY: TEST_OPENAI_KEY,
        DATA_DIR: path.join(tmp, 'engine'),
        EMBEDDING_DIMS: '64',
        KEYS_FILE: keysFile,
        ...generous,
      },
      {
        authenticator: combinedAuthenticator(undefined, registry),
        memory: (config, l) => startEngine(config, l, { tuning: { readTimeoutMs: 3000, writeTimeoutMs: 3000 } }),
        queueOptions: { baseDelayMs: 50, maxDelayMs: 200 },
      },
    );
    try {
      fake.reset();
      const send = (route: string, key: string, body: object): request.Test => request(engine.app).post(route).set(bearer(key)).send(body);
      await request(engine.app).get('/v1/models').set(bearer(KEY.alice)).expect(200);
      await send('/v1/chat/completions', KEY.admin, {
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'I like hiking' }],
        user: 'dave',
      }).expect(200);
      await send('/remember', KEY.alice, { content: 'I like hiking in my free time' }).expect(200);
      expect(fake.requests.length).toBeGreaterThan(2);
      expectOnlyTheProxyKey();
    } finally {
      await engine.close();
    }
  });

  function expectOnlyTheProxyKey(): void {
    for (const r of fake.requests) {
      expect(r.headers.authorization).toBe(`Bearer ${TEST_OPENAI_KEY}`);
      const seen = JSON.stringify(r.headers) + r.body.toString('utf8');
      for (const key of Object.values(KEY)) expect(seen).not.toContain(key);
    }
  }

  it('with a registry and no OPENAI_API_KEY, sends no Authorization upstream at all', async () => {
    const bare = await buildTestApp(
      { UPSTREAM_BASE_URL: fake.url, DATA_DIR: path.join(tmp, 'bare'), KEYS_FILE: keysFile, ...generous },
      { authenticator: combinedAuthenticator(undefined, registry) },
    );
    try {
      fake.reset();
      await request(bare.app).get('/v1/models').set(bearer(KEY.alice)).expect(200);
      await request(bare.app)
        .post('/v1/chat/completions')
        .set(bearer(KEY.alice))
        .send({ model: 'm', messages: [{ role: 'user', content: 'hi' }] })
        .expect(200);
      expect(fake.requests).toHaveLength(2);
      for (const r of fake.requests) expect(r.headers.authorization).toBeUndefined();
    } finally {
      await bare.close();
    }
  });
});
