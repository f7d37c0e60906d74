/**
 * Exact entity lookup by text: each row of an entity collection keeps its payload's `data`
 * normalised as mem0 compares entity texts (trimmed, lower case, runs of whitespace as one space)
 * in `text_key`, under an index, so "is there already an entity called X for this user?" is one
 * indexed read instead of mem0's listing of up to 10,000 entity rows on every save.
 */
import type Database from 'better-sqlite3';

/** mem0's entity collections are its memory collection's name plus this suffix (`Memory.getEntityStore`). */
const ENTITY_COLLECTION_SUFFIX = '_entities';

export function isEntityCollection(name: string): boolean {
  return name.endsWith(ENTITY_COLLECTION_SUFFIX);
}

/** mem0's `_normalizeEntityText`. */
export function entityTextKey(data: unknown): string | null {
  if (typeof data !== 'string') return null;
  const key = data.trim().toLowerCase().replace(/\s+/g, ' ');
  return key === '' ? null : key;
}

/**
 * Adds `text_key` and its index to a file that lacks them, and fills it once for the entity rows
 * already there (`evs_meta` text_keys_version), in one transaction.
 */
export function createTextKeyIndex(db: Database.Database): void {
  const columns = db.prepare("SELECT name FROM pragma_table_info('evs_vectors')").all() as Array<{ name: string }>;
  if (!columns.some((c) => c.name === 'text_key')) db.exec('ALTER TABLE evs_vectors ADD COLUMN text_key TEXT');
  db.exec('CREATE INDEX IF NOT EXISTS evs_vectors_text_key ON evs_vectors (collection, text_key) WHERE text_key IS NOT NULL');
  const version = db.prepare("SELECT value FROM evs_meta WHERE key = 'text_keys_version'").get() as { value: string } | undefined;
  if (version?.value === '1') return;
  const rows = db.prepare(
    `SELECT rowid AS rowid, collection, json_extract(payload, '$.data') AS data FROM evs_vectors WHERE text_key IS NULL`,
  );
  const fill = db.prepare('UPDATE evs_vectors SET text_key = ? WHERE rowid = ?');
  db.transaction(() => {
    const pending: Array<[string, number]> = [];
    for (const row of rows.iterate() as IterableIterator<{ rowid: number; collection: string; data: unknown }>) {
      if (!isEntityCollection(row.collection)) continue;
      const key = entityTextKey(row.data);
      if (key !== null) pending.push([key, row.rowid]);
    }
    for (const [key, rowid] of pending) fill.run(key, rowid);
    db.prepare("INSERT OR REPLACE INTO evs_meta (key, value) VALUES ('text_keys_version', '1')").run();
  }).immediate();
}
