/**
 * mem0's pgvector store on a connection pool, so the proxy survives the database going away and
 * coming back without a restart.
 *
 * mem0's `PGVector` opens one `pg.Client` when it initialises and keeps it forever: after a
 * database restart that connection is dead and every memory call fails until the process is
 * restarted; and a failed first initialisation is remembered, so a proxy started while the
 * database was down never recovers either. This subclass keeps every query, table and result of
 * mem0's store (it inherits them all: they only ever call `this.client.query`) and changes two
 * things:
 *
 * - `client` is a bounded `pg.Pool` (`poolSize`, `connectTimeoutMs`): each query takes a working
 *   connection, a connection the server dropped is replaced, and while the database is down a call
 *   fails within the connect timeout (the memory service's guard turns that into 503 / fail-open).
 * - `initialize` (extension, `memory_migrations`, the collection table) is retried on the next call
 *   after a failure instead of failing forever.
 */
import { Pool } from 'pg';
import type { VectorStore, VectorStoreConfig } from 'mem0ai/oss';

export interface PooledPgVectorConfig extends VectorStoreConfig {
  connectionString?: string;
  embeddingModelDims?: number;
  hnsw?: boolean;
  /** Connections this store may hold at once (default 4). */
  poolSize?: number;
  /** How long a call waits for a connection before it fails (default 2 s). */
  connectTimeoutMs?: number;
  /** Told about connections the server dropped (default: ignored; the pool replaces them). */
  onConnectionError?: (err: Error) => void;
}

/** What the subclass touches of mem0's PGVector (all of it plain properties and methods at run time). */
interface PgVectorInternals {
  client: { query(sql: string, params?: unknown[]): Promise<unknown>; end(): Promise<void> } | undefined;
  collectionName: string;
  config: PooledPgVectorConfig;
  _initPromise: Promise<void> | undefined;
  listCols(): Promise<string[]>;
  createCol(dims: number | undefined): Promise<void>;
}

export interface PgVectorStore extends VectorStore {
  initialize(): Promise<void>;
  close(): Promise<void>;
}

export type PgVectorClass = new (config: PooledPgVectorConfig) => PgVectorStore;

/** The pooled store class built on mem0's `PGVector` class (passed in: mem0ai is loaded lazily). */
export function pooledPgVectorClass(Base: PgVectorClass): PgVectorClass {
  return class PooledPgVector extends Base {
    // Called by mem0's constructor too (it starts initialising at once), so it reads only `config`.
    override initialize(): Promise<void> {
      const self = this as unknown as PgVectorInternals;
      self._initPromise ??= this.setUp().catch((err: unknown) => {
        // Not remembered: the next call tries again (the database may be back by then).
        self._initPromise = undefined;
        throw err;
      });
      return self._initPromise;
    }

    override async close(): Promise<void> {
      const self = this as unknown as PgVectorInternals;
      const pool = self.client;
      self.client = undefined;
      await pool?.end();
    }

    private async setUp(): Promise<void> {
      const self = this as unknown as PgVectorInternals;
      if (!self.client) {
        const pool = new Pool({
          connectionString: self.config.connectionString,
          max: Math.max(1, self.config.poolSize ?? 4),
          connectionTimeoutMillis: self.config.connectTimeoutMs ?? 2000,
          idleTimeoutMillis: 30_000,
        });
        // An idle connection the server drops is an 'error' on the pool: without a listener it
        // would crash the process. The pool has already discarded it.
        pool.on('error', (err) => self.config.onConnectionError?.(err));
        self.client = pool;
      }
      await self.client.query('CREATE EXTENSION IF NOT EXISTS vector');
      await self.client.query('CREATE TABLE IF NOT EXISTS memory_migrations (id SERIAL PRIMARY KEY, user_id TEXT NOT NULL UNIQUE)');
      if (!(await self.listCols()).includes(self.collectionName)) await self.createCol(self.config.embeddingModelDims);
    }
  };
}
