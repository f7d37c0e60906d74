/**
 * What makes a save cheap on the embedded store, each against what it replaces: exact entity
 * lookups from an index (text-keys.ts) instead of mem0's listing of the scope's entities, a
 * save's writes in one transaction (EmbeddedStoreFiles.unit) instead of one commit per row.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { loadConfig } from '../../src/config';
import { createMem0Service } from '../../src/memory/mem0/build';
import type { MemoryService } from '../../src/memory/types';
import { EmbeddedStoreFiles, EmbeddedVectorStore } from '../../src/memory/vector-store/embedded-store';
import { entityTextKey } from '../../src/memory/vector-store/embedded/text-keys';
import { fakeEmbedding, startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { captureLogger } from '../helpers/app';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

let tmp: string;
let files: EmbeddedStoreFiles;
let counter = 0;
const freshPath = (): string => path.join(tmp, `store-${++counter}.db`);
const vec = (x: number): number[] => [x, 1 - x, 0.5];

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'save-writes-'));
});
beforeEach(() => {
  files = new EmbeddedStoreFiles();
});
afterEach(() => files.closeAll());
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const open = (dbPath: string, collectionName = 'memories_entities'): EmbeddedVectorStore =>
  new EmbeddedVectorStore({ dbPath, dimension: 3, collectionName, files });

describe('exact entity lookup by text', () => {
  it('finds the first entity row of the scope whose text normalises alike, as mem0 compares them', async () => {
    const store = open(freshPath());
    await store.insert(
      [vec(0.1), vec(0.2), vec(0.3), vec(0.4), vec(0.5)],
      ['a', 'b', 'c', 'd', 'e'],
      [
        { data: 'New  York', user_id: 'u1' },
        { data: 'new york ', user_id: 'u1' },
        { data: 'New York', user_id: 'u2' },
        { data: 'New York', user_id: 'u1', agent_id: 'x' },
        { data: 'Oslo', user_id: 'u1' },
      ],
    );
    expect(entityTextKey('  New \t York ')).toBe('new york');
    expect(store.findByTextKey({ user_id: 'u1' }, 'new york')?.id).toBe('a');
    expect(store.findByTextKey({ user_id: 'u2' }, 'new york')?.id).toBe('c');
    expect(store.findByTextKey({ user_id: 'u1', agent_id: 'x' }, 'new york')?.id).toBe('d');
    expect(store.findByTextKey({ user_id: 'u1' }, 'oslo')?.payload).toMatchObject({ data: 'Oslo', user_id: 'u1' });
    expect(store.findByTextKey({ user_id: 'u3' }, 'new york')).toBeUndefined();
    expect(store.findByTextKey({ user_id: 'u1' }, 'paris')).toBeUndefined();
  });

  it('follows updates and deletes of the text', async () => {
    const store = open(freshPath());
    await store.insert([vec(0.1)], ['a'], [{ data: 'Oslo', user_id: 'u1' }]);
    await store.update('a', vec(0.2), { data: 'Bergen', user_id: 'u1' });
    expect(store.findByTextKey({ user_id: 'u1' }, 'oslo')).toBeUndefined();
    expect(store.findByTextKey({ user_id: 'u1' }, 'bergen')?.id).toBe('a');
    await store.delete('a');
    expect(store.findByTextKey({ user_id: 'u1' }, 'bergen')).toBeUndefined();
  });

  it('is refused on a memory collection, which keeps no text keys', () => {
    expect(() => open(freshPath(), 'memories').findByTextKey({ user_id: 'u1' }, 'oslo')).toThrow(/not an entity collection/);
  });

  it('fills the text keys of a file written before they existed, when it is opened', async () => {
    const dbPath = freshPath();
    const store = open(dbPath);
    await store.insert(
      [vec(0.1), vec(0.2)],
      ['a', 'b'],
      [
        { data: 'Oslo', user_id: 'u1' },
        { data: 'Anna', user_id: 'u1' },
      ],
    );
    files.closeAll();
    // The previous version's file: no text_key column, no index, no marker.
    const raw = new Database(dbPath);
    raw.exec(
      "DROP INDEX evs_vectors_text_key; ALTER TABLE evs_vectors DROP COLUMN text_key; DELETE FROM evs_meta WHERE key = 'text_keys_version';",
    );
    raw.close();
    files = new EmbeddedStoreFiles();
    const reopened = open(dbPath);
    expect(reopened.findByTextKey({ user_id: 'u1' }, 'anna')?.id).toBe('b');
    expect(reopened.findByTextKey({ user_id: 'u1' }, 'oslo')?.id).toBe('a');
    const [rows] = await reopened.list({ user_id: 'u1' });
    expect(rows.map((r) => r.id).sort()).toEqual(['a', 'b']);
  });
});

describe('a save as one transaction', () => {
  it('commits the writes of a unit together when it ends, and other connections see none of them before', async () => {
    const dbPath = freshPath();
    const memories = open(dbPath, 'memories');
    const entities = open(dbPath);
    await memories.insert([vec(0.1)], ['before'], [{ data: 'earlier', user_id: 'u1' }]);
    const other = new Database(dbPath, { readonly: true });
    const count = (): number => (other.prepare('SELECT COUNT(*) AS n FROM evs_vectors').get() as { n: number }).n;
    expect(count()).toBe(1);
    let seenInside = -1;
    let ownReads = -1;
    await files.unit(async () => {
      await memories.insert([vec(0.2)], ['m'], [{ data: 'I live in Oslo', user_id: 'u1' }]);
      await entities.insert([vec(0.3)], ['e'], [{ data: 'Oslo', user_id: 'u1', linkedMemoryIds: ['m'] }]);
      await entities.update('e', vec(0.3), { data: 'Oslo', user_id: 'u1', linkedMemoryIds: ['before', 'm'] });
      seenInside = count();
      ownReads = (await memories.search(vec(0.2), 5, { user_id: 'u1' })).length;
    });
    expect(seenInside).toBe(1);
    expect(ownReads).toBe(2); // the unit's own connection reads its writes at once
    expect(count()).toBe(3);
    other.close();
  });

  it('keeps what a failed save wrote (as a commit per write would) and reports its error', async () => {
    const dbPath = freshPath();
    const memories = open(dbPath, 'memories');
    await expect(
      files.unit(async () => {
        await memories.insert([vec(0.2)], ['m'], [{ data: 'I live in Oslo', user_id: 'u1' }]);
        throw new Error('extraction failed');
      }),
    ).rejects.toThrow('extraction failed');
    const other = new Database(dbPath, { readonly: true });
    expect(other.prepare("SELECT id FROM evs_vectors WHERE collection = 'memories'").all()).toEqual([{ id: 'm' }]);
    other.close();
  });

  it('commits an open unit before a write from outside it, so that write is never held back', async () => {
    const dbPath = freshPath();
    const memories = open(dbPath, 'memories');
    const other = new Database(dbPath, { readonly: true });
    const ids = (): string[] => (other.prepare('SELECT id FROM evs_vectors ORDER BY id').all() as Array<{ id: string }>).map((r) => r.id);
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const save = files.unit(async () => {
      await memories.insert([vec(0.2)], ['in-unit'], [{ data: 'a', user_id: 'u1' }]);
      await gate; // the save waits on the network, say
      await memories.insert([vec(0.3)], ['in-unit-later'], [{ data: 'b', user_id: 'u1' }]);
    });
    await new Promise((resolve) => setImmediate(resolve));
    expect(ids()).toEqual([]);
    await memories.insert([vec(0.4)], ['outside'], [{ data: 'c', user_id: 'u2' }]);
    expect(ids()).toEqual(['in-unit', 'outside']);
    release();
    await save;
    expect(ids()).toEqual(['in-unit', 'in-unit-later', 'outside']);
    other.close();
  });
});

describe('mem0 engine saves with the indexed lookup and one transaction', () => {
  let fake: FakeUpstream;
  const services: MemoryService[] = [];
  afterAll(async () => {
    for (const s of services) await s.close();
    await fake?.close();
  });

  /** The scope's entity rows as (text, linked memory texts), from the file itself. */
  function entitiesOf(dataDir: string, userId: string): Array<[string, string[]]> {
    const db = new Database(path.join(dataDir, 'vectors.db'), { readonly: true });
    const memoryText = new Map(
      (
        db.prepare("SELECT id, json_extract(payload, '$.data') AS data FROM evs_vectors WHERE collection = 'memories'").all() as Array<{
          id: string;
          data: string;
        }>
      ).map((r) => [r.id, r.data]),
    );
    const rows = db
      .prepare("SELECT payload FROM evs_vectors WHERE collection = 'memories_entities' AND user_id = ? ORDER BY rowid")
      .all(userId) as Array<{ payload: string }>;
    db.close();
    return rows.map((r) => {
      const p = JSON.parse(r.payload) as { data: string; linkedMemoryIds: string[] };
      return [p.data, p.linkedMemoryIds.map((id) => memoryText.get(id) ?? id).sort()];
    });
  }

  it('links entities exactly as mem0 does with its own listing', async () => {
    fake = await startFakeUpstream({ embeddingDimensions: 32 });
    // Each request embeds a text a little apart from the last time, so an entity named again is
    // never found by mem0's semantic fallback (score >= 0.95): only the exact lookup links it.
    let salt = 0;
    fake.setBehaviour({ embedding: (text, dims) => fakeEmbedding(`${text} salt${++salt} pepper${salt}`, dims) });
    const build = async (indexEntityLookups: boolean): Promise<{ service: MemoryService; dataDir: string }> => {
      const dataDir = fs.mkdtempSync(path.join(tmp, indexEntityLookups ? 'indexed-' : 'listing-'));
      const config = loadConfig({
        env: {
          UPSTREAM_BASE_URL: fake.url,
          AUTH_TOKEN: TEST_AUTH_TOKEN,
          OPENAI_API_KEY: TEST_OPENAI_KEY,
          DATA_DIR: dataDir,
          EMBEDDING_DIMS: '32',
        },
      });
      const service = await createMem0Service(config, captureLogger(config).logger, { indexEntityLookups });
      services.push(service);
      return { service, dataDir };
    };
    const ours = await build(true);
    const mem0s = await build(false);
    const saves = [
      'My sister Anna lives in Oslo.',
      'I visited Anna in Oslo last summer.',
      'I play chess with Anna on Sundays.',
      'My brother Lars moved to Bergen.',
    ];
    for (const text of saves) {
      for (const { service } of [ours, mem0s]) {
        await service.add({ userId: 'alice' }, { messages: [{ role: 'user', content: text }], infer: true });
        await service.add({ userId: 'bob' }, { messages: [{ role: 'user', content: `${text} Bob agrees.` }], infer: true });
      }
    }
    const expected = entitiesOf(mem0s.dataDir, 'alice');
    // Several saves name the same entity: mem0 links them to one row, which the indexed lookup must find.
    expect(expected.some(([, linked]) => linked.length > 1)).toBe(true);
    expect(entitiesOf(ours.dataDir, 'alice')).toEqual(expected);
    expect(entitiesOf(ours.dataDir, 'bob')).toEqual(entitiesOf(mem0s.dataDir, 'bob'));
  });
});
