/**
 * EmbeddedVectorStore: a mem0ai `VectorStore` provider that keeps rows durably in one SQLite file
 * and answers similarity searches from an in-memory index partitioned by scope.
 *
 * Why it exists: mem0ai's built-in `memory` store reads, JSON-parses and converts every row of the
 * table on each search and filters by user in JavaScript, so search time grows with the total
 * number of memories of all users (~2 s at 10k x 1536). Here a search only touches the vectors of
 * the scope it is filtered by (user_id, else agent_id, else run_id), held as int8 codes of the
 * unit vectors and scored with a WebAssembly SIMD kernel (quantized/kernel.ts); the best
 * candidates are rescored exactly from the float32 vectors on disk.
 *
 * Layout:
 * - SQLite (better-sqlite3, WAL): table `evs_vectors` keyed by (collection, id), with the scope
 *   columns user_id / agent_id / run_id indexed, the raw vector as a Float32 BLOB and the payload
 *   as JSON; an FTS5 index `evs_keywords` over each row's lemmatized text, kept in step by
 *   triggers. Several collections (mem0 uses `<name>` and `<name>_entities`) share one file and
 *   one connection per EmbeddedStoreFiles (embedded/files.ts; the engine builder creates one per
 *   engine and passes it in the config as `files`). Every write is committed before its promise
 *   resolves.
 * - Memory: per (collection, scope) "partitions" (ids and int8 codes, read from the `qvector`
 *   column; payloads stay on disk) loaded lazily on the first search of that scope,
 *   kept coherent with this process's writes, dropped when another connection commits (detected
 *   with `PRAGMA data_version`), and evicted least-recently-used past a byte budget.
 *
 * Behaviour follows the built-in store where mem0ai depends on it: cosine similarity scores
 * (higher is better), `list` returns `[rows in insertion order, total count]`, filters support
 * plain equality, `"*"`, arrays (one of), operator objects (eq, ne, gt, gte, lt, lte, in, nin,
 * contains, icontains) and AND / OR / NOT (also spelled $and / $or / $not), camelCase
 * userId/agentId/runId payload keys are normalized to snake_case, and `keywordSearch` answers
 * BM25 scores (higher is better) from the index, reading only the matching rows.
 *
 * This file holds the class; its parts are in embedded/ (configuration, filters, scopes, keyword
 * index, vector helpers, schema, per-file state, open files) and quantized/ (the in-memory index).
 */
import { randomUUID } from 'node:crypto';
import type { VectorStore, VectorStoreResult } from 'mem0ai/oss';
import type { UserSummary } from '../types';
import { ArenaFullError, type Int8Arena } from './quantized/arena';
import { Partition } from './quantized/partition';
import { candidateCount, decodeQuantized, encodeQuantized, l1Norm, quantize, type Quantized } from './quantized/quantize';
import { TopK } from './quantized/top-k';
import type { EmbeddedStoreLogger, EmbeddedVectorStoreConfig } from './embedded/config';
import { EmbeddedStoreFiles } from './embedded/files';
import { asFilters, isPlainObject, matchesFilters, type Filters } from './embedded/filters';
import { isSingleAsciiToken, type KeywordHit, KeywordPartition, keywordText } from './embedded/keyword-partition';
import { keywordQuery, keywordTextSql, tokenize } from './embedded/keywords';
import { entityTextKey, isEntityCollection } from './embedded/text-keys';
import {
  hasResidualFilter,
  normalizePayload,
  parsePayload,
  pickScope,
  scopeColumns,
  scopeKey,
  scopeKeysOf,
  SCOPE_FIELDS,
  type Scope,
  type ScopeField,
} from './embedded/scope';
import type { CollectionState, SharedDb } from './embedded/shared-db';
import { blobOf, clampScore, cosineToUnit, normalized, quantizeVector, toFloat32, vectorFromBlob } from './embedded/vectors';

export { embeddedVectorStoreKernel, type SearchKernel } from './quantized/kernel';
export type { EmbeddedStoreLogger, EmbeddedVectorStoreConfig } from './embedded/config';
export { EmbeddedStoreFiles } from './embedded/files';
export { matchesFilters } from './embedded/filters';

interface RowForLoad {
  id: string;
  vector: Buffer;
  payload: string;
}
interface RowForPartition {
  id: string;
  qvector: Buffer | null;
  vector: Buffer | null;
}
interface RowForList {
  id: string;
  payload: string;
}
interface ScopeRow {
  rowid: number;
  user_id: string | null;
  agent_id: string | null;
  run_id: string | null;
}

const DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024;
/**
 * A scope's keyword index is built in the background, at low priority: it starts
 * KEYWORD_BUILD_DELAY_MS after the scope's partition loads (the first searches after a start do
 * not share the engine with it), then reads KEYWORD_BUILD_ROWS rows per turn (each row is read
 * past its 6 KB vector, ~10 µs: a turn of ~2.5 ms, the most a search waits for it) with
 * KEYWORD_BUILD_PAUSE_MS between turns, so it takes at most about a third of the engine thread.
 */
const KEYWORD_BUILD_ROWS = 250;
const KEYWORD_BUILD_DELAY_MS = 1000;
const KEYWORD_BUILD_PAUSE_MS = 5;

/** What a committed write did to a row, for the in-memory indexes (null fields: the row is gone). */
interface RowChange {
  id: string;
  rowid: number;
  cols: readonly (string | null)[] | null;
  quantized: Quantized | null;
  text: string | undefined;
}

function normalizeTopK(topK: number | undefined | null, fallback: number): number {
  if (topK === undefined || topK === null) return fallback;
  if (typeof topK !== 'number' || Number.isNaN(topK)) throw new Error('topK must be a number');
  return Math.max(0, Math.floor(topK));
}

export class EmbeddedVectorStore implements VectorStore {
  readonly collectionName: string;
  readonly dimension: number;
  readonly dbPath: string;
  private readonly shared: SharedDb;
  private readonly state: CollectionState;
  private readonly arena: Int8Arena;
  private readonly logger: EmbeddedStoreLogger | undefined;
  private readonly files: EmbeddedStoreFiles;
  private closed = false;
  private keywordRead: ((scope: Scope, terms: readonly string[], k: number) => KeywordHit[] | null) | undefined;
  private preloading: Promise<void> = Promise.resolve();
  private readonly preloadedScopes: Scope[] = [];

  constructor(config: EmbeddedVectorStoreConfig) {
    if (!isPlainObject(config)) throw new Error('EmbeddedVectorStore: config object is required');
    const {
      collectionName = 'memories',
      dimension,
      dbPath,
      synchronous = 'FULL',
      maxCacheBytes,
      kernel = 'auto',
      preloadImages = false,
      logger,
      files,
    } = config;
    if (typeof collectionName !== 'string' || collectionName === '') {
      throw new Error('EmbeddedVectorStore: collectionName must be a non-empty string');
    }
    if (typeof dbPath !== 'string' || dbPath === '') {
      throw new Error('EmbeddedVectorStore: dbPath (the SQLite file path) is required');
    }
    if (dimension !== undefined && (!Number.isInteger(dimension) || dimension <= 0)) {
      throw new Error(`EmbeddedVectorStore: dimension must be a positive integer, got ${String(dimension)}`);
    }
    if (synchronous !== 'FULL' && synchronous !== 'NORMAL') {
      throw new Error('EmbeddedVectorStore: synchronous must be "FULL" or "NORMAL"');
    }
    if (kernel !== 'auto' && kernel !== 'wasm' && kernel !== 'js') {
      throw new Error('EmbeddedVectorStore: kernel must be "auto", "wasm" or "js"');
    }
    if (maxCacheBytes !== undefined && (typeof maxCacheBytes !== 'number' || !(maxCacheBytes >= 0))) {
      throw new Error('EmbeddedVectorStore: maxCacheBytes must be a non-negative number');
    }
    if (!(files instanceof EmbeddedStoreFiles)) {
      throw new Error('EmbeddedVectorStore: files (the EmbeddedStoreFiles this store joins) is required');
    }
    this.collectionName = collectionName;
    this.dbPath = dbPath;
    this.logger = logger && typeof logger.warn === 'function' ? logger : undefined;

    this.files = files;
    const shared = files.open(dbPath, synchronous);
    try {
      const stored = shared.stmt('SELECT dimension FROM evs_collections WHERE name = ?').get(collectionName) as
        | { dimension: number }
        | undefined;
      if (stored && dimension !== undefined && stored.dimension !== dimension) {
        throw new Error(
          `EmbeddedVectorStore: collection "${collectionName}" in ${dbPath} holds ${stored.dimension}-dimensional vectors, ` +
            `but dimension ${dimension} was configured (changed embedding model? use another collection or file)`,
        );
      }
      const dim = dimension ?? stored?.dimension;
      if (dim === undefined) {
        throw new Error(`EmbeddedVectorStore: dimension is required for the new collection "${collectionName}"`);
      }
      this.dimension = dim;
      this.arena = files.arenas.arenaFor(dim, kernel);
    } catch (err) {
      if (shared.refs === 0) files.release(shared);
      throw err;
    }
    shared.refs++;
    shared.maxCacheBytes = Math.max(shared.maxCacheBytes, maxCacheBytes ?? DEFAULT_CACHE_BYTES);
    this.shared = shared;
    this.state = shared.collection(collectionName);
    this.registerCollection();
    if (preloadImages === true) {
      this.preloading = new Promise((resolve) =>
        setImmediate(() => {
          try {
            this.preloadImages(resolve);
          } catch {
            resolve(); // The first searches load what they need.
          }
        }),
      );
    }
  }

  /**
   * Resolves when the preload of partition images (`preloadImages`) has ended, with the filters
   * of the scopes it loaded, most recently written first (none without a preload).
   */
  whenPreloaded(): Promise<Array<Record<string, string>>> {
    return this.preloading.then(() => this.preloadedScopes.map((scope) => ({ [scope.field]: scope.value })));
  }

  /** Which dot-product kernel this store's searches use. */
  get kernel(): 'wasm' | 'js' {
    return this.arena.kernel;
  }

  async initialize(): Promise<void> {
    this.assertOpen();
    this.registerCollection();
  }

  async insert(vectors: number[][], ids: string[], payloads: Record<string, unknown>[]): Promise<void> {
    this.assertOpen();
    if (!Array.isArray(vectors) || !Array.isArray(ids) || !Array.isArray(payloads)) {
      throw new Error('insert: vectors, ids and payloads must be arrays');
    }
    if (vectors.length !== ids.length || payloads.length !== ids.length) {
      throw new Error(`insert: got ${vectors.length} vectors, ${ids.length} ids and ${payloads.length} payloads`);
    }
    // Validate and encode everything before writing, so a bad row fails the whole batch.
    const rows = ids.map((id, i) => {
      if (typeof id !== 'string' || id === '') throw new Error('insert: ids must be non-empty strings');
      const vector = toFloat32(vectors[i], this.dimension, 'insert');
      const rawPayload = payloads[i];
      const payload = normalizePayload(isPlainObject(rawPayload) ? rawPayload : {});
      const json = JSON.stringify(payload);
      const parsed = parsePayload(json);
      return {
        id,
        vector,
        quantized: quantizeVector(vector),
        json,
        cols: scopeColumns(parsed),
        textKey: this.textKeyOf(parsed),
        text: keywordText(parsed),
        rowid: 0,
      };
    });
    const trackOld = this.state.partitions.size > 0;
    const oldScopes = new Map<string, ScopeRow | undefined>();
    this.shared.write(() => {
      this.registerCollection();
      const upsert = this.shared.stmt(
        'INSERT OR REPLACE INTO evs_vectors (collection, id, user_id, agent_id, run_id, vector, qvector, payload, text_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      );
      for (const r of rows) {
        // The scope before this batch (an id repeated within the batch must not see its own first write).
        if (trackOld && !oldScopes.has(r.id)) oldScopes.set(r.id, this.readScope(r.id));
        const quantized = encodeQuantized(r.quantized, this.dimension);
        const info = upsert.run(this.collectionName, r.id, r.cols[0], r.cols[1], r.cols[2], blobOf(r.vector), quantized, r.json, r.textKey);
        r.rowid = Number(info.lastInsertRowid);
      }
    });
    if (trackOld) {
      const finalRows = new Map(rows.map((r) => [r.id, r])); // last write of an id wins, as in SQLite
      for (const r of finalRows.values()) this.applyToPartitions(oldScopes.get(r.id), r);
    }
  }

  async search(query: number[], topK?: number, filters?: Record<string, unknown>): Promise<VectorStoreResult[]> {
    return this.searchAbove(query, topK, filters, -Infinity);
  }

  /**
   * `search`, keeping only rows whose similarity is at least `minScore`: the entity boost of
   * recall reads only matches ≥ 0.5, and this spares rescoring the hundreds of candidates below.
   *
   * The scope's quantized partition picks `candidateCount(k)` candidates; their float32 vectors
   * are read from SQLite and rescored exactly, so every returned score is the exact cosine.
   */
  async searchAbove(
    query: number[],
    topK: number | undefined,
    filters: Record<string, unknown> | undefined,
    minScore: number,
  ): Promise<VectorStoreResult[]> {
    this.assertOpen();
    const q = toFloat32(query, this.dimension, 'search');
    const k = normalizeTopK(topK, 10);
    const f = asFilters(filters);
    if (k === 0) return [];
    const scope = pickScope(f);
    if (scope) {
      let partition: Partition | null = null;
      try {
        partition = this.partitionFor(scope);
      } catch (err) {
        if (!(err instanceof ArenaFullError)) throw err;
        this.logger?.warn('embedded vector store: index full, searching from disk', { error: err.message });
      }
      if (partition) {
        const unit = normalized(q);
        const top = new TopK<number>(candidateCount(k));
        const p = partition;
        const accept = hasResidualFilter(f, scope.field) ? (row: number) => this.rowMatches(p.idAt(row), f) : null;
        const query = quantize(unit);
        const queryL1 = l1Norm(query);
        // Only candidates whose exact score can reach minScore are read and rescored: the bound
        // is what quantization can move a score by at most, so nothing at or above it is cut.
        // The scan already leaves out the rows even the loose bound puts below minScore.
        p.search(query, top, accept, { score: minScore, queryL1, dimension: this.dimension });
        const ids: string[] = [];
        const candidates = top.sorted();
        // The k-th best lower bound of the candidates' exact scores: k of them score at least this,
        // so a candidate whose upper bound is below it cannot be among the best k and is not read.
        let cut = -Infinity;
        if (candidates.length > k) {
          const lows = candidates.map((c) => c.score - p.looseErrorBound(c.item, query, queryL1, this.dimension)).sort((a, b) => b - a);
          cut = lows[k - 1] ?? -Infinity;
        }
        for (const c of candidates) {
          if (c.score + p.looseErrorBound(c.item, query, queryL1, this.dimension) < cut) continue;
          // At or above minScore: in. Below it: in only if quantization can have moved the exact
          // score up to minScore (the scan applied the loose bound; the tight one reads the row's codes).
          if (c.score < minScore && c.score + p.errorBound(c.item, query, queryL1, this.dimension) < minScore) continue;
          ids.push(p.idAt(c.item));
        }
        return this.rescore(unit, ids, k, minScore);
      }
    }
    return this.scanSearch(q, k, f).filter((r) => (r.score ?? 0) >= minScore);
  }

  /**
   * Loads the index of the scope `filters` select, if it is not loaded yet, so that the next
   * search of that scope starts scanning at once (recall calls this while the query's embedding
   * is on the network). Filters without a scope, or an index that does not fit, leave the search
   * to do what it would have done.
   */
  prepareSearch(filters: Record<string, unknown> | undefined): void {
    this.assertOpen();
    const scope = pickScope(asFilters(filters));
    if (!scope) return;
    // A partition already loaded (and still current) is left to the search: its LRU touch and
    // budget check happen there, once per search, not twice.
    this.shared.syncWithOtherWriters();
    if (!this.state.partitions.has(scope.key)) {
      try {
        this.partitionFor(scope);
      } catch (err) {
        if (!(err instanceof ArenaFullError)) throw err;
        return;
      }
    }
    if (!this.entityCollection) this.buildKeywords(scope);
  }

  /**
   * BM25 from the FTS5 index (SQLite's bm25(): k1 1.2, b 0.75, statistics over the whole file),
   * negated so that higher is better, as mem0 expects. Only matching rows are read: no scan of the
   * scope. Scope columns narrow in SQL; other filters are checked on the matching rows, best first.
   * A scope filter alone, on a scope whose keyword index is in memory, is answered from that index
   * with the same scores and order (keyword-partition.ts).
   */
  async keywordSearch(query: string, topK?: number, filters?: Record<string, unknown>): Promise<VectorStoreResult[] | null> {
    this.assertOpen();
    if (typeof query !== 'string') return [];
    const k = normalizeTopK(topK, 10);
    const f = asFilters(filters);
    const tokens = tokenize(query);
    if (k === 0 || tokens.length === 0) return [];
    const scope = pickScope(f);
    if (scope && !hasResidualFilter(f, scope.field)) {
      const fromMemory = this.keywordHitsInMemory(scope, [...new Set(tokens)], k);
      if (fromMemory) return this.withPayloads(fromMemory);
    }
    return this.keywordSearchFts(tokens, k, f, scope);
  }

  /** `keywordSearch` answered by FTS5 (tokens non-empty, k > 0). */
  private keywordSearchFts(tokens: readonly string[], k: number, f: Filters | undefined, scope: Scope | null): VectorStoreResult[] {
    const scopeSql = scope ? ` AND v.${scope.field} = ?` : '';
    const params: unknown[] = [keywordQuery(tokens), this.collectionName, ...(scope ? [scope.value] : [])];
    const rows = this.shared
      .stmt(
        `SELECT v.id AS id, v.payload AS payload, -k.rank AS score FROM evs_keywords k JOIN evs_vectors v ON v.rowid = k.rowid
         WHERE evs_keywords MATCH ? AND v.collection = ?${scopeSql} ORDER BY k.rank`,
      )
      .iterate(...params) as IterableIterator<RowForList & { score: number }>;
    const out: VectorStoreResult[] = [];
    for (const row of rows) {
      const payload = parsePayload(row.payload);
      if (!matchesFilters(payload, f)) continue;
      out.push({ id: row.id, payload, score: row.score });
      if (out.length >= k) break;
    }
    return out;
  }

  async get(vectorId: string): Promise<VectorStoreResult | null> {
    this.assertOpen();
    const row = this.shared
      .stmt('SELECT id, payload FROM evs_vectors WHERE collection = ? AND id = ?')
      .get(this.collectionName, vectorId) as RowForList | undefined;
    return row ? { id: row.id, payload: parsePayload(row.payload) } : null;
  }

  async update(vectorId: string, vector: number[], payload: Record<string, unknown>): Promise<void> {
    this.assertOpen();
    const v = toFloat32(vector, this.dimension, 'update');
    const quantized = quantizeVector(v);
    const json = JSON.stringify(normalizePayload(isPlainObject(payload) ? payload : {}));
    const parsed = parsePayload(json);
    const cols = scopeColumns(parsed);
    let old: ScopeRow | undefined;
    this.shared.write(() => {
      old = this.readScope(vectorId);
      if (!old) return;
      this.shared
        .stmt(
          'UPDATE evs_vectors SET user_id = ?, agent_id = ?, run_id = ?, vector = ?, qvector = ?, payload = ?, text_key = ? WHERE collection = ? AND id = ?',
        )
        .run(
          cols[0],
          cols[1],
          cols[2],
          blobOf(v),
          encodeQuantized(quantized, this.dimension),
          json,
          this.textKeyOf(parsed),
          this.collectionName,
          vectorId,
        );
    });
    if (!old) {
      // The built-in store silently ignores updates of missing ids; mem0 checks existence first.
      this.logger?.warn('embedded vector store: update of a missing id ignored', { collection: this.collectionName, id: vectorId });
      return;
    }
    this.applyToPartitions(old, { id: vectorId, rowid: old.rowid, cols, quantized, text: keywordText(parsed) });
  }

  async delete(vectorId: string): Promise<void> {
    this.assertOpen();
    let old: ScopeRow | undefined;
    this.shared.write(() => {
      old = this.readScope(vectorId);
      if (old) this.shared.stmt('DELETE FROM evs_vectors WHERE collection = ? AND id = ?').run(this.collectionName, vectorId);
    });
    if (old) this.applyToPartitions(old, { id: vectorId, rowid: old.rowid, cols: null, quantized: null, text: undefined });
  }

  /** Deletes every row of this collection (other collections in the file are untouched). */
  async deleteCol(): Promise<void> {
    this.assertOpen();
    this.shared.write(() => {
      this.shared.stmt('DELETE FROM evs_vectors WHERE collection = ?').run(this.collectionName);
      this.shared.stmt('DELETE FROM evs_images WHERE collection = ?').run(this.collectionName);
      this.shared.stmt('DELETE FROM evs_keyword_images WHERE collection = ?').run(this.collectionName);
      // Forget the dimension too, so the collection can be recreated for another embedding model.
      this.shared.stmt('DELETE FROM evs_collections WHERE name = ?').run(this.collectionName);
    });
    this.shared.dropPartitions(this.state);
  }

  async list(filters?: Record<string, unknown>, topK?: number): Promise<[VectorStoreResult[], number]> {
    this.assertOpen();
    const k = normalizeTopK(topK, 100);
    const f = asFilters(filters);
    const { where, params, residual } = this.sqlScope(f);
    if (!residual) {
      // Scope equalities only: SQLite counts and pages through the index.
      const total = (this.shared.stmt(`SELECT COUNT(*) AS n FROM evs_vectors WHERE ${where}`).get(...params) as { n: number }).n;
      const rows = this.shared
        .stmt(`SELECT id, payload FROM evs_vectors WHERE ${where} ORDER BY rowid LIMIT ?`)
        .all(...params, k) as RowForList[];
      return [rows.map((r) => ({ id: r.id, payload: parsePayload(r.payload) })), total];
    }
    const results: VectorStoreResult[] = [];
    let total = 0;
    for (const row of this.shared
      .stmt(`SELECT id, payload FROM evs_vectors WHERE ${where} ORDER BY rowid`)
      .iterate(...params) as IterableIterator<RowForList>) {
      const payload = parsePayload(row.payload);
      if (!matchesFilters(payload, f)) continue;
      total++;
      if (results.length < k) results.push({ id: row.id, payload });
    }
    return [results, total];
  }

  /**
   * The first row (in insertion order) within `filters` whose `data` mem0 would call the same
   * entity as `key` (text-keys.ts), from the index; undefined when there is none. Entity
   * collections only (others keep no text keys). Synchronous, as mem0 reads its map of existing
   * entities.
   */
  findByTextKey(filters: Record<string, unknown> | undefined, key: string): VectorStoreResult | undefined {
    this.assertOpen();
    if (!this.entityCollection) throw new Error(`findByTextKey: "${this.collectionName}" is not an entity collection`);
    const f = asFilters(filters);
    const { where, params, residual } = this.sqlScope(f);
    const rows = this.shared
      .stmt(`SELECT id, payload FROM evs_vectors WHERE ${where} AND text_key = ? ORDER BY rowid`)
      .iterate(...params, key);
    for (const row of rows as IterableIterator<RowForList>) {
      const payload = parsePayload(row.payload);
      if (!residual || matchesFilters(payload, f)) return { id: row.id, payload };
    }
    return undefined;
  }

  /**
   * The users with rows in this collection, by user id: their row count and the latest
   * `updatedAt` (else `createdAt`) of their payloads. `query` is a case-insensitive substring of
   * the user id. One grouped pass over the user index.
   */
  users(query: string, limit: number, offset: number): { users: UserSummary[]; total: number } {
    this.assertOpen();
    const match = "collection = ? AND user_id IS NOT NULL AND (? = '' OR instr(lower(user_id), lower(?)) > 0)";
    const params = [this.collectionName, query, query];
    const total = (this.shared.stmt(`SELECT COUNT(DISTINCT user_id) AS n FROM evs_vectors WHERE ${match}`).get(...params) as { n: number })
      .n;
    const rows = this.shared
      .stmt(
        `SELECT user_id, COUNT(*) AS memories, MAX(COALESCE(json_extract(payload, '$.updatedAt'), json_extract(payload, '$.createdAt'))) AS last
         FROM evs_vectors WHERE ${match} GROUP BY user_id ORDER BY user_id LIMIT ? OFFSET ?`,
      )
      .all(...params, limit, offset) as { user_id: string; memories: number; last: unknown }[];
    return {
      users: rows.map((r) => ({ user_id: r.user_id, memories: r.memories, last_activity: typeof r.last === 'string' ? r.last : null })),
      total,
    };
  }

  async getUserId(): Promise<string> {
    this.assertOpen();
    const row = this.shared.stmt("SELECT value FROM evs_meta WHERE key = 'user_id'").get() as { value: string } | undefined;
    if (row) return row.value;
    const id = randomUUID();
    this.shared.stmt("INSERT OR IGNORE INTO evs_meta (key, value) VALUES ('user_id', ?)").run(id);
    return (this.shared.stmt("SELECT value FROM evs_meta WHERE key = 'user_id'").get() as { value: string }).value;
  }

  async setUserId(userId: string): Promise<void> {
    this.assertOpen();
    this.shared.stmt("INSERT OR REPLACE INTO evs_meta (key, value) VALUES ('user_id', ?)").run(String(userId));
  }

  /** Releases this instance's hold on the file; the connection closes with the last instance. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.files.release(this.shared);
  }

  /** Diagnostics: rows held in memory for this file, their approximate bytes, and how partitions were loaded. */
  cacheStats(): {
    partitions: number;
    rows: number;
    bytes: number;
    loads: { images: number; rows: number };
    keywordLoads: { images: number; rows: number };
    /** Scans of this store's arena (shared by the stores of its files) offered to the scan helper, and joined by it. */
    scans: { jobs: number; joined: number };
  } {
    let partitions = 0;
    let rows = 0;
    for (const c of this.shared.collections.values()) {
      for (const p of c.partitions.values()) {
        partitions++;
        rows += p.count;
      }
    }
    return {
      partitions,
      rows,
      bytes: this.shared.cachedBytes(),
      loads: { ...this.shared.loads },
      keywordLoads: { ...this.shared.keywordLoads },
      scans: this.arena.scanCounts(),
    };
  }

  /**
   * `keywordSearch`'s ids and scores, in its order, without reading payloads (recall needs no
   * more, and a scope's in-memory index answers without touching the rows).
   */
  async keywordScores(query: string, topK?: number, filters?: Record<string, unknown>): Promise<Array<{ id: string; score: number }>> {
    this.assertOpen();
    const k = normalizeTopK(topK, 10);
    const f = asFilters(filters);
    const scope = pickScope(f);
    const tokens = typeof query === 'string' ? tokenize(query) : [];
    if (k === 0 || tokens.length === 0) return [];
    if (scope && !hasResidualFilter(f, scope.field)) {
      const fromMemory = this.keywordHitsInMemory(scope, [...new Set(tokens)], k);
      if (fromMemory) return fromMemory.map(({ id, score }) => ({ id, score }));
    }
    return this.keywordSearchFts(tokens, k, f, scope).map((hit) => ({ id: String(hit.id), score: hit.score ?? 0 }));
  }

  /** Keyword searches this store answered from in memory and from FTS5 (diagnostics, tests). */
  readonly keywordSearches = { memory: 0, fts: 0 };

  // -------------------------------------------------------------------------------------------

  /**
   * The best `k` keyword hits of a scope alone, from the scope's in-memory keyword index; null
   * when that cannot give FTS5's answer: no complete index (one is built for a loaded partition),
   * a row or a term whose tokens are not known here, or a write transaction open on the connection.
   */
  private keywordHitsInMemory(scope: Scope, terms: readonly string[], k: number): KeywordHit[] | null {
    const shared = this.shared;
    if (!terms.every(isSingleAsciiToken) || shared.db.inTransaction) return this.countKeywordSearch(null);
    // One read transaction: the rows this index holds and the file-wide statistics are of one snapshot.
    this.keywordRead ??= shared.db.transaction((s: Scope, t: readonly string[], n: number): KeywordHit[] | null => {
      shared.syncWithOtherWriters();
      const index = this.state.keywords.get(s.key);
      if (!index) {
        this.buildKeywords(s);
        return null;
      }
      if (!index.ready || !index.usable) return null;
      const stats = shared.keywordStats(t);
      return stats ? index.search(t, stats, n) : null;
    });
    return this.countKeywordSearch(this.keywordRead(scope, terms, k));
  }

  /** Keyword hits with their payloads, as `keywordSearch` returns them. */
  private withPayloads(hits: readonly KeywordHit[]): VectorStoreResult[] {
    if (hits.length === 0) return [];
    const payloads = new Map(
      (
        this.shared
          .stmt('SELECT rowid AS rowid, payload FROM evs_vectors WHERE rowid IN (SELECT value FROM json_each(?))')
          .all(JSON.stringify(hits.map((h) => h.rowid))) as Array<{ rowid: number; payload: string }>
      ).map((r) => [r.rowid, r.payload]),
    );
    const out: VectorStoreResult[] = [];
    for (const hit of hits) {
      const json = payloads.get(hit.rowid);
      // Absent only if another connection deleted the row since the ranking: as FTS5 would now, leave it out.
      if (json !== undefined) out.push({ id: hit.id, payload: parsePayload(json), score: hit.score });
    }
    return out;
  }

  private countKeywordSearch(results: KeywordHit[] | null): KeywordHit[] | null {
    if (results) this.keywordSearches.memory++;
    else this.keywordSearches.fts++;
    return results;
  }

  /**
   * Starts building the in-memory keyword index of a scope whose partition is loaded, unless one
   * exists: from the scope's keyword image when a current one is stored, else from its rows, by
   * rowid, in the paced turns described at KEYWORD_BUILD_ROWS; FTS5 answers until it is done.
   * Writes meanwhile reach the index through applyToPartitions, and a row read after its write
   * holds the same text, so the index ends in step with the file. Dropped with
   * the partition (another writer, eviction, a failed commit), the build stops.
   */
  private buildKeywords(scope: Scope): void {
    const { keywords } = this.state;
    if (keywords.has(scope.key) || !this.state.partitions.has(scope.key)) return;
    const index = new KeywordPartition(scope.key);
    keywords.set(scope.key, index);
    const batch = this.shared.stmt(
      `SELECT rowid AS rowid, id, ${keywordTextSql('payload')} AS text FROM evs_vectors
       WHERE collection = ? AND ${scope.field} = ? AND rowid > ? ORDER BY rowid LIMIT ${KEYWORD_BUILD_ROWS}`,
    );
    let after = 0;
    const step = (): void => {
      if (this.closed || !this.shared.db.open || keywords.get(scope.key) !== index) return;
      try {
        if (after === 0 && this.loadKeywordImage(index, scope)) return;
        const rows = batch.all(this.collectionName, scope.value, after) as Array<{ rowid: number; id: string; text: unknown }>;
        for (const row of rows) {
          after = row.rowid;
          index.upsert(row.id, row.rowid, typeof row.text === 'string' ? row.text : undefined);
        }
        if (rows.length < KEYWORD_BUILD_ROWS) {
          index.ready = true;
          this.shared.keywordLoads.rows++;
          return;
        }
      } catch (err) {
        keywords.delete(scope.key); // FTS5 answers; the next search of the scope tries again
        this.logger?.warn('embedded vector store: building a keyword index failed', { error: String(err) });
        return;
      }
      setTimeout(step, KEYWORD_BUILD_PAUSE_MS).unref();
    };
    setTimeout(step, KEYWORD_BUILD_DELAY_MS).unref();
  }

  /**
   * Fills a keyword index from the scope's stored image when one of the current version exists
   * (one read instead of every row's). Rows that writes added to the index meanwhile are in the
   * image too, as they are now; a write since the image is a newer version, and then no image is used.
   */
  private loadKeywordImage(index: KeywordPartition, scope: Scope): boolean {
    const shared = this.shared;
    const loaded = shared.db.transaction(() => {
      const version = shared.scopeVersion(this.collectionName, scope.field, scope.value);
      const image = shared.keywordImage(this.collectionName, scope.field, scope.value, version);
      if (!image || !index.loadImage(image)) return undefined;
      return version;
    })();
    if (loaded === undefined) return false;
    index.ready = true;
    shared.keywordImageVersions.set(index, loaded);
    shared.keywordLoads.images++;
    return true;
  }

  private get entityCollection(): boolean {
    return isEntityCollection(this.collectionName);
  }

  private textKeyOf(payload: Record<string, unknown>): string | null {
    return this.entityCollection ? entityTextKey(payload['data']) : null;
  }

  private assertOpen(): void {
    if (this.closed || !this.shared.db.open) throw new Error(`EmbeddedVectorStore (${this.collectionName}) is closed`);
  }

  /** Records the collection's dimension in the file, or throws if the file has another one. */
  private registerCollection(): void {
    this.shared.stmt('INSERT OR IGNORE INTO evs_collections (name, dimension) VALUES (?, ?)').run(this.collectionName, this.dimension);
    const row = this.shared.stmt('SELECT dimension FROM evs_collections WHERE name = ?').get(this.collectionName) as { dimension: number };
    if (row.dimension !== this.dimension) {
      throw new Error(
        `EmbeddedVectorStore: collection "${this.collectionName}" in ${this.dbPath} holds ${row.dimension}-dimensional vectors, not ${this.dimension}`,
      );
    }
  }

  private readScope(id: string): ScopeRow | undefined {
    return this.shared
      .stmt('SELECT rowid, user_id, agent_id, run_id FROM evs_vectors WHERE collection = ? AND id = ?')
      .get(this.collectionName, id) as ScopeRow | undefined;
  }

  /** Keeps loaded partitions and keyword indexes in step with a committed write. */
  private applyToPartitions(old: ScopeRow | undefined, change: RowChange): void {
    const { partitions, keywords } = this.state;
    if (partitions.size === 0) return;
    const { id } = change;
    const newKeys = change.cols ? scopeKeysOf(change.cols) : [];
    if (old) {
      for (const key of scopeKeysOf([old.user_id, old.agent_id, old.run_id])) {
        if (newKeys.includes(key)) continue;
        partitions.get(key)?.remove(id);
        keywords.get(key)?.remove(id);
      }
    }
    if (change.quantized) {
      const { quantized } = change;
      for (const key of newKeys) {
        partitions.get(key)?.upsert(id, quantized);
        keywords.get(key)?.upsert(id, change.rowid, change.text);
      }
    }
  }

  /** The loaded partition for a scope, loading it from SQLite on first use. */
  private partitionFor(scope: Scope): Partition {
    const shared = this.shared;
    shared.syncWithOtherWriters();
    let partition = this.state.partitions.get(scope.key);
    if (!partition) {
      partition = new Partition(scope.key, this.arena);
      try {
        if (!this.loadFromImage(partition, scope)) this.loadFromRows(partition, scope);
      } catch (err) {
        partition.release();
        throw err;
      }
      this.state.partitions.set(scope.key, partition);
    }
    shared.touch(partition, this.state);
    shared.enforceBudget(partition);
    return partition;
  }

  /** See `preloadImages` in the config. A partition that fails to load is left for its first search. */
  private preloadImages(done: () => void): void {
    if (this.closed) {
      done();
      return;
    }
    const scopes = this.shared
      .stmt(
        `SELECT i.field AS field, i.value AS value,
                (SELECT sum(length(p.data)) FROM evs_images p WHERE p.collection = i.collection AND p.field = i.field AND p.value = i.value) AS bytes
           FROM evs_images i
           LEFT JOIN evs_scope_versions v ON v.collection = i.collection AND v.field = i.field AND v.value = i.value
         WHERE i.collection = ? AND i.part = 0 AND i.version = coalesce(v.version, 0) ORDER BY i.rowid DESC`,
      )
      .all(this.collectionName) as Array<{ field: ScopeField; value: string; bytes: number }>;
    let next = 0;
    const step = (): void => {
      const scope = scopes[next++];
      if (this.closed || !scope || this.shared.cachedBytes() + scope.bytes > this.shared.maxCacheBytes / 2) {
        done();
        return;
      }
      const key = scopeKey(scope.field, scope.value);
      try {
        if (!this.state.partitions.has(key)) this.partitionFor({ field: scope.field, value: scope.value, key });
        this.preloadedScopes.push({ field: scope.field, value: scope.value, key });
      } catch {
        // Loaded (or reported) by its first search instead.
      }
      setImmediate(step);
    };
    step();
  }

  /** Loads a partition from its image when one of the scope's current version exists (see createPartitionImages). */
  private loadFromImage(partition: Partition, scope: Scope): boolean {
    const shared = this.shared;
    // One read transaction: the version and the image come from the same snapshot of the file.
    const version = shared.db.transaction(() => {
      const current = shared.scopeVersion(this.collectionName, scope.field, scope.value);
      if (!shared.hasImage(this.collectionName, scope.field, scope.value, current)) return undefined;
      return partition.loadImage(shared.imageParts(this.collectionName, scope.field, scope.value, current)) ? current : null;
    })();
    if (version === undefined) return false;
    if (version === null) {
      this.logger?.warn('EmbeddedVectorStore: a partition image does not fit; its rows are read instead', {
        collection: this.collectionName,
      });
      return false;
    }
    shared.imageVersions.set(partition, version);
    shared.loads.images++;
    return true;
  }

  private loadFromRows(partition: Partition, scope: Scope): void {
    const shared = this.shared;
    // The compact int8 column only; the float32 vector just for a row some older writer left without it.
    const rows = shared
      .stmt(
        `SELECT id, qvector, CASE WHEN qvector IS NULL THEN vector END AS vector FROM evs_vectors WHERE collection = ? AND ${scope.field} = ?`,
      )
      .iterate(this.collectionName, scope.value) as IterableIterator<RowForPartition>;
    for (const row of rows) {
      const q = row.qvector ? decodeQuantized(row.qvector, this.dimension) : undefined;
      partition.upsert(row.id, q ?? quantizeVector(vectorFromBlob(row.vector ?? Buffer.alloc(0), this.dimension, row.id)));
    }
    shared.loads.rows++;
  }

  /** WHERE clause for the scope equalities SQLite can apply; `residual` when JS must check more. */
  private sqlScope(filters: Filters | undefined): { where: string; params: unknown[]; residual: boolean } {
    const clauses = ['collection = ?'];
    const params: unknown[] = [this.collectionName];
    const pushed = new Set<string>();
    if (filters) {
      for (const field of SCOPE_FIELDS) {
        const value = filters[field];
        if (typeof value === 'string' && value !== '*') {
          clauses.push(`${field} = ?`);
          params.push(value);
          pushed.add(field);
        }
      }
    }
    const residual = filters ? Object.keys(filters).some((k) => !pushed.has(k)) : false;
    return { where: clauses.join(' AND '), params, residual };
  }

  private iterateRows(filters: Filters | undefined, withVectors: boolean): IterableIterator<RowForLoad | RowForList> {
    const { where, params } = this.sqlScope(filters);
    const columns = withVectors ? 'id, vector, payload' : 'id, payload';
    return this.shared.stmt(`SELECT ${columns} FROM evs_vectors WHERE ${where}`).iterate(...params) as IterableIterator<
      RowForLoad | RowForList
    >;
  }

  private rowMatches(id: string, f: Filters | undefined): boolean {
    const row = this.shared.stmt('SELECT payload FROM evs_vectors WHERE collection = ? AND id = ?').get(this.collectionName, id) as
      | { payload: string }
      | undefined;
    return row !== undefined && matchesFilters(parsePayload(row.payload), f);
  }

  /** Exact cosine of each candidate from its stored float32 vector; the best `k` at or above `minScore`. */
  private rescore(unit: Float32Array, ids: readonly string[], k: number, minScore: number): VectorStoreResult[] {
    if (ids.length === 0) return [];
    const rows = this.shared
      .stmt('SELECT id, vector, payload FROM evs_vectors WHERE collection = ? AND id IN (SELECT value FROM json_each(?))')
      .all(this.collectionName, JSON.stringify(ids)) as RowForLoad[];
    const scored: Array<{ score: number; row: RowForLoad }> = [];
    for (const row of rows) {
      const score = clampScore(cosineToUnit(unit, vectorFromBlob(row.vector, this.dimension, row.id)));
      if (score >= minScore) scored.push({ score, row });
    }
    // Best first, equal scores by id: the order does not depend on which candidates were read, so
    // `search` and `searchAbove` agree on ties. A fresh payload per result: mem0 mutates returned
    // payloads before update().
    scored.sort((a, b) => b.score - a.score || (a.row.id < b.row.id ? -1 : a.row.id > b.row.id ? 1 : 0));
    return scored.slice(0, k).map(({ score, row }) => ({ id: row.id, payload: parsePayload(row.payload), score }));
  }

  /** Slow path for filters without a plain scope equality (e.g. user_id "*" or an OR of users): scans the collection. */
  private scanSearch(q: Float32Array, k: number, f: Filters | undefined): VectorStoreResult[] {
    const unitQuery = normalized(q);
    const top = new TopK<{ id: string; json: string }>(k);
    for (const row of this.iterateRows(f, true) as IterableIterator<RowForLoad>) {
      const payload = parsePayload(row.payload);
      if (!matchesFilters(payload, f)) continue;
      top.push(cosineToUnit(unitQuery, vectorFromBlob(row.vector, this.dimension, row.id)), { id: row.id, json: row.payload });
    }
    return top.sorted().map(({ score, item }) => ({ id: item.id, payload: parsePayload(item.json), score: clampScore(score) }));
  }
}
