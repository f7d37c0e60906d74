/**
 * A throwaway database on this machine's PostgreSQL (127.0.0.1:5432, trust auth; `PGHOST`,
 * `PGPORT`, `PGUSER` override): created for a test file, dropped (connections and all) after it.
 */
import crypto from 'node:crypto';
import { Client } from 'pg';

export interface TestDatabase {
  /** postgres:// URL of the new database. */
  url: string;
  name: string;
  /** Runs one statement in the database. */
  query<T extends Record<string, unknown>>(sql: string, params?: unknown[]): Promise<T[]>;
  drop(): Promise<void>;
}

const host = process.env.PGHOST ?? '127.0.0.1';
const port = Number(process.env.PGPORT ?? '5432');
const user = process.env.PGUSER ?? 'postgres';
const serverUrl = (db: string): string => `postgres://${encodeURIComponent(user)}@${host}:${port}/${db}`;

export async function createTestDatabase(prefix = 'mp_test'): Promise<TestDatabase> {
  const name = `${prefix}_${crypto.randomBytes(6).toString('hex')}`;
  const admin = new Client({ connectionString: serverUrl('postgres') });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = serverUrl(name);
  return {
    url,
    name,
    query: async <T extends Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<T[]> => {
      const client = new Client({ connectionString: url });
      await client.connect();
      try {
        return (await client.query<T>(sql, params)).rows;
      } finally {
        await client.end();
      }
    },
    drop: async () => {
      const a = new Client({ connectionString: serverUrl('postgres') });
      await a.connect();
      try {
        await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await a.end();
      }
    },
  };
}
