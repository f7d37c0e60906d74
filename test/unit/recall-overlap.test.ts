/**
 * Recall (src/memory/recall.ts) does the local work that does not need the query's vectors (the
 * BM25 ranking, and loading a scope's index on its first search) while the embedding request is
 * on the network, and only then the vector and entity searches. Real embedded stores and mem0's
 * own query analysis; the embedder is a fake whose answer the test releases.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EntityOracle } from '../../src/memory/entity-oracle';
import { Recall } from '../../src/memory/recall';
import { EmbeddedStoreFiles, EmbeddedVectorStore } from '../../src/memory/vector-store/embedded-store';
import { seededRandom } from '../helpers/random';

const DIM = 16;

/** An embedder whose batches wait until the test answers them. */
class HeldEmbedder {
  readonly batches: Array<{ texts: string[]; answer: () => void; fail: (err: Error) => void }> = [];
  async embed(text: string): Promise<number[]> {
    return (await this.embedBatch([text]))[0] ?? [];
  }
  embedBatch(texts: string[]): Promise<number[][]> {
    return new Promise((resolve, reject) => {
      this.batches.push({ texts, answer: () => resolve(texts.map((t) => vectorOf(t))), fail: reject });
    });
  }
}

/** A bag of hashed words (texts sharing words are similar), plus a little seeded noise. */
function vectorOf(text: string): number[] {
  const next = seededRandom(text.length);
  const v = Array.from({ length: DIM }, () => next() * 0.1);
  for (const word of text.toLowerCase().match(/[a-z]+/g) ?? []) {
    let h = 0;
    for (const ch of word) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    v[h % DIM] = (v[h % DIM] ?? 0) + 1;
  }
  return v;
}

let tmp: string;
let files: EmbeddedStoreFiles;
let oracle: EntityOracle;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'recall-overlap-'));
  files = new EmbeddedStoreFiles();
  const made = await EntityOracle.create(require('mem0ai/oss'));
  if (!made) throw new Error('the entity oracle did not build on this mem0ai');
  oracle = made;
});

afterAll(() => {
  files.closeAll();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function seededStores(name: string): Promise<{ memories: EmbeddedVectorStore; entities: EmbeddedVectorStore }> {
  const dbPath = path.join(tmp, `${name}.db`);
  const memories = new EmbeddedVectorStore({ collectionName: 'memories', dimension: DIM, dbPath, files });
  const entities = new EmbeddedVectorStore({ collectionName: 'memories_entities', dimension: DIM, dbPath, files });
  const texts = ['Alice Smith drinks green tea', 'Alice Smith lives in Lisbon', 'The weather in Lisbon is mild', 'Bob likes coffee'];
  await memories.insert(
    texts.map(vectorOf),
    texts.map((_, i) => `m${i}`),
    texts.map((data) => ({ data, user_id: 'u1', textLemmatized: data.toLowerCase() })),
  );
  await entities.insert([vectorOf('Alice Smith')], ['e0'], [{ data: 'Alice Smith', user_id: 'u1', linkedMemoryIds: ['m0', 'm1'] }]);
  // A new handle on the same file starts with nothing loaded, as after a restart.
  return {
    memories: new EmbeddedVectorStore({ collectionName: 'memories', dimension: DIM, dbPath, files: new EmbeddedStoreFiles() }),
    entities: new EmbeddedVectorStore({ collectionName: 'memories_entities', dimension: DIM, dbPath, files: new EmbeddedStoreFiles() }),
  };
}

/** Lets the event loop run a few turns. */
async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

describe('recall while the embedding is on the network', () => {
  it('ranks keywords and loads both indexes before the embedding answers, then searches by vector', async () => {
    const { memories, entities } = await seededStores('overlap');
    const keywordCalls: number[] = [];
    const vectorCalls: number[] = [];
    const embedder = new HeldEmbedder();
    // Recall ranks keywords through keywordScores (ids and scores, no payloads).
    const realKeyword = memories.keywordScores.bind(memories);
    memories.keywordScores = (...args) => {
      keywordCalls.push(embedder.batches.length);
      return realKeyword(...args);
    };
    const realSearchAbove = memories.searchAbove.bind(memories);
    memories.searchAbove = (...args) => {
      vectorCalls.push(Date.now());
      return realSearchAbove(...args);
    };
    const recall = new Recall(oracle, embedder, { memories: async () => memories, entities: async () => entities });

    expect(memories.cacheStats().partitions).toBe(0);
    expect(entities.cacheStats().partitions).toBe(0);
    const searching = recall.search('Where does Alice Smith live?', { topK: 3, filters: { user_id: 'u1' } });
    await turns(10);
    // The one request went out with the query's entity, and is still unanswered.
    expect(embedder.batches).toHaveLength(1);
    expect(embedder.batches[0]?.texts[0]).toBe('Where does Alice Smith live?');
    expect(embedder.batches[0]?.texts).toContain('Alice Smith');
    // Meanwhile: BM25 ran (after the request was made) and both scopes' indexes are loaded.
    expect(keywordCalls).toEqual([1]);
    expect(memories.cacheStats()).toMatchObject({ partitions: 1, rows: 4 });
    expect(entities.cacheStats()).toMatchObject({ partitions: 1, rows: 1 });
    // The vector search waits for the vectors.
    expect(vectorCalls).toHaveLength(0);

    embedder.batches[0]?.answer();
    const { results } = await searching;
    expect(vectorCalls).toHaveLength(1);
    // The loads above were the only ones: the search used them.
    expect(memories.cacheStats().loads.rows + memories.cacheStats().loads.images).toBe(1);
    expect(results.length).toBeGreaterThan(0);
    // Alice's memories carry the entity boost and the keyword score.
    expect(String(results[0]?.['memory'])).toContain('Alice Smith');
  });

  it('a failed embedding fails the recall, with the keyword work already done and nothing left unhandled', async () => {
    const { memories, entities } = await seededStores('failure');
    const embedder = new HeldEmbedder();
    const recall = new Recall(oracle, embedder, { memories: async () => memories, entities: async () => entities });
    const searching = recall.search('Bob likes coffee', { filters: { user_id: 'u1' } });
    await turns(10);
    expect(memories.cacheStats().partitions).toBe(1);
    embedder.batches[0]?.fail(new Error('embeddings down'));
    await expect(searching).rejects.toThrow('embeddings down');
  });

  it('a query without a scope the store can index searches as before', async () => {
    const { memories, entities } = await seededStores('unscoped');
    const embedder = new HeldEmbedder();
    const recall = new Recall(oracle, embedder, { memories: async () => memories, entities: async () => entities });
    // "*" matches every user: no partition to load, the store scans at search time.
    const searching = recall.search('Lisbon weather', { filters: { user_id: '*' } });
    await turns(10);
    expect(memories.cacheStats().partitions).toBe(0);
    embedder.batches[0]?.answer();
    await expect(searching).resolves.toEqual({ results: expect.any(Array) });
  });
  it('in a burst of searches, the first finishes long before the last query is analysed; background work waits for the burst', async () => {
    const { memories, entities } = await seededStores('burst');
    let requests = 0;
    let requestsWhenFirstDone = -1;
    // Answers on the next turn of the event loop, as a server on the network would.
    const embedder = {
      embed: async (text: string): Promise<number[]> => vectorOf(text),
      embedBatch: (texts: string[]): Promise<number[][]> => {
        requests++;
        return new Promise((resolve) => setImmediate(() => resolve(texts.map(vectorOf))));
      },
    };
    const recall = new Recall(oracle, embedder, { memories: async () => memories, entities: async () => entities });
    const n = 100;
    const searches = Array.from({ length: n }, (_, i) =>
      recall.search(`Where does Alice Smith live, question ${i}?`, { topK: 3, filters: { user_id: 'u1' } }),
    );
    void searches[0]?.then(() => {
      requestsWhenFirstDone = requests;
    });
    // Background work that gives way to searches starts once the last of them has had its turn.
    let requestsWhenServed = -1;
    const served = recall.searchesServed(60_000).then(() => {
      requestsWhenServed = requests;
    });
    const all = await Promise.all(searches);
    await served;
    expect(requestsWhenServed).toBeGreaterThanOrEqual(n - 1);
    expect(all.every((r) => String(r.results[0]?.['memory']).includes('Alice Smith'))).toBe(true);
    expect(requests).toBe(n);
    // Each query's analysis is a few ms of CPU: without turns all n would run before the first
    // answer is read; with them the first search ends after a few slices.
    expect(requestsWhenFirstDone).toBeGreaterThan(0);
    expect(requestsWhenFirstDone).toBeLessThan(n / 2);
  });
});

describe('background work and searches', () => {
  it('searchesServed resolves at once when no search waits for a turn (one waiting on the network holds none)', async () => {
    const embedder = new HeldEmbedder();
    const { memories, entities } = await seededStores('served');
    const recall = new Recall(oracle, embedder, { memories: async () => memories, entities: async () => entities });
    const t0 = performance.now();
    await recall.searchesServed(5000);
    expect(performance.now() - t0).toBeLessThan(100);
    // Searches that never get their answer hold no turn (they wait on the network), so nothing waits.
    const held = recall.search('Bob likes coffee', { filters: { user_id: 'u1' } });
    await turns(10);
    const t1 = performance.now();
    await recall.searchesServed(5000);
    expect(performance.now() - t1).toBeLessThan(100);
    embedder.batches[0]?.answer();
    await held;
  });
});
