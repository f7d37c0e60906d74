/**
 * The memory admin API's scenarios, once, for every backend of the real engine: a test file builds
 * its backend (the embedded store in process, pgvector in a child process on PGlite) and calls
 * `describeMemoryApi`. Each scenario runs HTTP -> admin routes -> Mem0MemoryService -> mem0ai's
 * real `Memory` -> the backend's store, with the fake OpenAI upstream answering mem0's extraction
 * call and embeddings.
 *
 * Where the backends legitimately differ the scenario branches on `backend.kind`, and says why:
 * the order of /list (the embedded store lists oldest first; mem0's pgvector `list` has no ORDER
 * BY), where the memories live (DATA_DIR/vectors.db or Postgres tables), what "restart" means (the
 * same DATA_DIR, or a new instance with its own DATA_DIR on the same database), and whether the
 * instance is a process whose exit code says it shut down cleanly.
 */
import fs from 'node:fs';
import type http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import type { MemoryItem } from '../../src/memory/types';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { TEST_AUTH_TOKEN } from './secrets';

export interface ListBody {
  memories: MemoryItem[];
  count: number;
}

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const ADMIN_AUTH = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` };
export const MEMORY_API_LIMITS: Readonly<Record<string, string>> = {
  RATE_LIMIT_HEALTH: '100000',
  RATE_LIMIT_SEARCH: '100000',
  RATE_LIMIT_LIST: '100000',
  RATE_LIMIT_REMEMBER: '100000',
  RATE_LIMIT_FORGET: '100000',
  RATE_LIMIT_V1: '100000',
};

/** One running proxy with a memory backend. */
export interface MemoryApiInstance {
  /** What supertest is given: the app itself (in process) or a served instance's base URL. */
  app: http.RequestListener | string;
  dataDir: string;
  /** The instance's log lines so far. */
  logs(): string[];
  /** Stops it: a process instance answers with its exit code, an in-process one with undefined. */
  close(): Promise<number | null | undefined>;
}

/** The fake upstream and temp folder a memory-API test file shares (hooks registered by `memoryApiFixture`). */
export interface MemoryApiFixture {
  readonly fake: FakeUpstream;
  readonly tmp: string;
  /** A new DATA_DIR under `tmp`. */
  freshDataDir(): string;
}

/** Starts the fake upstream (64-dimension embeddings) and a temp folder for the file, and ends both after it. */
export function memoryApiFixture(prefix: string): MemoryApiFixture {
  let fake: FakeUpstream | undefined;
  let tmp: string | undefined;
  beforeAll(async () => {
    fake = await startFakeUpstream({ embeddingDimensions: 64 });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  });
  afterAll(async () => {
    await fake?.close();
    if (tmp !== undefined) fs.rmSync(tmp, { recursive: true, force: true });
  });
  const ready = <T>(value: T | undefined, what: string): T => {
    if (value === undefined) throw new Error(`${what} is set up in beforeAll`);
    return value;
  };
  return {
    get fake() {
      return ready(fake, 'the fake upstream');
    },
    get tmp() {
      return ready(tmp, 'the temp folder');
    },
    freshDataDir: () => fs.mkdtempSync(path.join(ready(tmp, 'the temp folder'), 'data-')),
  };
}

interface BackendCommon {
  /** Starts an instance on `dataDir` (a fresh one when not given). */
  start(dataDir?: string): Promise<MemoryApiInstance>;
  /** How long starting one may take (a child process on PGlite is slower than a store in process). */
  startTimeoutMs?: number;
}

export type MemoryApiBackend =
  | (BackendCommon & { kind: 'embedded' })
  | (BackendCommon & {
      kind: 'pgvector';
      /** Runs one query on the backend's database. */
      sql(text: string): Promise<Array<Record<string, unknown>>>;
    });

/** Anything supertest can call: an instance, or a TestApp (both have `app`). */
export type Target = Pick<MemoryApiInstance, 'app'>;

export function post(app: Target, route: string, body: unknown): request.Test {
  return request(app.app)
    .post(route)
    .set(ADMIN_AUTH)
    .send(body as object);
}

async function answer(app: Target, route: string, body: Record<string, unknown>): Promise<ListBody> {
  const res = await post(app, route, body).expect(200);
  const out = res.body as ListBody;
  expect(out.count).toBe(out.memories.length);
  return out;
}

export const list = (app: Target, body: Record<string, unknown>): Promise<ListBody> => answer(app, '/list', body);
export const remember = (app: Target, body: Record<string, unknown>): Promise<ListBody> => answer(app, '/remember', body);
export const search = (app: Target, body: Record<string, unknown>): Promise<ListBody> => answer(app, '/search', body);

export async function health(app: Target): Promise<{ status: string; memory_service_available: boolean }> {
  const res = await request(app.app).get('/health').set(ADMIN_AUTH).expect(200);
  return res.body as { status: string; memory_service_available: boolean };
}

export const texts = (items: MemoryItem[]): string[] => items.map((m) => m.memory);
const ids = (items: MemoryItem[]): string[] => items.map((m) => m.id).sort();

/** Stops an instance; a process must have exited cleanly. */
async function stop(instance: MemoryApiInstance): Promise<void> {
  const code = await instance.close();
  if (code !== undefined) expect(code).toBe(0);
}

export function describeMemoryApi(fixture: MemoryApiFixture, backend: MemoryApiBackend): void {
  const homeMem0Existed = fs.existsSync(path.join(os.homedir(), '.mem0'));
  const startTimeoutMs = backend.startTimeoutMs ?? 20_000;

  describe(`memory admin API with the ${backend.kind} backend`, () => {
    let app: MemoryApiInstance;

    beforeAll(async () => {
      app = await backend.start(fixture.freshDataDir());
    }, startTimeoutMs);
    afterAll(() => stop(app));
    beforeEach(() => fixture.fake.reset());

    it(`starts healthy on the ${backend.kind} backend`, async () => {
      expect(await health(app)).toMatchObject({ status: 'healthy', memory_service_available: true });
      const ready = app.logs().find((l) => l.includes('memory service ready'));
      expect(ready).toContain(backend.kind);
      expect(app.logs().some((l) => l.includes('memory service unavailable'))).toBe(false);
    });

    it('remembers, lists, searches, then forgets one memory and then all of them', async () => {
      const added = await remember(app, {
        user_id: 'alice',
        messages: [
          { role: 'user', content: 'My favourite colour is teal. I live in Lisbon.' },
          { role: 'assistant', content: 'Noted, teal and Lisbon.' },
        ],
      });
      expect(texts(added.memories).sort()).toEqual(['I live in Lisbon', 'My favourite colour is teal']);
      for (const item of added.memories) {
        expect(item).toMatchObject({ user_id: 'alice', metadata: {} });
        expect(item.id).toMatch(UUID);
        expect(typeof item.created_at).toBe('string');
      }
      // mem0 v3 makes exactly one LLM call per add: the extraction.
      expect(fixture.fake.requestsTo('/v1/chat/completions')).toHaveLength(1);

      expect(texts((await list(app, { user_id: 'alice' })).memories).sort()).toEqual(['I live in Lisbon', 'My favourite colour is teal']);

      const found = await search(app, { user_id: 'alice', query: 'what is my favourite colour?' });
      expect(found.memories[0]?.memory).toBe('My favourite colour is teal');
      expect(typeof found.memories[0]?.score).toBe('number');

      const colour = found.memories[0]!;
      const forgotten = await post(app, '/forget', { user_id: 'alice', memory_id: colour.id }).expect(200);
      expect(forgotten.body).toMatchObject({ success: true });
      expect(texts((await list(app, { user_id: 'alice' })).memories)).toEqual(['I live in Lisbon']);

      await post(app, '/forget', { user_id: 'alice' }).expect(200, { success: true, message: 'All memories of user alice deleted' });
      expect((await list(app, { user_id: 'alice' })).count).toBe(0);
    });

    it('stores content as given with infer:false, and extracts only facts with infer on', async () => {
      const raw = await remember(app, { user_id: 'carol', content: 'Remember the milk', infer: false });
      expect(texts(raw.memories)).toEqual(['Remember the milk']);
      expect(fixture.fake.requestsTo('/v1/chat/completions')).toHaveLength(0);

      // The fake extractor finds no personal fact in it: nothing new is stored.
      const inferred = await remember(app, { user_id: 'carol', content: 'Remember the milk' });
      expect(inferred.count).toBe(0);
      expect(fixture.fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
      expect((await list(app, { user_id: 'carol' })).count).toBe(1);
    });

    it('keeps metadata and run_id, narrows list and search by run_id, and ignores owner keys in metadata', async () => {
      const chess = await remember(app, {
        user_id: 'dave',
        content: 'I play chess on Sundays',
        metadata: { source: 'test', n: 1 },
        run_id: 'run-1',
      });
      expect(chess.memories).toHaveLength(1);
      expect(chess.memories[0]).toMatchObject({
        memory: 'I play chess on Sundays',
        user_id: 'dave',
        run_id: 'run-1',
        metadata: { source: 'test', n: 1 },
      });

      await remember(app, { user_id: 'dave', content: 'I play tennis on Mondays', infer: false });
      const spoof = await remember(app, {
        user_id: 'dave',
        content: 'I like spoofing',
        infer: false,
        metadata: { user_id: 'eve', note: 'x' },
      });
      expect(spoof.memories[0]).toMatchObject({ user_id: 'dave', metadata: { note: 'x' } });
      expect(spoof.memories[0]?.metadata).not.toHaveProperty('user_id');
      expect((await list(app, { user_id: 'eve' })).count).toBe(0);

      const inRun = await list(app, { user_id: 'dave', run_id: 'run-1' });
      expect(texts(inRun.memories)).toEqual(['I play chess on Sundays']);
      expect((await list(app, { user_id: 'dave' })).count).toBe(3);

      const found = await search(app, { user_id: 'dave', run_id: 'run-1', query: 'which games do I play?' });
      expect(found.count).toBeGreaterThan(0);
      expect(found.memories.every((m) => m.run_id === 'run-1')).toBe(true);
    });

    // The embedded store lists in insertion order; mem0's pgvector `list` has no ORDER BY, so
    // there the order is the database's, stable while nothing changes (checked as a set, plus
    // pages agreeing with the full listing).
    const order = backend.kind === 'embedded' ? 'oldest first' : 'pages agreeing with the full listing';
    it(`pages /list with limit and offset beyond mem0’s default of 20, ${order}`, async () => {
      const notes = Array.from({ length: 25 }, (_, i) => `Note number ${i}`);
      const added = await remember(app, { user_id: 'pager', infer: false, messages: notes.map((content) => ({ role: 'user', content })) });
      expect(added.count).toBe(25);

      const all = texts((await list(app, { user_id: 'pager' })).memories);
      if (backend.kind === 'embedded') expect(all).toEqual(notes);
      else expect([...all].sort()).toEqual([...notes].sort());
      const pages: string[] = [];
      for (const offset of [0, 10, 20]) {
        const page = await list(app, { user_id: 'pager', limit: 10, offset });
        expect(page.count).toBe(offset === 20 ? 5 : 10);
        pages.push(...texts(page.memories));
      }
      expect(pages).toEqual(all);
      expect(texts((await list(app, { user_id: 'pager', limit: 7, offset: 3 })).memories)).toEqual(all.slice(3, 10));
      expect((await list(app, { user_id: 'pager', offset: 25 })).count).toBe(0);
    });

    it('lists users with their memory counts, and edits a memory (re-embedded in the store)', async () => {
      await remember(app, {
        user_id: 'pg-ann',
        infer: false,
        messages: [
          { role: 'user', content: 'Ann sails' },
          { role: 'user', content: 'Ann rows' },
        ],
      });
      const [one] = (await remember(app, { user_id: 'pg-bo', infer: false, content: 'Bo climbs' })).memories;
      const res = await post(app, '/users', { query: 'pg-' }).expect(200);
      expect(res.body).toMatchObject({
        total: 2,
        count: 2,
        users: [
          { user_id: 'pg-ann', memories: 2 },
          { user_id: 'pg-bo', memories: 1 },
        ],
      });
      const updated = await post(app, '/update', { user_id: 'pg-bo', memory_id: one?.id, memory: 'Bo skis' }).expect(200);
      expect(updated.body).toMatchObject({ memories: [{ id: one?.id, memory: 'Bo skis' }] });
      const found = await search(app, { user_id: 'pg-bo', query: 'Does Bo ski? skis' });
      expect(found.memories[0]?.memory).toBe('Bo skis');
      await post(app, '/update', { user_id: 'pg-ann', memory_id: one?.id, memory: 'stolen' }).expect(404);
    });

    it('never shows or deletes one user’s memories to another', async () => {
      const cat = (await remember(app, { user_id: 'alice', content: 'My cat is called Miso' })).memories[0]!;
      await remember(app, { user_id: 'bob', content: 'My dog is called Rex' });

      expect(texts((await list(app, { user_id: 'bob' })).memories)).toEqual(['My dog is called Rex']);
      const bobSearch = await search(app, { user_id: 'bob', query: 'cat called Miso' });
      expect(bobSearch.memories.map((m) => m.id)).not.toContain(cat.id);
      expect(bobSearch.memories.every((m) => m.user_id === 'bob')).toBe(true);

      const refused = await post(app, '/forget', { user_id: 'bob', memory_id: cat.id }).expect(404);
      expect(refused.body).toMatchObject({ error: 'Not found' });
      await post(app, '/forget', { user_id: 'bob' }).expect(200);
      expect((await list(app, { user_id: 'alice' })).memories.map((m) => m.id)).toContain(cat.id);
      expect((await list(app, { user_id: 'bob' })).count).toBe(0);
    });

    it.each([
      ['/search', { query: 'no user' }],
      ['/list', {}],
      ['/remember', { content: 'no user' }],
      ['/forget', {}],
      ['/search', { user_id: 'a', query: 5 }],
      ['/search', { user_id: 'a', query: '' }],
      ['/search', { user_id: 'a', query: 'x', limit: 0 }],
      ['/list', { user_id: 'a', limit: '5' }],
      ['/list', { user_id: 'a', limit: 0 }],
      ['/list', { user_id: 'a', limit: 1001 }],
      ['/list', { user_id: 'a', offset: -1 }],
      ['/list', { user_id: 'a', surprise: true }],
      ['/remember', { user_id: 'a' }],
      ['/remember', { user_id: 'a', content: 'x', messages: [{ role: 'user', content: 'x' }] }],
      ['/remember', { user_id: 'a', messages: [{ role: 'robot', content: 'x' }] }],
      ['/remember', { user_id: 'a', content: 'x', infer: 'no' }],
      ['/remember', { user_id: 'a b', content: 'x' }],
      ['/forget', { user_id: 'a', memory_id: 7 }],
    ])('answers 400 to POST %s %j', async (route, body) => {
      const res = await post(app, route, body).expect(400);
      expect(res.body).toMatchObject({ error: 'Invalid request' });
    });

    it('refuses "*" as a user, agent or run id, and deletes nothing', async () => {
      await remember(app, { user_id: 'star-a', content: 'Star A keeps this', infer: false });
      for (const body of [{ user_id: '*' }, { user_id: 'star-a', agent_id: '*' }, { user_id: 'star-a', run_id: '*' }]) {
        await post(app, '/forget', body).expect(400);
        await post(app, '/list', body).expect(400);
        await post(app, '/search', { ...body, query: 'keeps' }).expect(400);
      }
      expect((await list(app, { user_id: 'star-a' })).count).toBe(1);
    });

    it('answers 404 for a memory id that does not exist or is not a memory id', async () => {
      for (const memoryId of ['6f1c1b7e-9a1d-4f6e-8a57-0c5d1e2f3a4b', 'not-a-uuid']) {
        const res = await post(app, '/forget', { user_id: 'alice', memory_id: memoryId }).expect(404);
        expect(res.body).toMatchObject({ error: 'Not found' });
      }
    });

    it('answers 415 to a body that is not JSON', async () => {
      await request(app.app).post('/search').set(ADMIN_AUTH).set('Content-Type', 'text/plain').send('user_id=a&query=x').expect(415);
    });

    // Where the memories live is the backend's whole difference: a SQLite file in DATA_DIR, or
    // tables in Postgres with only mem0's history and files in DATA_DIR.
    if (backend.kind === 'embedded') {
      it('keeps everything under DATA_DIR', () => {
        expect(fs.existsSync(path.join(app.dataDir, 'vectors.db'))).toBe(true);
        expect(fs.existsSync(path.join(app.dataDir, 'history.db'))).toBe(true);
        expect(fs.existsSync(path.join(app.dataDir, 'mem0'))).toBe(true);
        // mem0 runs in its worker thread with MEM0_DIR there: its home-directory default stays untouched.
        if (!homeMem0Existed) expect(fs.existsSync(path.join(os.homedir(), '.mem0'))).toBe(false);
      });
    } else {
      const { sql } = backend;
      it('keeps the vectors in the database and only history and mem0’s files under DATA_DIR', async () => {
        const tables = await sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'");
        expect(tables.map((r) => r['table_name'])).toEqual(expect.arrayContaining(['memories', 'memories_entities']));
        const index = await sql("SELECT indexdef FROM pg_indexes WHERE tablename = 'memories' AND indexname = 'memories_hnsw_idx'");
        expect(index[0]?.['indexdef']).toEqual(expect.stringContaining('USING hnsw'));
        const column = await sql(
          "SELECT format_type(atttypid, atttypmod) AS type FROM pg_attribute WHERE attrelid = 'memories'::regclass AND attname = 'vector'",
        );
        expect(column[0]?.['type']).toBe('vector(64)');
        // Every memory row belongs to a user we stored for: no probe or stray rows.
        const owners = await sql("SELECT DISTINCT payload->>'user_id' AS owner FROM memories");
        expect(owners.map((r) => r['owner'])).not.toContain(null);

        expect(fs.existsSync(path.join(app.dataDir, 'vectors.db'))).toBe(false);
        expect(fs.existsSync(path.join(app.dataDir, 'history.db'))).toBe(true);
        expect(fs.existsSync(path.join(app.dataDir, 'mem0'))).toBe(true);
      });
    }
  });

  describe('persistence', () => {
    // The embedded store is the DATA_DIR: a restart reuses it. With pgvector the memories are in
    // the database: a new instance with a DATA_DIR of its own must find them.
    const restart =
      backend.kind === 'embedded' ? 'after a restart on the same DATA_DIR' : 'from a new instance (new DATA_DIR) on the same database';
    it(
      `finds the same memories ${restart}`,
      async () => {
        const dataDir = fixture.freshDataDir();
        const first = await backend.start(dataDir);
        const added = await remember(first, { user_id: 'erin', content: 'My bike is green. I commute by train.' });
        expect(added.count).toBe(2);
        await stop(first);

        const second = await backend.start(backend.kind === 'embedded' ? dataDir : fixture.freshDataDir());
        try {
          const after = await list(second, { user_id: 'erin' });
          expect(ids(after.memories)).toEqual(ids(added.memories));
          const found = await search(second, { user_id: 'erin', query: 'what colour is my bike?' });
          expect(found.memories[0]?.memory).toBe('My bike is green');
        } finally {
          await second.close();
        }
      },
      3 * startTimeoutMs,
    );
  });
}
