/**
 * The store file's schema: the tables, indexes and triggers every opener creates if missing, and
 * the migrations of files written by earlier versions.
 */
import type Database from 'better-sqlite3';
import { encodeQuantized } from '../quantized/quantize';
import { createKeywordIndex } from './keywords';
import { createTextKeyIndex } from './text-keys';
import { quantizeVector, vectorFromBlob } from './vectors';

/** Creates what is missing in a newly opened file (tables, indexes, triggers) and migrates older files. */
export function createSchema(db: Database.Database): void {
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
      text_key TEXT,
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
  createTextKeyIndex(db);
  createKeywordIndex(db);
  createPartitionImages(db);
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
  const dims = new Map(
    (db.prepare('SELECT name, dimension FROM evs_collections').all() as Array<{ name: string; dimension: number }>).map((c) => [
      c.name,
      c.dimension,
    ]),
  );
  const batch = db.prepare(
    'SELECT rowid AS rowid, collection, vector FROM evs_vectors WHERE qvector IS NULL AND rowid > ? ORDER BY rowid LIMIT 1000',
  );
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
    -- A scope's in-memory keyword index (embedded/keyword-partition.ts), one blob, by the same rule.
    CREATE TABLE IF NOT EXISTS evs_keyword_images (
      collection TEXT NOT NULL,
      field TEXT NOT NULL,
      value TEXT NOT NULL,
      version INTEGER NOT NULL,
      data BLOB NOT NULL,
      PRIMARY KEY (collection, field, value)
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
export const MIN_IMAGE_ROWS = 1000;
/** Largest blob of an image; bigger images are split over several rows. */
export const IMAGE_PART_BYTES = 4 * 1024 * 1024;
