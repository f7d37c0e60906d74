/**
 * Keyword search: the FTS5 index over each row's lemmatized text (kept in step by triggers), and
 * the queries against it (whitespace tokens of mem0's lemmatized query).
 */
import type Database from 'better-sqlite3';

export function tokenize(text: string): string[] {
  return text.toLowerCase().split(/\s+/).filter(Boolean);
}

/** An FTS5 query matching any of the tokens (each quoted, so punctuation in a token is never syntax). */
export function keywordQuery(tokens: readonly string[]): string {
  return [...new Set(tokens)].map((t) => `"${t.replace(/"/g, '""')}"`).join(' OR ');
}

/**
 * The keyword index: an FTS5 table over each row's `textLemmatized` (else `data`), kept in step
 * with `evs_vectors` by triggers, so every write path (and any other connection) maintains it in
 * the same transaction. Contentless: the text lives in the payload already. A file written before
 * the index existed is indexed once, when first opened (`evs_meta` keywords_version).
 * `recursive_triggers` makes INSERT OR REPLACE fire the delete trigger for the row it replaces.
 */
/** The SQL of the text FTS5 indexes for a row, given the SQL of its payload (keyword-partition.ts's `keywordText` in JS). */
export function keywordTextSql(payload: string): string {
  return `coalesce(nullif(json_extract(${payload}, '$.textLemmatized'), ''), json_extract(${payload}, '$.data'), '')`;
}

export function createKeywordIndex(db: Database.Database): void {
  db.pragma('recursive_triggers = ON');
  const text = keywordTextSql;
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
