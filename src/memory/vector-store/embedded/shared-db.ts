/**
 * Shared per-file state: one connection, prepared statements, loaded partitions and their LRU
 * budget, and the partition images, for all the stores (collections) of one file.
 */
import type Database from 'better-sqlite3';
import type { Partition } from '../quantized/partition';
import type { KeywordPartition, KeywordStats } from './keyword-partition';
import { IMAGE_PART_BYTES, MIN_IMAGE_ROWS } from './schema';
import { splitScopeKey, type ScopeField } from './scope';

export class CollectionState {
  readonly partitions = new Map<string, Partition>();
  /**
   * In-memory keyword indexes (keyword-partition.ts) of scopes whose partition is loaded, complete
   * or being built; dropped with their partition.
   */
  readonly keywords = new Map<string, KeywordPartition>();
  constructor(readonly name: string) {}
}

/** An SQLite varint (big-endian 7-bit groups, the 9th byte whole) at `at`: [value, next offset]. */
function readVarint(buf: Buffer, at: number): [number, number] {
  let value = 0;
  for (let i = 0; i < 9; i++) {
    const byte = buf[at + i];
    if (byte === undefined) throw new RangeError(`varint at ${at} runs past ${buf.length} bytes`);
    if (i === 8) return [value * 256 + byte, at + 9];
    value = value * 128 + (byte & 0x7f);
    if ((byte & 0x80) === 0) return [value, at + i + 1];
  }
  throw new RangeError('unreachable');
}

/** Terms whose idf is kept between writes (a bound for a long run of searches without writes). */
const MAX_CACHED_TERMS = 4096;

export class SharedDb {
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
  /** The scope version each keyword index's stored image is of, and how keyword indexes were built. */
  readonly keywordImageVersions = new WeakMap<KeywordPartition, number>();
  readonly keywordLoads = { images: 0, rows: 0 };
  private readonly statements = new Map<string, Database.Statement<unknown[], unknown>>();

  /** Whether the writes of a save's unit are pending in an open transaction (see `write`). */
  private unitOpen = false;
  /**
   * Bumped by every write of this connection and by every commit of another one seen: the keyword
   * statistics cached for one value describe the file as it is while the value holds.
   */
  private epoch = 0;
  private statsCache: { epoch: number; rows: number; tokens: number; idf: Map<string, number> } | undefined;

  /** `inUnit` tells whether the caller runs inside a save's unit (EmbeddedStoreFiles.unit). */
  constructor(
    readonly key: string,
    readonly db: Database.Database,
    private readonly inUnit: () => boolean = () => false,
  ) {
    this.dataVersion = this.readDataVersion();
  }

  /**
   * Runs one write (`fn`, atomic). Inside a save's unit, the write joins the unit's transaction,
   * opened by the unit's first write and committed when the unit ends: one commit (one fsync) per
   * save instead of one per row the save touches. Any other write first commits an open unit, so
   * a write acknowledged outside a unit is never held back behind one.
   */
  write<T>(fn: () => T): T {
    this.epoch++;
    if (this.inUnit()) {
      if (!this.db.inTransaction) {
        this.db.exec('BEGIN IMMEDIATE');
        this.unitOpen = true;
      }
    } else {
      this.commitUnit();
    }
    return this.db.transaction(fn)();
  }

  /**
   * Commits the open unit's transaction, if any. If the commit fails it is rolled back and every
   * loaded partition dropped (they already held its rows), and the error is thrown to the unit.
   */
  commitUnit(): void {
    if (!this.unitOpen) return;
    this.unitOpen = false;
    if (!this.db.inTransaction) return;
    try {
      this.db.exec('COMMIT');
    } catch (err) {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
      this.dropAllPartitions();
      throw err;
    }
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
      this.epoch++;
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
    for (const [p, owner] of this.lru) total += this.bytesOf(p, owner);
    for (const [p, owner] of this.lru) {
      if (total <= this.maxCacheBytes) break;
      if (p === keep) continue;
      total -= this.bytesOf(p, owner);
      this.evict(p, owner);
    }
  }

  /** Evicts a partition, and its scope's keyword index with it. */
  evict(partition: Partition, owner: CollectionState): void {
    this.lru.delete(partition);
    if (owner.partitions.get(partition.key) === partition) {
      owner.partitions.delete(partition.key);
      owner.keywords.delete(partition.key);
    }
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
    for (const [p, owner] of this.lru) total += this.bytesOf(p, owner);
    return total;
  }

  /**
   * FTS5's bm25 statistics for `terms` (distinct, in query order), read from the keyword index as
   * its bm25() reads them: the row count and token total of its averages record, and per term
   * idf = ln((rows − hits + 0.5) / (hits + 0.5)), 1e-6 where that is not positive, with hits the
   * number of rows holding the term. The logarithm is SQLite's, so the idf is the same double.
   * Undefined when the index has no averages yet. Read in the caller's transaction (the figures
   * of one snapshot); not inside a write transaction, where FTS5 holds newer totals in memory.
   * Kept until this connection writes or another one's commit is seen (`epoch`).
   */
  keywordStats(terms: readonly string[]): KeywordStats | undefined {
    // A term's document count walks its whole doclist (~30 µs for a common word at 20k rows), and
    // searches between two writes ask for the same words again.
    let cache = this.statsCache;
    if (cache?.epoch !== this.epoch) {
      const block = this.stmt('SELECT block FROM evs_keywords_data WHERE id = 1').pluck().get() as Buffer | undefined;
      const [rows, next] = Buffer.isBuffer(block) && block.length > 0 ? readVarint(block, 0) : [0, 0];
      const [tokens] = rows > 0 && block ? readVarint(block, next) : [0];
      cache = { epoch: this.epoch, rows, tokens, idf: new Map() };
      this.statsCache = cache;
    }
    const { rows, tokens, idf: known } = cache;
    if (rows <= 0) return undefined;
    const hitsOf = this.stmt('SELECT doc FROM temp.evs_keyword_terms WHERE term = ?').pluck();
    const ln = this.stmt('SELECT ln((? - ? + 0.5) / (? + 0.5))').pluck();
    const idf = terms.map((term) => {
      let value = known.get(term);
      if (value === undefined) {
        const hits = (hitsOf.get(term) as number | undefined) ?? 0;
        const raw = ln.get(rows, hits, hits) as number;
        value = raw <= 0 ? 1e-6 : raw;
        if (known.size >= MAX_CACHED_TERMS) known.clear();
        known.set(term, value);
      }
      return value;
    });
    return { avgdl: tokens / rows, idf };
  }

  /** The version of a scope's rows (0 before any write since the triggers existed). */
  scopeVersion(collection: string, field: ScopeField, value: string): number {
    const row = this.stmt('SELECT version FROM evs_scope_versions WHERE collection = ? AND field = ? AND value = ?').get(
      collection,
      field,
      value,
    ) as { version: number } | undefined;
    return row?.version ?? 0;
  }

  /** The parts of a scope's image at `version`, in order; the iteration stops early at a part of another version. */
  *imageParts(collection: string, field: ScopeField, value: string, version: number): Generator<Buffer> {
    const rows = this.stmt(
      'SELECT part, version, data FROM evs_images WHERE collection = ? AND field = ? AND value = ? ORDER BY part',
    ).iterate(collection, field, value) as IterableIterator<{ part: number; version: number; data: Buffer }>;
    let expected = 0;
    for (const row of rows) {
      if (row.part !== expected++ || row.version !== version) return;
      yield row.data;
    }
  }

  hasImage(collection: string, field: ScopeField, value: string, version: number): boolean {
    return (
      this.stmt('SELECT 1 FROM evs_images WHERE collection = ? AND field = ? AND value = ? AND part = 0 AND version = ?').get(
        collection,
        field,
        value,
        version,
      ) !== undefined
    );
  }

  /** A scope's keyword image at `version`, if one is stored. */
  keywordImage(collection: string, field: ScopeField, value: string, version: number): Buffer | undefined {
    const data = this.stmt('SELECT data FROM evs_keyword_images WHERE collection = ? AND field = ? AND value = ? AND version = ?')
      .pluck()
      .get(collection, field, value, version);
    return Buffer.isBuffer(data) ? data : undefined;
  }

  /**
   * Writes the image of every loaded partition that has enough rows and no image of its current
   * version (see createPartitionImages), and of its keyword index when that is complete.
   * Failures are left unlogged here and cost nothing but the next start's speed: rows stay the
   * source of truth.
   */
  saveImages(): void {
    if (!this.db.open || this.db.readonly) return;
    try {
      this.syncWithOtherWriters();
      for (const [collection, state] of this.collections) {
        for (const partition of state.partitions.values()) {
          const [field, value] = splitScopeKey(partition.key);
          if (partition.count < MIN_IMAGE_ROWS) continue;
          this.saveKeywordImage(collection, field, value, state.keywords.get(partition.key));
          if (this.imageVersions.get(partition) === this.scopeVersion(collection, field, value)) continue;
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

  private saveKeywordImage(collection: string, field: ScopeField, value: string, index: KeywordPartition | undefined): void {
    if (!index?.ready || this.keywordImageVersions.get(index) === this.scopeVersion(collection, field, value)) return;
    const image = index.toImage();
    if (!image) return;
    this.db
      .transaction(() => {
        if (this.readDataVersion() !== this.dataVersion) return; // another writer since: the index may lack its rows
        this.stmt('INSERT OR REPLACE INTO evs_keyword_images (collection, field, value, version, data) VALUES (?, ?, ?, ?, ?)').run(
          collection,
          field,
          value,
          this.scopeVersion(collection, field, value),
          image,
        );
      })
      .immediate();
  }

  private bytesOf(partition: Partition, owner: CollectionState): number {
    return partition.bytes() + (owner.keywords.get(partition.key)?.bytes() ?? 0);
  }

  private readDataVersion(): number {
    // A kept statement: db.pragma() prepares one per call, and this runs a few times per search.
    return Number(this.stmt('PRAGMA data_version').pluck().get());
  }
}
