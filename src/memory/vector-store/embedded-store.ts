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
 *   one connection per process. Every write is committed before its promise resolves.
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
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import type { VectorStore, VectorStoreResult } from 'mem0ai/oss';
import type { UserSummary } from '../types';
import { ArenaFullError, arenaFor, type Int8Arena } from './quantized/arena';
import type { SearchKernel } from './quantized/kernel';
import { Partition } from './quantized/partition';
import { candidateCount, decodeQuantized, encodeQuantized, l1Norm, quantize, type Quantized } from './quantized/quantize';
import { TopK } from './quantized/top-k';

export { embeddedVectorStoreKernel, type SearchKernel } from './quantized/kernel';

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** Minimal logger shape (a winston logger fits). */
export interface EmbeddedStoreLogger {
  warn(message: string, meta?: object): void;
}

/**
 * Configuration, in the shape of mem0ai's `VectorStoreConfig` (extra keys mem0 passes along,
 * such as `client`, are ignored). `dbPath` is required; `dimension` is required unless the
 * collection already exists in the file.
 */
export interface EmbeddedVectorStoreConfig {
  /** Collection (logical table) name; mem0 passes its `collectionName` (default "memories"). */
  collectionName?: string;
  /** Vector dimension; inserts, updates and searches with another length throw. */
  dimension?: number;
  /** SQLite file path (its directory is created). ":memory:" gives a private in-memory DB. */
  dbPath?: string;
  /**
   * SQLite `synchronous` in WAL mode: FULL (default) fsyncs each commit, so it also survives power
   * loss; NORMAL survives process crashes only. Openers of one file share a connection: FULL wins.
   */
  synchronous?: 'FULL' | 'NORMAL';
  /**
   * Soft budget for the in-memory index of this file, in bytes (default 1 GiB; the largest asked
   * for by the openers of the file applies). The partition being searched is never evicted.
   */
  maxCacheBytes?: number;
  /** Dot-product kernel: "auto" (WASM SIMD when available), or force one (tests, bench). */
  kernel?: SearchKernel;
  /**
   * After opening, load the partitions that have a current image (most recently written first,
   * up to half the cache budget) in the background, one per event-loop turn, so the first search
   * of a user active before a restart finds the partition in memory (default false).
   */
  preloadImages?: boolean;
  logger?: EmbeddedStoreLogger;
  [key: string]: unknown;
}

type Payload = Record<string, unknown>;
type Filters = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// Filters (same semantics as mem0ai's MemoryVectorStore, with the fixes noted inline)
// ---------------------------------------------------------------------------------------------

const LOGICAL_KEYS = new Map<string, 'AND' | 'OR' | 'NOT'>([
  ['AND', 'AND'],
  ['OR', 'OR'],
  ['NOT', 'NOT'],
  ['$and', 'AND'],
  ['$or', 'OR'],
  ['$not', 'NOT'],
]);
const OPERATORS = new Set(['eq', 'ne', 'gt', 'gte', 'lt', 'lte', 'in', 'nin', 'contains', 'icontains']);
const SCOPE_FIELDS = ['user_id', 'agent_id', 'run_id'] as const;
type ScopeField = (typeof SCOPE_FIELDS)[number];
const CAMEL_SCOPE: ReadonlyArray<readonly [string, ScopeField]> = [
  ['userId', 'user_id'],
  ['agentId', 'agent_id'],
  ['runId', 'run_id'],
];

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((v, i) => deepEqual(v, b[i]));
  }
  if (isPlainObject(a) && isPlainObject(b)) {
    const ka = Object.keys(a);
    if (ka.length !== Object.keys(b).length) return false;
    return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k], b[k]));
  }
  return false;
}

/** Ordering only between values of the same primitive type: the built-in's JS coercion ("10" > 9) is not kept. */
function compare(a: unknown, b: unknown): number | null {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'string' && typeof b === 'string') return a < b ? -1 : a > b ? 1 : 0;
  return null;
}

function applyOperator(op: string, value: unknown, arg: unknown): boolean {
  switch (op) {
    case 'eq':
      return value === arg;
    case 'ne':
      return value !== arg;
    case 'gt': {
      const c = compare(value, arg);
      return c !== null && c > 0;
    }
    case 'gte': {
      const c = compare(value, arg);
      return c !== null && c >= 0;
    }
    case 'lt': {
      const c = compare(value, arg);
      return c !== null && c < 0;
    }
    case 'lte': {
      const c = compare(value, arg);
      return c !== null && c <= 0;
    }
    case 'in':
      return Array.isArray(arg) && arg.includes(value);
    case 'nin':
      // Same as the built-in: a malformed (non-array) `nin` excludes nothing.
      return !Array.isArray(arg) || !arg.includes(value);
    case 'contains':
      if (typeof value === 'string') return typeof arg === 'string' && value.includes(arg);
      // Extension: arrays in payloads (e.g. linkedMemoryIds) can be tested for membership.
      return Array.isArray(value) && value.includes(arg);
    case 'icontains':
      return typeof value === 'string' && typeof arg === 'string' && value.toLowerCase().includes(arg.toLowerCase());
    default:
      throw new Error(`Unsupported filter operator: ${op}`);
  }
}

function matchField(value: unknown, condition: unknown): boolean {
  if (condition === '*') return true; // wildcard: every value matches, even a missing field (as the built-in)
  // Plain values compare with ===. An `undefined` condition therefore only matches rows without
  // the field (built-in behaviour), so a caller's missing user id never widens a search to all users.
  if (typeof condition !== 'object' || condition === null) return value === condition;
  if (Array.isArray(condition)) return condition.includes(value);
  const keys = Object.keys(condition);
  const known = keys.filter((k) => OPERATORS.has(k));
  if (known.length === 0) return deepEqual(value, condition); // a literal object value
  if (known.length !== keys.length) {
    throw new Error(`Unsupported filter operator(s): ${keys.filter((k) => !OPERATORS.has(k)).join(', ')}`);
  }
  // All operators must hold (the built-in only checks the first one, so ranges {gte, lte} were half-applied).
  for (const op of keys) {
    if (!applyOperator(op, value, (condition as Record<string, unknown>)[op])) return false;
  }
  return true;
}

function asFilterList(kind: string, value: unknown): Filters[] {
  if (!Array.isArray(value)) {
    throw new Error(`${kind} filter value must be a list of filter objects, got ${typeof value}`);
  }
  return value.map((sub) => {
    if (!isPlainObject(sub)) throw new Error(`${kind} filter entries must be objects`);
    return sub;
  });
}

/** True when `payload` satisfies every condition of `filters` (an empty or missing filter matches all). */
export function matchesFilters(payload: Payload, filters: Filters | undefined): boolean {
  if (!filters) return true;
  for (const key of Object.keys(filters)) {
    const condition = filters[key];
    const logical = LOGICAL_KEYS.get(key);
    if (logical === 'AND') {
      if (!asFilterList(logical, condition).every((sub) => matchesFilters(payload, sub))) return false;
    } else if (logical === 'OR') {
      if (!asFilterList(logical, condition).some((sub) => matchesFilters(payload, sub))) return false;
    } else if (logical === 'NOT') {
      if (asFilterList(logical, condition).some((sub) => matchesFilters(payload, sub))) return false;
    } else if (!matchField(payload[key], condition)) {
      return false;
    }
  }
  return true;
}

interface Scope {
  field: ScopeField;
  value: string;
  key: string;
}

function scopeKey(field: ScopeField, value: string): string {
  return `${field}\u0000${value}`;
}

function splitScopeKey(key: string): [ScopeField, string] {
  const at = key.indexOf('\u0000');
  return [key.slice(0, at) as ScopeField, key.slice(at + 1)];
}

/**
 * The partition a filtered query can be answered from: a top-level equality on a scope field.
 * Top-level conditions are ANDed, so every matching row lies in that partition. user_id is
 * preferred because user partitions are the ones reused across requests.
 */
function pickScope(filters: Filters | undefined): Scope | null {
  if (!filters) return null;
  for (const field of SCOPE_FIELDS) {
    const value = filters[field];
    if (typeof value === 'string' && value !== '*') return { field, value, key: scopeKey(field, value) };
  }
  return null;
}

/** Whether a filter constrains anything beyond the given scope field (then rows must be checked). */
function hasResidualFilter(filters: Filters | undefined, scopeField: ScopeField): boolean {
  if (!filters) return false;
  return Object.keys(filters).some((k) => k !== scopeField);
}

function normalizePayload(payload: Payload): Payload {
  const out: Payload = { ...payload };
  for (const [camel, snake] of CAMEL_SCOPE) {
    if (camel in out && !(snake in out)) {
      out[snake] = out[camel];
      delete out[camel];
    }
  }
  return out;
}

function scopeColumns(payload: Payload): [string | null, string | null, string | null] {
  const col = (v: unknown): string | null => (typeof v === 'string' ? v : null);
  return [col(payload.user_id), col(payload.agent_id), col(payload.run_id)];
}

function scopeKeysOf(cols: readonly (string | null)[]): string[] {
  const keys: string[] = [];
  SCOPE_FIELDS.forEach((field, i) => {
    const v = cols[i];
    if (typeof v === 'string') keys.push(scopeKey(field, v));
  });
  return keys;
}

function parsePayload(json: string): Payload {
  const parsed: unknown = JSON.parse(json);
  return isPlainObject(parsed) ? parsed : {};
}

// ---------------------------------------------------------------------------------------------
// Keyword queries: whitespace tokens of mem0's lemmatized query (the index is FTS5, below)
// ---------------------------------------------------------------------------------------------

function tokenize(text: string): string[] {
  return text.toLowerCase().split(/\s+/).filter(Boolean);
}

// ---------------------------------------------------------------------------------------------
// Shared per-file state: one connection, prepared statements, loaded partitions, LRU budget
// ---------------------------------------------------------------------------------------------

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
  user_id: string | null;
  agent_id: string | null;
  run_id: string | null;
}

const DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024;

class CollectionState {
  readonly partitions = new Map<string, Partition>();
  constructor(readonly name: string) {}
}

class SharedDb {
  refs = 0;
  maxCacheBytes = 0;
  synchronous: 'FULL' | 'NORMAL' = 'FULL';
  readonly collections = new Map<string, CollectionState>();
  /** Loaded partitions, least recently used first. */
  private readonly lru = new Map<Partition, CollectionState>();
  private dataVersion: number;
  /** The scope version each partition's stored image is of (loaded from it, or as written). */
  readonly imageVersions = new WeakMap<Partition, number>();
  /** How partitions were loaded in this process: from images or row by row (diagnostics, tests). */
  readonly loads = { images: 0, rows: 0 };
  private readonly statements = new Map<string, Database.Statement<unknown[], unknown>>();

  constructor(readonly key: string, readonly db: Database.Database) {
    this.dataVersion = this.readDataVersion();
  }

  stmt(sql: string): Database.Statement<unknown[], unknown> {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  collection(name: string): CollectionState {
    let c = this.collections.get(name);
    if (!c) {
      c = new CollectionState(name);
      this.collections.set(name, c);
    }
    return c;
  }

  /**
   * Drops every loaded partition if another connection (another process, or another handle to the
   * same file) committed since we last looked: our in-place updates only cover our own writes.
   */
  syncWithOtherWriters(): void {
    const v = this.readDataVersion();
    if (v !== this.dataVersion) {
      this.dataVersion = v;
      this.dropAllPartitions();
    }
  }

  touch(partition: Partition, owner: CollectionState): void {
    this.lru.delete(partition);
    this.lru.set(partition, owner);
  }

  /** Evicts least-recently-used partitions (never `keep`) until the budget holds. */
  enforceBudget(keep: Partition): void {
    let total = 0;
    for (const p of this.lru.keys()) total += p.bytes();
    for (const [p, owner] of this.lru) {
      if (total <= this.maxCacheBytes) break;
      if (p === keep) continue;
      total -= p.bytes();
      this.evict(p, owner);
    }
  }

  evict(partition: Partition, owner: CollectionState): void {
    this.lru.delete(partition);
    if (owner.partitions.get(partition.key) === partition) owner.partitions.delete(partition.key);
    partition.release();
  }

  dropPartitions(owner: CollectionState): void {
    for (const p of [...owner.partitions.values()]) this.evict(p, owner);
  }

  dropAllPartitions(): void {
    for (const c of this.collections.values()) this.dropPartitions(c);
  }

  cachedBytes(): number {
    let total = 0;
    for (const p of this.lru.keys()) total += p.bytes();
    return total;
  }

  /** The version of a scope's rows (0 before any write since the triggers existed). */
  scopeVersion(collection: string, field: ScopeField, value: string): number {
    const row = this.stmt('SELECT version FROM evs_scope_versions WHERE collection = ? AND field = ? AND value = ?').get(collection, field, value) as
      | { version: number }
      | undefined;
    return row?.version ?? 0;
  }

  /** The parts of a scope's image at `version`, in order; the iteration stops early at a part of another version. */
  *imageParts(collection: string, field: ScopeField, value: string, version: number): Generator<Buffer> {
    const rows = this.stmt('SELECT part, version, data FROM evs_images WHERE collection = ? AND field = ? AND value = ? ORDER BY part').iterate(
      collection,
      field,
      value,
    ) as IterableIterator<{ part: number; version: number; data: Buffer }>;
    let expected = 0;
    for (const row of rows) {
      if (row.part !== expected++ || row.version !== version) return;
      yield row.data;
    }
  }

  hasImage(collection: string, field: ScopeField, value: string, version: number): boolean {
    return this.stmt('SELECT 1 FROM evs_images WHERE collection = ? AND field = ? AND value = ? AND part = 0 AND version = ?').get(collection, field, value, version) !== undefined;
  }

  /**
   * Writes the image of every loaded partition that has enough rows and no image of its current
   * version (see createPartitionImages). Failures are left unlogged here and cost nothing but the
   * next start's speed: rows stay the source of truth.
   */
  saveImages(): void {
    if (!this.db.open || this.db.readonly) return;
    try {
      this.syncWithOtherWriters();
      for (const [collection, state] of this.collections) {
        for (const partition of state.partitions.values()) {
          const [field, value] = splitScopeKey(partition.key);
          if (partition.count < MIN_IMAGE_ROWS || this.imageVersions.get(partition) === this.scopeVersion(collection, field, value)) continue;
          const image = partition.toImage(IMAGE_PART_BYTES);
          this.db
            .transaction(() => {
              // The write lock is held: if another connection committed since the sync above,
              // this partition may lack its rows, so it gets no image.
              if (this.readDataVersion() !== this.dataVersion) return;
              const version = this.scopeVersion(collection, field, value);
              this.stmt('DELETE FROM evs_images WHERE collection = ? AND field = ? AND value = ?').run(collection, field, value);
              for (const [part, data] of image.entries()) {
                this.stmt('INSERT INTO evs_images (collection, field, value, part, version, data) VALUES (?, ?, ?, ?, ?, ?)').run(
                  collection,
                  field,
                  value,
                  part,
                  version,
                  data,
                );
              }
            })
            .immediate();
        }
      }
    } catch {
      // A full disk or a busy file: the next start reads rows.
    }
  }

  private readDataVersion(): number {
    return Number(this.db.pragma('data_version', { simple: true }));
  }
}

const openFiles = new Map<string, SharedDb>();
let privateDbCounter = 0;

function fileKey(dbPath: string): string {
  const abs = path.resolve(dbPath);
  try {
    // Resolve symlinked directories so two spellings of one file share one connection and index.
    return path.join(fs.realpathSync(path.dirname(abs)), path.basename(abs));
  } catch {
    return abs;
  }
}

function openShared(dbPath: string, synchronous: 'FULL' | 'NORMAL'): SharedDb {
  const inMemory = dbPath === ':memory:';
  const key = inMemory ? `:memory:#${++privateDbCounter}` : fileKey(dbPath);
  const existing = openFiles.get(key);
  if (existing) {
    // One connection serves all openers of the file: the strictest durability asked for wins.
    if (synchronous === 'FULL' && existing.synchronous !== 'FULL') {
      existing.db.pragma('synchronous = FULL');
      existing.synchronous = 'FULL';
    }
    return existing;
  }
  if (!inMemory) fs.mkdirSync(path.dirname(path.resolve(dbPath)), { recursive: true });
  const db = new Database(inMemory ? ':memory:' : dbPath);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${synchronous}`);
    db.pragma('busy_timeout = 5000');
    db.exec(`
      CREATE TABLE IF NOT EXISTS evs_collections (
        name TEXT PRIMARY KEY,
        dimension INTEGER NOT NULL
      );
      CREATE TABLE IF NOT EXISTS evs_vectors (
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        user_id TEXT,
        agent_id TEXT,
        run_id TEXT,
        vector BLOB NOT NULL,
        payload TEXT NOT NULL,
        qvector BLOB,
        PRIMARY KEY (collection, id)
      );
      -- agent_id / run_id are often absent: partial indexes skip those rows (an equality lookup
      -- implies NOT NULL, so SQLite still uses them).
      CREATE INDEX IF NOT EXISTS evs_vectors_user ON evs_vectors (collection, user_id);
      CREATE INDEX IF NOT EXISTS evs_vectors_agent ON evs_vectors (collection, agent_id) WHERE agent_id IS NOT NULL;
      CREATE INDEX IF NOT EXISTS evs_vectors_run ON evs_vectors (collection, run_id) WHERE run_id IS NOT NULL;
      CREATE TABLE IF NOT EXISTS evs_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
      );
    `);
    addQuantizedColumn(db);
    createKeywordIndex(db);
    createPartitionImages(db);
  } catch (err) {
    db.close();
    throw err;
  }
  const shared = new SharedDb(key, db);
  shared.synchronous = synchronous;
  openFiles.set(key, shared);
  return shared;
}

/**
 * The int8 copy of each vector (quantized/quantize.ts) that partitions load, in its own column so a
 * start reads a quarter of the bytes and no payloads. A file of the previous version gets the
 * column and has it filled once, here, in one transaction (about a second per 10,000 rows).
 */
function addQuantizedColumn(db: Database.Database): void {
  const columns = db.prepare("SELECT name FROM pragma_table_info('evs_vectors')").all() as Array<{ name: string }>;
  if (!columns.some((c) => c.name === 'qvector')) db.exec('ALTER TABLE evs_vectors ADD COLUMN qvector BLOB');
  const missing = db.prepare('SELECT 1 FROM evs_vectors WHERE qvector IS NULL LIMIT 1').get();
  if (!missing) return;
  const dims = new Map((db.prepare('SELECT name, dimension FROM evs_collections').all() as Array<{ name: string; dimension: number }>).map((c) => [c.name, c.dimension]));
  const batch = db.prepare('SELECT rowid AS rowid, collection, vector FROM evs_vectors WHERE qvector IS NULL AND rowid > ? ORDER BY rowid LIMIT 1000');
  const fill = db.prepare('UPDATE evs_vectors SET qvector = ? WHERE rowid = ?');
  db.transaction(() => {
    for (let after = -Infinity; ; ) {
      const rows = batch.all(after) as Array<{ rowid: number; collection: string; vector: Buffer }>;
      if (rows.length === 0) break;
      for (const row of rows) {
        after = row.rowid;
        const dimension = dims.get(row.collection) ?? row.vector.byteLength / 4;
        if (row.vector.byteLength !== dimension * 4) continue; // left to the loader, which reports it
        fill.run(encodeQuantized(quantizeVector(vectorFromBlob(row.vector, dimension, String(row.rowid))), dimension), row.rowid);
      }
    }
  }).immediate();
}

/**
 * The keyword index: an FTS5 table over each row's `textLemmatized` (else `data`), kept in step
 * with `evs_vectors` by triggers, so every write path (and any other connection) maintains it in
 * the same transaction. Contentless: the text lives in the payload already. A file written before
 * the index existed is indexed once, when first opened (`evs_meta` keywords_version).
 * `recursive_triggers` makes INSERT OR REPLACE fire the delete trigger for the row it replaces.
 */
function createKeywordIndex(db: Database.Database): void {
  db.pragma('recursive_triggers = ON');
  const text = (payload: string): string =>
    `coalesce(nullif(json_extract(${payload}, '$.textLemmatized'), ''), json_extract(${payload}, '$.data'), '')`;
  db.transaction(() => {
    db.exec(`
      CREATE VIRTUAL TABLE IF NOT EXISTS evs_keywords USING fts5(terms, content='', contentless_delete=1);
      CREATE TRIGGER IF NOT EXISTS evs_keywords_insert AFTER INSERT ON evs_vectors BEGIN
        INSERT INTO evs_keywords (rowid, terms) VALUES (new.rowid, ${text('new.payload')});
      END;
      CREATE TRIGGER IF NOT EXISTS evs_keywords_delete AFTER DELETE ON evs_vectors BEGIN
        DELETE FROM evs_keywords WHERE rowid = old.rowid;
      END;
      CREATE TRIGGER IF NOT EXISTS evs_keywords_update AFTER UPDATE OF payload ON evs_vectors BEGIN
        DELETE FROM evs_keywords WHERE rowid = old.rowid;
        INSERT INTO evs_keywords (rowid, terms) VALUES (new.rowid, ${text('new.payload')});
      END;
    `);
    const version = db.prepare("SELECT value FROM evs_meta WHERE key = 'keywords_version'").get() as { value: string } | undefined;
    if (version?.value !== '1') {
      db.exec(`DELETE FROM evs_keywords; INSERT INTO evs_keywords (rowid, terms) SELECT rowid, ${text('payload')} FROM evs_vectors;`);
      db.prepare("INSERT OR REPLACE INTO evs_meta (key, value) VALUES ('keywords_version', '1')").run();
    }
  }).immediate();
}

/**
 * Partition images: a loaded partition's ids and int8 codes as a few large blobs (`evs_images`, in
 * parts of at most IMAGE_PART_BYTES), so the next start reads a user's index in one sequential
 * pass instead of a row at a time (each row's codes sit behind its 6 KB float32 vector). An image
 * is valid only for the version of its scope it was made at: every insert, update and delete of a
 * row bumps the version of each scope the row is in (`evs_scope_versions`, by triggers, so every
 * writer does), and a stale image is never read. Images are written when the last store of the
 * file closes (a clean shutdown), for partitions of at least MIN_IMAGE_ROWS rows whose image is
 * missing or stale; after a crash the rows are read as before and the next clean close writes
 * the image again. They live in the same file, so a backup or restore keeps them consistent.
 */
function createPartitionImages(db: Database.Database): void {
  const bump = (row: 'new' | 'old'): string => `
    INSERT INTO evs_scope_versions (collection, field, value, version)
      SELECT ${row}.collection, f, v, 1 FROM (
        SELECT 'user_id' AS f, ${row}.user_id AS v UNION ALL SELECT 'agent_id', ${row}.agent_id UNION ALL SELECT 'run_id', ${row}.run_id
      ) WHERE v IS NOT NULL
      ON CONFLICT (collection, field, value) DO UPDATE SET version = version + 1;`;
  db.exec(`
    CREATE TABLE IF NOT EXISTS evs_scope_versions (
      collection TEXT NOT NULL,
      field TEXT NOT NULL,
      value TEXT NOT NULL,
      version INTEGER NOT NULL,
      PRIMARY KEY (collection, field, value)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS evs_images (
      collection TEXT NOT NULL,
      field TEXT NOT NULL,
      value TEXT NOT NULL,
      part INTEGER NOT NULL,
      version INTEGER NOT NULL,
      data BLOB NOT NULL,
      PRIMARY KEY (collection, field, value, part)
    );
    CREATE TRIGGER IF NOT EXISTS evs_versions_insert AFTER INSERT ON evs_vectors BEGIN ${bump('new')} END;
    CREATE TRIGGER IF NOT EXISTS evs_versions_delete AFTER DELETE ON evs_vectors BEGIN ${bump('old')} END;
    CREATE TRIGGER IF NOT EXISTS evs_versions_update AFTER UPDATE OF user_id, agent_id, run_id, vector, qvector ON evs_vectors BEGIN
      ${bump('old')}
      ${bump('new')}
    END;
  `);
}

/** Images are written for partitions of at least this many rows (smaller ones load from rows in a few ms). */
const MIN_IMAGE_ROWS = 1000;
/** Largest blob of an image; bigger images are split over several rows. */
const IMAGE_PART_BYTES = 4 * 1024 * 1024;

/** An FTS5 query matching any of the tokens (each quoted, so punctuation in a token is never syntax). */
function keywordQuery(tokens: readonly string[]): string {
  return [...new Set(tokens)].map((t) => `"${t.replace(/"/g, '""')}"`).join(' OR ');
}

function releaseShared(shared: SharedDb): void {
  shared.refs--;
  if (shared.refs > 0) return;
  shared.saveImages();
  shared.dropAllPartitions();
  openFiles.delete(shared.key);
  if (shared.db.open) shared.db.close();
}

/** Closes every open store file of this process (graceful shutdown, tests). Stores become unusable. */
export function closeAllEmbeddedVectorStores(): void {
  for (const shared of [...openFiles.values()]) {
    shared.refs = 1;
    releaseShared(shared);
  }
}

// ---------------------------------------------------------------------------------------------
// Vector helpers
// ---------------------------------------------------------------------------------------------

function toFloat32(vector: readonly number[], dimension: number, what: string): Float32Array {
  if (!Array.isArray(vector) && !ArrayBuffer.isView(vector)) {
    throw new Error(`${what}: vector must be an array of numbers`);
  }
  if (vector.length !== dimension) {
    throw new Error(`${what}: vector dimension mismatch, expected ${dimension}, got ${vector.length}`);
  }
  const out = new Float32Array(dimension);
  for (let i = 0; i < dimension; i++) {
    const v = vector[i];
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      throw new Error(`${what}: vector contains a non-finite value at index ${i}`);
    }
    out[i] = v;
  }
  return out;
}

/** Unit-length copy (a zero vector stays zero, so it scores 0 rather than NaN). */
function normalized(v: Float32Array): Float32Array {
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i]! * v[i]!;
  const out = new Float32Array(v.length);
  if (sum === 0) return out;
  const inv = 1 / Math.sqrt(sum);
  for (let i = 0; i < v.length; i++) out[i] = v[i]! * inv;
  return out;
}

/** The int8 codes of a vector's direction, as partitions and the `qvector` column hold them. */
function quantizeVector(v: Float32Array): Quantized {
  return quantize(normalized(v));
}

/** cos(u, v) for a unit vector u (0 for a zero v). */
function cosineToUnit(unit: Float32Array, v: Float32Array): number {
  let dot = 0;
  let norm = 0;
  for (let i = 0; i < v.length; i++) {
    dot += unit[i]! * v[i]!;
    norm += v[i]! * v[i]!;
  }
  return norm === 0 ? 0 : dot / Math.sqrt(norm);
}

function blobOf(v: Float32Array): Buffer {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

function vectorFromBlob(blob: Buffer, dimension: number, id: string): Float32Array {
  if (blob.byteLength !== dimension * 4) {
    throw new Error(`stored vector ${id} has ${blob.byteLength / 4} dimensions, expected ${dimension}`);
  }
  // Blobs may start at any byte offset of Node's buffer pool; Float32Array needs 4-byte alignment.
  if (blob.byteOffset % 4 === 0) return new Float32Array(blob.buffer, blob.byteOffset, dimension);
  return new Float32Array(new Uint8Array(blob).buffer);
}

function clampScore(s: number): number {
  return s > 1 ? 1 : s < -1 ? -1 : s;
}

function normalizeTopK(topK: number | undefined | null, fallback: number): number {
  if (topK === undefined || topK === null) return fallback;
  if (typeof topK !== 'number' || Number.isNaN(topK)) throw new Error('topK must be a number');
  return Math.max(0, Math.floor(topK));
}

function asFilters(filters: unknown): Filters | undefined {
  if (filters === undefined || filters === null) return undefined;
  if (!isPlainObject(filters)) throw new Error('filters must be an object');
  return filters;
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

export class EmbeddedVectorStore implements VectorStore {
  readonly collectionName: string;
  readonly dimension: number;
  readonly dbPath: string;
  private readonly shared: SharedDb;
  private readonly state: CollectionState;
  private readonly arena: Int8Arena;
  private readonly logger: EmbeddedStoreLogger | undefined;
  private closed = false;

  constructor(config: EmbeddedVectorStoreConfig) {
    if (!isPlainObject(config)) throw new Error('EmbeddedVectorStore: config object is required');
    const { collectionName = 'memories', dimension, dbPath, synchronous = 'FULL', maxCacheBytes, kernel = 'auto', preloadImages = false, logger } = config;
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
    this.collectionName = collectionName;
    this.dbPath = dbPath;
    this.logger = logger && typeof logger.warn === 'function' ? logger : undefined;

    const shared = openShared(dbPath, synchronous);
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
      this.arena = arenaFor(dim, kernel);
    } catch (err) {
      if (shared.refs === 0) releaseShared(shared);
      throw err;
    }
    shared.refs++;
    shared.maxCacheBytes = Math.max(shared.maxCacheBytes, maxCacheBytes ?? DEFAULT_CACHE_BYTES);
    this.shared = shared;
    this.state = shared.collection(collectionName);
    this.registerCollection();
    if (preloadImages === true) setImmediate(() => this.preloadImages());
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
      const vector = toFloat32(vectors[i]!, this.dimension, 'insert');
      const rawPayload = payloads[i];
      const payload = normalizePayload(isPlainObject(rawPayload) ? rawPayload : {});
      const json = JSON.stringify(payload);
      return { id, vector, quantized: quantizeVector(vector), json, cols: scopeColumns(parsePayload(json)) };
    });
    const trackOld = this.state.partitions.size > 0;
    const oldScopes = new Map<string, ScopeRow | undefined>();
    const write = this.shared.db.transaction(() => {
      this.registerCollection();
      const upsert = this.shared.stmt(
        'INSERT OR REPLACE INTO evs_vectors (collection, id, user_id, agent_id, run_id, vector, qvector, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      );
      for (const r of rows) {
        // The scope before this batch (an id repeated within the batch must not see its own first write).
        if (trackOld && !oldScopes.has(r.id)) oldScopes.set(r.id, this.readScope(r.id));
        upsert.run(this.collectionName, r.id, r.cols[0], r.cols[1], r.cols[2], blobOf(r.vector), encodeQuantized(r.quantized, this.dimension), r.json);
      }
    });
    write();
    if (trackOld) {
      const finalRows = new Map(rows.map((r) => [r.id, r])); // last write of an id wins, as in SQLite
      for (const r of finalRows.values()) this.applyToPartitions(r.id, oldScopes.get(r.id), r.cols, r.quantized);
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
  async searchAbove(query: number[], topK: number | undefined, filters: Record<string, unknown> | undefined, minScore: number): Promise<VectorStoreResult[]> {
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
        const accept = hasResidualFilter(f, scope.field) ? (row: number) => this.rowMatches(p.ids[row]!, f) : null;
        const query = quantize(unit);
        p.search(query, top, accept);
        // Only candidates whose exact score can reach minScore are read and rescored: the bound
        // is what quantization can move a score by at most, so nothing at or above it is cut.
        const ids: string[] = [];
        const queryL1 = l1Norm(query);
        for (const c of top.sorted()) {
          // At or above minScore: in. Below it: in only if quantization can have moved the exact
          // score up to minScore (the loose bound, O(1), rules most out; the tight one reads the row).
          if (c.score < minScore) {
            if (c.score + p.looseErrorBound(c.item, query, queryL1, this.dimension) < minScore) continue;
            if (c.score + p.errorBound(c.item, query, queryL1, this.dimension) < minScore) continue;
          }
          ids.push(p.ids[c.item]!);
        }
        return this.rescore(unit, ids, k, minScore);
      }
    }
    return this.scanSearch(q, k, f).filter((r) => (r.score ?? 0) >= minScore);
  }

  /**
   * BM25 from the FTS5 index (SQLite's bm25(): k1 1.2, b 0.75, statistics over the whole file),
   * negated so that higher is better, as mem0 expects. Only matching rows are read: no scan of the
   * scope. Scope columns narrow in SQL; other filters are checked on the matching rows, best first.
   */
  async keywordSearch(query: string, topK?: number, filters?: Record<string, unknown>): Promise<VectorStoreResult[] | null> {
    this.assertOpen();
    if (typeof query !== 'string') return [];
    const k = normalizeTopK(topK, 10);
    const f = asFilters(filters);
    const tokens = tokenize(query);
    if (k === 0 || tokens.length === 0) return [];
    const scope = pickScope(f);
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
    const row = this.shared.stmt('SELECT id, payload FROM evs_vectors WHERE collection = ? AND id = ?').get(this.collectionName, vectorId) as
      | RowForList
      | undefined;
    return row ? { id: row.id, payload: parsePayload(row.payload) } : null;
  }

  async update(vectorId: string, vector: number[], payload: Record<string, unknown>): Promise<void> {
    this.assertOpen();
    const v = toFloat32(vector, this.dimension, 'update');
    const quantized = quantizeVector(v);
    const json = JSON.stringify(normalizePayload(isPlainObject(payload) ? payload : {}));
    const cols = scopeColumns(parsePayload(json));
    let old: ScopeRow | undefined;
    const write = this.shared.db.transaction(() => {
      old = this.readScope(vectorId);
      if (!old) return;
      this.shared
        .stmt('UPDATE evs_vectors SET user_id = ?, agent_id = ?, run_id = ?, vector = ?, qvector = ?, payload = ? WHERE collection = ? AND id = ?')
        .run(cols[0], cols[1], cols[2], blobOf(v), encodeQuantized(quantized, this.dimension), json, this.collectionName, vectorId);
    });
    write();
    if (!old) {
      // The built-in store silently ignores updates of missing ids; mem0 checks existence first.
      this.logger?.warn('embedded vector store: update of a missing id ignored', { collection: this.collectionName, id: vectorId });
      return;
    }
    this.applyToPartitions(vectorId, old, cols, quantized);
  }

  async delete(vectorId: string): Promise<void> {
    this.assertOpen();
    let old: ScopeRow | undefined;
    const write = this.shared.db.transaction(() => {
      old = this.readScope(vectorId);
      if (old) this.shared.stmt('DELETE FROM evs_vectors WHERE collection = ? AND id = ?').run(this.collectionName, vectorId);
    });
    write();
    if (old) this.applyToPartitions(vectorId, old, null, null);
  }

  /** Deletes every row of this collection (other collections in the file are untouched). */
  async deleteCol(): Promise<void> {
    this.assertOpen();
    const write = this.shared.db.transaction(() => {
      this.shared.stmt('DELETE FROM evs_vectors WHERE collection = ?').run(this.collectionName);
      this.shared.stmt('DELETE FROM evs_images WHERE collection = ?').run(this.collectionName);
      // Forget the dimension too, so the collection can be recreated for another embedding model.
      this.shared.stmt('DELETE FROM evs_collections WHERE name = ?').run(this.collectionName);
    });
    write();
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
      const rows = this.shared.stmt(`SELECT id, payload FROM evs_vectors WHERE ${where} ORDER BY rowid LIMIT ?`).all(...params, k) as RowForList[];
      return [rows.map((r) => ({ id: r.id, payload: parsePayload(r.payload) })), total];
    }
    const results: VectorStoreResult[] = [];
    let total = 0;
    for (const row of this.shared.stmt(`SELECT id, payload FROM evs_vectors WHERE ${where} ORDER BY rowid`).iterate(...params) as IterableIterator<RowForList>) {
      const payload = parsePayload(row.payload);
      if (!matchesFilters(payload, f)) continue;
      total++;
      if (results.length < k) results.push({ id: row.id, payload });
    }
    return [results, total];
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
    const total = (this.shared.stmt(`SELECT COUNT(DISTINCT user_id) AS n FROM evs_vectors WHERE ${match}`).get(...params) as { n: number }).n;
    const rows = this.shared
      .stmt(
        `SELECT user_id, COUNT(*) AS memories, MAX(COALESCE(json_extract(payload, '$.updatedAt'), json_extract(payload, '$.createdAt'))) AS last
         FROM evs_vectors WHERE ${match} GROUP BY user_id ORDER BY user_id LIMIT ? OFFSET ?`,
      )
      .all(...params, limit, offset) as { user_id: string; memories: number; last: unknown }[];
    return { users: rows.map((r) => ({ user_id: r.user_id, memories: r.memories, last_activity: typeof r.last === 'string' ? r.last : null })), total };
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
    releaseShared(this.shared);
  }

  /** Diagnostics: rows held in memory for this file, their approximate bytes, and how partitions were loaded. */
  cacheStats(): { partitions: number; rows: number; bytes: number; loads: { images: number; rows: number } } {
    let partitions = 0;
    let rows = 0;
    for (const c of this.shared.collections.values()) {
      for (const p of c.partitions.values()) {
        partitions++;
        rows += p.count;
      }
    }
    return { partitions, rows, bytes: this.shared.cachedBytes(), loads: { ...this.shared.loads } };
  }

  // -------------------------------------------------------------------------------------------

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
    return this.shared.stmt('SELECT user_id, agent_id, run_id FROM evs_vectors WHERE collection = ? AND id = ?').get(this.collectionName, id) as
      | ScopeRow
      | undefined;
  }

  /** Keeps loaded partitions in step with a committed write (new* null = deleted). */
  private applyToPartitions(id: string, old: ScopeRow | undefined, newCols: readonly (string | null)[] | null, quantized: Quantized | null): void {
    const partitions = this.state.partitions;
    if (partitions.size === 0) return;
    const newKeys = newCols ? scopeKeysOf(newCols) : [];
    if (old) {
      for (const key of scopeKeysOf([old.user_id, old.agent_id, old.run_id])) {
        if (!newKeys.includes(key)) partitions.get(key)?.remove(id);
      }
    }
    if (quantized) {
      for (const key of newKeys) partitions.get(key)?.upsert(id, quantized);
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
  private preloadImages(): void {
    if (this.closed) return;
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
      if (this.closed || !scope || this.shared.cachedBytes() + scope.bytes > this.shared.maxCacheBytes / 2) return;
      const key = scopeKey(scope.field, scope.value);
      if (!this.state.partitions.has(key)) {
        try {
          this.partitionFor({ field: scope.field, value: scope.value, key });
        } catch {
          // Loaded (or reported) by its first search instead.
        }
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
      this.logger?.warn('EmbeddedVectorStore: a partition image does not fit; its rows are read instead', { collection: this.collectionName });
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
      .stmt(`SELECT id, qvector, CASE WHEN qvector IS NULL THEN vector END AS vector FROM evs_vectors WHERE collection = ? AND ${scope.field} = ?`)
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
    return this.shared.stmt(`SELECT ${columns} FROM evs_vectors WHERE ${where}`).iterate(...params) as IterableIterator<RowForLoad | RowForList>;
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
