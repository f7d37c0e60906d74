/** The open store files of this process: one shared connection and index per file, reference-counted by the stores using it. */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { createSchema } from './schema';
import { SharedDb } from './shared-db';

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

export function openShared(dbPath: string, synchronous: 'FULL' | 'NORMAL'): SharedDb {
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
    createSchema(db);
  } catch (err) {
    db.close();
    throw err;
  }
  const shared = new SharedDb(key, db);
  shared.synchronous = synchronous;
  openFiles.set(key, shared);
  return shared;
}

export function releaseShared(shared: SharedDb): void {
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
