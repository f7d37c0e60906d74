/**
 * `/mcp` end to end: the SDK's own `Client` over `StreamableHTTPClientTransport` against the served
 * app (the in-memory fake memory service: these tests are about the MCP door, not the engine), checked
 * both ways against the admin API. Also: a bound key cannot reach another user's memories through
 * MCP, a bad token is refused with 401, the rate limit applies, and failures are tool errors.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import request from 'supertest';
import { combinedAuthenticator } from '../../src/keys/authenticator';
import { keyDigestHex } from '../../src/keys/registry';
import type { MemoryItem } from '../../src/memory/types';
import { fakeMemory } from '../fakes/memory-service';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { buildTestApp, serve, type Served, type TestApp } from '../helpers/app';
import { loadTestRegistry, newTestKey } from '../helpers/keyed-app';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

interface ListBody {
  memories: MemoryItem[];
  count: number;
}

const generous = Object.fromEntries(
  ['HEALTH', 'SEARCH', 'LIST', 'REMEMBER', 'FORGET', 'V1', 'MCP'].map((n) => [`RATE_LIMIT_${n}`, '100000']),
);
const MCP_ACCEPT = 'application/json, text/event-stream';

let fake: FakeUpstream;
let tmp: string;
const opened: Array<{ close(): Promise<void> }> = [];

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-test-'));
});
afterAll(async () => {
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});
afterEach(async () => {
  // Clients first, then the servers they talk to.
  for (const c of opened.splice(0).reverse()) await c.close();
});

/** The app served on a real port (the MCP client speaks HTTP), with the fake memory service. */
async function startServed(
  env: Record<string, string>,
  options: Parameters<typeof buildTestApp>[1] = {},
): Promise<{ app: TestApp; served: Served }> {
  const app = await buildTestApp(
    {
      UPSTREAM_BASE_URL: fake.url,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      DATA_DIR: fs.mkdtempSync(path.join(tmp, 'data-')),
      EMBEDDING_DIMS: '64',
      ...generous,
      ...env,
    },
    { memory: fakeMemory(), ...options },
  );
  const served = await serve(app.app);
  return { app, served };
}

async function connect(served: Served, token: string | undefined): Promise<Client> {
  const client = new Client({ name: 'mcp-test', version: '1.0.0' });
  const headers: Record<string, string> = token === undefined ? {} : { Authorization: `Bearer ${token}` };
  const transport = new StreamableHTTPClientTransport(new URL(`${served.url}/mcp`), { requestInit: { headers } });
  await client.connect(transport);
  opened.push(client);
  return client;
}

async function call(client: Client, name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return (await client.callTool({ name, arguments: args })) as CallToolResult;
}

function textOf(result: CallToolResult): string {
  const first = result.content[0];
  return first?.type === 'text' ? first.text : '';
}

/** A successful tool result's JSON. */
function jsonOf<T>(result: CallToolResult): T {
  expect({ isError: result.isError ?? false, text: textOf(result) }).toMatchObject({ isError: false });
  return JSON.parse(textOf(result)) as T;
}

function admin(app: TestApp, token: string, route: string, body: object): request.Test {
  return request(app.app).post(route).set('Authorization', `Bearer ${token}`).send(body);
}

async function adminList(app: TestApp, token: string, userId: string): Promise<MemoryItem[]> {
  const res = await admin(app, token, '/list', { user_id: userId }).expect(200);
  return (res.body as ListBody).memories;
}

const texts = (items: MemoryItem[]): string[] => items.map((m) => m.memory).sort();

describe('MCP with the AUTH_TOKEN caller', () => {
  let app: TestApp;
  let served: Served;

  beforeAll(async () => {
    ({ app, served } = await startServed({ AUTH_TOKEN: TEST_AUTH_TOKEN }));
  });
  afterAll(async () => {
    await served.close();
    await app.close();
  });

  it('lists the four memory tools, each with a description and a JSON schema, and the memory:// template', async () => {
    const client = await connect(served, TEST_AUTH_TOKEN);
    expect(client.getServerVersion()).toMatchObject({ name: 'mem0-proxy' });
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(['add_memory', 'delete_memory', 'list_memories', 'search_memories']);
    const byName = Object.fromEntries(tools.map((t) => [t.name, t]));
    for (const tool of tools) {
      expect(tool.description?.length).toBeGreaterThan(40);
      expect(tool.inputSchema.type).toBe('object');
      expect(Object.keys(tool.inputSchema.properties ?? {})).toContain('user_id');
    }
    expect(Object.keys(byName.search_memories?.inputSchema.properties ?? {}).sort()).toEqual(['limit', 'query', 'user_id']);
    expect(byName.search_memories?.inputSchema.required).toEqual(['query']);
    expect(Object.keys(byName.list_memories?.inputSchema.properties ?? {}).sort()).toEqual(['limit', 'offset', 'user_id']);
    expect(Object.keys(byName.add_memory?.inputSchema.properties ?? {}).sort()).toEqual(['content', 'messages', 'metadata', 'user_id']);
    expect(byName.delete_memory?.inputSchema.required).toEqual(['memory_id']);
    expect(byName.delete_memory?.annotations).toMatchObject({ destructiveHint: true });
    expect(byName.search_memories?.annotations).toMatchObject({ readOnlyHint: true });

    const { resourceTemplates } = await client.listResourceTemplates();
    expect(resourceTemplates).toEqual([
      expect.objectContaining({ name: 'memories', uriTemplate: 'memory://{user_id}', mimeType: 'text/plain' }),
    ]);
  });

  it('add_memory stores through the memory service, and the admin API lists and finds it', async () => {
    const client = await connect(served, TEST_AUTH_TOKEN);
    const added = jsonOf<ListBody>(
      await call(client, 'add_memory', { user_id: 'mia', content: 'My favourite fruit is mango.', metadata: { source: 'mcp' } }),
    );
    expect(added.count).toBe(1);
    expect(added.memories[0]).toMatchObject({ memory: 'My favourite fruit is mango', user_id: 'mia', metadata: { source: 'mcp' } });

    const fromMessages = jsonOf<ListBody>(
      await call(client, 'add_memory', {
        user_id: 'mia',
        messages: [
          { role: 'user', content: 'I live in Porto.' },
          { role: 'assistant', content: 'Noted.' },
        ],
      }),
    );
    expect(texts(fromMessages.memories)).toEqual(['I live in Porto']);

    expect(texts(await adminList(app, TEST_AUTH_TOKEN, 'mia'))).toEqual(['I live in Porto', 'My favourite fruit is mango']);
    const found = await admin(app, TEST_AUTH_TOKEN, '/search', { user_id: 'mia', query: 'what is my favourite fruit?' }).expect(200);
    expect((found.body as ListBody).memories[0]?.memory).toBe('My favourite fruit is mango');
  });

  it('search_memories and list_memories find what the admin API remembered', async () => {
    for (const content of ['Noah plays the cello', 'Noah drinks oat milk', 'Noah works night shifts']) {
      await admin(app, TEST_AUTH_TOKEN, '/remember', { user_id: 'noah', content, infer: false }).expect(200);
    }
    const client = await connect(served, TEST_AUTH_TOKEN);
    const found = jsonOf<ListBody>(
      await call(client, 'search_memories', { user_id: 'noah', query: 'which instrument does Noah play? the cello?', limit: 2 }),
    );
    expect(found.count).toBe(2);
    expect(found.memories[0]).toMatchObject({ memory: 'Noah plays the cello', user_id: 'noah' });
    expect(typeof found.memories[0]?.score).toBe('number');

    const all = jsonOf<ListBody>(await call(client, 'list_memories', { user_id: 'noah' }));
    expect(all.count).toBe(3);
    expect(all.memories.map((m) => m.id)).toEqual((await adminList(app, TEST_AUTH_TOKEN, 'noah')).map((m) => m.id));
    const page = jsonOf<ListBody>(await call(client, 'list_memories', { user_id: 'noah', limit: 1, offset: 1 }));
    expect(page.memories.map((m) => m.id)).toEqual([all.memories[1]?.id]);
  });

  it('delete_memory deletes one memory (the admin API no longer has it); deleting it again is a not-found tool error', async () => {
    for (const content of ['Olga likes jazz', 'Olga has a dog'])
      await admin(app, TEST_AUTH_TOKEN, '/remember', { user_id: 'olga', content, infer: false }).expect(200);
    const before = await adminList(app, TEST_AUTH_TOKEN, 'olga');
    const jazz = before.find((m) => m.memory === 'Olga likes jazz');
    if (!jazz) throw new Error('seed missing');
    const client = await connect(served, TEST_AUTH_TOKEN);
    expect(jsonOf<{ success: boolean }>(await call(client, 'delete_memory', { user_id: 'olga', memory_id: jazz.id }))).toEqual({
      success: true,
      message: `Memory ${jazz.id} deleted`,
    });
    expect(texts(await adminList(app, TEST_AUTH_TOKEN, 'olga'))).toEqual(['Olga has a dog']);

    const again = await call(client, 'delete_memory', { user_id: 'olga', memory_id: jazz.id });
    expect(again.isError).toBe(true);
    expect(textOf(again)).toMatch(/^not found: /);
    // Another user's memory id is "not found" for this user, and stays.
    const dog = (await adminList(app, TEST_AUTH_TOKEN, 'olga'))[0];
    const foreign = await call(client, 'delete_memory', { user_id: 'someone-else', memory_id: dog?.id });
    expect(foreign.isError).toBe(true);
    expect(textOf(foreign)).toMatch(/^not found: /);
    expect(texts(await adminList(app, TEST_AUTH_TOKEN, 'olga'))).toEqual(['Olga has a dog']);
  });

  it('reads memory://{user_id} as text listing the user’s memories', async () => {
    for (const content of ['Pia reads sci-fi', 'Pia runs marathons'])
      await admin(app, TEST_AUTH_TOKEN, '/remember', { user_id: 'pia', content, infer: false }).expect(200);
    const ids = (await adminList(app, TEST_AUTH_TOKEN, 'pia')).map((m) => m.id);
    const client = await connect(served, TEST_AUTH_TOKEN);
    const read = await client.readResource({ uri: 'memory://pia' });
    const content = read.contents[0];
    expect(content).toMatchObject({ uri: 'memory://pia', mimeType: 'text/plain' });
    const text = content && 'text' in content ? content.text : '';
    expect(text).toMatch(/^Memories of user pia, oldest first:\n/);
    expect(text).toContain('- Pia reads sci-fi (id: ');
    expect(text).toContain('- Pia runs marathons (id: ');
    for (const id of ids) expect(text).toContain(id);

    const empty = await client.readResource({ uri: 'memory://nobody-here' });
    expect(empty.contents[0]).toMatchObject({ text: 'No memories of user nobody-here.\n' });
    // The token serves many users: there is no "own" user to list.
    expect((await client.listResources()).resources).toEqual([]);
  });

  it('answers bad arguments with tool errors, never a crashed session', async () => {
    const client = await connect(served, TEST_AUTH_TOKEN);
    const noUser = await call(client, 'search_memories', { query: 'anything' });
    expect(noUser).toMatchObject({ isError: true });
    expect(textOf(noUser)).toBe('invalid input: user_id is required');

    const both = await call(client, 'add_memory', { user_id: 'quinn', content: 'x', messages: [{ role: 'user', content: 'y' }] });
    expect(both.isError).toBe(true);
    expect(textOf(both)).toBe('invalid input: give exactly one of content or messages');
    const neither = await call(client, 'add_memory', { user_id: 'quinn' });
    expect(textOf(neither)).toBe('invalid input: give exactly one of content or messages');

    // Schema violations are caught by the SDK's validation, also as tool errors.
    const badLimit = await call(client, 'search_memories', { user_id: 'quinn', query: 'x', limit: 0 });
    expect(badLimit.isError).toBe(true);
    expect(textOf(badLimit)).toMatch(/Input validation error.*limit/s);
    const longId = await call(client, 'list_memories', { user_id: 'u'.repeat(300) });
    expect(longId.isError).toBe(true);

    expect((await adminList(app, TEST_AUTH_TOKEN, 'quinn')).length).toBe(0);
    // The same session keeps working.
    expect(jsonOf<ListBody>(await call(client, 'list_memories', { user_id: 'quinn' })).count).toBe(0);
  });

  it('refuses a bad or missing token with 401: the client cannot connect', async () => {
    await expect(connect(served, 'not-the-token')).rejects.toMatchObject({ code: 401 });
    await expect(connect(served, undefined)).rejects.toMatchObject({ code: 401 });
    const raw = await request(app.app).post('/mcp').set('Accept', MCP_ACCEPT).send({ jsonrpc: '2.0', id: 1, method: 'ping' }).expect(401);
    expect(raw.body).toEqual({ error: 'Unauthorized', details: 'No authorization header provided' });
  });

  it('answers 405 to GET and DELETE, protocol errors as JSON-RPC, and logs each request under /mcp', async () => {
    const get = await request(app.app)
      .get('/mcp')
      .set('Authorization', `Bearer ${TEST_AUTH_TOKEN}`)
      .set('Accept', 'text/event-stream')
      .expect(405);
    expect(JSON.parse(get.text)).toMatchObject({ jsonrpc: '2.0', error: { code: -32000 } });
    expect(get.headers).toMatchObject({ allow: 'POST', 'x-content-type-options': 'nosniff', 'cache-control': 'no-store' });
    await request(app.app).delete('/mcp').set('Authorization', `Bearer ${TEST_AUTH_TOKEN}`).expect(405);

    const post = (): request.Test => request(app.app).post('/mcp').set('Authorization', `Bearer ${TEST_AUTH_TOKEN}`);
    const notJson = await post().set('Accept', MCP_ACCEPT).set('Content-Type', 'application/json').send('{"jsonrpc":').expect(400);
    expect(notJson.body).toMatchObject({ jsonrpc: '2.0', error: { code: -32700 } });
    await post().set('Accept', 'application/json').send({ jsonrpc: '2.0', id: 1, method: 'ping' }).expect(406);
    const tooBig = await post()
      .set('Accept', MCP_ACCEPT)
      .send({ jsonrpc: '2.0', id: 1, method: 'ping', params: { pad: 'x'.repeat(1_100_000) } });
    expect(tooBig.status).toBe(413);

    const ping = await post()
      .set('Accept', MCP_ACCEPT)
      .set('X-Request-ID', 'mcp-req-1')
      .send({ jsonrpc: '2.0', id: 7, method: 'ping' })
      .expect(200);
    expect(ping.body).toEqual({ jsonrpc: '2.0', id: 7, result: {} });
    expect(ping.headers['x-request-id']).toBe('mcp-req-1');
    const line = app.logs.find((l) => l.includes('mcp-req-1') && l.includes('request'));
    for (const part of ['/mcp', 'token', 'POST', '200']) expect(line).toContain(part);
  });
});

describe('MCP with the memory engine unavailable', () => {
  it('answers tool calls with "memory unavailable" tool errors and resource reads with an error', async () => {
    // No memory factory: the test app's never-initialised memory service.
    const app = await buildTestApp({
      UPSTREAM_BASE_URL: fake.url,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      ...generous,
    });
    const served = await serve(app.app);
    opened.push({ close: () => app.close() }, served);
    const client = await connect(served, TEST_AUTH_TOKEN);
    const result = await call(client, 'search_memories', { user_id: 'ruth', query: 'anything' });
    expect(result).toMatchObject({ isError: true });
    expect(textOf(result)).toBe('memory unavailable: Memory service is unavailable. Try again later.');
    await expect(client.readResource({ uri: 'memory://ruth' })).rejects.toThrow(/memory unavailable/);
  });
});

describe('MCP with bound keys (key registry)', () => {
  const KEY = { alice: newTestKey(), ops: newTestKey() };
  let app: TestApp;
  let served: Served;
  let bobBefore: string[];
  let bobMemoryId: string;

  beforeAll(async () => {
    const { keysFile, registry } = loadTestRegistry(tmp, [
      { id: 'app-alice', sha256: keyDigestHex(KEY.alice), user_id: 'alice' },
      { id: 'ops', sha256: keyDigestHex(KEY.ops), admin: true },
    ]);
    ({ app, served } = await startServed({ KEYS_FILE: keysFile }, { authenticator: combinedAuthenticator(undefined, registry) }));
    for (const content of ['Alice likes green tea'])
      await admin(app, KEY.ops, '/remember', { user_id: 'alice', content, infer: false }).expect(200);
    for (const content of ['Bob likes black coffee', 'Bob lives in Oslo'])
      await admin(app, KEY.ops, '/remember', { user_id: 'bob', content, infer: false }).expect(200);
    const bob = await adminList(app, KEY.ops, 'bob');
    bobBefore = bob.map((m) => `${m.id}:${m.memory}`).sort();
    bobMemoryId = bob[0]?.id ?? '';
  });
  afterAll(async () => {
    await served.close();
    await app.close();
  });

  const bobSnapshot = async (): Promise<string[]> => (await adminList(app, KEY.ops, 'bob')).map((m) => `${m.id}:${m.memory}`).sort();

  it('refuses alice’s key every tool that names bob (tool error "forbidden"), and changes nothing', async () => {
    const client = await connect(served, KEY.alice);
    const attempts: Array<[string, Record<string, unknown>]> = [
      ['search_memories', { user_id: 'bob', query: 'coffee' }],
      ['list_memories', { user_id: 'bob' }],
      ['add_memory', { user_id: 'bob', content: 'Bob hates coffee' }],
      ['delete_memory', { user_id: 'bob', memory_id: bobMemoryId }],
    ];
    for (const [name, args] of attempts) {
      const result = await call(client, name, args);
      expect({ name, isError: result.isError, text: textOf(result) }).toEqual({
        name,
        isError: true,
        text: expect.stringMatching(/^forbidden: /),
      });
      expect(textOf(result)).not.toContain('Bob');
    }
    // By id alone, bob's memory is not alice's: not found.
    const byId = await call(client, 'delete_memory', { memory_id: bobMemoryId });
    expect(textOf(byId)).toMatch(/^not found: /);
    await expect(client.readResource({ uri: 'memory://bob' })).rejects.toThrow(/forbidden/);
    expect(await bobSnapshot()).toEqual(bobBefore);
  });

  it('lets alice’s key omit user_id and act as alice, and offers her own memory:// resource only', async () => {
    const client = await connect(served, KEY.alice);
    const found = jsonOf<ListBody>(await call(client, 'search_memories', { query: 'what do I like to drink, coffee or tea?' }));
    expect(found.memories.length).toBeGreaterThan(0);
    expect(found.memories.every((m) => m.user_id === 'alice')).toBe(true);
    const added = jsonOf<ListBody>(await call(client, 'add_memory', { content: 'I own a cat.', metadata: { via: 'mcp' } }));
    expect(added.memories).toEqual([expect.objectContaining({ memory: 'I own a cat', user_id: 'alice' })]);
    expect(texts(await adminList(app, KEY.ops, 'alice'))).toEqual(['Alice likes green tea', 'I own a cat']);
    // Naming herself is fine.
    expect(jsonOf<ListBody>(await call(client, 'list_memories', { user_id: 'alice' })).count).toBe(2);

    expect((await client.listResources()).resources).toEqual([expect.objectContaining({ uri: 'memory://alice', mimeType: 'text/plain' })]);
    const read = await client.readResource({ uri: 'memory://alice' });
    expect(read.contents[0]).toMatchObject({ text: expect.stringContaining('- I own a cat (id: ') });
    expect(await bobSnapshot()).toEqual(bobBefore);
  });

  it('lets the admin key act for bob through MCP', async () => {
    const client = await connect(served, KEY.ops);
    const listed = jsonOf<ListBody>(await call(client, 'list_memories', { user_id: 'bob' }));
    expect(listed.memories.map((m) => `${m.id}:${m.memory}`).sort()).toEqual(bobBefore);
  });
});

describe('MCP rate limit', () => {
  it('returns 429 once the caller exceeds RATE_LIMIT_MCP, and the client sees the refusal', async () => {
    const { app, served } = await startServed({ AUTH_TOKEN: TEST_AUTH_TOKEN, RATE_LIMIT_MCP: '4' });
    opened.push({ close: () => app.close() }, served);
    const ping = (): request.Test =>
      request(app.app)
        .post('/mcp')
        .set('Authorization', `Bearer ${TEST_AUTH_TOKEN}`)
        .set('Accept', MCP_ACCEPT)
        .send({ jsonrpc: '2.0', id: 1, method: 'ping' });
    for (let i = 0; i < 4; i++) {
      const res = await ping().expect(200);
      expect(res.headers['x-ratelimit-limit']).toBe('4');
      expect(res.headers['x-ratelimit-remaining']).toBe(String(3 - i));
    }
    const refused = await ping().expect(429);
    expect(refused.body).toEqual({ error: 'Rate limit exceeded', detail: '4 per minute' });
    expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
    await expect(connect(served, TEST_AUTH_TOKEN)).rejects.toMatchObject({ code: 429 });
    // Its own counter: the admin API is not affected.
    await admin(app, TEST_AUTH_TOKEN, '/list', { user_id: 'sam' }).expect(200);
  });
});
