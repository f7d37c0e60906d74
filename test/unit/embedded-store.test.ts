/**
 * Behaviour tests for EmbeddedVectorStore (src/memory/vector-store/embedded-store.ts) and its
 * mem0ai registration (register.ts), including one end-to-end run of mem0ai's real `Memory`
 * against a fake OpenAI-compatible server on 127.0.0.1, so no network is used.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Database from 'better-sqlite3';
import { Memory, MemoryVectorStore, VectorStoreFactory } from 'mem0ai/oss';
import {
  EmbeddedStoreFiles,
  EmbeddedVectorStore,
  embeddedVectorStoreKernel,
  matchesFilters,
  type SearchKernel,
} from '../../src/memory/vector-store/embedded-store';
import { registerEmbeddedVectorStore } from '../../src/memory/vector-store/register';
import { seededRandom } from '../helpers/random';

let tmp: string;
// The open files every store of this test file joins (the engine builder makes one per engine).
const files = new EmbeddedStoreFiles();
let fileCounter = 0;
const freshPath = (): string => path.join(tmp, `store-${++fileCounter}.db`);

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'embedded-store-test-'));
});

afterAll(() => {
  files.closeAll();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function randomVector(dim: number, next: () => number): number[] {
  return Array.from({ length: dim }, () => next() * 2 - 1);
}

function cosine(a: number[], b: number[]): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return dot / Math.sqrt(na * nb);
}

const kernels: SearchKernel[] = embeddedVectorStoreKernel() === 'wasm' ? ['wasm', 'js'] : ['js'];

describe.each(kernels)('EmbeddedVectorStore (%s kernel)', (kernel) => {
  const open = (dbPath: string, extra: Partial<{ collectionName: string; dimension: number }> = {}): EmbeddedVectorStore =>
    new EmbeddedVectorStore({ dbPath, dimension: 3, collectionName: 'memories', kernel, files, ...extra });

  it('uses the requested kernel', () => {
    const store = open(freshPath());
    expect(store.kernel).toBe(kernel);
    store.close();
  });

  it('never returns another user’s rows', async () => {
    const store = open(freshPath());
    await store.insert(
      [
        [1, 0, 0],
        [0.9, 0.1, 0],
        [1, 0, 0.01],
      ],
      ['a1', 'a2', 'b1'],
      [
        { user_id: 'alice', data: 'a1' },
        { user_id: 'alice', data: 'a2' },
        { user_id: 'bob', data: 'b1' },
      ],
    );
    const alice = await store.search([1, 0, 0], 10, { user_id: 'alice' });
    expect(alice.map((r) => r.id).sort()).toEqual(['a1', 'a2']);
    const bob = await store.search([1, 0, 0], 10, { user_id: 'bob' });
    expect(bob.map((r) => r.id)).toEqual(['b1']);
    expect(await store.search([1, 0, 0], 10, { user_id: 'carol' })).toEqual([]);
    // A prefix or substring of a user id is another user.
    expect(await store.search([1, 0, 0], 10, { user_id: 'ali' })).toEqual([]);
    store.close();
  });

  it('ranks by cosine similarity (higher is better) with cosine values as scores', async () => {
    const store = open(freshPath());
    await store.insert(
      [
        [1, 0, 0],
        [0, 1, 0],
        [1, 1, 0],
        [-1, 0, 0],
        [10, 0.5, 0],
      ],
      ['x', 'y', 'xy', 'neg', 'scaled'],
      Array.from({ length: 5 }, () => ({ user_id: 'u' })),
    );
    const res = await store.search([2, 0, 0], 5, { user_id: 'u' });
    expect(res.map((r) => r.id)).toEqual(['x', 'scaled', 'xy', 'y', 'neg']);
    expect(res[0]!.score).toBeCloseTo(1, 5);
    expect(res[1]!.score).toBeCloseTo(cosine([2, 0, 0], [10, 0.5, 0]), 5);
    expect(res[2]!.score).toBeCloseTo(Math.SQRT1_2, 5);
    expect(res[3]!.score).toBeCloseTo(0, 5);
    expect(res[4]!.score).toBeCloseTo(-1, 5);
    store.close();
  });

  it('matches brute-force cosine top-k on random data, with and without a residual filter', async () => {
    const dim = 37; // not a multiple of 8: exercises the zero padding
    const store = new EmbeddedVectorStore({ dbPath: freshPath(), dimension: dim, kernel, files });
    const next = seededRandom(7);
    const vectors = Array.from({ length: 700 }, () => randomVector(dim, next));
    const ids = vectors.map((_, i) => `id-${i}`);
    const payloads = vectors.map((_, i) => ({ user_id: i % 7 === 0 ? 'other' : 'u', parity: i % 2 }));
    await store.insert(vectors, ids, payloads);
    for (let trial = 0; trial < 5; trial++) {
      const q = randomVector(dim, next);
      const expected = vectors
        .map((v, i) => ({ id: ids[i]!, score: cosine(q, v), p: payloads[i]! }))
        .filter((e) => e.p.user_id === 'u')
        .sort((a, b) => b.score - a.score);
      const got = await store.search(q, 25, { user_id: 'u' });
      expect(got.map((r) => r.id)).toEqual(expected.slice(0, 25).map((e) => e.id));
      got.forEach((r, i) => {
        expect(r.score).toBeCloseTo(expected[i]!.score, 4);
      });
      const odd = await store.search(q, 10, { user_id: 'u', parity: 1 });
      expect(odd.map((r) => r.id)).toEqual(
        expected
          .filter((e) => e.p.parity === 1)
          .slice(0, 10)
          .map((e) => e.id),
      );
    }
    store.close();
  });

  it('reads only candidates that can make the best k, and still returns the brute-force top k', async () => {
    // A cluster of close neighbours far above the rest: the error bounds rule the rest out
    // (they are never rescored), while the order inside the cluster needs exact scores.
    const dim = 384;
    const store = new EmbeddedVectorStore({ dbPath: freshPath(), dimension: dim, kernel, files });
    const next = seededRandom(11);
    const unit = (v: number[]): number[] => {
      const norm = Math.sqrt(v.reduce((sum, x) => sum + x * x, 0));
      return v.map((x) => x / norm);
    };
    const q = unit(randomVector(dim, next));
    // Neighbours at cosines from 0.98 down to about 0.3, 0.05 apart: wider than the error bounds,
    // so rows near the k-th are ruled out too, and a cut off by one would lose one of the best k.
    const near = Array.from({ length: 14 }, (_, i) => {
      const c = 0.98 - 0.05 * i;
      const r = unit(randomVector(dim, next));
      return q.map((x, j) => c * x + Math.sqrt(1 - c * c) * r[j]!);
    });
    const far = Array.from({ length: 1500 }, () => randomVector(dim, next));
    const vectors = [...near, ...far];
    const ids = vectors.map((_, i) => `v${i}`);
    await store.insert(
      vectors,
      ids,
      vectors.map(() => ({ user_id: 'u' })),
    );
    const expected = vectors.map((v, i) => ({ id: ids[i]!, score: cosine(q, v) })).sort((a, b) => b.score - a.score);
    for (const k of [1, 3, 5, 8, 14, 20]) {
      const got = await store.search(q, k, { user_id: 'u' });
      expect(got.map((r) => r.id)).toEqual(expected.slice(0, k).map((e) => e.id));
    }
    store.close();
  });

  it('honours topK (default 10, 0 gives nothing)', async () => {
    const store = open(freshPath());
    const n = 15;
    await store.insert(
      Array.from({ length: n }, (_, i) => [1, i / n, 0]),
      Array.from({ length: n }, (_, i) => `r${i}`),
      Array.from({ length: n }, () => ({ user_id: 'u' })),
    );
    expect(await store.search([1, 0, 0], 3, { user_id: 'u' })).toHaveLength(3);
    expect(await store.search([1, 0, 0], undefined, { user_id: 'u' })).toHaveLength(10);
    expect(await store.search([1, 0, 0], 100, { user_id: 'u' })).toHaveLength(n);
    expect(await store.search([1, 0, 0], 0, { user_id: 'u' })).toEqual([]);
    expect((await store.search([1, 0, 0], 1, { user_id: 'u' }))[0]!.id).toBe('r0');
    store.close();
  });

  it('filters by agent_id, run_id, payload fields, operators and AND/OR/NOT', async () => {
    const store = open(freshPath());
    await store.insert(
      [
        [1, 0, 0],
        [1, 0.1, 0],
        [1, 0.2, 0],
        [1, 0.3, 0],
        [1, 0.4, 0],
      ],
      ['m1', 'm2', 'm3', 'm4', 'm5'],
      [
        { user_id: 'u', agent_id: 'a1', run_id: 'r1', category: 'food', rank: 1 },
        { user_id: 'u', agent_id: 'a1', run_id: 'r2', category: 'travel', rank: 2 },
        { user_id: 'u', agent_id: 'a2', category: 'food', rank: 3 },
        { user_id: 'v', agent_id: 'a1', run_id: 'r1', category: 'food', rank: 4 },
        { agent_id: 'a1', category: 'food', rank: 5 },
      ],
    );
    const ids = async (filters: Record<string, unknown>): Promise<string[]> =>
      (await store.search([1, 0, 0], 10, filters)).map((r) => r.id).sort();
    expect(await ids({ user_id: 'u', agent_id: 'a1' })).toEqual(['m1', 'm2']);
    expect(await ids({ agent_id: 'a1' })).toEqual(['m1', 'm2', 'm4', 'm5']);
    expect(await ids({ run_id: 'r1' })).toEqual(['m1', 'm4']);
    expect(await ids({ user_id: 'u', run_id: 'r2' })).toEqual(['m2']);
    expect(await ids({ user_id: 'u', category: 'food' })).toEqual(['m1', 'm3']);
    expect(await ids({ user_id: 'u', rank: { gte: 2, lte: 2 } })).toEqual(['m2']); // both bounds apply
    expect(await ids({ user_id: 'u', category: { in: ['travel'] } })).toEqual(['m2']);
    expect(await ids({ user_id: 'u', category: ['travel'] })).toEqual(['m2']);
    expect(await ids({ user_id: 'u', $or: [{ agent_id: 'a2' }, { run_id: 'r2' }] })).toEqual(['m2', 'm3']);
    expect(await ids({ user_id: 'u', NOT: [{ category: 'food' }] })).toEqual(['m2']);
    expect(await ids({ user_id: 'u', AND: [{ category: 'food' }, { rank: { lt: 3 } }] })).toEqual(['m1']);
    // No plain scope equality: answered by scanning the collection, same semantics.
    expect(await ids({ user_id: '*', category: 'travel' })).toEqual(['m2']);
    expect(await ids({ user_id: { in: ['u', 'v'] }, category: 'food' })).toEqual(['m1', 'm3', 'm4']);
    expect(await ids({ category: { icontains: 'TRAV' } })).toEqual(['m2']);
    await expect(store.search([1, 0, 0], 10, { user_id: 'u', OR: 'bad' })).rejects.toThrow(/list of filter objects/);
    store.close();
  });

  it('reflects update and delete in search and list, including moving a row to another user', async () => {
    const store = open(freshPath());
    await store.insert(
      [
        [1, 0, 0],
        [0, 1, 0],
      ],
      ['a', 'b'],
      [
        { user_id: 'u', data: 'first' },
        { user_id: 'u', data: 'second' },
      ],
    );
    expect(await store.search([0, 0, 1], 1, { user_id: 'u' })).toHaveLength(1); // loads the partition
    await store.update('a', [0, 0, 1], { user_id: 'u', data: 'first, edited' });
    const top = await store.search([0, 0, 1], 1, { user_id: 'u' });
    expect(top[0]!.id).toBe('a');
    expect(top[0]!.payload.data).toBe('first, edited');
    expect((await store.get('a'))!.payload.data).toBe('first, edited');

    await store.update('b', [0, 1, 0], { user_id: 'w', data: 'moved' });
    expect((await store.search([0, 1, 0], 10, { user_id: 'u' })).map((r) => r.id)).toEqual(['a']);
    expect((await store.search([0, 1, 0], 10, { user_id: 'w' })).map((r) => r.id)).toEqual(['b']);

    await store.delete('a');
    expect(await store.search([0, 0, 1], 10, { user_id: 'u' })).toEqual([]);
    expect(await store.get('a')).toBeNull();
    expect(await store.list({ user_id: 'u' })).toEqual([[], 0]);
    await store.delete('does-not-exist'); // no throw, like the built-in
    await store.update('does-not-exist', [1, 0, 0], { user_id: 'u' }); // ignored, like the built-in
    expect(await store.get('does-not-exist')).toBeNull();
    store.close();
  });

  it('re-inserting an id replaces it, also when the id repeats within one batch', async () => {
    const store = open(freshPath());
    await store.insert([[1, 0, 0]], ['d'], [{ user_id: 'c' }]);
    for (const user of ['a', 'b', 'c']) await store.search([1, 0, 0], 5, { user_id: user }); // all three cached
    await store.insert(
      [
        [1, 0, 0],
        [0, 1, 0],
      ],
      ['d', 'd'],
      [{ user_id: 'a' }, { user_id: 'b' }],
    );
    expect(await store.search([1, 0, 0], 5, { user_id: 'c' })).toEqual([]);
    expect(await store.search([1, 0, 0], 5, { user_id: 'a' })).toEqual([]);
    const b = await store.search([0, 1, 0], 5, { user_id: 'b' });
    expect(b.map((r) => [r.id, Math.round(r.score! * 1000) / 1000])).toEqual([['d', 1]]);
    expect((await store.get('d'))!.payload).toEqual({ user_id: 'b' });
    expect((await store.list(undefined, 10))[1]).toBe(1);
    store.close();
  });

  it('keeps a big partition consistent across many inserts and deletes (block boundaries)', async () => {
    const dim = 1536; // 10 rows per block: deletes move rows across blocks
    const store = new EmbeddedVectorStore({ dbPath: freshPath(), dimension: dim, kernel, files });
    const next = seededRandom(11);
    const vectors = Array.from({ length: 95 }, () => randomVector(dim, next));
    const ids = vectors.map((_, i) => `v${i}`);
    await store.insert(
      vectors.slice(0, 50),
      ids.slice(0, 50),
      ids.slice(0, 50).map(() => ({ user_id: 'u' })),
    );
    await store.search(vectors[0]!, 1, { user_id: 'u' }); // load, then mutate the loaded partition
    await store.insert(
      vectors.slice(50),
      ids.slice(50),
      ids.slice(50).map(() => ({ user_id: 'u' })),
    );
    const deleted = new Set<number>();
    for (let i = 0; i < 95; i += 3) {
      await store.delete(ids[i]!);
      deleted.add(i);
    }
    for (let i = 1; i < 95; i += 10) {
      const hit = await store.search(vectors[i]!, 1, { user_id: 'u' });
      if (deleted.has(i)) {
        expect(hit[0]!.id).not.toBe(ids[i]);
      } else {
        expect(hit[0]!.id).toBe(ids[i]);
        expect(hit[0]!.score).toBeCloseTo(1, 4);
      }
    }
    const all = await store.search(vectors[1]!, 1000, { user_id: 'u' });
    expect(all).toHaveLength(95 - deleted.size);
    expect(all.some((r) => deleted.has(Number(r.id.slice(1))))).toBe(false);
    store.close();
  });

  it('lists in insertion order with the total count and topK (default 100)', async () => {
    const store = open(freshPath());
    const n = 120;
    await store.insert(
      Array.from({ length: n }, () => [1, 0, 0]),
      Array.from({ length: n }, (_, i) => `r${i}`),
      Array.from({ length: n }, (_, i) => ({ user_id: i < 110 ? 'u' : 'v', even: i % 2 === 0 })),
    );
    const [first5, total] = await store.list({ user_id: 'u' }, 5);
    expect(total).toBe(110);
    expect(first5.map((r) => r.id)).toEqual(['r0', 'r1', 'r2', 'r3', 'r4']);
    const [defaults, count] = await store.list({ user_id: 'u' });
    expect(defaults).toHaveLength(100);
    expect(count).toBe(110);
    const [evens, evenCount] = await store.list({ user_id: 'u', even: true }, 3);
    expect(evens.map((r) => r.id)).toEqual(['r0', 'r2', 'r4']);
    expect(evenCount).toBe(55);
    const [, everything] = await store.list(undefined, 1);
    expect(everything).toBe(n);
    const [none, zero] = await store.list({ user_id: 'nobody' }, 10);
    expect([none, zero]).toEqual([[], 0]);
    store.close();
  });

  it('keywordSearch ranks by BM25 within the scope and ignores other users', async () => {
    const store = open(freshPath());
    await store.insert(
      [
        [1, 0, 0],
        [1, 0, 0],
        [1, 0, 0],
        [1, 0, 0],
      ],
      ['k1', 'k2', 'k3', 'k4'],
      [
        { user_id: 'u', data: 'loves hiking in the mountains', textLemmatized: 'love hike mountain' },
        { user_id: 'u', data: 'eats sushi', textLemmatized: 'eat sushi' },
        { user_id: 'u', data: 'hiking and more hiking', textLemmatized: 'hike hike' },
        { user_id: 'v', data: 'hiking', textLemmatized: 'hike' },
      ],
    );
    const res = (await store.keywordSearch('hike', 10, { user_id: 'u' }))!;
    expect(res.map((r) => r.id)).toEqual(['k3', 'k1']);
    expect(res[0]!.score).toBeGreaterThan(res[1]!.score!);
    expect(await store.keywordSearch('   ', 10, { user_id: 'u' })).toEqual([]);
    expect((await store.keywordSearch('sushi', 10, { user_id: 'v' }))!).toEqual([]);
    store.close();
  });

  it('persists across close and reopen of the same file', async () => {
    const dbPath = freshPath();
    const store = open(dbPath);
    await store.insert(
      [
        [1, 0, 0],
        [0, 1, 0],
      ],
      ['p1', 'p2'],
      [
        { user_id: 'u', data: 'one' },
        { user_id: 'u', data: 'two' },
      ],
    );
    await store.update('p2', [0, 0, 1], { user_id: 'u', data: 'two, edited' });
    await store.setUserId('telemetry-id');
    store.close();
    await expect(store.get('p1')).rejects.toThrow(/closed/);

    const reopened = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', kernel, files }); // dimension read from the file
    expect(reopened.dimension).toBe(3);
    expect((await reopened.search([0, 0, 1], 1, { user_id: 'u' }))[0]).toMatchObject({ id: 'p2', payload: { data: 'two, edited' } });
    expect((await reopened.list({ user_id: 'u' }))[1]).toBe(2);
    expect(await reopened.getUserId()).toBe('telemetry-id');
    reopened.close();
  });

  it('has every write committed when its promise resolves (seen by another connection)', async () => {
    const dbPath = freshPath();
    const store = open(dbPath);
    const raw = new Database(dbPath, { readonly: true });
    const count = (): number => (raw.prepare('SELECT COUNT(*) AS n FROM evs_vectors').get() as { n: number }).n;
    await store.insert([[1, 0, 0]], ['c1'], [{ user_id: 'u' }]);
    expect(count()).toBe(1);
    await store.delete('c1');
    expect(count()).toBe(0);
    raw.close();
    store.close();
  });

  it('sees rows written by another connection to the same file', async () => {
    const dbPath = freshPath();
    const store = open(dbPath);
    await store.insert([[1, 0, 0]], ['mine'], [{ user_id: 'u' }]);
    expect(await store.search([0, 1, 0], 10, { user_id: 'u' })).toHaveLength(1); // partition now cached
    const other = new Database(dbPath);
    const blob = Buffer.from(new Float32Array([0, 1, 0]).buffer);
    other
      .prepare('INSERT INTO evs_vectors (collection, id, user_id, vector, payload) VALUES (?, ?, ?, ?, ?)')
      .run('memories', 'theirs', 'u', blob, JSON.stringify({ user_id: 'u' }));
    other.close();
    const res = await store.search([0, 1, 0], 10, { user_id: 'u' });
    expect(res.map((r) => r.id)).toEqual(['theirs', 'mine']);
    store.close();
  });

  it('deleteCol empties only its own collection; collections share one file', async () => {
    const dbPath = freshPath();
    const main = open(dbPath);
    const entities = open(dbPath, { collectionName: 'memories_entities' });
    await main.insert([[1, 0, 0]], ['same-id'], [{ user_id: 'u', data: 'memory' }]);
    await entities.insert([[1, 0, 0]], ['same-id'], [{ user_id: 'u', data: 'entity', linkedMemoryIds: ['same-id'] }]);
    expect((await main.get('same-id'))!.payload.data).toBe('memory');
    expect((await entities.get('same-id'))!.payload.data).toBe('entity');
    expect((await entities.search([1, 0, 0], 5, { user_id: 'u' })).map((r) => r.payload.data)).toEqual(['entity']);
    expect(
      fs.readdirSync(path.dirname(dbPath)).filter((f) => f.startsWith(path.basename(dbPath, '.db')) && f.endsWith('.db')),
    ).toHaveLength(1);

    await main.search([1, 0, 0], 5, { user_id: 'u' });
    await main.deleteCol();
    expect(await main.search([1, 0, 0], 5, { user_id: 'u' })).toEqual([]);
    expect(await main.list({ user_id: 'u' })).toEqual([[], 0]);
    expect((await entities.list({ user_id: 'u' }))[1]).toBe(1);
    await main.insert([[0, 1, 0]], ['again'], [{ user_id: 'u' }]); // still usable after deleteCol
    expect((await main.search([0, 1, 0], 5, { user_id: 'u' })).map((r) => r.id)).toEqual(['again']);
    main.close();
    entities.close();
  });

  it('shares a file only within one EmbeddedStoreFiles: closing one set leaves the stores of another open', async () => {
    const dbPath = freshPath();
    const mine = new EmbeddedStoreFiles();
    const theirs = new EmbeddedStoreFiles();
    const a = new EmbeddedVectorStore({ dbPath, dimension: 3, kernel, files: mine });
    const b = new EmbeddedVectorStore({ dbPath, dimension: 3, kernel, files: theirs });
    await a.insert([[1, 0, 0]], ['x'], [{ user_id: 'u' }]);
    expect((await b.search([1, 0, 0], 5, { user_id: 'u' })).map((r) => r.id)).toEqual(['x']); // the same file, another connection
    mine.closeAll();
    await expect(a.get('x')).rejects.toThrow(/closed/);
    expect((await b.get('x'))!.id).toBe('x');
    b.close();
  });

  it('throws clear errors on dimension mismatch', async () => {
    const dbPath = freshPath();
    const store = open(dbPath);
    await expect(store.insert([[1, 0]], ['x'], [{ user_id: 'u' }])).rejects.toThrow(/dimension mismatch, expected 3, got 2/);
    await expect(store.search([1, 0, 0, 0], 5, { user_id: 'u' })).rejects.toThrow(/dimension mismatch, expected 3, got 4/);
    await store.insert([[1, 0, 0]], ['ok'], [{ user_id: 'u' }]);
    await expect(store.update('ok', [1], { user_id: 'u' })).rejects.toThrow(/dimension mismatch/);
    await expect(
      store.insert(
        [
          [1, 0, 0],
          [1, 0],
        ],
        ['y', 'z'],
        [{}, {}],
      ),
    ).rejects.toThrow(/dimension mismatch/);
    expect(await store.get('y')).toBeNull(); // the batch was rejected whole
    await expect(store.insert([[1, Number.NaN, 0]], ['n'], [{}])).rejects.toThrow(/non-finite/);
    expect(() => open(dbPath, { dimension: 4 })).toThrow(/holds 3-dimensional vectors/);
    expect(() => new EmbeddedVectorStore({ dbPath: freshPath(), kernel, files })).toThrow(/dimension is required/);
    expect(() => new EmbeddedVectorStore({ dimension: 3, kernel, files })).toThrow(/dbPath/);
    expect(() => new EmbeddedVectorStore({ dbPath: freshPath(), dimension: 3, kernel })).toThrow(/files .* is required/);
    store.close();
  });

  it('returns payload copies and normalizes camelCase scope keys', async () => {
    const store = open(freshPath());
    await store.insert([[1, 0, 0]], ['c'], [{ userId: 'u', data: 'original', tags: ['a'] }]);
    const [hit] = await store.search([1, 0, 0], 1, { user_id: 'u' });
    expect(hit!.payload).toEqual({ user_id: 'u', data: 'original', tags: ['a'] });
    (hit!.payload.tags as string[]).push('mutated');
    hit!.payload.data = 'mutated';
    const [again] = await store.search([1, 0, 0], 1, { user_id: 'u' });
    expect(again!.payload).toEqual({ user_id: 'u', data: 'original', tags: ['a'] });
    store.close();
  });

  it('evicts cached partitions past the byte budget and reloads them on demand', async () => {
    const store = new EmbeddedVectorStore({ dbPath: freshPath(), dimension: 3, kernel, maxCacheBytes: 1, files });
    await store.insert(
      [
        [1, 0, 0],
        [0, 1, 0],
      ],
      ['a', 'b'],
      [{ user_id: 'u1' }, { user_id: 'u2' }],
    );
    expect((await store.search([1, 0, 0], 5, { user_id: 'u1' })).map((r) => r.id)).toEqual(['a']);
    expect((await store.search([1, 0, 0], 5, { user_id: 'u2' })).map((r) => r.id)).toEqual(['b']);
    expect(store.cacheStats().partitions).toBe(1);
    await store.insert([[1, 0, 0]], ['a2'], [{ user_id: 'u1' }]); // u1 is not cached: goes to disk only
    expect((await store.search([1, 0, 0], 5, { user_id: 'u1' })).map((r) => r.id).sort()).toEqual(['a', 'a2']);
    store.close();
  });
});

describe('keyword index (FTS5)', () => {
  /** A file as the previous version of the store wrote it: no keyword index, no triggers. */
  function writePreviousVersionFile(dbPath: string): void {
    const db = new Database(dbPath);
    db.pragma('journal_mode = WAL');
    db.exec(`
      CREATE TABLE evs_collections (name TEXT PRIMARY KEY, dimension INTEGER NOT NULL);
      CREATE TABLE evs_vectors (collection TEXT NOT NULL, id TEXT NOT NULL, user_id TEXT, agent_id TEXT, run_id TEXT,
        vector BLOB NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (collection, id));
      CREATE INDEX evs_vectors_user ON evs_vectors (collection, user_id);
      CREATE TABLE evs_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      INSERT INTO evs_collections VALUES ('memories', 3);
    `);
    const insert = db.prepare('INSERT INTO evs_vectors (collection, id, user_id, vector, payload) VALUES (?, ?, ?, ?, ?)');
    const rows: Array<[string, string, [number, number, number], Record<string, unknown>]> = [
      ['p1', 'u', [1, 0, 0], { user_id: 'u', data: 'Loves hiking in the mountains', textLemmatized: 'love hike mountain' }],
      ['p2', 'u', [0, 1, 0], { user_id: 'u', data: 'Eats sushi on Fridays', textLemmatized: 'eat sushi friday' }],
      ['p3', 'u', [0.9, 0.1, 0], { user_id: 'u', data: 'Hiking, always hiking', textLemmatized: 'hike always hike' }],
      ['p4', 'v', [1, 0, 0], { user_id: 'v', data: 'Hiking too', textLemmatized: 'hike too' }],
    ];
    for (const [id, user, vector, payload] of rows)
      insert.run('memories', id, user, Buffer.from(new Float32Array(vector).buffer), JSON.stringify(payload));
    db.close();
  }

  it('indexes a file written by the previous version when it is opened, and searches it as before', async () => {
    const dbPath = freshPath();
    writePreviousVersionFile(dbPath);
    const store = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    const hits = (await store.keywordSearch('hike', 10, { user_id: 'u' }))!;
    expect(hits.map((h) => h.id)).toEqual(['p3', 'p1']);
    expect(hits[0]!.score).toBeGreaterThan(hits[1]!.score!);
    expect(hits[0]!.payload).toMatchObject({ data: 'Hiking, always hiking' });
    // Vector search reads the migrated rows unchanged.
    const near = await store.search([1, 0, 0], 2, { user_id: 'u' });
    expect(near.map((n) => n.id)).toEqual(['p1', 'p3']);
    expect(near[0]!.score).toBeCloseTo(1, 6);
    store.close();
    // Opening again does not index twice.
    const again = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    expect((await again.keywordSearch('hike', 10, { user_id: 'u' }))!.map((h) => h.id)).toEqual(['p3', 'p1']);
    again.close();
    const db = new Database(dbPath, { readonly: true });
    expect((db.prepare('SELECT COUNT(*) AS n FROM evs_keywords').get() as { n: number }).n).toBe(4);
    // Every row got its int8 copy, which partitions load instead of the float32 vector.
    expect((db.prepare('SELECT COUNT(*) AS n FROM evs_vectors WHERE length(qvector) = 4 + 3').get() as { n: number }).n).toBe(4);
    db.close();
  });

  it('searchAbove returns only rows at or above the score, with exact cosine scores', async () => {
    const dbPath = freshPath();
    const store = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', dimension: 3, files });
    await store.insert(
      [
        [1, 0, 0],
        [0.8, 0.6, 0],
        [0, 1, 0],
        [-1, 0, 0],
      ],
      ['a', 'b', 'c', 'd'],
      [{ user_id: 'u' }, { user_id: 'u' }, { user_id: 'u' }, { user_id: 'u' }],
    );
    const hits = await store.searchAbove([1, 0, 0], 10, { user_id: 'u' }, 0.5);
    expect(hits.map((h) => [h.id, h.score])).toEqual([
      ['a', 1],
      ['b', expect.closeTo(0.8, 6)],
    ]);
    expect(await store.searchAbove([1, 0, 0], 10, { user_id: 'nobody' }, 0.5)).toEqual([]);
    store.close();
  });

  it('searchAbove misses no row whose exact score reaches the floor, for dense and for sparse vectors', async () => {
    const dim = 256;
    const next = seededRandom(4242);
    // Sparse: a few large components, as in hashed-word embeddings (the int8 scale is then large).
    const sparse = (): number[] => {
      const v = new Array<number>(dim).fill(0);
      for (let i = 0; i < 6; i++) v[Math.floor(next() * dim)] = next() * 2 - 1;
      return v;
    };
    for (const make of [() => randomVector(dim, next), sparse]) {
      const store = new EmbeddedVectorStore({ dbPath: freshPath(), collectionName: 'memories', dimension: dim, files });
      const base = make();
      // Many rows close to one direction, so plenty of scores sit near any floor.
      const near = (spread: number): number[] => {
        const noise = make();
        return base.map((x, i) => x + (noise[i] ?? 0) * spread);
      };
      const rows = Array.from({ length: 400 }, () => near(0.9));
      const ids = rows.map((_, i) => `r${i}`);
      await store.insert(
        rows,
        ids,
        rows.map(() => ({ user_id: 'u' })),
      );
      for (let t = 0; t < 10; t++) {
        const query = near(0.5);
        const exact = rows.map((r, i) => ({ id: ids[i]!, score: cosine(query, r) })).sort((a, b) => b.score - a.score);
        // Between two rows' scores, so float32 storage cannot put a row on the other side of it.
        const j = Math.floor(5 + next() * 20);
        const floor = (exact[j]!.score + exact[j + 1]!.score) / 2;
        const want = exact
          .filter((e) => e.score >= floor)
          .slice(0, 30)
          .map((e) => e.id);
        const got = await store.searchAbove(query, 30, { user_id: 'u' }, floor);
        expect(got.map((h) => h.id)).toEqual(want);
      }
      store.close();
    }
  });

  it('follows inserts, replacements, updates and deletes, leaving no stale entries', async () => {
    const dbPath = freshPath();
    const store = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', dimension: 3, files });
    await store.insert(
      [
        [1, 0, 0],
        [0, 1, 0],
      ],
      ['a', 'b'],
      [
        { user_id: 'u', data: 'plays chess', textLemmatized: 'play chess' },
        { user_id: 'u', data: 'plays tennis', textLemmatized: 'play tennis' },
      ],
    );
    expect((await store.keywordSearch('chess', 10, { user_id: 'u' }))!.map((h) => h.id)).toEqual(['a']);
    // Re-inserting an id replaces its text in the index.
    await store.insert([[1, 0, 0]], ['a'], [{ user_id: 'u', data: 'plays go', textLemmatized: 'play go' }]);
    expect(await store.keywordSearch('chess', 10, { user_id: 'u' })).toEqual([]);
    expect((await store.keywordSearch('go', 10, { user_id: 'u' }))!.map((h) => h.id)).toEqual(['a']);
    await store.update('b', [0, 1, 0], { user_id: 'u', data: 'plays squash', textLemmatized: 'play squash' });
    expect(await store.keywordSearch('tennis', 10, { user_id: 'u' })).toEqual([]);
    expect((await store.keywordSearch('squash', 10, { user_id: 'u' }))!.map((h) => h.id)).toEqual(['b']);
    await store.delete('a');
    expect((await store.keywordSearch('play', 10, { user_id: 'u' }))!.map((h) => h.id)).toEqual(['b']);
    // Residual filters apply to the matches; quotes and FTS operators in a query are only text.
    expect(await store.keywordSearch('play', 10, { user_id: 'u', data: 'nothing' })).toEqual([]);
    expect((await store.keywordSearch('"play OR NEAR( AND', 10, { user_id: 'u' }))!.map((h) => h.id)).toEqual(['b']);
    expect(await store.keywordSearch('NOT "" * ^', 10, { user_id: 'u' })).toEqual([]);
    await store.deleteCol();
    store.close();
    const db = new Database(dbPath, { readonly: true });
    expect((db.prepare('SELECT COUNT(*) AS n FROM evs_keywords').get() as { n: number }).n).toBe(0);
    db.close();
  });
});

describe('matchesFilters', () => {
  it('treats an undefined condition as "field absent" (a missing user id never matches everyone)', () => {
    expect(matchesFilters({ user_id: 'u' }, { user_id: undefined })).toBe(false);
    expect(matchesFilters({}, { user_id: undefined })).toBe(true);
    expect(matchesFilters({ user_id: 'u' }, { user_id: '*' })).toBe(true);
    expect(matchesFilters({ n: '10' }, { n: { gt: 9 } })).toBe(false); // no string/number coercion
    expect(matchesFilters({ ids: ['a', 'b'] }, { ids: { contains: 'b' } })).toBe(true);
    expect(() => matchesFilters({}, { x: { between: 1, gt: 0 } })).toThrow(/Unsupported filter operator/);
  });
});

describe('registerEmbeddedVectorStore', () => {
  it('routes "embedded" to EmbeddedVectorStore once and leaves other providers alone', () => {
    registerEmbeddedVectorStore();
    const wrapped = VectorStoreFactory.create;
    registerEmbeddedVectorStore();
    expect(VectorStoreFactory.create).toBe(wrapped); // idempotent: not wrapped twice

    const store = VectorStoreFactory.create('embedded', { collectionName: 'm', dimension: 4, dbPath: freshPath(), files });
    expect(store).toBeInstanceOf(EmbeddedVectorStore);
    (store as EmbeddedVectorStore).close();
    expect(VectorStoreFactory.create('EMBEDDED', { dimension: 4, dbPath: freshPath(), files })).toBeInstanceOf(EmbeddedVectorStore);

    const builtin = VectorStoreFactory.create('memory', { dimension: 4, dbPath: path.join(tmp, 'builtin.db') });
    expect(builtin).toBeInstanceOf(MemoryVectorStore);
    expect(() => VectorStoreFactory.create('no-such-provider', {})).toThrow(/Unsupported vector store provider/);
  });

  it('accepts an explicit factory', () => {
    const calls: string[] = [];
    const factory = {
      create(provider: string, _config?: unknown): never {
        calls.push(provider);
        throw new Error('original called');
      },
    };
    registerEmbeddedVectorStore(factory);
    expect(() => factory.create('qdrant')).toThrow('original called');
    expect(calls).toEqual(['qdrant']);
    const store = factory.create('embedded', { dimension: 2, dbPath: freshPath(), files } as never) as unknown;
    expect(store).toBeInstanceOf(EmbeddedVectorStore);
    (store as EmbeddedVectorStore).close();
  });
});

// ---------------------------------------------------------------------------------------------
// End to end: mem0ai Memory -> fake OpenAI server, with the embedded store as vector store
// ---------------------------------------------------------------------------------------------

const EMBED_DIMS = 64;

/** Deterministic hashed bag-of-words vector: texts sharing words are similar. */
function fakeEmbedding(text: string, dims: number): number[] {
  const v = new Array<number>(dims).fill(0);
  for (const word of text.toLowerCase().match(/[a-z0-9]+/g) ?? []) {
    let h = 2166136261;
    for (let i = 0; i < word.length; i++) h = Math.imul(h ^ word.charCodeAt(i), 16777619) >>> 0;
    v[h % dims]! += (h >>> 16) & 1 ? 1 : -1;
  }
  const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0)) || 1;
  return v.map((x) => x / norm);
}

interface ChatMessage {
  role: string;
  content: string;
}

interface FakeOpenAI {
  url: string;
  chatCalls: ChatMessage[][];
  embeddingInputs: string[];
  close(): Promise<void>;
}

/**
 * Answers mem0's one LLM call per add(): system prompt "You are a Memory Extractor", user prompt
 * with a "## New Messages" section of `role: content` lines; reply {"memory":[{id,text}]}. Each
 * user line becomes one memory, unless it is already among the "## Existing Memories".
 */
function extractionReply(userPrompt: string): string {
  const section = /## New Messages\n([\s\S]*?)\n\n## /.exec(userPrompt)?.[1] ?? '';
  const existing = /## Existing Memories\n([\s\S]*?)\n\n## /.exec(userPrompt)?.[1] ?? '[]';
  const known = new Set((JSON.parse(existing) as Array<{ text: string }>).map((m) => m.text));
  const memory = section
    .split('\n')
    .filter((line) => line.startsWith('user: '))
    .map((line) => line.slice('user: '.length).trim())
    .filter((text) => text && !known.has(text))
    .map((text, i) => ({ id: String(i), text, attributed_to: 'user' }));
  return JSON.stringify({ memory });
}

async function startFakeOpenAI(): Promise<FakeOpenAI> {
  const chatCalls: ChatMessage[][] = [];
  const embeddingInputs: string[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')));
    req.on('end', () => {
      const send = (status: number, payload: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(payload));
      };
      const json = (body ? JSON.parse(body) : {}) as Record<string, unknown>;
      if (req.method === 'POST' && req.url === '/v1/embeddings') {
        const input = json.input;
        const texts = Array.isArray(input) ? (input as string[]) : [String(input)];
        embeddingInputs.push(...texts);
        const dims = typeof json.dimensions === 'number' ? json.dimensions : EMBED_DIMS;
        send(200, {
          object: 'list',
          model: json.model,
          data: texts.map((t, index) => ({ object: 'embedding', index, embedding: fakeEmbedding(t, dims) })),
          usage: { prompt_tokens: 1, total_tokens: 1 },
        });
        return;
      }
      if (req.method === 'POST' && req.url === '/v1/chat/completions') {
        const messages = json.messages as ChatMessage[];
        chatCalls.push(messages);
        const system = messages.find((m) => m.role === 'system')?.content ?? '';
        const user = messages.find((m) => m.role === 'user')?.content ?? '';
        const content = system.includes('You are a Memory Extractor') ? extractionReply(user) : '{"memory":[]}';
        send(200, {
          id: `chatcmpl-${chatCalls.length}`,
          object: 'chat.completion',
          created: Math.floor(Date.now() / 1000),
          model: json.model,
          choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
        });
        return;
      }
      send(404, { error: { message: `no route ${req.method} ${req.url}`, type: 'invalid_request_error' } });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    chatCalls,
    embeddingInputs,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('mem0ai Memory with vectorStore provider "embedded" (end to end, fake OpenAI)', () => {
  let fake: FakeOpenAI;
  let dir: string;
  let memory: Memory;
  const previousMem0Dir = process.env.MEM0_DIR;

  beforeAll(async () => {
    fake = await startFakeOpenAI();
    dir = fs.mkdtempSync(path.join(tmp, 'mem0-'));
    // Outside jest, mem0 writes a config.json (anonymous id, notice state) under MEM0_DIR, default
    // ~/.mem0 (under jest its dynamic import("fs") fails and it writes nothing); keep it in the temp dir.
    process.env.MEM0_DIR = path.join(dir, 'mem0-home');
    registerEmbeddedVectorStore();
    memory = new Memory({
      version: 'v1.1',
      embedder: {
        provider: 'openai',
        config: { apiKey: 'test', baseURL: fake.url, model: 'text-embedding-3-small', embeddingDims: EMBED_DIMS },
      },
      vectorStore: {
        provider: 'embedded',
        config: { collectionName: 'memories', dimension: EMBED_DIMS, dbPath: path.join(dir, 'vectors.db'), files },
      },
      llm: { provider: 'openai', config: { apiKey: 'test', baseURL: fake.url, model: 'gpt-4o-mini' } },
      historyStore: { provider: 'sqlite', config: { historyDbPath: path.join(dir, 'history.db') } },
    });
  });

  afterAll(async () => {
    const history = (memory as unknown as { db?: { close?: () => void } }).db;
    history?.close?.();
    files.closeAll();
    await fake.close();
    if (previousMem0Dir === undefined) delete process.env.MEM0_DIR;
    else process.env.MEM0_DIR = previousMem0Dir;
  });

  it('adds, searches, updates, deletes and resets through the embedded store', async () => {
    const added = await memory.add([{ role: 'user', content: 'I love hiking in the Swiss Alps with Maria' }], { userId: 'alice' });
    expect(added.results.map((r) => r.memory)).toEqual(['I love hiking in the Swiss Alps with Maria']);
    await memory.add([{ role: 'user', content: 'My favourite food is sushi' }], { userId: 'alice' });
    await memory.add([{ role: 'user', content: 'I love hiking in the Rocky Mountains' }], { userId: 'bob' });

    // Exactly one LLM call per add(), the extraction prompt.
    expect(fake.chatCalls).toHaveLength(3);
    for (const call of fake.chatCalls) expect(call[0]!.content).toContain('You are a Memory Extractor');

    const found = await memory.search('hiking in the Alps', { filters: { user_id: 'alice' } });
    expect(found.results[0]!.memory).toBe('I love hiking in the Swiss Alps with Maria');
    // mem0 spreads user_id into each result at run time (its MemoryItem type does not declare it).
    expect(found.results.every((r) => (r as { user_id?: string }).user_id === 'alice')).toBe(true);
    const bobs = await memory.search('hiking in the Alps', { filters: { user_id: 'bob' } });
    expect(bobs.results.map((r) => r.memory)).toEqual(['I love hiking in the Rocky Mountains']);

    const all = await memory.getAll({ filters: { user_id: 'alice' } });
    expect(all.results.map((r) => r.memory).sort()).toEqual(['I love hiking in the Swiss Alps with Maria', 'My favourite food is sushi']);

    // Both collections live in the one configured file.
    const raw = new Database(path.join(dir, 'vectors.db'), { readonly: true });
    const collections = raw.prepare('SELECT name, dimension FROM evs_collections ORDER BY name').all() as Array<{
      name: string;
      dimension: number;
    }>;
    expect(collections).toEqual([
      { name: 'memories', dimension: EMBED_DIMS },
      { name: 'memories_entities', dimension: EMBED_DIMS },
    ]);
    const entityRows = raw
      .prepare("SELECT COUNT(*) AS n FROM evs_vectors WHERE collection = 'memories_entities' AND user_id = 'alice'")
      .get() as { n: number };
    expect(entityRows.n).toBeGreaterThan(0);
    raw.close();
    expect(
      fs
        .readdirSync(dir)
        .filter((f) => f.endsWith('.db'))
        .sort(),
    ).toEqual(['history.db', 'vectors.db']);

    const sushi = all.results.find((r) => r.memory === 'My favourite food is sushi')!;
    await memory.update(sushi.id, 'My favourite food is ramen');
    const ramen = await memory.search('favourite food ramen', { filters: { user_id: 'alice' } });
    expect(ramen.results[0]!.memory).toBe('My favourite food is ramen');
    expect((await memory.history(sushi.id)).map((h) => h.action).sort()).toEqual(['ADD', 'UPDATE']);

    await memory.delete(sushi.id);
    expect((await memory.getAll({ filters: { user_id: 'alice' } })).results).toHaveLength(1);

    await memory.deleteAll({ userId: 'bob' });
    expect((await memory.getAll({ filters: { user_id: 'bob' } })).results).toEqual([]);

    await memory.reset();
    expect((await memory.getAll({ filters: { user_id: 'alice' } })).results).toEqual([]);
  });
});

const describeWasm = embeddedVectorStoreKernel() === 'wasm' ? describe : describe.skip;

describeWasm('scan helper (a second thread scores part of a large partition)', () => {
  const DIM = 384; // 170 rows per block: 3,000 rows are 18 blocks, more than one claim of each thread
  const alone = new EmbeddedStoreFiles({ scanHelperMinRows: Number.POSITIVE_INFINITY });
  const shared = new EmbeddedStoreFiles({ scanHelperMinRows: 1 });
  afterAll(() => {
    alone.closeAll();
    shared.closeAll();
  });

  const answers = async (store: EmbeddedVectorStore, queries: number[][]): Promise<string[]> => {
    const out: string[] = [];
    for (const q of queries) {
      for (const hits of [await store.search(q, 10, { user_id: 'u' }), await store.searchAbove(q, 60, { user_id: 'u' }, 0.05)])
        out.push(hits.map((h) => `${h.id}:${h.score}`).join(' '));
    }
    return out;
  };

  it('answers exactly as one thread does while rows are inserted, replaced and deleted, and the helper takes part', async () => {
    const next = seededRandom(77);
    const dbA = freshPath();
    const dbB = freshPath();
    const one = new EmbeddedVectorStore({ dbPath: dbA, dimension: DIM, collectionName: 'memories', files: alone });
    const two = new EmbeddedVectorStore({ dbPath: dbB, dimension: DIM, collectionName: 'memories', files: shared });
    const base = randomVector(DIM, next);
    // Rows around one direction, so that many scores are close and the order needs every block.
    const row = (): number[] => base.map((x) => x + (next() * 2 - 1) * 1.5);
    const write = async (vectors: number[][], ids: string[]): Promise<void> => {
      const payloads = ids.map((id) => ({ user_id: 'u', data: id }));
      await one.insert(vectors, ids, payloads);
      await two.insert(vectors, ids, payloads);
    };
    const first = Array.from({ length: 3000 }, row);
    await write(
      first,
      first.map((_, i) => `r${i}`),
    );
    const queries = Array.from({ length: 8 }, row);
    // The first searches run alone: the helper thread is started after the first scan that wants it.
    expect(await answers(two, queries)).toEqual(await answers(one, queries));
    expect(two.cacheStats().scans.jobs).toBe(0);
    await new Promise((resolve) => setTimeout(resolve, 200)); // the helper thread is up by now
    expect(await answers(two, queries)).toEqual(await answers(one, queries));

    // Grow past the job area's room (it moves), replace some rows, delete others (rows move between blocks).
    const more = Array.from({ length: 1500 }, row);
    await write(
      more,
      more.map((_, i) => `s${i}`),
    );
    await write([row(), row()], ['r5', 'r2999']);
    for (let i = 0; i < 3000; i += 7) {
      await one.delete(`r${i}`);
      await two.delete(`r${i}`);
    }
    const after = await answers(two, queries);
    expect(after).toEqual(await answers(one, queries));
    expect(after.join(' ')).not.toContain('r7:');
    expect(one.cacheStats().scans).toEqual({ jobs: 0, joined: 0 });
    const scans = two.cacheStats().scans;
    expect(scans.jobs).toBe(queries.length * 2 * 2);
    expect(scans.joined).toBeGreaterThan(0);

    // A stopped helper leaves the store scanning alone, with the same answers.
    shared.arenas.close();
    expect(await answers(two, queries)).toEqual(await answers(one, queries));
    expect(two.cacheStats().scans.jobs).toBe(scans.jobs);
    one.close();
    two.close();
  });
});

describe('partition images (a fast first search after a restart)', () => {
  const DIM = 16;
  const next = seededRandom(42);
  const vectors = Array.from({ length: 1500 }, () => randomVector(DIM, next));
  const queries = Array.from({ length: 5 }, () => randomVector(DIM, next));

  async function writeUser(dbPath: string): Promise<void> {
    const store = new EmbeddedVectorStore({ dbPath, dimension: DIM, collectionName: 'memories', files });
    const ids = vectors.map((_, i) => `m${i}`);
    await store.insert(
      vectors,
      ids,
      ids.map((id) => ({ user_id: id === 'm7' ? 'other' : 'u', data: id })),
    );
    await store.delete('m3');
    store.close();
  }
  const topIds = async (store: EmbeddedVectorStore): Promise<string[][]> =>
    Promise.all(queries.map(async (q) => (await store.search(q, 10, { user_id: 'u' })).map((r) => `${r.id}:${r.score!.toFixed(6)}`)));

  it('writes an image of a loaded partition on close, loads it at the next open, and answers exactly as from rows', async () => {
    const dbPath = freshPath();
    await writeUser(dbPath);
    const first = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    const fromRows = await topIds(first);
    expect(first.cacheStats().loads).toEqual({ images: 0, rows: 1 });
    first.close();

    const second = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    expect(await topIds(second)).toEqual(fromRows);
    expect(second.cacheStats()).toMatchObject({ rows: 1498, loads: { images: 1, rows: 0 } });
    // Writes after an image-load reach the partition as before, and the next close refreshes the image.
    await second.insert([queries[0]!], ['new'], [{ user_id: 'u', data: 'new' }]);
    expect((await second.search(queries[0]!, 1, { user_id: 'u' }))[0]?.id).toBe('new');
    second.close();
    const third = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    expect((await third.search(queries[0]!, 1, { user_id: 'u' }))[0]?.id).toBe('new');
    expect(third.cacheStats()).toMatchObject({ rows: 1499, loads: { images: 1, rows: 0 } });
    third.close();
  });

  it('never reads a stale image: a write by any connection after it was made (or a crash before close) means rows', async () => {
    const dbPath = freshPath();
    await writeUser(dbPath);
    const first = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    await topIds(first);
    first.close(); // image of version v
    // Another writer (an older proxy, a script) deletes a row and adds one without knowing about images.
    const other = new Database(dbPath);
    other.prepare("DELETE FROM evs_vectors WHERE id = 'm10'").run();
    other
      .prepare('INSERT INTO evs_vectors (collection, id, user_id, vector, payload) VALUES (?, ?, ?, ?, ?)')
      .run('memories', 'theirs', 'u', Buffer.from(new Float32Array(queries[1]!).buffer), JSON.stringify({ user_id: 'u' }));
    other.close();
    const second = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    const hits = await second.search(queries[1]!, 1500, { user_id: 'u' });
    expect(hits[0]?.id).toBe('theirs');
    expect(hits.some((h) => h.id === 'm10')).toBe(false);
    expect(second.cacheStats().loads).toEqual({ images: 0, rows: 1 });
    second.close();
  });

  it('reads rows when an image is damaged, and writes none for small partitions', async () => {
    const dbPath = freshPath();
    await writeUser(dbPath);
    const first = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    const fromRows = await topIds(first);
    await first.search(queries[0]!, 1, { user_id: 'other' }); // one row: no image
    first.close();
    const raw = new Database(dbPath);
    expect(raw.prepare('SELECT field, value, COUNT(*) AS parts FROM evs_images GROUP BY field, value').all() as unknown[]).toEqual([
      { field: 'user_id', value: 'u', parts: 2 }, // ids and scales, then the codes
    ]);
    // The codes part loses its last byte: the partition is loaded from rows, not half from the image.
    raw.prepare('UPDATE evs_images SET data = substr(data, 1, length(data) - 1) WHERE part = 1').run();
    raw.close();
    const second = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    expect(await topIds(second)).toEqual(fromRows);
    expect(second.cacheStats().loads).toEqual({ images: 0, rows: 1 });
    second.close();
  });

  it('preloads the partitions with a current image in the background when asked, within half the cache budget', async () => {
    const dbPath = freshPath();
    await writeUser(dbPath);
    const first = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files });
    const fromRows = await topIds(first);
    first.close();
    const turns = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 20));

    const tight = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', preloadImages: true, maxCacheBytes: 1000, files });
    await turns();
    expect(tight.cacheStats()).toMatchObject({ partitions: 0, loads: { images: 0, rows: 0 } });
    expect(await tight.whenPreloaded()).toEqual([]);
    tight.close();

    const preloaded = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', preloadImages: true, files });
    expect(preloaded.cacheStats().partitions).toBe(0); // not during the constructor
    // The preload's end is awaitable, and says which scopes it loaded.
    expect(await preloaded.whenPreloaded()).toEqual([{ user_id: 'u' }]);
    expect(preloaded.cacheStats()).toMatchObject({ partitions: 1, rows: 1498, loads: { images: 1, rows: 0 } });
    expect(await topIds(preloaded)).toEqual(fromRows);
    expect(preloaded.cacheStats().loads).toEqual({ images: 1, rows: 0 });
    preloaded.close();
  });
});

describe('EmbeddedVectorStore keyword search from the in-memory index', () => {
  const WORDS = ['hike', 'sushi', 'anna', 'paris', 'monday', 'cook', 'sister', 'guitar', 'red', 'tokyo', 'ramen', 'chess'];
  const next = seededRandom(4242);
  const pick = (): string => WORDS[Math.floor(next() * WORDS.length)]!;
  const sentence = (): string => Array.from({ length: 2 + Math.floor(next() * 7) }, pick).join(' ');
  const QUERIES = [
    'hike',
    'anna sister monday',
    'cook ramen tokyo red',
    'chess guitar',
    'sushi paris hike anna',
    'nothing',
    'hike 2024',
    "anna's hike",
  ];

  /** The same file through another connection that loads no partitions, so FTS5 ranks every answer. */
  const reference = (dbPath: string): { store: EmbeddedVectorStore; files: EmbeddedStoreFiles } => {
    const other = new EmbeddedStoreFiles();
    return { store: new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files: other }), files: other };
  };
  const answers = async (store: EmbeddedVectorStore, k: number): Promise<unknown[]> => {
    const out: unknown[] = [];
    for (const q of QUERIES) out.push(await store.keywordSearch(q, k, { user_id: 'u' }));
    return out;
  };
  /** Waits until the scope's index is built (its answers come from memory; the build starts a second after the partition loads). */
  const untilInMemory = async (store: EmbeddedVectorStore): Promise<void> => {
    for (let i = 0; i < 250; i++) {
      const before = store.keywordSearches.memory;
      await store.keywordSearch('hike', 1, { user_id: 'u' });
      if (store.keywordSearches.memory > before) return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    throw new Error('the keyword index was never built');
  };
  const rows = (n: number, user: string, prefix: string): [number[][], string[], Record<string, unknown>[]] => [
    Array.from({ length: n }, () => [next(), next(), next()]),
    Array.from({ length: n }, (_, i) => `${prefix}${i}`),
    Array.from({ length: n }, (_, i) =>
      // Every fifth row has no lemmatized text, so FTS5 indexes `data` (punctuation, capitals, digits).
      i % 5 === 0 ? { user_id: user, data: `${sentence()}, ANNA's Hike-2024!` } : { user_id: user, data: 'x', textLemmatized: sentence() },
    ),
  ];

  it('answers with FTS5 scores and order (ties by rowid) while rows are written, replaced and deleted', async () => {
    const dbPath = freshPath();
    const store = new EmbeddedVectorStore({ dbPath, dimension: 3, collectionName: 'memories', files });
    await store.insert(...rows(6_000, 'u', 'a'));
    await store.insert(...rows(1_500, 'v', 'b')); // another user's rows count in the file-wide statistics
    const ref = reference(dbPath);
    store.prepareSearch({ user_id: 'u' });
    await untilInMemory(store);

    const before = { ...store.keywordSearches };
    for (const k of [5, 60, 20_000]) expect(await answers(store, k)).toEqual(await answers(ref.store, k));
    // Each query from memory but the one with a term FTS5 reads as a phrase of two tokens ("anna's").
    expect(store.keywordSearches.memory - before.memory).toBe((QUERIES.length - 1) * 3);
    expect(ref.store.keywordSearches.memory).toBe(0);
    // The ranking alone, as recall reads it: the same ids and scores without payloads.
    for (const q of QUERIES) {
      const full = (await ref.store.keywordSearch(q, 60, { user_id: 'u' }))!;
      expect(await store.keywordScores(q, 60, { user_id: 'u' })).toEqual(full.map((h) => ({ id: h.id, score: h.score })));
    }

    // Writes of this process reach the index: new rows, a replaced id (new rowid), a changed text, deletions.
    await store.insert(...rows(50, 'u', 'c'));
    await store.insert([[1, 0, 0]], ['a7'], [{ user_id: 'u', data: 'x', textLemmatized: 'hike hike hike anna' }]);
    await store.update('a8', [0, 1, 0], { user_id: 'u', data: 'x', textLemmatized: 'chess chess' });
    await store.update('a9', [0, 1, 0], { user_id: 'v', data: 'x', textLemmatized: 'chess chess' }); // leaves the scope
    for (const id of ['a1', 'a2', 'a3', 'c4']) await store.delete(id);
    const memoryBefore = store.keywordSearches.memory;
    for (const k of [5, 60, 20_000]) expect(await answers(store, k)).toEqual(await answers(ref.store, k));
    expect(store.keywordSearches.memory).toBeGreaterThan(memoryBefore);
    ref.store.close();
    ref.files.closeAll();
    store.close();
  });

  it('writes the index as an image on a clean close and loads it at the next open, unless a write came since', async () => {
    const dbPath = freshPath();
    const writerFiles = new EmbeddedStoreFiles();
    const writer = new EmbeddedVectorStore({ dbPath, dimension: 3, collectionName: 'memories', files: writerFiles });
    await writer.insert(...rows(1_500, 'u', 'a'));
    await writer.insert(...rows(300, 'v', 'b'));
    writer.prepareSearch({ user_id: 'u' });
    await untilInMemory(writer);
    expect(writer.cacheStats().keywordLoads).toEqual({ images: 0, rows: 1 });
    writer.close(); // the last store of its files: images are written
    const ref = reference(dbPath);

    const reopen = async (): Promise<{ store: EmbeddedVectorStore; files: EmbeddedStoreFiles }> => {
      const own = new EmbeddedStoreFiles();
      const store = new EmbeddedVectorStore({ dbPath, collectionName: 'memories', files: own });
      store.prepareSearch({ user_id: 'u' });
      await untilInMemory(store);
      return { store, files: own };
    };
    const fromImage = await reopen();
    expect(fromImage.store.cacheStats().keywordLoads).toEqual({ images: 1, rows: 0 });
    for (const k of [5, 60, 5_000]) expect(await answers(fromImage.store, k)).toEqual(await answers(ref.store, k));
    // Kept in step after an image load as after a build.
    await fromImage.store.insert(...rows(20, 'u', 'c'));
    await fromImage.store.delete('a10');
    expect(await answers(fromImage.store, 60)).toEqual(await answers(ref.store, 60));
    fromImage.files.closeAll(); // writes the image of the new version

    // A write by another connection after the image was made: the image is stale and rows are read.
    await ref.store.insert([[0, 0, 1]], ['late'], [{ user_id: 'u', data: 'x', textLemmatized: 'hike hike anna' }]);
    const fromRows = await reopen();
    expect(fromRows.store.cacheStats().keywordLoads).toEqual({ images: 0, rows: 1 });
    expect(await answers(fromRows.store, 60)).toEqual(await answers(ref.store, 60));
    fromRows.files.closeAll();

    // A damaged image is ignored.
    const db = new Database(dbPath);
    db.prepare("UPDATE evs_keyword_images SET data = substr(data, 1, 100) WHERE value = 'u'").run();
    db.close();
    const damaged = await reopen();
    expect(damaged.store.cacheStats().keywordLoads).toEqual({ images: 0, rows: 1 });
    expect(await answers(damaged.store, 60)).toEqual(await answers(ref.store, 60));
    damaged.files.closeAll();
    ref.files.closeAll();
  });

  it('leaves a scope with text FTS5 tokenizes by other rules, a write transaction and another writer to FTS5', async () => {
    const dbPath = freshPath();
    const store = new EmbeddedVectorStore({ dbPath, dimension: 3, collectionName: 'memories', files });
    await store.insert(...rows(500, 'u', 'a'));
    const ref = reference(dbPath);
    store.prepareSearch({ user_id: 'u' });
    await untilInMemory(store);

    // A row in another script: unicode61's folding is not repeated in memory, so FTS5 answers while it exists.
    await store.insert([[1, 0, 0]], ['greek'], [{ user_id: 'u', data: 'x', textLemmatized: 'hike Ωμέγα café' }]);
    let fts = store.keywordSearches.fts;
    expect(await answers(store, 60)).toEqual(await answers(ref.store, 60));
    expect(store.keywordSearches.fts - fts).toBe(QUERIES.length);
    expect(await store.keywordSearch('cafe', 5, { user_id: 'u' })).toEqual(await ref.store.keywordSearch('cafe', 5, { user_id: 'u' }));
    await store.delete('greek');
    await untilInMemory(store);
    expect(await answers(store, 60)).toEqual(await answers(ref.store, 60));

    // Inside a save's unit the connection holds uncommitted rows (and FTS5 newer totals): FTS5 answers, and sees them.
    await files.unit(async () => {
      await store.insert([[1, 0, 0]], ['pending'], [{ user_id: 'u', data: 'x', textLemmatized: 'zebra' }]);
      fts = store.keywordSearches.fts;
      expect((await store.keywordSearch('zebra', 5, { user_id: 'u' }))!.map((h) => h.id)).toEqual(['pending']);
      expect(store.keywordSearches.fts).toBe(fts + 1);
    });
    // From memory again once it committed (the statistics are then kept until the next write seen).
    const memoryBefore = store.keywordSearches.memory;
    expect(await answers(store, 60)).toEqual(await answers(ref.store, 60));
    expect(store.keywordSearches.memory).toBe(memoryBefore + QUERIES.length - 1);

    // Another connection commits: this one's index is dropped with its partitions and rebuilt.
    await ref.store.insert([[0, 0, 1]], ['elsewhere'], [{ user_id: 'u', data: 'x', textLemmatized: 'zebra zebra' }]);
    expect((await store.keywordSearch('zebra', 5, { user_id: 'u' }))!.map((h) => h.id)).toEqual(['elsewhere', 'pending']);
    store.prepareSearch({ user_id: 'u' });
    await untilInMemory(store);
    expect(await store.keywordSearch('zebra', 5, { user_id: 'u' })).toEqual(await ref.store.keywordSearch('zebra', 5, { user_id: 'u' }));
    expect(await answers(store, 60)).toEqual(await answers(ref.store, 60));
    ref.store.close();
    ref.files.closeAll();
    store.close();
  });
});
