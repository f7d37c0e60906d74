/**
 * Recall: mem0's hybrid search (vector similarity + BM25 + entity boost, on one scale), run by us
 * so that a search costs one embedding round trip and one entity extraction.
 *
 * mem0ai's `Memory.search` embeds the query, searches, then embeds the query's entities (a second
 * round trip), and extracts the entities with a local NLP pass. Here the entity oracle runs mem0's
 * own search code on empty stores to learn the lemmatized query and the entity texts (the one
 * extraction), all texts are embedded in one request, and the three searches run against the
 * engine's real stores. The scoring is mem0's, as mem0ai 3.x defines it:
 *
 * - candidates: the `max(4·topK, 60)` nearest memories; expired ones (`expiration_date` before
 *   today, UTC) are dropped; a candidate below `threshold` (default 0.1) on similarity is dropped;
 * - keyword: the store's BM25 score `s > 0` for the lemmatized query, squashed by a sigmoid whose
 *   midpoint and steepness depend on the number of query terms;
 * - entity boost: for each query entity, the entity records of this scope with similarity ≥ 0.5
 *   boost every memory they link to by `similarity · 0.5 / (1 + 0.001 · (linked − 1)²)` (the
 *   largest boost per memory counts);
 * - score = min((similarity + keyword + boost) / (1 + [any keyword] + 0.5·[any boost]), 1), best first.
 *
 * The test in test/integration/embedding-round-trips.test.ts checks ids and scores against
 * mem0's own `Memory.search` on the same data.
 */
import type { VectorStore, VectorStoreResult } from 'mem0ai/oss';
import type { EmbedderLike, NounPrefetch } from './batching-embedder';
import type { EntityOracle, QueryAnalysis } from './entity-oracle';
import { Turns } from '../util/turns';

export interface RecallFilters {
  user_id: string;
  agent_id?: string;
  run_id?: string;
}

export interface RecallOptions {
  topK?: number | undefined;
  threshold?: number | undefined;
  filters: RecallFilters;
}

/** Where recall finds the engine's stores (they exist once the engine has initialised). */
export interface RecallStores {
  memories(): Promise<VectorStore>;
  entities(): Promise<VectorStore>;
}

/** Minimal logger shape (a winston logger fits). */
export interface RecallLogger {
  debug(message: string, meta?: object): void;
}

const ENTITY_BOOST_WEIGHT = 0.5;
const ENTITY_MATCH_FLOOR = 0.5;
const ENTITY_CANDIDATES = 500;
/** Payload keys that are not metadata (mem0 returns them as fields of their own, or not at all). */
const NOT_METADATA = new Set(['user_id', 'agent_id', 'run_id', 'hash', 'data', 'createdAt', 'updatedAt', 'textLemmatized', 'attributedTo']);

/** A store that can leave out results below a score (the embedded store). */
interface SearchAbove {
  searchAbove(query: number[], topK: number, filters: Record<string, unknown>, minScore: number): Promise<VectorStoreResult[]>;
}

function hasSearchAbove(store: VectorStore): store is VectorStore & SearchAbove {
  return typeof (store as Partial<SearchAbove>).searchAbove === 'function';
}

/** A store that can rank keyword hits without reading their payloads (the embedded store). */
interface KeywordScores {
  keywordScores(query: string, topK: number, filters: Record<string, unknown>): Promise<Array<{ id: string; score: number }>>;
}

function hasKeywordScores(store: VectorStore): store is VectorStore & KeywordScores {
  return typeof (store as Partial<KeywordScores>).keywordScores === 'function';
}

/** A store that can get a scope ready for its next search (the embedded store loads the scope's index). */
interface PrepareSearch {
  prepareSearch(filters: Record<string, unknown>): void;
}

/** Gets the scope of `filters` ready in a store that can (a failure is left for the search itself to report). */
function prepareSearch(store: VectorStore, filters: RecallFilters): void {
  const prepare = (store as Partial<PrepareSearch>).prepareSearch;
  if (typeof prepare !== 'function') return;
  try {
    prepare.call(store, { ...filters });
  } catch {
    // The search that follows meets the same failure and reports it.
  }
}

/** Sigmoid midpoint and steepness for a query of this many (lemmatized) terms. */
function bm25Curve(lemmatized: string): [number, number] {
  const terms = lemmatized.trim().split(/\s+/).filter(Boolean).length || 1;
  if (terms <= 3) return [5, 0.7];
  if (terms <= 6) return [7, 0.6];
  if (terms <= 9) return [9, 0.5];
  if (terms <= 15) return [10, 0.5];
  return [12, 0.5];
}

function squash(raw: number, [midpoint, steepness]: [number, number]): number {
  return 1 / (1 + Math.exp(-steepness * (raw - midpoint)));
}

/** `expiration_date` (YYYY-MM-DD) before today, UTC. Anything else never expires. */
function isExpired(payload: Record<string, unknown>, today: string): boolean {
  const raw = payload['expiration_date'];
  if (raw === undefined || raw === null || raw === '') return false;
  const text = String(raw);
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  if (!match) return false;
  const date = new Date(`${text}T00:00:00Z`);
  const valid =
    !Number.isNaN(date.getTime()) &&
    date.getUTCFullYear() === Number(match[1]) &&
    date.getUTCMonth() === Number(match[2]) - 1 &&
    date.getUTCDate() === Number(match[3]);
  return valid && text < today;
}

/** One result in the shape mem0's search returns. */
function toResult(id: string, score: number, payload: Record<string, unknown>): Record<string, unknown> {
  const metadata: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(payload)) if (!NOT_METADATA.has(key)) metadata[key] = value;
  return {
    id,
    memory: payload['data'],
    hash: payload['hash'],
    createdAt: payload['createdAt'],
    updatedAt: payload['updatedAt'],
    score,
    metadata,
    ...(payload['user_id'] ? { user_id: payload['user_id'] } : {}),
    ...(payload['agent_id'] ? { agent_id: payload['agent_id'] } : {}),
    ...(payload['run_id'] ? { run_id: payload['run_id'] } : {}),
    ...(payload['attributedTo'] ? { attributedTo: payload['attributedTo'] } : {}),
  };
}

export class Recall {
  constructor(
    private readonly oracle: EntityOracle,
    private readonly embedder: EmbedderLike,
    private readonly stores: RecallStores,
    private readonly logger?: RecallLogger,
    private readonly nouns?: NounPrefetch,
  ) {}

  /** Searches take turns at their CPU-bound start (the query's analysis), a few ms per turn of the event loop. */
  private readonly turns = new Turns();
  /** Flips for each search that would wait for its turn: every other one is parsed on the second thread. */
  private alternate = false;
  /** Searches between their start and their turn. */
  private arriving = 0;

  /**
   * Resolves once no search waits for its turn on this thread (or is on its way to it), or after
   * `maxWaitMs`: background work (a queued save) starts there so that it does not take the thread
   * from searches queued in a burst, and never waits longer than that.
   */
  async searchesServed(maxWaitMs: number): Promise<void> {
    const until = performance.now() + maxWaitMs;
    for (;;) {
      const left = until - performance.now();
      if (left <= 0) return;
      if (this.turns.queued > 0) await this.turns.whenNoneWaiting(left);
      // Searches on their way to their turn (their query on the other thread): look again shortly.
      else if (this.arriving > 0) await new Promise<void>((resolve) => setTimeout(resolve, Math.min(left, 2)));
      else return;
    }
  }

  /**
   * mem0's `Memory.search(query, options)` result, `{ results }`, with one embedding request.
   * Throws when the query analysis, the embedding or the vector search fails; keyword and entity
   * failures only drop their part of the score, as in mem0.
   */
  async search(query: string, options: RecallOptions): Promise<{ results: Record<string, unknown>[] }> {
    const topK = options.topK ?? 20;
    const threshold = options.threshold ?? 0.1;
    // The query's noun phrases (most of the analysis) are parsed on the second thread, if it runs:
    // when it is idle (a search does not queue behind saves' texts), and for every other search
    // that would wait for its turn here anyway, so that a burst is parsed on both threads.
    let parseThere = false;
    if (this.turns.busy || this.arriving > 0) {
      this.alternate = !this.alternate;
      parseThere = this.alternate;
    }
    // The query's analysis up to the embedding request is CPU work (the parse, when it was not done
    // on the other thread): concurrent searches take turns at it, so that a burst of searches does
    // not hold back the answers to the earlier ones' requests (see util/turns.ts).
    this.arriving++;
    let release: () => void;
    try {
      await this.nouns?.prefetch([query], parseThere ? {} : { urgent: true });
      release = await this.turns.take();
    } finally {
      this.arriving--;
    }
    let analysis: QueryAnalysis | undefined;
    let texts: string[];
    let embedding: Promise<number[][]>;
    try {
      analysis = await this.oracle.analyse(query);
      if (!analysis) throw new Error('recall: the query could not be analysed');
      texts = [query, ...analysis.entities];
      embedding = this.embedder.embedBatch(texts, 'search');
      // Awaited below; this only keeps a failure from counting as unhandled while the local work runs.
      embedding.catch(() => undefined);
      // While the embedding request is on the network, the work that does not need its vectors:
      // the keyword ranking and, on a store's first search since a start, loading the scope's index.
      // The request is written to its kept-alive socket first (node:http writes it on the next tick,
      // checked against a server in another process), so this local work overlaps the round trip
      // instead of delaying it. A tick rather than a turn of the event loop, so that the recall does
      // not queue behind every other pending callback of a busy engine.
      await new Promise<void>((resolve) => process.nextTick(resolve));
    } finally {
      release();
    }
    const limit = Math.max(topK * 4, 60);
    const memories = await this.stores.memories();
    const keywordScores = this.keywordScores(memories, query, analysis.lemmatized, limit, options.filters);
    prepareSearch(memories, options.filters);
    if (analysis.entities.length > 0) {
      try {
        prepareSearch(await this.stores.entities(), options.filters);
      } catch {
        // An entity store that cannot be reached is reported by entityBoosts below.
      }
    }

    const vectors = await embedding;
    const queryVector = vectors[0];
    if (!queryVector || vectors.length !== texts.length) throw new Error(`recall: ${vectors.length} embeddings for ${texts.length} texts`);
    // Hits below the threshold are dropped below anyway; a store that can skip them (ours) does,
    // and spares reading and rescoring their vectors.
    const semanticSearch = hasSearchAbove(memories)
      ? memories.searchAbove(queryVector, limit, { ...options.filters }, threshold)
      : memories.search(queryVector, limit, { ...options.filters });
    const [semantic, keyword, boosts] = await Promise.all([
      semanticSearch,
      keywordScores,
      this.entityBoosts(vectors.slice(1), options.filters),
    ]);

    const today = new Date().toISOString().slice(0, 10);
    const maxPossible = 1 + (keyword.size > 0 ? 1 : 0) + (boosts.size > 0 ? ENTITY_BOOST_WEIGHT : 0);
    const scored: Array<{ id: string; score: number; payload: Record<string, unknown> }> = [];
    for (const hit of semantic) {
      if (hit.id === undefined || hit.id === null) continue;
      const payload = hit.payload ?? {};
      if (isExpired(payload, today)) continue;
      const similarity = hit.score ?? 0;
      if (similarity < threshold) continue;
      const id = String(hit.id);
      const combined = (similarity + (keyword.get(id) ?? 0) + (boosts.get(id) ?? 0)) / maxPossible;
      scored.push({ id, score: Math.min(combined, 1), payload });
    }
    scored.sort((a, b) => b.score - a.score);
    const results = scored
      .slice(0, topK)
      .filter((s) => s.payload['data'])
      .map((s) => toResult(s.id, s.score, s.payload));
    return { results };
  }

  private async keywordScores(
    store: VectorStore,
    query: string,
    lemmatized: string,
    limit: number,
    filters: RecallFilters,
  ): Promise<Map<string, number>> {
    const scores = new Map<string, number>();
    let hits: Array<{ id: unknown; score?: number | undefined }> | null = null;
    try {
      hits = hasKeywordScores(store)
        ? await store.keywordScores(lemmatized, limit, { ...filters })
        : ((await store.keywordSearch?.(lemmatized, limit, { ...filters })) ?? null);
    } catch (err) {
      this.logger?.debug('recall: keyword search failed; ranking without it', { err });
    }
    if (!hits) return scores;
    const curve = bm25Curve(lemmatized || query);
    for (const hit of hits) {
      const raw = hit.score ?? 0;
      if (raw > 0) scores.set(String(hit.id), squash(raw, curve));
    }
    return scores;
  }

  private async entityBoosts(vectors: number[][], filters: RecallFilters): Promise<Map<string, number>> {
    const boosts = new Map<string, number>();
    if (vectors.length === 0) return boosts;
    let store: VectorStore;
    try {
      store = await this.stores.entities();
    } catch (err) {
      this.logger?.debug('recall: entity store unavailable; ranking without entity boosts', { err });
      return boosts;
    }
    // Only matches at or above the floor count, and a store that can skip the rest (ours) is told so.
    const search = hasSearchAbove(store)
      ? (v: number[]) => store.searchAbove(v, ENTITY_CANDIDATES, { ...filters }, ENTITY_MATCH_FLOOR)
      : (v: number[]) => store.search(v, ENTITY_CANDIDATES, { ...filters });
    const searches = await Promise.allSettled(vectors.map(search));
    for (const outcome of searches) {
      if (outcome.status === 'rejected') {
        this.logger?.debug('recall: an entity search failed', { err: outcome.reason });
        continue;
      }
      for (const match of outcome.value) {
        const similarity = match.score ?? 0;
        if (similarity < ENTITY_MATCH_FLOOR) continue;
        const linked = match.payload?.['linkedMemoryIds'];
        if (!Array.isArray(linked)) continue;
        const count = Math.max(linked.length, 1);
        const boost = similarity * ENTITY_BOOST_WEIGHT * (1 / (1 + 0.001 * (count - 1) ** 2));
        for (const memoryId of linked) {
          if (!memoryId) continue;
          const key = String(memoryId);
          boosts.set(key, Math.max(boosts.get(key) ?? 0, boost));
        }
      }
    }
    return boosts;
  }
}
