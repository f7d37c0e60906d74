/** The embedded store's configuration, in the shape of mem0ai's `VectorStoreConfig`, and the logger it takes. */
import type { SearchKernel } from '../quantized/kernel';
import type { EmbeddedStoreFiles } from './files';

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
  /**
   * The open files this store joins (required): stores given the same instance share a file's
   * connection and index. Its creator closes it (`closeAll`); mem0/build.ts creates one per engine.
   */
  files?: EmbeddedStoreFiles;
  [key: string]: unknown;
}
