/**
 * The open store files of one engine: one shared connection and index per file, reference-counted
 * by the stores using it, and the int8 arenas their partitions live in.
 *
 * No module-level state: whoever builds the stores (the engine builder, mem0/build.ts; a test; a
 * bench) creates one EmbeddedStoreFiles, hands it to every store in its configuration (`files`),
 * and closes it (`closeAll`) when done. Stores that should share a file's connection and index
 * must be given the same instance.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Int8Arenas } from '../quantized/arena';
import { createSchema } from './schema';
import { SharedDb } from './shared-db';

function fileKey(dbPath: string): string {
  const abs = path.resolve(dbPath);
  try {
    // Resolve symlinked directories so two spellings of one file share one connection and index.
    return path.join(fs.realpathSync(path.dirname(abs)), path.basename(abs));
  } catch {
    return abs;
  }
}

export class EmbeddedStoreFiles {
  /** The arenas of the partitions of these files' stores, one per (padded dimension, kernel). */
  readonly arenas: Int8Arenas;
  private readonly openFiles = new Map<string, SharedDb>();
  private privateDbCounter = 0;
  private readonly units = new AsyncLocalStorage<true>();

  /**
   * `scanHelperMinRows`: partitions of at least this many rows share their scan with a second
   * thread (default 4,096 where the process may use more than one core, else never).
   */
  constructor(options: { scanHelperMinRows?: number } = {}) {
    this.arenas = new Int8Arenas(options.scanHelperMinRows);
  }

  /**
   * Runs `fn` (one save) as a unit: the writes it makes to these files share one transaction per
   * file, committed when `fn` settles, whether it succeeded or not (what it wrote stays written,
   * as it would with a commit per write). A failed commit fails the unit.
   */
  async unit<T>(fn: () => Promise<T>): Promise<T> {
    let result: T;
    try {
      result = await this.units.run(true, fn);
    } catch (err) {
      try {
        this.commitUnits();
      } catch {
        // The save failed already; its own error is the one to report.
      }
      throw err;
    }
    this.commitUnits();
    return result;
  }

  private commitUnits(): void {
    let failure: unknown;
    for (const shared of this.openFiles.values()) {
      try {
        shared.commitUnit();
      } catch (err) {
        failure ??= err;
      }
    }
    if (failure !== undefined) throw failure;
  }

  open(dbPath: string, synchronous: 'FULL' | 'NORMAL'): SharedDb {
    const inMemory = dbPath === ':memory:';
    const key = inMemory ? `:memory:#${++this.privateDbCounter}` : fileKey(dbPath);
    const existing = this.openFiles.get(key);
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
      createSchema(db);
      // Per connection, not in the file: each keyword term's row count, for keyword-partition.ts's BM25.
      db.exec("CREATE VIRTUAL TABLE IF NOT EXISTS temp.evs_keyword_terms USING fts5vocab(main, 'evs_keywords', 'row')");
    } catch (err) {
      db.close();
      throw err;
    }
    const shared = new SharedDb(key, db, () => this.units.getStore() === true);
    shared.synchronous = synchronous;
    this.openFiles.set(key, shared);
    return shared;
  }

  release(shared: SharedDb): void {
    shared.refs--;
    if (shared.refs > 0) return;
    try {
      shared.commitUnit();
    } catch {
      // Rolled back: the save it belonged to is retried from the save queue.
    }
    shared.saveImages();
    shared.dropAllPartitions();
    this.openFiles.delete(shared.key);
    if (shared.db.open) shared.db.close();
  }

  /** Closes every file still open here (graceful shutdown, tests). Their stores become unusable. */
  closeAll(): void {
    for (const shared of [...this.openFiles.values()]) {
      shared.refs = 1;
      this.release(shared);
    }
    this.arenas.close();
  }
}
