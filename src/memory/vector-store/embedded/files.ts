/**
 * The open store files of one engine: one shared connection and index per file, reference-counted
 * by the stores using it, and the int8 arenas their partitions live in.
 *
 * No module-level state: whoever builds the stores (the engine builder, mem0/build.ts; a test; a
 * bench) creates one EmbeddedStoreFiles, hands it to every store in its configuration (`files`),
 * and closes it (`closeAll`) when done. Stores that should share a file's connection and index
 * must be given the same instance.
 */
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
  readonly arenas = new Int8Arenas();
  private readonly openFiles = new Map<string, SharedDb>();
  private privateDbCounter = 0;

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
    } catch (err) {
      db.close();
      throw err;
    }
    const shared = new SharedDb(key, db);
    shared.synchronous = synchronous;
    this.openFiles.set(key, shared);
    return shared;
  }

  release(shared: SharedDb): void {
    shared.refs--;
    if (shared.refs > 0) return;
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
  }
}
